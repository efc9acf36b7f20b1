"""MQTT 5: topic aliases in both directions and Receive Maximum, on raw sockets (exact packet
fields), paho-mqtt (MQTTv5) and ``mosquitto_sub -V 5``."""

from __future__ import annotations

import pytest

from helpers import (
    P_RECEIVE_MAXIMUM,
    PUBACK,
    P_TOPIC_ALIAS,
    P_TOPIC_ALIAS_MAXIMUM,
    PUBCOMP,
    PUBREC,
    PUBREL,
    MosquittoSub,
    PahoV5Client,
    RawClient5,
    ack5_packet,
    iotgw_only,
    is_mosquitto,
    parse_ack5,
    prop,
    publish5_packet,
    raw5_connected,
    unique,
)

SILENCE = 0.5  # seconds a test listens to assert that nothing (more) arrives


def test_topic_alias_client_to_server(broker):
    """A client sets Topic Alias 1 with a topic, then publishes with alias 1 and an empty topic:
    the subscriber receives both on the full topic (and no alias, having advertised none)."""
    topic = unique("alias/in")
    sub = PahoV5Client(broker.port, unique("sub")).start()
    pub = PahoV5Client(broker.port, unique("pub")).start()
    try:
        assert (pub.connack_properties.get("TopicAliasMaximum") or 0) >= 1
        assert sub.subscribe(topic, 1) == [1]
        pub.publish(topic, b"first", qos=1, properties={"TopicAlias": 1})
        pub.publish("", b"second", qos=1, properties={"TopicAlias": 1})
        got = sub.get_n(2)
        assert [(m.topic, m.payload) for m in got] == [(topic, b"first"), (topic, b"second")]
        assert all("TopicAlias" not in m.properties for m in got), "alias sent to a client that allows none"
    finally:
        pub.stop()
        sub.stop()


def test_topic_alias_server_to_client_raw(broker):
    """A subscriber that advertises Topic Alias Maximum 5 receives repeated messages on one topic:
    the first PUBLISH names the topic and sets an alias, the later ones carry that alias and an
    empty topic name (raw bytes), and resolving the aliases gives the full topic every time.

    The resolving is done here: neither paho-mqtt 2.2 nor libmosquitto 2.0.11 (mosquitto_sub
    with ``-D connect topic-alias-maximum``) resolves aliases the server sends; libmosquitto
    drops the connection with a protocol error on the first aliased PUBLISH (measured)."""
    iotgw_only("mosquitto 2.0.11 never uses topic aliases towards clients")
    topic = unique("alias/out")
    with raw5_connected(broker.port, properties=[(P_TOPIC_ALIAS_MAXIMUM, 5)]) as sub:
        assert sub.subscribe5(1, [(topic, 1)]) == [1]
        pub = PahoV5Client(broker.port, unique("pub")).start()
        try:
            for i in range(3):
                pub.publish(topic, f"m{i}".encode(), qos=1)
        finally:
            pub.stop()
        got = []
        for _ in range(3):
            m = sub.expect_publish5()
            sub.send(ack5_packet(PUBACK, m.packet_id))
            got.append(m)
    assert [m.payload for m in got] == [b"m0", b"m1", b"m2"]
    alias = prop(got[0].properties, P_TOPIC_ALIAS)
    assert got[0].topic == topic, "the first PUBLISH must carry the topic name"
    assert alias is not None and 1 <= alias <= 5, f"no usable alias on the first PUBLISH: {got[0]}"
    aliases = {}
    for m in got:
        a = prop(m.properties, P_TOPIC_ALIAS)
        if m.topic:
            aliases[a] = m.topic
        assert aliases.get(a) == topic, f"alias {a} does not resolve to {topic!r}: {m}"
    for m in got[1:]:
        assert (m.topic, prop(m.properties, P_TOPIC_ALIAS)) == ("", alias), f"alias not used: {m}"


