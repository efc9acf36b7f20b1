"""(10) Hostile input: each bad connection is closed, the broker keeps serving everyone else,
and announced sizes never turn into allocations."""

from __future__ import annotations

import socket
import threading

import pytest

from helpers import (
    PINGREQ_BYTES,
    PINGRESP_BYTES,
    PahoClient,
    RawClient,
    connect_packet,
    encode_remaining_length,
    encode_string,
    publish_packet,
    raw_connected,
    rss_kib,
    unique,
    wait_until,
)

MAX_PACKET_SIZE = 65536

# Remaining length FF FF FF 73 = 243,269,631 bytes (~243 MB), the largest a 4-byte
# variable-length integer with 0x73 last can say; as in mosquitto's 01-bad-initial-packets.
HUGE_LENGTH = b"\xff\xff\xff\x73"
FIVE_BYTE_LENGTH = b"\xff\xff\xff\xff\x01"


class Pump:
    """A well-behaved paho client that publishes QoS 1 to its own subscription in a loop."""

    def __init__(self, port: int):
        self.topic = unique("pump")
        self.client = PahoClient(port).start()
        assert self.client.subscribe([(self.topic, 1)]) == [1]
        self.sent: list[bytes] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            i = 0
            while not self._stop.is_set():
                payload = f"pump-{i}".encode()
                self.client.publish(self.topic, payload, qos=1, timeout=5)
                self.sent.append(payload)
                i += 1
        except BaseException as e:  # reported by finish()
            self.error = e

    def finish(self) -> None:
        """Stop publishing and assert every acknowledged message came back, in order."""
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "pump thread did not stop"
        try:
            if self.error is not None:
                raise AssertionError(f"well-behaved client failed while hostile clients ran: {self.error!r}")
            got = self.client.get_n(len(self.sent), timeout=10)
            assert [m.payload for m in got] == self.sent
        finally:
            self.client.stop()


