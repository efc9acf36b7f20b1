"""(4) Persistent sessions (clean session 0) and in-flight redelivery; (6) client id takeover."""

from __future__ import annotations

from helpers import (
    PINGREQ_BYTES,
    PINGRESP_BYTES,
    PUBLISH,
    PUBREC,
    PUBREL,
    PUBACK,
    PUBCOMP,
    PahoClient,
    RawClient,
    ack_packet,
    publish_packet,
    raw_connected,
    unique,
)

N = 100  # more than the default max_inflight (32), so some wait in the queue


def test_paho_persistent_session_resume(broker):
    """A clean_session=False subscriber (QoS 1 and QoS 2 subscriptions) disconnects; N messages
    are published; it reconnects with the same id, sees session present = 1 and gets all N,
    in order per topic, at the subscribed QoS."""
    cid = unique("persist")
    t1, t2 = unique("s1") + "/q1", unique("s2") + "/q2"

    sub = PahoClient(broker.port, client_id=cid, clean_session=False).start()
    assert sub.connack == (False, 0), f"fresh session must not be present: {sub.connack}"
    assert sub.subscribe([(t1, 1), (t2, 2)]) == [1, 2]
    sub.stop()
    assert sub.disconnected.wait(5)

    pub = PahoClient(broker.port).start()
    sent: list[tuple[str, bytes, int]] = []
    try:
        for i in range(N):
            topic, qos = (t1, 1) if i % 2 == 0 else (t2, 2)
            payload = f"m{i:03d}".encode()
            pub.publish(topic, payload, qos=qos)
            sent.append((topic, payload, qos))
    finally:
        pub.stop()

    resumed = PahoClient(broker.port, client_id=cid, clean_session=False).start()
    try:
        assert resumed.connack == (True, 0), f"expected session present = 1, got {resumed.connack}"
        got = resumed.get_n(N, timeout=10)
        for topic in (t1, t2):
            assert [(m.payload, m.qos) for m in got if m.topic == topic] == \
                [(p, q) for t, p, q in sent if t == topic], f"messages on {topic} lost or out of order"
        assert sorted(m.payload for m in got) == sorted(p for _, p, _ in sent)
        assert not any(m.retain for m in got)
    finally:
        resumed.stop()


def test_clean_session_discards_persistent_session(broker):
    """Connecting with clean session 1 throws the stored session away."""
    cid = unique("discard")
    topic = unique("d")
    sub = PahoClient(broker.port, client_id=cid, clean_session=False).start()
    sub.subscribe([(topic, 1)])
    sub.stop()

    with raw_connected(broker.port, cid, clean_session=True, session_present=False):
        pass
    pub = PahoClient(broker.port).start()
    pub.publish(topic, b"nobody home", qos=1)
    pub.stop()
    with raw_connected(broker.port, cid, clean_session=False, session_present=False) as c:
        c.send(PINGREQ_BYTES)
        c.expect(PINGRESP_BYTES, what="PINGRESP and nothing queued before it")


def _persistent_raw_subscriber(port: int, cid: str, topic: str, qos: int) -> RawClient:
    c = raw_connected(port, cid, clean_session=False)
    c.subscribe(1, [(topic, qos)])
    return c


def _publish_one(port: int, topic: str, payload: bytes, qos: int) -> None:
    pub = PahoClient(port).start()
    try:
        pub.publish(topic, payload, qos=qos)
    finally:
        pub.stop()


def test_qos1_redelivered_with_dup_after_reconnect(broker):
    """A QoS 1 PUBLISH that was never PUBACKed is resent on reconnect with DUP=1 and the same packet id."""
    cid, topic = unique("inflight1"), unique("if1")
    c = _persistent_raw_subscriber(broker.port, cid, topic, 1)
    _publish_one(broker.port, topic, b"ack me", 1)
    first = c.expect_packet(what="the QoS 1 PUBLISH")
    assert first.type == PUBLISH and first.first_byte == 0x32, first  # QoS 1, DUP 0, RETAIN 0
    _, pid, payload = first.publish_fields()
    assert payload == b"ack me"
    c.abort()  # no PUBACK

    c2 = RawClient(broker.port)
    try:
        c2.connect(cid, clean_session=False, session_present=True)
        again = c2.expect_packet(what="the redelivered PUBLISH")
        assert again.first_byte == 0x3A, f"expected 0x3A (PUBLISH, DUP=1, QoS 1), got {again}"
        assert again.raw == publish_packet(topic, b"ack me", qos=1, packet_id=pid, dup=True)
        c2.send(ack_packet(PUBACK, pid))
        c2.send(PINGREQ_BYTES)
        c2.expect(PINGRESP_BYTES, what="PINGRESP (nothing else pending)")
    finally:
        c2.close()

    # Acknowledged now: a third connection gets nothing.
    with raw_connected(broker.port, cid, clean_session=False, session_present=True) as c3:
        c3.send(PINGREQ_BYTES)
        c3.expect(PINGRESP_BYTES, what="PINGRESP (the PUBACKed message must not come back)")


