"""(issue 5 item 5) Durable broker state: persistent sessions, their subscriptions, queued and in-flight
messages and retained messages survive SIGTERM and ``kill -9``.

Each test starts one gateway with storage on (the default), changes state through real clients, stops
the process (SIGTERM, or SIGKILL), starts it again on the same data directory and port, and checks
what the clients see. The configs are JSON (``storage`` has lists). iotgw only: the mosquitto run of
the suite has persistence off.
"""

from __future__ import annotations

import signal
import sqlite3
import time

import pytest

from helpers import (P_SESSION_EXPIRY, PINGREQ_BYTES, PINGRESP_BYTES, PUBCOMP, PUBLISH, PUBACK, PUBREC, PUBREL, PahoClient,
                     PahoV5Client, RawClient, RawClient5, ack5_packet, barrier_publish, rss_kib, ack_packet, is_mosquitto,
                     parse_ack5, publish5_packet, raw_connected, stop_all, unique, wait_until)
from test_storage import LoadDriver, acknowledged, db_path

pytestmark = pytest.mark.skipif(is_mosquitto(), reason="iotgw only: durable sessions in the gateway's database")


def durable_broker(make_broker, **overrides):
    overrides.setdefault("storage", {})
    return make_broker(config_format="json", **overrides)


def restart(b, sig: int = signal.SIGTERM) -> None:
    """Stop the gateway with ``sig`` and start it again on the same data directory and port."""
    b.signal(sig)
    rc = b.wait(20)
    assert rc is not None, "gateway did not exit"
    if sig == signal.SIGTERM:
        assert rc == 0, f"SIGTERM exit status {rc}\n{b.log_tail()}"
    b.start()


