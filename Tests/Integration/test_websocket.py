"""(13) MQTT over WebSocket: paho-mqtt with transport="websockets" (3.1.1 and 5) across transports,
subprotocol negotiation, Origin allow-list, graceful shutdown (DISCONNECT 0x8B, then close 1001)."""

from __future__ import annotations

import signal
import socket
import struct
import time

import paho.mqtt.client as mqtt
import pytest

from helpers import PahoClient, connect_packet, encode_string, fixed, iotgw_only, unique
from websocket_helpers import OP_BINARY, RawWebSocket

WS = {"listeners": {"ws": {"enabled": True}}}

def connect_v5(client_id: str) -> bytes:
    """An MQTT 5 CONNECT: clean start, keep alive 60, no properties."""
    return fixed(0x10, encode_string("MQTT") + bytes([5, 0x02]) + struct.pack("!H", 60) + b"\x00"
                 + encode_string(client_id))


PROTOCOLS = [pytest.param(mqtt.MQTTv311, id="mqtt311"), pytest.param(mqtt.MQTTv5, id="mqtt5")]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ws_publisher_to_tcp_subscriber_and_back(make_broker, protocol):
    broker = make_broker(**WS)
    tcp = PahoClient(broker.port).start()
    ws = PahoClient(broker.ws_port, transport="websockets", protocol=protocol).start()
    try:
        assert tcp.subscribe([("x/ws/#", 1)]) == [1]
        assert ws.subscribe([("x/tcp/#", 1)])[0] in (1,)
        ws.publish("x/ws/a", b"from-ws", qos=1)
        got = tcp.get(what="message published over WebSocket")
        assert (got.topic, got.payload, got.qos) == ("x/ws/a", b"from-ws", 1)
        tcp.publish("x/tcp/b", b"from-tcp", qos=1)
        got = ws.get(what="message published over TCP")
        assert (got.topic, got.payload, got.qos) == ("x/tcp/b", b"from-tcp", 1)
        # A larger message that paho splits across TCP reads (and the server across nothing: one frame).
        big = bytes(range(256)) * 400
        tcp.publish("x/tcp/big", big, qos=0)
        assert ws.get(what="large message").payload == big
    finally:
        ws.stop()
        tcp.stop()


def test_mqtt_packets_span_frames_and_share_frames(make_broker):
    """A CONNECT split over three frames; then SUBSCRIBE and PINGREQ in one frame."""
    iotgw_only("raw frames against the iotgw WebSocket listener")
    broker = make_broker(**WS)
    ws = RawWebSocket(broker.ws_port, "/mqtt", subprotocol="mqtt")
    try:
        assert ws.status == 101, ws.status
        assert ws.headers.get("sec-websocket-protocol") == "mqtt"
        connect = connect_packet(unique("frag"))
        ws.send_frame(OP_BINARY, connect[:3], fin=False)
        ws.send_frame(0x0, connect[3:7], fin=False)
        ws.send_frame(0x0, connect[7:], fin=True)
        op, data = ws.recv_data()
        assert (op, data) == (OP_BINARY, b"\x20\x02\x00\x00"), data.hex(" ")
        subscribe = b"\x82" + bytes([2 + 2 + 3 + 1]) + b"\x00\x01" + b"\x00\x03a/b" + b"\x00"
        ws.send_frame(OP_BINARY, subscribe + b"\xc0\x00")
        received = b""
        while len(received) < 7:
            _, data = ws.recv_data()
            received += data
        assert received == b"\x90\x03\x00\x01\x00" + b"\xd0\x00", received.hex(" ")
    finally:
        ws.close()


@pytest.mark.parametrize("offered", ["mqttv3.1", "mqtt, other"])
def test_accepted_subprotocols(make_broker, offered):
    iotgw_only("subprotocol negotiation details")
    broker = make_broker(**WS)
    ws = RawWebSocket(broker.ws_port, "/mqtt", subprotocol=offered)
    try:
        assert ws.status == 101
        assert ws.headers["sec-websocket-protocol"] == ("mqttv3.1" if offered == "mqttv3.1" else "mqtt")
    finally:
        ws.close()


@pytest.mark.parametrize("offered", [None, "chat"])
def test_other_subprotocols_refused(make_broker, offered):
    iotgw_only("subprotocol refusal")
    broker = make_broker(**WS)
    ws = RawWebSocket(broker.ws_port, "/mqtt", subprotocol=offered)
    try:
        assert ws.status == 400, ws.status
        assert ws.closed_within(5.0)
    finally:
        ws.close()


def test_unknown_path_is_404(make_broker):
    iotgw_only("HTTP answers of the WebSocket listener")
    broker = make_broker(**WS)
    ws = RawWebSocket(broker.ws_port, "/nope", subprotocol="mqtt")
    try:
        assert ws.status == 404
    finally:
        ws.close()


def test_origin_allow_list(make_broker):
    iotgw_only("websocket.allowed_origins")
    # JSON: the suite's YAML writer has no lists.
    broker = make_broker(config_format="json", listeners={"ws": {"enabled": True}},
                         websocket={"allowed_origins": ["https://dash.example"]})
    good = RawWebSocket(broker.ws_port, "/ws", headers={"Origin": "https://dash.example"})
    bad = RawWebSocket(broker.ws_port, "/ws", headers={"Origin": "https://evil.example"})
    none = RawWebSocket(broker.ws_port, "/ws")
    try:
        assert good.status == 101
        assert bad.status == 403
        assert none.status == 101
    finally:
        for c in (good, bad, none):
            c.close()


def test_shutdown_sends_disconnect_0x8b_then_close_1001(make_broker):
    iotgw_only("graceful shutdown over WebSocket")
    broker = make_broker(**WS)
    ws = RawWebSocket(broker.ws_port, "/mqtt", subprotocol="mqtt")
    try:
        ws.send_frame(OP_BINARY, connect_v5(unique("v5ws")))
        op, data = ws.recv_data()
        assert data[0] == 0x20, data.hex(" ")
        broker.signal(signal.SIGTERM)
        op, data = ws.recv_data(timeout=10)
        assert op == OP_BINARY and data[0] == 0xE0 and data[2] == 0x8B, f"expected DISCONNECT 0x8B, got {data.hex(' ')}"
        code = ws.expect_close(timeout=10)
        assert code == 1001
        assert broker.wait(15) == 0
    finally:
        ws.close()


def _http_exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Sends `request` in one write and returns all the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            answer += data
        return bytes(answer)


@pytest.mark.parametrize("path", ["/ws", "/mqtt"])
def test_upgrade_without_connection_upgrade_and_a_pipelined_request(make_broker, path):
    """The request the WebSocket fuzz target found (Fuzz/Regressions/websocket): Upgrade headers without
    `Connection: Upgrade`, a body, then a second request in the same write. It ended the whole process
    (a fatal type mismatch in the pipeline); now it is answered 400 and only that connection closes."""
    iotgw_only("HTTP answers of the WebSocket listener")
    broker = make_broker(**WS)
    request = (f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nSec-WebSocket-Protocol: mqtt\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 3\r\n\r\n"
               "abcGET / HTTP/1.1\r\nHost: x\r\n\r\n").encode()
    answer = _http_exchange(broker.ws_port, request)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"Connection: Upgrade" in answer
    # The gateway is still there for everyone else.
    ws = RawWebSocket(broker.ws_port, "/mqtt", subprotocol="mqtt")
    try:
        assert ws.status == 101
    finally:
        ws.close()
    assert broker.proc.poll() is None
