"""Publish/subscribe basics with real clients: QoS levels, retained messages, wildcards, SUBACK QoS."""

from __future__ import annotations

import pytest

from helpers import (
    ConnectionClosed,
    MosquittoSub,
    PahoClient,
    barrier_publish,
    mosquitto_pub,
    raw_connected,
    subscribe_packet,
    suback_bytes,
    unique,
)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mosquitto_clients_exact_payload(broker, tmp_path, qos):
    """(1) mosquitto_pub -> broker -> mosquitto_sub at QoS q: every message arrives, byte for byte."""
    topic = unique("qos") + "/data"
    binary = bytes(range(256)) + b"\x00\xff" * 100  # NUL and high bytes, via a file
    binary_file = tmp_path / "payload.bin"
    binary_file.write_bytes(binary)

    sub = MosquittoSub(broker.port, [topic], qos=qos, extra=["-C", "3", "-W", "20"])
    try:
        sub.wait_subscribed()
        mosquitto_pub(broker.port, topic, message="héllo wörld".encode(), qos=qos)
        mosquitto_pub(broker.port, topic, file=str(binary_file), qos=qos)
        mosquitto_pub(broker.port, topic, null=True, qos=qos)
        got = sub.messages(3, timeout=10)
        assert [m.payload for m in got] == ["héllo wörld".encode(), binary, b""]
        assert all(m.topic == topic and m.qos == qos and not m.retain for m in got), got
        assert sub.wait_exit(10) == 0
    finally:
        sub.kill()


def test_qos_is_min_of_publish_and_subscription(broker):
    """A QoS 2 publish to a QoS 1 subscription arrives at QoS 1; a QoS 0 publish at QoS 0."""
    topic = unique("downgrade")
    sub = PahoClient(broker.port).start()
    pub = PahoClient(broker.port).start()
    try:
        assert sub.subscribe([(topic, 1)]) == [1]
        pub.publish(topic, b"two", qos=2)
        pub.publish(topic, b"zero", qos=0, timeout=None)
        got = sub.get_n(2)
        assert [(m.payload, m.qos) for m in got] == [(b"two", 1), (b"zero", 0)]
    finally:
        pub.stop()
        sub.stop()


def test_retained_set_replace_clear(broker):
    """(2) A retained message is kept, replaced by the next one, sent to new subscribers with
    RETAIN=1 (and to existing subscribers with RETAIN=0), and cleared by an empty retained payload."""
    topic = unique("retained") + "/state"
    fence = unique("fence")

    mosquitto_pub(broker.port, topic, message=b"v1", qos=1, retain=True)
    mosquitto_pub(broker.port, topic, message=b"v2", qos=1, retain=True)

    # A new subscriber gets the latest retained value, flagged as retained.
    sub = MosquittoSub(broker.port, [topic], qos=1, extra=["-C", "1", "-W", "10"])
    try:
        (msg,) = sub.messages(1, timeout=10)
        assert (msg.topic, msg.payload, msg.retain) == (topic, b"v2", True)
    finally:
        sub.kill()

    live = PahoClient(broker.port).start()
    try:
        live.subscribe([(topic, 1), (fence, 1)])
        first = live.get(what="retained v2")
        assert (first.payload, first.retain) == (b"v2", True)
        # An established subscription gets a retained publish with RETAIN=0 (MQTT-3.3.1-9).
        mosquitto_pub(broker.port, topic, message=b"v3", qos=1, retain=True)
        m = live.get(what="live v3")
        assert (m.payload, m.retain) == (b"v3", False)

        # Clear it.
        mosquitto_pub(broker.port, topic, null=True, qos=1, retain=True)
        live.get(what="the empty clearing message (delivered like any publish)")
    finally:
        live.stop()

    # A later subscriber gets nothing: publish a fence after the SUBACK and make sure
    # nothing arrived before it.
    late = PahoClient(broker.port).start()
    try:
        late.subscribe([(topic, 1), (fence, 1)])
        before = barrier_publish(broker.port, late, fence)
        assert before == [], f"cleared retained message still delivered: {before}"
    finally:
        late.stop()