def test_no_topic_alias_to_clients_that_allow_none(broker):
    """Clients that send no Topic Alias Maximum (paho MQTTv5, ``mosquitto_sub -V 5``) get the
    full topic name on every one of several messages on one topic."""
    topic = unique("alias/none")
    msub = MosquittoSub(broker.port, [topic], qos=1, extra=["-V", "5"])
    psub = PahoV5Client(broker.port, unique("psub")).start()
    pub = PahoV5Client(broker.port, unique("pub")).start()
    try:
        msub.wait_subscribed()
        assert psub.subscribe(topic, 1) == [1]
        payloads = [f"m{i}".encode() for i in range(4)]
        for p in payloads:
            pub.publish(topic, p, qos=1)
        assert [(m.topic, m.payload) for m in msub.messages(4)] == [(topic, p) for p in payloads]
        got = psub.get_n(4)
        assert [(m.topic, m.payload) for m in got] == [(topic, p) for p in payloads]
        assert all("TopicAlias" not in m.properties for m in got)
    finally:
        pub.stop()
        psub.stop()
        msub.kill()


def test_topic_alias_above_maximum_disconnects_0x94(broker):
    """A PUBLISH with a Topic Alias above the server's advertised Topic Alias Maximum gets
    DISCONNECT 0x94 (Topic Alias invalid) and the connection is closed."""
    with RawClient5(broker.port) as c:
        ack = c.connect5(unique("alias"))
        maximum = prop(ack.properties, P_TOPIC_ALIAS_MAXIMUM, 0)
        c.send(publish5_packet(unique("alias/bad"), b"x", properties=[(P_TOPIC_ALIAS, maximum + 1)]))
        reason, _ = c.expect_disconnect(what=f"after Topic Alias {maximum + 1} (maximum {maximum})")
    assert reason == 0x94


@pytest.mark.parametrize("qos", [1, 2])
def test_receive_maximum_honoured(broker, qos):
    """A subscriber with Receive Maximum 2 that does not acknowledge has exactly 2 PUBLISHes
    outstanding; completing one (PUBACK, or PUBREC+PUBREL+PUBCOMP for QoS 2) lets exactly one
    more through. For QoS 2 the slot is freed only by PUBCOMP, not by PUBREC."""
    topic = unique(f"rm{qos}")
    with raw5_connected(broker.port, properties=[(P_RECEIVE_MAXIMUM, 2)]) as sub:
        assert sub.subscribe5(1, [(topic, qos)]) == [qos]
        pub = PahoV5Client(broker.port, unique("pub")).start()
        try:
            for i in range(5):
                pub.publish(topic, f"m{i}".encode(), qos=qos)
        finally:
            pub.stop()

        first = [sub.expect_publish5() for _ in range(2)]
        assert [m.payload for m in first] == [b"m0", b"m1"] and all(m.qos == qos for m in first)
        extra = sub.publishes_within(SILENCE)
        assert extra == [], f"more than Receive Maximum (2) unacknowledged: {extra}"

        pid = first[0].packet_id
        if qos == 1:
            sub.send(ack5_packet(PUBACK, pid))
        else:
            sub.send(ack5_packet(PUBREC, pid))
            rel = sub.expect_packet(what="PUBREL")
            assert rel.type == PUBREL and parse_ack5(rel)[:2] == (pid, 0), f"expected PUBREL {pid}: {rel!r}"
            early = sub.publishes_within(SILENCE)
            assert early == [], f"PUBREC alone must not free a Receive Maximum slot: {early}"
            sub.send(ack5_packet(PUBCOMP, pid))

        third = sub.expect_publish5(what="the next PUBLISH after one completed")
        assert third.payload == b"m2"
        more = sub.publishes_within(SILENCE)
        if is_mosquitto():
            # mosquitto 2.0.11 refills the whole window after one acknowledgement (measured: m2
            # and m3 arrive while m1 is still unacknowledged), so the last check is iotgw's.
            return
        assert more == [], f"completing one message let more than one through: {more}"