def test_qos2_publish_and_pubrel_redelivered(broker):
    """QoS 2 outbound: a PUBLISH not PUBRECed is resent with DUP=1; after PUBREC, a PUBREL not
    PUBCOMPed is resent on the next reconnect."""
    cid, topic = unique("inflight2"), unique("if2")
    c = _persistent_raw_subscriber(broker.port, cid, topic, 2)
    _publish_one(broker.port, topic, b"exactly once", 2)
    first = c.expect_packet(what="the QoS 2 PUBLISH")
    assert first.first_byte == 0x34, first
    _, pid, _ = first.publish_fields()
    c.abort()  # no PUBREC

    c2 = RawClient(broker.port)
    c2.connect(cid, clean_session=False, session_present=True)
    again = c2.expect_packet(what="the redelivered QoS 2 PUBLISH")
    assert again.raw == publish_packet(topic, b"exactly once", qos=2, packet_id=pid, dup=True), \
        f"expected PUBLISH with DUP=1 (0x3C) and packet id {pid}, got {again}"
    c2.send(ack_packet(PUBREC, pid))
    c2.expect(ack_packet(PUBREL, pid), what="PUBREL")
    c2.abort()  # no PUBCOMP

    c3 = RawClient(broker.port)
    try:
        c3.connect(cid, clean_session=False, session_present=True)
        c3.expect(ack_packet(PUBREL, pid), what="the resent PUBREL (62 02 id)")
        c3.send(ack_packet(PUBCOMP, pid))
        c3.send(PINGREQ_BYTES)
        c3.expect(PINGRESP_BYTES, what="PINGRESP (the message must not be sent again)")
    finally:
        c3.close()


def test_inbound_qos2_exactly_once(broker):
    """Inbound QoS 2: a publisher resending the same packet id with DUP before PUBREL does not
    make the subscriber receive the message twice."""
    topic = unique("in2")
    sub = PahoClient(broker.port).start()
    try:
        # QoS 1 on the subscriber side: paho hands a QoS 2 message to on_message only at
        # PUBREL, which could let the QoS 1 fence overtake it.
        sub.subscribe([(topic, 1)])
        with raw_connected(broker.port) as p:
            p.send(publish_packet(topic, b"once", qos=2, packet_id=77))
            p.expect(ack_packet(PUBREC, 77), what="PUBREC")
            p.send(publish_packet(topic, b"once", qos=2, packet_id=77, dup=True))
            p.expect(ack_packet(PUBREC, 77), what="PUBREC for the duplicate")
            p.send(ack_packet(PUBREL, 77))
            p.expect(ack_packet(PUBCOMP, 77), what="PUBCOMP")
            p.send(publish_packet(topic, b"fence", qos=1, packet_id=78))
            p.expect(ack_packet(PUBACK, 78), what="PUBACK")
        got = []
        while not got or got[-1] != b"fence":
            got.append(sub.get(what="fence").payload)
        assert got == [b"once", b"fence"]
    finally:
        sub.stop()


def test_duplicate_client_id_takes_over(broker):
    """(6) A second CONNECT with the same client id closes the first connection; the new one works."""
    cid = unique("dup")
    topic = unique("dupt")
    old = raw_connected(broker.port, cid)
    new = raw_connected(broker.port, cid)
    try:
        old.assert_closed(5, "(the taken-over connection)")
        new.subscribe(3, [(topic, 1)])
        new.send(publish_packet(topic, b"still here", qos=1, packet_id=4))
        got = {new.expect_packet().raw, new.expect_packet().raw}
        assert got == {ack_packet(PUBACK, 4), publish_packet(topic, b"still here", qos=1, packet_id=got_pid(got))}
        new.send(PINGREQ_BYTES)
        new.expect(PINGRESP_BYTES)
    finally:
        old.close()
        new.close()


def got_pid(raws: set[bytes]) -> int:
    """The packet id of the PUBLISH among ``raws`` (the broker picks its own outbound ids)."""
    for raw in raws:
        if raw[0] >> 4 == PUBLISH:
            tlen = int.from_bytes(raw[2:4], "big")
            return int.from_bytes(raw[4 + tlen:6 + tlen], "big")
    raise AssertionError(f"no PUBLISH among {[r.hex(' ') for r in raws]}")


def test_duplicate_client_id_paho(broker):
    """Takeover with paho: the first client is told (on_disconnect), the second keeps working."""
    cid = unique("dupp")
    topic = unique("dp")
    first = PahoClient(broker.port, client_id=cid).start()
    second = PahoClient(broker.port, client_id=cid).start()
    try:
        assert first.disconnected.wait(5), "first client was not disconnected by the takeover"
        second.subscribe([(topic, 1)])
        second.publish(topic, b"ok", qos=1)
        assert second.get().payload == b"ok"
    finally:
        first.stop()
        second.stop()
