"""(13) Limits: connection cap, and a slow subscriber that must not grow the broker's memory."""

from __future__ import annotations

import socket
import time

from helpers import (
    PUBACK,
    ConnectionClosed,
    PahoClient,
    RawClient,
    ack_packet,
    connect_packet,
    is_mosquitto,
    publish_packet,
    raw_connected,
    rss_kib,
    unique,
)


def _sixth_is_refused(port: int, timeout: float = 5.0) -> str:
    """Try one more connection; return how it was refused, or raise AssertionError if served."""
    try:
        c = RawClient(port, timeout=timeout)
    except ConnectionRefusedError:
        return "TCP connect refused"
    with c:
        try:
            c.send(connect_packet(unique("sixth")))
        except (BrokenPipeError, ConnectionResetError):
            return "closed before CONNECT could be sent"
        try:
            packet = c.read_packet(timeout)
        except ConnectionClosed:
            return "closed without CONNACK"
        except socket.timeout:
            raise AssertionError(f"connection over max_connections neither closed nor answered within {timeout}s")
        assert packet.raw != b"\x20\x02\x00\x00", "connection over max_connections was accepted (CONNACK 0)"
        assert packet.raw[:3] == b"\x20\x02\x00", f"unexpected reply {packet}"
        c.assert_closed(timeout, "after the refusing CONNACK")
        return f"CONNACK rc {packet.raw[3]}, then closed"


def test_max_connections(make_broker):
    """max_connections 5: the 6th connection is refused or closed; once one of the five leaves,
    a new connection is served again."""
    b = make_broker(limits={"max_connections": 5})
    clients = [raw_connected(b.port) for _ in range(5)]
    try:
        how = _sixth_is_refused(b.port)
        print(f"6th connection: {how}")
        # The five are unaffected.
        for c in clients:
            c.send(b"\xc0\x00")
            c.expect(b"\xd0\x00", what="PINGRESP on one of the first five")
        clients.pop().close()
        # The broker notices the close asynchronously; retry until a slot is free.
        deadline = time.monotonic() + 5
        while True:
            try:
                clients.append(raw_connected(b.port))
                break
            except (AssertionError, OSError):
                if time.monotonic() > deadline:
                    raise AssertionError("no connection served within 5 s after one of five closed")
                time.sleep(0.05)
    finally:
        for c in clients:
            c.close()


def test_slow_subscriber_does_not_grow_memory(make_broker):
    """A QoS 0 subscriber that never reads (tiny receive buffer) while a publisher floods 100 MB:
    the broker's RSS grows by less than 50 MB, the publisher is never stalled, and another
    subscriber is still served afterwards. Storage is off (as mosquitto's persistence is here): what is
    measured is the subscriber's queue, not the telemetry pipeline, whose own caps (16 MiB queued plus
    the batch being written) would otherwise share the 50 MB on a slow machine."""
    b = make_broker(limits={"max_queued_bytes": 256 * 1024, "max_queued_messages": 100}, storage={"enabled": False})
    flood_topic, ctl_topic = unique("flood"), unique("ctl")

    slow = RawClient(b.port, rcvbuf=4096)
    slow.connect(unique("slow"))
    slow.subscribe(1, [(flood_topic, 0)])
    healthy = PahoClient(b.port).start()
    healthy.subscribe([(ctl_topic, 1)])
    pub = raw_connected(b.port, unique("flooder"))
    pub.sock.settimeout(10)  # a sendall stalled this long means the broker stopped reading us

    payload = b"\xab" * (64 * 1024)
    packet = publish_packet(flood_topic, payload, qos=0)
    total = 100 * 1024 * 1024
    count = total // len(payload)
    rss_start = peak = rss_kib(b.pid)
    started = time.monotonic()
    try:
        for i in range(count):
            try:
                pub.send(packet)
            except socket.timeout:
                raise AssertionError(f"publisher stalled for 10 s after {i * len(payload) >> 20} MB: "
                                     "the broker stopped reading from it (back-pressure from a slow subscriber?)")
            if i % 64 == 0:
                peak = max(peak, rss_kib(b.pid))
            assert time.monotonic() - started < 90, "flood took over 90 s"
        # Still served: a QoS 1 publish is acknowledged and reaches the healthy subscriber.
        pub.send(publish_packet(ctl_topic, b"after the flood", qos=1, packet_id=1))
        pub.expect(ack_packet(PUBACK, 1), timeout=10, what="PUBACK after the flood")
        assert healthy.get(timeout=10).payload == b"after the flood"
        peak = max(peak, rss_kib(b.pid))
        elapsed = time.monotonic() - started
        print(f"flooded {count * len(payload) >> 20} MB in {elapsed:.1f}s; RSS {rss_start} -> peak {peak} KiB")
        assert peak - rss_start < 50 * 1024, f"RSS grew from {rss_start} to {peak} KiB"
        assert b.alive()
    finally:
        pub.close()
        slow.close()
        healthy.stop()


def test_max_inflight_window(make_broker):
    """limits.max_inflight 5: a QoS 1 subscriber that does not PUBACK gets exactly 5 PUBLISHes;
    each PUBACK lets exactly one more through, in order."""
    b = make_broker(limits={"max_inflight": 5})
    topic = unique("window")
    sub = raw_connected(b.port, unique("window-sub"))
    pub = PahoClient(b.port).start()
    try:
        sub.subscribe(1, [(topic, 1)])
        for i in range(10):
            pub.publish(topic, f"w{i}".encode(), qos=1)  # waits for the broker's PUBACK
        window = [sub.expect_packet(what=f"PUBLISH {i + 1} of the window") for i in range(5)]
        assert [p.publish_fields()[2] for p in window] == [f"w{i}".encode() for i in range(5)]
        # Every message was routed before the publisher got its PUBACK; a 6th PUBLISH would
        # have been written before the PINGRESP if the window were not enforced.
        sub.send(b"\xc0\x00")
        sub.expect(b"\xd0\x00", what="PINGRESP (and no 6th PUBLISH before it)")
        for i in range(5, 10):
            sub.send(ack_packet(PUBACK, window[0].publish_fields()[1]))
            window.pop(0)
            nxt = sub.expect_packet(what=f"PUBLISH w{i} after one PUBACK")
            assert nxt.publish_fields()[2] == f"w{i}".encode(), nxt
            window.append(nxt)
            if not is_mosquitto():
                # mosquitto 2.0.11 refills the whole window after a single PUBACK (measured:
                # one PUBACK, five more PUBLISHes), so only iotgw is held to the sliding window.
                sub.send(b"\xc0\x00")
                sub.expect(b"\xd0\x00", what="PINGRESP (one PUBACK frees one slot only)")
        for p in window:
            sub.send(ack_packet(PUBACK, p.publish_fields()[1]))
        sub.send(b"\xc0\x00")
        sub.expect(b"\xd0\x00", what="PINGRESP (nothing left)")
    finally:
        pub.stop()
        sub.close()