def test_retained_via_wildcard_subscription(broker):
    """Retained messages on several topics are all delivered to a matching wildcard subscription."""
    base = unique("rw")
    for i in range(3):
        mosquitto_pub(broker.port, f"{base}/dev{i}/temp", message=f"t{i}".encode(), qos=1, retain=True)
    sub = PahoClient(broker.port).start()
    try:
        sub.subscribe([(f"{base}/+/temp", 1)])
        got = sub.get_n(3)
        assert sorted((m.topic, m.payload) for m in got) == [
            (f"{base}/dev{i}/temp", f"t{i}".encode()) for i in range(3)]
        assert all(m.retain for m in got)
    finally:
        sub.stop()


def test_wildcards_and_dollar_topics(broker):
    """(8) `+` matches one level, `#` matches the parent and every level below; `$`-topics are
    not matched by `#` or `+/...` at the first level, but `$app/#` matches them."""
    p = unique("wc")
    filters = {
        "plus": f"{p}/+/x",
        "hash": f"{p}/#",
        "root_hash": "#",
        "root_plus": "+/a/x",
        "dollar": "$app/#",
    }
    subs = {name: PahoClient(broker.port).start() for name in filters}
    pub = PahoClient(broker.port).start()
    try:
        for name, f in filters.items():
            assert subs[name].subscribe([(f, 1)]) == [1]

        published = [f"{p}/a/x", f"{p}/a/b/x", p, f"{p}/a", "$app/x", "$app/a/x"]
        for topic in published:
            pub.publish(topic, topic.encode(), qos=1)
        # One fence per subscriber, on a topic only it needs; fences are filtered out below.
        fences = {"plus": f"{p}/fence/x", "hash": f"{p}/fence", "root_hash": "fence",
                  "root_plus": "fence/a/x", "dollar": "$app/fence"}
        for topic in fences.values():
            pub.publish(topic, b"FENCE:" + topic.encode(), qos=1)

        got: dict[str, list[str]] = {}
        for name, sub in subs.items():
            topics = []
            while True:
                m = sub.get(what=f"fence for {filters[name]!r}")
                if m.payload == b"FENCE:" + fences[name].encode():
                    break
                if not m.payload.startswith(b"FENCE:"):
                    topics.append(m.topic)
            got[name] = topics

        assert got["plus"] == [f"{p}/a/x"]
        assert got["hash"] == [f"{p}/a/x", f"{p}/a/b/x", p, f"{p}/a"]
        assert got["root_hash"] == [f"{p}/a/x", f"{p}/a/b/x", p, f"{p}/a"], "`#` must not match $-topics"
        assert got["root_plus"] == [f"{p}/a/x"], "`+/a/x` must not match $app/a/x"
        assert got["dollar"] == ["$app/x", "$app/a/x"]
    finally:
        pub.stop()
        for s in subs.values():
            s.stop()


def test_suback_granted_qos_capped_by_max_qos(make_broker):
    """(9) With mqtt.max_qos 1, SUBACK grants min(requested, 1); QoS 2 messages arrive at QoS 1."""
    b = make_broker(mqtt={"max_qos": 1})
    topic = unique("maxqos")
    with raw_connected(b.port) as c:
        c.send(subscribe_packet(7, [(topic + "/a", 2), (topic + "/b", 1), (topic + "/c", 0)]))
        c.expect(suback_bytes(7, [1, 1, 0]), what="SUBACK with QoS capped at 1")


def test_suback_granted_qos_default(broker):
    """With max_qos 2 every requested QoS is granted as asked, in order."""
    topic = unique("grant")
    with raw_connected(broker.port) as c:
        c.send(subscribe_packet(0x1234, [(topic + "/a", 2), (topic + "/b", 0), (topic + "/c", 1)]))
        c.expect(suback_bytes(0x1234, [2, 0, 1]), what="SUBACK")


def test_invalid_subscription_filter_rejected(broker):
    """A filter with `#` not last (`a/#/b`) is malformed: SUBACK 0x80 for it or the connection closed."""
    topic = unique("bad")
    with raw_connected(broker.port) as c:
        c.send(subscribe_packet(9, [(topic + "/#/b", 0), (topic + "/ok", 1)]))
        try:
            packet = c.read_packet(5.0)
        except ConnectionClosed:
            return  # closing the connection is allowed (MQTT-4.8.0-1)
        assert packet.raw == suback_bytes(9, [0x80, 1]), packet
