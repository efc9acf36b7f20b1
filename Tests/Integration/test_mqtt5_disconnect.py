"""Server-initiated MQTT 5 DISCONNECT: the reason code byte for each cause, on raw sockets."""

from __future__ import annotations

import signal
import time

from helpers import (
    P_MESSAGE_EXPIRY,
    P_PAYLOAD_FORMAT,
    P_SESSION_EXPIRY,
    PINGREQ_BYTES,
    PINGRESP_BYTES,
    RawClient5,
    iotgw_only,
    is_mosquitto,
    publish5_packet,
    raw5_connected,
    unique,
)


# Causes for which mosquitto 2.0.11 closes the connection without sending a DISCONNECT
# (measured): there the test checks only that the connection is closed.
MOSQUITTO_SILENT = {0x8E: "session taken over", 0x8D: "keep-alive timeout", 0x82: "duplicate property"}


def expect_reason(c: RawClient5, reason: int, timeout: float = 5.0, what: str = "") -> None:
    """Expect DISCONNECT with ``reason`` followed by the close (on mosquitto, for the causes in
    ``MOSQUITTO_SILENT``, just the close)."""
    if is_mosquitto() and reason in MOSQUITTO_SILENT:
        c.assert_closed(timeout, what)
        assert c.pending == b"", f"mosquitto now sends something: {c.pending.hex(' ')}: update MOSQUITTO_SILENT"
        return
    got, _ = c.expect_disconnect(timeout, what)
    assert got == reason, f"DISCONNECT reason 0x{got:02x}, expected 0x{reason:02x} {what}"


def test_session_taken_over_0x8e(broker):
    """A second connection with the same client id: the first gets DISCONNECT 0x8E (Session
    taken over) and is closed; the second is connected."""
    cid = unique("dup")
    with raw5_connected(broker.port, cid) as first, RawClient5(broker.port) as second:
        second.connect5(cid)
        expect_reason(first, 0x8E, what="after another connection took the client id")
        second.send(PINGREQ_BYTES)  # the new connection is the live one
        second.expect(PINGRESP_BYTES, what="PINGRESP")


def test_keep_alive_timeout_0x8d(broker):
    """Keep Alive 1 s and silence: DISCONNECT 0x8D (Keep Alive timeout), not before 1 s."""
    # mosquitto 2.0 sweeps keep-alives only every few seconds (see test_connect.py).
    upper = 7.0 if is_mosquitto() else 3.0
    start = time.monotonic()  # before CONNECT, where the server's timer starts: a late thread cannot shorten it
    with raw5_connected(broker.port, keepalive=1) as c:
        expect_reason(c, 0x8D, upper, what="with Keep Alive 1 s and a silent client")
        elapsed = time.monotonic() - start
    assert 1.0 <= elapsed < upper, elapsed


def test_packet_too_large_0x95(make_broker):
    """A PUBLISH larger than limits.max_packet_size (1024): DISCONNECT 0x95 (Packet too large)."""
    b = make_broker(limits={"max_packet_size": 1024})
    with raw5_connected(b.port) as c:
        c.send(publish5_packet(unique("big"), b"x" * 2000, qos=0))
        expect_reason(c, 0x95, what="after a 2 kB PUBLISH with max_packet_size 1024")


def test_property_in_wrong_packet_malformed_0x81(broker):
    """A PUBLISH carrying Session Expiry Interval (a CONNECT/CONNACK/DISCONNECT property) is a
    Malformed Packet (spec 2.2.2.2): DISCONNECT 0x81."""
    with raw5_connected(broker.port) as c:
        c.send(publish5_packet(unique("wrong"), b"x", properties=[(P_SESSION_EXPIRY, 10)]))
        expect_reason(c, 0x81, what="after Session Expiry Interval in a PUBLISH")


def test_duplicate_property_protocol_error_0x82(broker):
    """A PUBLISH with Payload Format Indicator twice (allowed once) is a Protocol Error:
    DISCONNECT 0x82."""
    with raw5_connected(broker.port) as c:
        c.send(publish5_packet(unique("dupprop"), b"x",
                               properties=[(P_PAYLOAD_FORMAT, 0), (P_MESSAGE_EXPIRY, 5), (P_PAYLOAD_FORMAT, 0)]))
        expect_reason(c, 0x82, what="after a duplicated Payload Format Indicator")


def test_sigterm_disconnects_0x8b(make_broker):
    """SIGTERM: every MQTT 5 client gets DISCONNECT 0x8B (Server shutting down), then the gateway
    exits 0."""
    iotgw_only("mosquitto 2.0.11 closes connections without a DISCONNECT on shutdown")
    b = make_broker(shutdown={"timeout": 5})
    clients = [raw5_connected(b.port) for _ in range(3)]
    try:
        b.signal(signal.SIGTERM)
        for c in clients:
            expect_reason(c, 0x8B, b.shutdown_timeout + 2, what="after SIGTERM")
        assert b.wait(b.shutdown_timeout + 5) == 0
    finally:
        for c in clients:
            c.close()
