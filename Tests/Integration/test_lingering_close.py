"""(Hardening) Lingering close: when the server ends a connection with a reason code while the client is
still sending, the client reads the DISCONNECT before the socket closes — no ECONNRESET that swallows it
(Paho's test_flow_control2 failed this way)."""

from __future__ import annotations

import threading
import time

from helpers import DISCONNECT, PUBREC, ConnectionClosed, iotgw_only, parse_disconnect5, publish5_packet, raw5_connected, unique


def test_client_publishing_past_receive_maximum_reads_disconnect_0x93(make_broker):
    iotgw_only("the receive maximum is configured through iotgw's mqtt.receive_maximum")
    b = make_broker(mqtt={"receive_maximum": 3}, storage={"enabled": False})
    topic = unique("rm")
    with raw5_connected(b.port) as client:
        # A writer thread keeps sending QoS 2 PUBLISHes without a PUBREL (8 MB in all): the 4th exceeds
        # Receive Maximum 3, and much more is still in flight, unread, when the gateway decides to close.
        chunk = b"".join(publish5_packet(topic, b"x" * 1000, qos=2, packet_id=i + 1) for i in range(64))
        send_error: list[BaseException] = []

        def write() -> None:
            try:
                for _ in range(128):
                    client.sock.sendall(chunk)
            except OSError as e:
                send_error.append(e)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        types, reason = [], None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                p = client.read_packet(timeout=max(0.1, deadline - time.monotonic()))
            except ConnectionClosed as e:
                raise AssertionError(f"connection closed or reset before the DISCONNECT was read (got {types}): {e}")
            types.append(p.type)
            if p.type == DISCONNECT:
                reason = parse_disconnect5(p)[0]
                break
        assert types[:3] == [PUBREC] * 3, types
        assert reason == 0x93, f"expected DISCONNECT 0x93 (Receive Maximum exceeded), got {types} / {reason}"
        # The gateway read and discarded what kept coming instead of resetting the connection under it.
        writer.join(timeout=20)
        assert not writer.is_alive(), "the writer is still blocked: the gateway stopped reading"
        assert not any(isinstance(e, ConnectionResetError) for e in send_error), send_error