def db_rows(b, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
    con = sqlite3.connect(str(db_path(b)), timeout=5, isolation_level=None)
    try:
        con.row_factory = sqlite3.Row
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


# --------------------------------------------------------------------------------------
# (a) SIGTERM


def test_sigterm_restart_delivers_queued_messages_to_311_and_v5_persistent_subscribers(make_broker):
    """A 3.1.1 clean-session-0 subscriber and an MQTT 5 subscriber with Session Expiry subscribe at QoS 1
    and go away; QoS 1 messages are published; SIGTERM and restart; both reconnect and get every
    message in order with session present = 1."""
    b = durable_broker(make_broker)
    topic = unique("dur")
    cid3, cid5 = unique("p311"), unique("p5")
    sub3 = PahoClient(b.port, client_id=cid3, clean_session=False).start()
    assert sub3.subscribe([(topic, 1)]) == [1]
    sub3.stop()
    sub5 = PahoV5Client(b.port, client_id=cid5, clean_start=False, session_expiry=3600).start()
    assert sub5.subscribe(topic, qos=1) == [1]
    sub5.stop()

    sent = [f"m{i:03d}".encode() for i in range(40)]
    pub = PahoClient(b.port).start()
    try:
        for payload in sent:
            pub.publish(topic, payload, qos=1)
    finally:
        pub.stop()

    restart(b, signal.SIGTERM)

    again3 = PahoClient(b.port, client_id=cid3, clean_session=False).start()
    again5 = PahoV5Client(b.port, client_id=cid5, clean_start=False, session_expiry=3600).start()
    try:
        assert again3.connack == (True, 0), f"3.1.1: expected session present = 1, got {again3.connack}"
        assert again5.connack[0] is True, f"MQTT 5: expected session present = 1, got {again5.connack}"
        got3 = again3.get_n(len(sent), timeout=15)
        got5 = again5.get_n(len(sent), timeout=15)
        assert [m.payload for m in got3] == sent
        assert [m.payload for m in got5] == sent
        assert all(m.qos == 1 for m in got3 + got5)
        # The subscription itself survived too: a message published now arrives.
        live = PahoClient(b.port).start()
        try:
            live.publish(topic, b"after restart", qos=1)
        finally:
            live.stop()
        assert again3.get(what="live message").payload == b"after restart"
        assert again5.get(what="live message").payload == b"after restart"
    finally:
        stop_all([again3, again5])


# --------------------------------------------------------------------------------------
# (b) kill -9 under load, ack: persisted


def test_kill9_under_load_every_puback_reaches_the_persistent_subscriber(make_broker):
    """50 publishers publish QoS 1 with ack: persisted to a topic a persistent (offline) subscriber
    holds; SIGKILL mid-stream; after restart the subscriber receives every PUBACKed message, each
    publisher's messages in order."""
    b = durable_broker(make_broker, storage={"ack": "persisted"},
                       limits={"max_queued_messages": 100000, "max_queued_bytes": 64 * 1048576})
    topic = unique("k9")
    cid = unique("k9sub")
    sub = PahoClient(b.port, client_id=cid, clean_session=False).start()
    assert sub.subscribe([(topic, 1)]) == [1]
    sub.stop()

    pubs: list[PahoClient] = []
    driver = None
    try:
        for i in range(50):
            pubs.append(PahoClient(b.port, client_id=f"{topic}-c{i}").start())
        driver = LoadDriver(pubs, topic)
        t0 = time.monotonic()
        driver.start()
        wait_until(lambda: driver.acked() >= 1500 or time.monotonic() - t0 > 8, 10, message="load before the kill")
        b.signal(signal.SIGKILL)
        elapsed = time.monotonic() - t0
        assert b.wait(5) is not None, "gateway still running after SIGKILL"
        driver.stop()
        assert driver.error is None, f"publisher driver failed: {driver.error!r}"
    finally:
        if driver is not None:
            driver.stop()
        stop_all(pubs)
    acked = [p for p, info in driver.records if acknowledged(info)]
    assert len(acked) > 100, f"only {len(acked)} acknowledged before the kill: too little load"

    b.start()
    again = PahoClient(b.port, client_id=cid, clean_session=False).start()
    try:
        assert again.connack == (True, 0), f"expected session present = 1, got {again.connack}"
        want = set(acked)
        got: list[bytes] = []
        deadline = time.monotonic() + 60
        while not want.issubset(got) and time.monotonic() < deadline:
            try:
                got.append(again.messages.get(timeout=max(deadline - time.monotonic(), 0.001)).payload)
            except Exception:
                break
        missing = want - set(got)
        print(f"kill -9 with a persistent subscriber: {len(driver.records)} published, {len(acked)} acknowledged "
              f"in {elapsed:.2f}s ({len(acked) / elapsed:.0f} acked msg/s); delivered after restart: {len(got)}; "
              f"acknowledged but missing: {len(missing)}")
        assert not missing, f"{len(missing)} PUBACKed messages never delivered, e.g. {sorted(missing)[:5]}"
        # Per publisher, the order of publication is kept.
        last: dict[str, int] = {}
        for payload in got:
            client, seq = payload.decode().split("-")
            assert int(seq) > last.get(client, -1), f"{client}: {payload!r} out of order"
            last[client] = int(seq)
    finally:
        again.stop()


# --------------------------------------------------------------------------------------
# (c) in flight


def test_kill9_inflight_qos1_redelivered_with_dup_and_same_packet_ids(make_broker):
    """A raw subscriber receives QoS 1 messages and never PUBACKs; kill -9 and restart; on reconnect it
    gets them again with DUP=1 and the packet ids it saw before."""
    b = durable_broker(make_broker)
    cid, topic = unique("infl"), unique("inflt")
    c = raw_connected(b.port, cid, clean_session=False)
    c.subscribe(1, [(topic, 1)])
    pub = PahoClient(b.port).start()
    try:
        for i in range(3):
            pub.publish(topic, f"pending{i}".encode(), qos=1)
    finally:
        pub.stop()
    first = []
    for i in range(3):
        p = c.expect_packet(what=f"PUBLISH {i}")
        assert p.type == PUBLISH and not p.dup, p
        first.append(p.publish_fields())
    assert [f[2] for f in first] == [b"pending0", b"pending1", b"pending2"]
    # The "sent with packet id" state is write-behind: wait until it is in the database.
    wait_until(lambda: len(db_rows(b, "SELECT seq FROM session_messages WHERE client_id = ? AND state = 1", (cid,))) == 3,
               10, message="in-flight state committed")
    b.signal(signal.SIGKILL)
    assert b.wait(5) is not None
    c.close()

    b.start()
    c2 = RawClient(b.port)
    try:
        c2.connect(cid, clean_session=False, session_present=True)
        again = [c2.expect_packet(what=f"redelivered PUBLISH {i}") for i in range(3)]
        assert all(p.first_byte == 0x3A for p in again), f"expected DUP=1 QoS 1 (0x3A): {again}"
        assert [p.publish_fields() for p in again] == first, "payloads or packet ids changed"
        for _, pid, _ in first:
            c2.send(ack_packet(PUBACK, pid))
        c2.send(PINGREQ_BYTES)
        c2.expect(PINGRESP_BYTES, what="PINGRESP (nothing else pending)")
    finally:
        c2.close()
    # Acknowledged now: gone from the database (the deletes are batched).
    wait_until(lambda: not db_rows(b, "SELECT seq FROM session_messages WHERE client_id = ?", (cid,)), 10,
               message="acknowledged rows deleted")


def test_kill9_inbound_qos2_awaiting_pubrel_is_not_routed_twice(make_broker):
    """An MQTT 5 publisher with a persistent session sends two QoS 2 messages and gets both PUBRECs; kill -9
    before its PUBRELs. After the restart it sends the first again with DUP (as a client that missed the
    PUBREC would): acknowledged, not routed again. Both PUBRELs are known (PUBCOMP 0x00, not 0x92
    "packet identifier not found"), the persistent subscriber gets each message once, and the
    telemetry table holds each once."""
    b = durable_broker(make_broker)
    pub_id, sub_id, topic = unique("q2pub"), unique("q2sub"), unique("q2t")
    sub = PahoV5Client(b.port, client_id=sub_id, clean_start=False, session_expiry=3600).start()
    assert sub.subscribe(topic, qos=2) == [2]
    sub.stop()
    first = publish5_packet(topic, b"q2-a", qos=2, packet_id=1)
    c = RawClient5(b.port)
    try:
        c.connect5(pub_id, clean_start=False, properties=[(P_SESSION_EXPIRY, 3600)])
        c.send(first)
        c.send(publish5_packet(topic, b"q2-b", qos=2, packet_id=2))
        for packet_id in (1, 2):
            p = c.expect_packet(what=f"PUBREC {packet_id}")
            assert p.type == PUBREC and parse_ack5(p)[:2] == (packet_id, 0), p
    finally:
        c.close()
    # ack: persisted: each PUBREC left after its packet id was committed.
    assert {r["packet_id"] for r in db_rows(b, "SELECT packet_id FROM session_inbound_qos2 WHERE client_id = ?", (pub_id,))} == {1, 2}
    b.signal(signal.SIGKILL)
    assert b.wait(5) is not None, "gateway still running after SIGKILL"

    b.start()
    c2 = RawClient5(b.port)
    try:
        assert c2.connect5(pub_id, clean_start=False, properties=[(P_SESSION_EXPIRY, 3600)]).session_present
        c2.send(bytes([first[0] | 0x08]) + first[1:])  # the same PUBLISH with DUP=1
        p = c2.expect_packet(what="PUBREC of the retransmission")
        assert p.type == PUBREC and parse_ack5(p)[:2] == (1, 0), p
        for packet_id in (1, 2):
            c2.send(ack5_packet(PUBREL, packet_id))
            p = c2.expect_packet(what=f"PUBCOMP {packet_id}")
            assert p.type == PUBCOMP and parse_ack5(p)[:2] == (packet_id, 0), f"PUBREL {packet_id} after the restart: {p}"
    finally:
        c2.close()
    wait_until(lambda: not db_rows(b, "SELECT packet_id FROM session_inbound_qos2 WHERE client_id = ?", (pub_id,)), 10,
               message="released exchanges deleted from the database")
    again = PahoV5Client(b.port, client_id=sub_id, clean_start=False, session_expiry=3600).start()
    fence = PahoV5Client(b.port, client_id=unique("q2fence")).start()
    try:
        assert again.connack == (True, 0), again.connack
        fence.publish(topic, b"fence", qos=2)
        assert [m.payload for m in again.until(b"fence", timeout=20)] == [b"q2-a", b"q2-b"]
    finally:
        stop_all([again, fence])
    stored = [bytes(r["payload"]) for r in db_rows(b, "SELECT payload FROM messages WHERE topic = ? ORDER BY id", (topic,))]
    assert stored == [b"q2-a", b"q2-b", b"fence"], stored


# --------------------------------------------------------------------------------------
# (d) retained


def test_kill9_retained_survives_and_cleared_stays_cleared(make_broker):
    b = durable_broker(make_broker)
    base = unique("ret")
    pub = PahoClient(b.port).start()
    try:
        pub.publish(f"{base}/kept", b"kept value", qos=1, retain=True)
        pub.publish(f"{base}/cleared", b"old value", qos=1, retain=True)
        pub.publish(f"{base}/cleared", b"", qos=1, retain=True)
    finally:
        pub.stop()
    # ack: persisted: each PUBACK waited for the retained change to commit, so kill -9 loses none.
    b.signal(signal.SIGKILL)
    assert b.wait(5) is not None
    b.start()
    with raw_connected(b.port) as c:
        c.subscribe(1, [(f"{base}/#", 1)])
        p = c.expect_packet(what="the retained message")
        topic, _, payload = p.publish_fields()
        assert (topic, payload, p.retain) == (f"{base}/kept", b"kept value", True)
        c.send(PINGREQ_BYTES)
        c.expect(PINGRESP_BYTES, what="PINGRESP (the cleared retained message must not come back)")


# --------------------------------------------------------------------------------------
# (e) expiry


def test_expired_session_is_gone_after_restart(make_broker):
    """An MQTT 5 session with a 4 s expiry whose client left before the restart is expired when the
    gateway comes back 5 s later (its disconnect time is stored as wall-clock time). 4 s, not 1 s: the
    session must still be there (not yet expired by the running gateway) when the SIGTERM stores it."""
    b = durable_broker(make_broker)
    cid, keep, topic = unique("exp"), unique("keep"), unique("expt")
    short = PahoV5Client(b.port, client_id=cid, clean_start=False, session_expiry=4).start()
    short.subscribe(topic, qos=1)
    short.stop()
    long = PahoV5Client(b.port, client_id=keep, clean_start=False, session_expiry=3600).start()
    long.subscribe(topic, qos=1)
    long.stop()
    b.signal(signal.SIGTERM)
    assert b.wait(20) == 0
    stopped = time.monotonic()
    rows = {r["client_id"] for r in db_rows(b, "SELECT client_id FROM sessions")}
    assert {cid, keep} <= rows, f"both sessions must be stored at shutdown: {rows}"
    # The expiry is what is under test: let it pass while the gateway is down.
    wait_until(lambda: time.monotonic() - stopped > 5.0, 10, message="expiry to pass")
    b.start()
    wait_until(lambda: cid not in {r["client_id"] for r in db_rows(b, "SELECT client_id FROM sessions")}, 10,
               message="expired session deleted from the database")
    assert not db_rows(b, "SELECT * FROM subscriptions WHERE client_id = ?", (cid,))
    gone = PahoV5Client(b.port, client_id=cid, clean_start=False, session_expiry=1).start()
    kept = PahoV5Client(b.port, client_id=keep, clean_start=False, session_expiry=3600).start()
    try:
        assert gone.connack[0] is False, f"expired session must not be present: {gone.connack}"
        assert kept.connack[0] is True, f"unexpired session must be present: {kept.connack}"
    finally:
        stop_all([gone, kept])


# --------------------------------------------------------------------------------------
# Start-up load: time and bounds


def test_startup_load_of_many_sessions_is_bounded_and_timed(make_broker):
    """Rows for LOAD_SESSIONS offline sessions (each with a subscription and LOAD_PER_SESSION queued
    QoS 1 messages) plus one session whose stored queue is over ``limits.max_queued_messages`` are
    written straight into the database; the gateway loads them before it listens, cuts the long queue
    to the limit (counted), and a client of each kind gets exactly its messages."""
    import os
    sessions = int(os.environ.get("IOTGW_LOAD_SESSIONS", "2000"))
    per_session = int(os.environ.get("IOTGW_LOAD_PER_SESSION", "5"))
    limit = max(per_session, 40)  # at least limits.max_inflight (32)
    b = durable_broker(make_broker, limits={"max_queued_messages": limit})
    b.signal(signal.SIGTERM)
    assert b.wait(20) == 0
    now_ms = int(time.time() * 1000)
    con = sqlite3.connect(str(db_path(b)), isolation_level=None)
    try:
        con.execute("BEGIN")
        seq = 0
        for s in range(sessions + 1):
            cid = f"load-{s}"
            count = per_session if s < sessions else limit * 3
            con.execute("INSERT INTO sessions (client_id, expiry_interval, disconnected_at, updated_at) VALUES (?, ?, ?, ?)",
                        (cid, 3600.0, now_ms, now_ms))
            con.execute("INSERT INTO subscriptions (client_id, topic_key, topic_filter, share_group, qos, no_local, "
                        "retain_as_published, retain_handling, subscription_id) VALUES (?, ?, ?, NULL, 1, 0, 0, 0, NULL)",
                        (cid, f"load/{s}", f"load/{s}"))
            for i in range(count):
                seq += 1
                con.execute("INSERT INTO session_messages (seq, client_id, state, packet_id, qos, retain, topic, payload, "
                            "message_qos, message_retain, properties, publisher, expires_at, subscription_ids, "
                            "share_group, share_filter) VALUES (?, ?, 0, NULL, 1, 0, ?, ?, 1, 0, NULL, 'p', NULL, NULL, "
                            "NULL, NULL)", (seq, cid, f"load/{s}", f"{s}:{i}".encode() + b"x" * 64))
        con.execute("COMMIT")
    finally:
        con.close()
    b.start(timeout=60)
    log = b.log_path.read_text(errors="replace")
    line = [ln for ln in log.splitlines() if "session store loaded" in ln][-1]
    restored = [ln for ln in log.splitlines() if "restored broker state" in ln][-1]
    print(f"start-up load: {sessions + 1} sessions, {seq} stored messages: {line.split('] ')[0]}], "
          f"RSS after load {rss_kib(b.pid) / 1024:.0f} MiB")
    assert f"iotgw.restore.sessions={sessions + 1}" in restored, restored
    assert f"iotgw.restore.dropped={limit * 2}" in restored, restored
    first = PahoClient(b.port, client_id="load-0", clean_session=False).start()
    long = PahoClient(b.port, client_id=f"load-{sessions}", clean_session=False).start()
    try:
        assert first.connack == (True, 0) and long.connack == (True, 0)
        assert [m.payload.split(b"x")[0] for m in first.get_n(per_session, timeout=10)] == \
            [f"0:{i}".encode() for i in range(per_session)]
        got = long.get_n(limit, timeout=10)
        assert [m.payload.split(b"x")[0] for m in got] == [f"{sessions}:{i}".encode() for i in range(limit)], \
            "the oldest messages are kept"
        stray = barrier_publish(b.port, long, f"load/{sessions}")
        assert stray == [], f"messages over the limit were delivered: {len(stray)}"
    finally:
        stop_all([first, long])


def test_kill9_keeps_mqtt5_properties_subscription_identifiers_and_shared_subscriptions(make_broker):
    """MQTT 5: an offline session with a subscription identifier and a shared subscription; messages
    with user properties and a content type; kill -9 and restart: the queued messages come back with
    their properties and the subscription identifier, and the shared subscription still routes."""
    b = durable_broker(make_broker)
    cid, topic, shared_topic = unique("p5"), unique("p5t"), unique("p5s")
    sub = PahoV5Client(b.port, client_id=cid, clean_start=False, session_expiry=3600).start()
    assert sub.subscribe(topic, qos=1, subscription_id=77) == [1]
    assert sub.subscribe(f"$share/grp/{shared_topic}", qos=1) == [1]
    sub.stop()
    pub = PahoV5Client(b.port).start()
    try:
        pub.publish(topic, b"with props", qos=1,
                    properties={"UserProperty": [("k", "v")], "ContentType": "text/plain"})
        pub.publish(shared_topic, b"to the group", qos=1)
    finally:
        pub.stop()
    b.signal(signal.SIGKILL)
    assert b.wait(5) is not None
    b.start()
    again = PahoV5Client(b.port, client_id=cid, clean_start=False, session_expiry=3600).start()
    try:
        assert again.connack[0] is True, again.connack
        got = again.get_n(2, timeout=10)
        assert [m.payload for m in got] == [b"with props", b"to the group"]
        props = got[0].properties
        assert props.get("ContentType") == "text/plain", props
        assert ("k", "v") in list(props.get("UserProperty", [])), props
        assert props.get("SubscriptionIdentifier") == [77], props
        live = PahoV5Client(b.port).start()
        try:
            live.publish(shared_topic, b"live to the group", qos=1)
        finally:
            live.stop()
        assert again.get(what="a live message through the restored shared subscription").payload == b"live to the group"
    finally:
        again.stop()
