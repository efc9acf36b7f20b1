"""(Hardening) Lingering close: when the server ends a connection with a reason code while the client is
still sending, the client reads the DISCONNECT before the socket closes — no ECONNRESET that swallows it
(Paho's test_flow_control2 failed this way). The same over WebSocket: a connection failed with a close
code, and MQTT over WebSocket ending with a DISCONNECT, keep reading until the client has the close frame."""

from __future__ import annotations

import struct
import threading
import time

from helpers import (CONNACK, DISCONNECT, PUBREC, ConnectionClosed, connect5_packet, decode_varint, iotgw_only,
                     parse_disconnect5, publish5_packet, raw5_connected, unique)
from websocket_helpers import OP_BINARY, OP_CLOSE, OP_TEXT, Closed, RawWebSocket


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


# -- WebSocket: the close frame must reach a client that is still sending --------------------------


def _keep_sending(ws: RawWebSocket, frame: bytes, stop: threading.Event, errors: list[BaseException],
                  busy: threading.Event) -> threading.Thread:
    """A thread that writes `frame` over and over (up to 8 MB) until `stop` is set or the socket fails.
    `busy` is set once 1 MB is out (or the writer ended): reading only then means the gateway had input
    it never read when it decided to close, which is what makes a plain close reset the connection."""

    def write() -> None:
        sent = 0
        try:
            for _ in range(8 * 1024 * 1024 // len(frame)):
                if stop.is_set():
                    return
                ws.sock.sendall(frame)
                sent += len(frame)
                if sent >= 1024 * 1024:
                    busy.set()
        except OSError as e:
            errors.append(e)
        finally:
            busy.set()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    key = b"\x11\x22\x33\x44"
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n) if n >= 126 else struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    return header + key + masked


def test_websocket_protocol_error_close_frame_reaches_a_client_still_sending(make_broker):
    iotgw_only("the JSON API is iotgw's")
    b = make_broker(listeners={"ws": {"enabled": True}}, storage={"enabled": False})
    ws = RawWebSocket(b.ws_port, "/ws")
    try:
        assert ws.status == 101, ws.status
        ws.recv_data()  # {"op":"connected",...}
        # An unmasked frame fails the connection (1002) while a writer keeps sending valid frames.
        ws.send_frame(OP_TEXT, b'{"op":"ping"}', mask=False)
        stop, errors, busy = threading.Event(), [], threading.Event()
        writer = _keep_sending(ws, _masked_frame(OP_TEXT, b'{"op":"ping","id":"' + b"x" * 60000 + b'"}'), stop, errors, busy)
        assert busy.wait(10)
        try:
            code = ws.expect_close(timeout=10)
        except (ConnectionResetError, Closed) as e:
            raise AssertionError(f"the connection was reset or closed before the close frame was read: {e!r}")
        finally:
            stop.set()
            writer.join(timeout=20)
        assert code == 1002, code
        assert not writer.is_alive(), "the writer is still blocked: the gateway stopped reading"
        assert not errors, f"the gateway reset the connection under the writer: {errors}"
    finally:
        ws.close()


def test_mqtt_over_websocket_client_publishing_past_receive_maximum_reads_disconnect_0x93(make_broker):
    iotgw_only("the receive maximum is configured through iotgw's mqtt.receive_maximum")
    b = make_broker(listeners={"ws": {"enabled": True}}, mqtt={"receive_maximum": 3}, storage={"enabled": False})
    ws = RawWebSocket(b.ws_port, "/mqtt", subprotocol="mqtt")
    try:
        assert ws.status == 101, ws.status
        ws.send_frame(OP_BINARY, connect5_packet(unique("wsrm")))
        topic = unique("wsrm")
        chunk = b"".join(publish5_packet(topic, b"x" * 1000, qos=2, packet_id=i + 1) for i in range(60))
        stop, errors, busy = threading.Event(), [], threading.Event()
        writer = _keep_sending(ws, _masked_frame(OP_BINARY, chunk), stop, errors, busy)
        assert busy.wait(10)
        stream, types, reason, close_code = b"", [], None, None
        deadline = time.monotonic() + 10
        try:
            while close_code is None and time.monotonic() < deadline:
                _, op, payload = ws.recv_frame(timeout=max(0.1, deadline - time.monotonic()))
                if op == OP_CLOSE:
                    close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    break
                if op != OP_BINARY:
                    continue
                stream += payload
                while len(stream) >= 2:
                    length, pos = decode_varint(stream, 1)
                    if len(stream) < pos + length:
                        break
                    first, body, stream = stream[0], stream[pos:pos + length], stream[pos + length:]
                    types.append(first >> 4)
                    if first >> 4 == DISCONNECT:
                        reason = body[0]
        except (ConnectionResetError, Closed) as e:
            raise AssertionError(f"reset or closed before the DISCONNECT and close frame were read (got {types}): {e!r}")
        finally:
            stop.set()
            writer.join(timeout=20)
        assert types[0] == CONNACK and types[1:4] == [PUBREC] * 3, types
        assert reason == 0x93, f"expected DISCONNECT 0x93, got {types} / {reason}"
        assert close_code is not None, "no close frame after the DISCONNECT"
        assert not errors, f"the gateway reset the connection under the writer: {errors}"
    finally:
        ws.close()