def _hostile_cases() -> list[tuple[str, bytes, bool, bool]]:
    """(name, bytes, send a valid CONNECT first, then shut down the write side)."""
    cid = unique("hostile")
    connect = connect_packet(cid)
    big = MAX_PACKET_SIZE + 1000
    return [
        # (a) garbage
        ("reserved type 15", b"\xf0\x00", False, False),
        ("reserved type 0", b"\x00" * 32, False, False),
        ("http request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False, False),
        ("garbage after connect", b"\xff\xfe\xfd\xfc" * 8, True, False),
        # (b) truncated, then close-write
        ("truncated connect", connect[: len(connect) // 2], False, True),
        ("truncated publish", publish_packet("a/b", b"x" * 100)[:20], True, True),
        # (c) announced size over max_packet_size, and a 5-byte remaining length
        ("oversized connect", b"\x10" + _varint(big) + b"\x00\x04MQTT\x04\x02\x00\x3c", False, False),
        ("oversized publish", b"\x30" + _varint(big) + encode_string("a/b") + b"x" * 100, True, False),
        ("5-byte length connect", b"\x10" + FIVE_BYTE_LENGTH + b"\x00" * 16, False, False),
        ("5-byte length publish", b"\x30" + FIVE_BYTE_LENGTH + b"\x00" * 16, True, False),
    ]


def _varint(n: int) -> bytes:
    return encode_remaining_length(n)


def test_hostile_connections_are_closed_while_good_client_is_served(make_broker):
    """Garbage, truncated packets and oversized/overlong lengths each get their connection closed;
    a well-behaved paho client publishing and receiving QoS 1 throughout loses nothing."""
    b = make_broker(limits={"max_packet_size": MAX_PACKET_SIZE})
    pump = Pump(b.port)
    try:
        wait_until(lambda: len(pump.sent) >= 20, 10, message="the pump to get going")
        failures = []
        for name, data, connect_first, shut_wr in _hostile_cases():
            with RawClient(b.port) as c:
                if connect_first:
                    c.connect(unique("h"))
                c.send(data)
                if shut_wr:
                    c.sock.shutdown(socket.SHUT_WR)
                if not c.closed_within(5):
                    failures.append(f"{name}: not closed within 5 s (got {c.pending.hex(' ') or 'nothing'})")
            assert b.alive(), f"broker died on {name!r}"
        before = len(pump.sent)
        wait_until(lambda: len(pump.sent) >= before + 20, 10, message="the pump to keep going afterwards")
    finally:
        pump.finish()
    assert not failures, "\n".join(failures)


def test_announced_huge_packets_do_not_allocate(broker):
    """14 connections, one per packet type, each announcing a ~243 MB remaining length as its
    first packet: each is closed, and the broker's RSS stays under 100 MB."""
    pump = Pump(broker.port)
    conns: list[tuple[int, RawClient]] = []
    try:
        rss_before = rss_kib(broker.pid)
        for ptype in range(1, 15):
            flags = 0x02 if ptype in (6, 8, 10) else 0  # PUBREL, SUBSCRIBE, UNSUBSCRIBE
            c = RawClient(broker.port)
            conns.append((ptype, c))
            c.send(bytes([(ptype << 4) | flags]) + HUGE_LENGTH + b"\x00" * 1024)
        still_open = [ptype for ptype, c in conns if not c.closed_within(5)]
        rss_after = rss_kib(broker.pid)
        assert not still_open, f"connections with first packet type {still_open} not closed within 5 s"
        assert rss_after < 100 * 1024, f"RSS {rss_after} KiB (before: {rss_before} KiB) >= 100 MB"
        with raw_connected(broker.port) as ok:
            ok.send(PINGREQ_BYTES)
            ok.expect(PINGRESP_BYTES, what="PINGRESP from a healthy connection afterwards")
    finally:
        for _, c in conns:
            c.close()
        pump.finish()


def test_huge_publish_after_connect_does_not_allocate(broker):
    """After a valid CONNECT, a PUBLISH announcing ~243 MB (over the 1 MB default max_packet_size)
    closes the connection without the broker growing by anything like that."""
    rss_before = rss_kib(broker.pid)
    conns = []
    try:
        for _ in range(5):
            c = raw_connected(broker.port)
            conns.append(c)
            c.send(b"\x30" + HUGE_LENGTH + encode_string("big/topic") + b"x" * 4096)
        still_open = [i for i, c in enumerate(conns) if not c.closed_within(5)]
        rss_after = rss_kib(broker.pid)
        assert not still_open, f"{len(still_open)} of 5 oversized PUBLISH connections not closed"
        assert rss_after - rss_before < 50 * 1024, f"RSS grew from {rss_before} to {rss_after} KiB"
    finally:
        for c in conns:
            c.close()


@pytest.mark.parametrize("bad", [
    pytest.param(b"\x30\x05\x00\x0a\x61\x62\x63", id="publish-topic-length-past-end"),
    pytest.param(b"\x82\x03\x00\x01\x00", id="subscribe-no-topic"),
    pytest.param(b"\x80\x08\x00\x01\x00\x03a/b\x00", id="subscribe-wrong-flags"),
    pytest.param(b"\x32\x05\x00\x03a/b", id="qos1-publish-without-packet-id"),
    pytest.param(b"\x36\x07\x00\x03a/b\x00\x01", id="publish-qos-3"),
    pytest.param(b"\x30\x07\x00\x03a/#xy", id="publish-wildcard-topic"),
])
def test_malformed_packets_after_connect(broker, bad):
    """Structurally invalid packets after CONNECT close the connection; the broker survives."""
    with raw_connected(broker.port) as c:
        c.send(bad)
        c.assert_closed(5, f"after {bad.hex(' ')}")
    with raw_connected(broker.port) as ok:
        ok.send(PINGREQ_BYTES)
        ok.expect(PINGRESP_BYTES)
