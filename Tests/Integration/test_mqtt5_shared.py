"""Shared subscriptions ``$share/GROUP/FILTER``: load split among members, MQTT 3.1.1 members,
and redelivery of a leaving member's unacknowledged messages (paho-mqtt, raw sockets)."""

from __future__ import annotations

import socket
from collections import Counter

from helpers import (
    PUBLISH,
    PahoClient,
    PahoV5Client,
    disconnect5_packet,
    iotgw_only,
    parse_publish5,
    raw5_connected,
    stop_all,
    unique,
    wait_until,
)

N = 30


def collect(members: list, n: int, timeout: float = 10.0) -> list[list[bytes]]:
    """Payloads per member until ``n`` have arrived in total (deadline ``timeout``)."""
    got: list[list[bytes]] = [[] for _ in members]

    def total() -> bool:
        for i, m in enumerate(members):
            got[i] += [r.payload for r in m.drain()]
        return sum(map(len, got)) >= n

    wait_until(total, timeout, message=f"{n} messages across the group")
    return got


def assert_split(got: list[list[bytes]], payloads: list[bytes]) -> None:
    everything = [p for share in got for p in share]
    dupes = [p for p, k in Counter(everything).items() if k > 1]
    assert not dupes, f"delivered more than once: {dupes}"
    assert sorted(everything) == sorted(payloads), "messages lost or foreign"
    assert all(share for share in got), f"a member got nothing: {[len(s) for s in got]}"


def publish_all(port: int, topic: str, payloads: list[bytes]) -> None:
    pub = PahoV5Client(port, unique("pub")).start()
    try:
        for p in payloads:
            pub.publish(topic, p, qos=1)
    finally:
        pub.stop()


def test_shared_group_of_three_splits_messages(broker):
    """Three MQTT 5 members of ``$share/g/T`` (QoS 1): N messages are split among them: each
    receives a share, the total is N, nothing is duplicated. A plain subscriber to T still
    receives all N."""
    topic = unique("shared")
    members = [PahoV5Client(broker.port, unique(f"m{i}")).start() for i in range(3)]
    plain = PahoV5Client(broker.port, unique("plain")).start()
    try:
        for m in members:
            assert m.subscribe(f"$share/g/{topic}", 1) == [1]
        assert plain.subscribe(topic, 1) == [1]
        payloads = [f"m{i:03}".encode() for i in range(N)]
        publish_all(broker.port, topic, payloads)
        got = collect(members, N)
        assert_split(got, payloads)
        assert [m.payload for m in plain.get_n(N)] == payloads
        # Nothing beyond N arrives at the group: a fence goes to exactly one member.
        fence = [b"fence"]
        publish_all(broker.port, topic, fence)
        after = collect(members, 1)
        assert sorted(p for s in after for p in s) == fence
    finally:
        stop_all(members + [plain])


def test_shared_group_with_mqtt311_member(broker):
    """An MQTT 3.1.1 client can join the same shared group as MQTT 5 clients and gets its share."""
    topic = unique("shared311")
    v5 = [PahoV5Client(broker.port, unique(f"m{i}")).start() for i in range(2)]
    v311 = PahoClient(broker.port, unique("m311")).start()
    members = v5 + [v311]
    try:
        for m in v5:
            assert m.subscribe(f"$share/g/{topic}", 1) == [1]
        assert v311.subscribe([(f"$share/g/{topic}", 1)]) == [1]
        payloads = [f"m{i:03}".encode() for i in range(N)]
        publish_all(broker.port, topic, payloads)
        assert_split(collect(members, N), payloads)
    finally:
        stop_all(members)


def test_shared_member_leaving_with_unacked_messages(broker):
    """A member that never acknowledges (raw socket) leaves with Clean Start 1 / Session Expiry 0
    while holding unacknowledged QoS 1 messages: those messages are delivered to the other member;
    nothing is lost."""
    iotgw_only("mosquitto 2.0.11 discards a leaving member's unacknowledged messages (measured: all lost)")
    topic = unique("sharedleave")
    payloads = [f"m{i:03}".encode() for i in range(N)]
    other = PahoV5Client(broker.port, unique("other")).start()
    raw = raw5_connected(broker.port, unique("silent"))
    try:
        assert raw.subscribe5(1, [(f"$share/g/{topic}", 1)]) == [1]
        assert other.subscribe(f"$share/g/{topic}", 1) == [1]
        publish_all(broker.port, topic, payloads)

        held: list[bytes] = []
        got_other: list[bytes] = []

        def all_placed() -> bool:
            got_other.extend(m.payload for m in other.drain())
            try:
                while True:
                    p = raw.read_packet(0.05)
                    assert p.type == PUBLISH, f"unexpected {p!r}"
                    held.append(parse_publish5(p).payload)
            except socket.timeout:
                pass
            return len(held) + len(got_other) >= N

        wait_until(all_placed, 10, message="all messages delivered to one member or the other")
        assert held, "the silent member got no share, nothing to test"
        raw.send(disconnect5_packet(0))
        raw.close()

        def redelivered() -> bool:
            got_other.extend(m.payload for m in other.drain())
            return set(held) <= set(got_other)

        try:
            wait_until(redelivered, 10, message="the leaving member's messages at the other member")
        except AssertionError as e:
            raise AssertionError(f"{e}; lost: {sorted(set(held) - set(got_other))}") from None
        dupes = [p for p, k in Counter(got_other).items() if k > 1]
        assert not dupes, f"duplicated to the remaining member: {dupes}"
        assert sorted(got_other) == sorted(payloads)
    finally:
        raw.close()
        other.stop()
