"""MQTT 5: Session Expiry Interval and Message Expiry Interval, with paho-mqtt (MQTTv5).

The expiry tests are the only ones that wait on purpose: each waits out one short interval
(1 s plus the broker's timer granularity) once, then checks the result.
"""

from __future__ import annotations

import time

from helpers import PahoV5Client, unique


def persistent(port: int, client_id: str, expiry: int) -> PahoV5Client:
    """A paho v5 client with Clean Start 0 and the given Session Expiry Interval."""
    return PahoV5Client(port, client_id, clean_start=False, session_expiry=expiry)


def publish_qos1(port: int, topic: str, payloads: list[bytes], properties: list[dict] | None = None) -> None:
    pub = PahoV5Client(port, unique("pub")).start()
    try:
        for i, payload in enumerate(payloads):
            pub.publish(topic, payload, qos=1, properties=properties[i] if properties else None)
    finally:
        pub.stop()


def assert_nothing_queued(c: PahoV5Client, topic: str) -> None:
    """Subscribe ``c`` to ``topic`` and publish a fence: nothing may arrive before it."""
    assert c.subscribe(topic, 1) == [1]
    fence = unique("fence").encode()
    publish_qos1(c.port, topic, [fence])
    before = c.until(fence)
    assert before == [], f"delivered from an ended session: {before}"


def test_session_resumed_before_expiry(broker):
    """Session Expiry 30 s, Clean Start 0: QoS 1 messages published while offline are delivered,
    in order, on a reconnect within the interval, and CONNACK says Session Present."""
    cid, topic = unique("se"), unique("se/t")
    c = persistent(broker.port, cid, 30).start()
    assert c.connack == (False, 0)
    assert c.subscribe(topic, 1) == [1]
    c.stop()

    payloads = [f"m{i}".encode() for i in range(3)]
    publish_qos1(broker.port, topic, payloads)

    c2 = persistent(broker.port, cid, 30).start()
    try:
        assert c2.connack == (True, 0), "reconnect within the Session Expiry Interval must resume the session"
        got = c2.get_n(3)
        assert [m.payload for m in got] == payloads
        assert all(m.topic == topic and m.qos == 1 for m in got)
    finally:
        c2.stop()


def test_session_gone_after_expiry(broker):
    """Session Expiry 1 s: after the interval has passed the session (subscription and queued
    messages) is gone: Session Present 0 and nothing is delivered."""
    cid, topic = unique("sx"), unique("sx/t")
    c = persistent(broker.port, cid, 1).start()
    assert c.subscribe(topic, 1) == [1]
    c.stop()
    publish_qos1(broker.port, topic, [b"queued-then-expired"])
    # The one deliberate wait: the 1 s interval plus up to 1 s of expiry-timer granularity.
    time.sleep(2.2)

    c2 = persistent(broker.port, cid, 1).start()
    try:
        assert c2.connack == (False, 0), "session must have expired"
        assert_nothing_queued(c2, topic)
    finally:
        c2.stop()


def test_session_expiry_zero_ends_at_disconnect(broker):
    """Session Expiry 0 (the default) with Clean Start 0: the session ends with the connection."""
    cid, topic = unique("s0"), unique("s0/t")
    c = persistent(broker.port, cid, 0).start()
    assert c.subscribe(topic, 1) == [1]
    c.stop()
    publish_qos1(broker.port, topic, [b"nobody-home"])

    c2 = persistent(broker.port, cid, 0).start()
    try:
        assert c2.connack == (False, 0), "Session Expiry 0 ends the session at DISCONNECT"
        assert_nothing_queued(c2, topic)
    finally:
        c2.stop()


def test_message_expiry_while_queued(broker):
    """Message Expiry Interval on QoS 1 messages queued for an offline subscriber: the 1 s one
    has expired by the reconnect and is never delivered; the 60 s one is delivered with the
    remaining interval (less than 60, as at least 2 s have passed)."""
    cid, topic = unique("mx"), unique("mx/t")
    c = persistent(broker.port, cid, 60).start()
    assert c.subscribe(topic, 1) == [1]
    c.stop()
    publish_qos1(broker.port, topic, [b"short", b"long", b"fence"],
                 [{"MessageExpiryInterval": 1}, {"MessageExpiryInterval": 60}, {}])
    # The one deliberate wait: the 1 s expiry plus up to 1 s of timer granularity.
    time.sleep(2.2)

    c2 = persistent(broker.port, cid, 60).start()
    try:
        assert c2.connack == (True, 0)
        before = c2.until(b"fence")
        assert [m.payload for m in before] == [b"long"], "the expired message must not be delivered"
        remaining = before[0].properties.get("MessageExpiryInterval")
        assert remaining is not None, f"remaining Message Expiry Interval not forwarded: {before[0].properties}"
        assert 1 <= remaining <= 59, f"remaining interval {remaining}: must be reduced by the >= 2 s queued"
    finally:
        c2.stop()
