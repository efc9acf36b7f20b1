"""permessage-deflate (RFC 7692) on the WebSocket endpoints: the Python `websockets` client with
compression on and off receives the same messages; the negotiated `Sec-WebSocket-Extensions` answer
for a few offers (raw handshakes); RSV1 only on messages at or above the threshold; a decompression
bomb refused with 1009; MQTT over WebSocket compressed when enabled on /mqtt; the context-takeover
budget; and the bytes on the wire for 1,000 JSON messages with and without compression."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time
import zlib

import pytest
import websockets

from helpers import PahoClient, connack_bytes, connect_packet, iotgw_only, publish_packet, subscribe_packet, unique
from operations_helpers import get, metric_samples
from websocket_helpers import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWebSocket

TIMEOUT = 5.0
TAIL = b"\x00\x00\xff\xff"


@pytest.fixture(autouse=True)
def _iotgw_only():
    iotgw_only("permessage-deflate is iotgw's")


def ws_broker(make_broker, **websocket):
    return make_broker(listeners={"ws": {"enabled": True}}, websocket=websocket)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def deflate_message(data: bytes, compressor=None) -> bytes:
    """One message compressed as RFC 7692 7.2.1 says (sync flush, tail removed)."""
    c = compressor or zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def recv_frame(ws: RawWebSocket, timeout: float = TIMEOUT) -> tuple[bool, bool, int, bytes]:
    """(fin, rsv1, opcode, payload) of the next server frame, skipping pings and pongs."""
    deadline = time.monotonic() + timeout
    while True:
        while len(ws.buf) < 2:
            ws._fill(deadline)
        b0, b1 = ws.buf[0], ws.buf[1]
        n, pos = b1 & 0x7F, 2
        if n in (126, 127):
            size = 2 if n == 126 else 8
            while len(ws.buf) < 2 + size:
                ws._fill(deadline)
            n = int.from_bytes(ws.buf[2:2 + size], "big")
            pos += size
        while len(ws.buf) < pos + n:
            ws._fill(deadline)
        payload = bytes(ws.buf[pos:pos + n])
        del ws.buf[:pos + n]
        if b0 & 0x0F not in (OP_PING, OP_PONG):
            return bool(b0 & 0x80), bool(b0 & 0x40), b0 & 0x0F, payload


def handshake(broker, path: str, offer: str | None, subprotocol: str | None = None) -> RawWebSocket:
    headers = {"Sec-WebSocket-Extensions": offer} if offer is not None else {}
    ws = RawWebSocket(broker.ws_port, path, subprotocol=subprotocol, headers=headers)
    assert ws.status == 101, ws.status
    return ws


# -- websockets client, compression on and off -----------------------------------------------------


def test_json_api_same_messages_with_and_without_compression(make_broker):
    broker = ws_broker(make_broker)
    big = {"readings": [{"sensor": f"s{i}", "t": 20 + i % 7, "unit": "C", "ok": True} for i in range(400)]}
    payloads = [b'{"t": 1}', json.dumps({"note": "x" * 300}).encode(), json.dumps(big).encode(), b"\xff\x00raw"]

    async def client(compression: str | None, out: dict) -> None:
        cid = unique("cmp")
        async with websockets.connect(f"ws://127.0.0.1:{broker.ws_port}/ws?client_id={cid}",
                                      compression=compression, max_size=2 ** 22) as ws:
            out["extensions"] = ws.response.headers.get("Sec-WebSocket-Extensions")
            assert json.loads(await ws.recv())["op"] == "connected"
            await ws.send(json.dumps({"op": "subscribe", "filter": "cmp/#", "qos": 1, "id": 1}))
            assert json.loads(await ws.recv()) == {"op": "ack", "id": 1, "qos": 1}
            out["ready"].set()
            got = []
            while len(got) < len(payloads):
                m = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                got.append((m["topic"], m["payload"], m.get("encoding")))
            out["messages"] = got
            # And the other way: a large JSON publish reaches an MQTT subscriber intact.
            await ws.send(json.dumps({"op": "publish", "topic": f"back/{compression}", "payload": big,
                                      "qos": 1, "id": 2}))
            assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) == {"op": "ack", "id": 2}

    async def scenario():
        on, off = {"ready": asyncio.Event()}, {"ready": asyncio.Event()}
        sub = PahoClient(broker.port).start()
        sub.subscribe([("back/#", 1)])
        tasks = [asyncio.create_task(client("deflate", on)), asyncio.create_task(client(None, off))]
        await asyncio.wait_for(asyncio.gather(on["ready"].wait(), off["ready"].wait()), TIMEOUT)
        pub = PahoClient(broker.port).start()
        try:
            for i, payload in enumerate(payloads):
                pub.publish(f"cmp/{i}", payload, qos=1)
        finally:
            pub.stop()
        await asyncio.gather(*tasks)
        back = sorted(sub.get_n(2), key=lambda r: r.topic)
        sub.stop()
        return on, off, back

    on, off, back = run(scenario())
    assert on["extensions"] == "permessage-deflate; client_max_window_bits=13"
    assert off["extensions"] is None
    assert on["messages"] == off["messages"]
    assert [m[1] for m in on["messages"][:3]] == [json.loads(p) for p in payloads[:3]]
    assert [(r.topic, json.loads(r.payload)) for r in back] == [("back/None", big), ("back/deflate", big)]


# -- negotiation on the wire -----------------------------------------------------------------------


@pytest.mark.parametrize("offer,expected", [
    ("permessage-deflate", "permessage-deflate"),
    ("permessage-deflate; client_max_window_bits", "permessage-deflate; client_max_window_bits=13"),
    ("permessage-deflate; client_max_window_bits; server_max_window_bits=10, permessage-deflate",
     "permessage-deflate; server_max_window_bits=10; client_max_window_bits=13"),
    ("permessage-deflate; server_max_window_bits=8, permessage-deflate; client_no_context_takeover",
     "permessage-deflate; client_no_context_takeover"),
    ('permessage-deflate; server_no_context_takeover; client_max_window_bits="9"',
     "permessage-deflate; server_no_context_takeover; client_max_window_bits=9"),
    ("x-webkit-deflate-frame, permessage-deflate", "permessage-deflate"),
    ("permessage-deflate; server_max_window_bits", None),
    ("permessage-deflate; mystery=1", None),
    ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", None),
    ("x-webkit-deflate-frame", None),
    (None, None),
])
def test_negotiated_extension_header(make_broker, offer, expected):
    broker = ws_broker(make_broker)
    ws = handshake(broker, "/ws", offer)
    try:
        assert ws.headers.get("sec-websocket-extensions") == expected
    finally:
        ws.close()


def test_per_endpoint_switches(make_broker):
    broker = ws_broker(make_broker, echo_path="/echo", compression={"json": False, "echo": True, "mqtt": False})
    for path, sub, expected in [("/ws", None, None), ("/echo", None, "permessage-deflate"),
                                ("/mqtt", "mqtt", None)]:
        ws = handshake(broker, path, "permessage-deflate", subprotocol=sub)
        try:
            assert ws.headers.get("sec-websocket-extensions") == expected, path
        finally:
            ws.close()


# -- frames ----------------------------------------------------------------------------------------


def test_threshold_and_rsv1_on_echo(make_broker):
    broker = ws_broker(make_broker, echo_path="/echo", compression_threshold=256)
    ws = handshake(broker, "/echo", "permessage-deflate")
    inflater = zlib.decompressobj(-15)
    try:
        # Small: sent back uncompressed (RSV1 clear).
        ws.send_frame(OP_TEXT, b"small")
        assert recv_frame(ws) == (True, False, OP_TEXT, b"small")
        # At the threshold: compressed, and inflates (with the tail appended) to the message.
        message = json.dumps({"k": "v" * 300}).encode()
        ws.send_frame(OP_TEXT, message)
        fin, rsv1, op, payload = recv_frame(ws)
        assert (fin, rsv1, op) == (True, True, OP_TEXT)
        assert len(payload) < len(message)
        assert not payload.endswith(TAIL)
        assert inflater.decompress(payload + TAIL) == message
        # A compressed message in two frames, binary, is inflated and echoed with its opcode.
        data = os.urandom(64) * 20
        compressed = deflate_message(data)
        ws.send_frame(OP_BINARY, compressed[:10], fin=False, rsv=4)
        ws.send_frame(OP_CONT, compressed[10:])
        fin, rsv1, op, payload = recv_frame(ws)
        assert (rsv1, op) == (True, OP_BINARY)
        assert inflater.decompress(payload + TAIL) == data
        # Control frames are never compressed.
        ws.send_frame(OP_PING, b"p")
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert len(ws.buf) >= 2 or ws._fill(deadline) is None
            if len(ws.buf) >= 3:
                break
        assert ws.buf[0] == 0x80 | OP_PONG and bytes(ws.buf[1:3]) == b"\x01p"
    finally:
        ws.close()


@pytest.mark.parametrize("case", ["not-negotiated", "continuation", "control"])
def test_rsv1_where_not_allowed_closes_1002(make_broker, case):
    broker = ws_broker(make_broker, echo_path="/echo")
    ws = handshake(broker, "/echo", None if case == "not-negotiated" else "permessage-deflate")
    try:
        compressed = deflate_message(b"hello hello hello")
        if case == "not-negotiated":
            ws.send_frame(OP_TEXT, compressed, rsv=4)
        elif case == "continuation":
            ws.send_frame(OP_TEXT, compressed[:3], fin=False, rsv=4)
            ws.send_frame(OP_CONT, compressed[3:], rsv=4)
        else:
            ws.send_frame(OP_PING, b"x", rsv=4)
        assert ws.expect_close() == 1002
    finally:
        ws.close()


def test_decompression_bomb_closes_1009(make_broker):
    limit = 65536
    broker = ws_broker(make_broker, max_message_size=limit)
    ws = handshake(broker, "/ws", "permessage-deflate")
    try:
        _, _, op, hello = recv_frame(ws)
        assert json.loads(hello)["op"] == "connected"
        # About 700 bytes on the wire, 10x the limit once inflated.
        bomb = deflate_message(b" " * (10 * limit))
        assert len(bomb) < 2000
        started = time.monotonic()
        ws.send_frame(OP_TEXT, bomb, rsv=4)
        assert ws.expect_close() == 1009
        assert time.monotonic() - started < 3
    finally:
        ws.close()
    # The gateway is fine and still compresses for others.
    ws = handshake(broker, "/ws", "permessage-deflate")
    try:
        assert ws.headers["sec-websocket-extensions"] == "permessage-deflate"
        _, _, _, hello = recv_frame(ws)
        ws.send_frame(OP_TEXT, deflate_message(b'{"op":"ping","id":7}'), rsv=4)
        _, rsv1, _, pong = recv_frame(ws)
        assert json.loads(pong)["id"] == 7
    finally:
        ws.close()


# -- MQTT over WebSocket ---------------------------------------------------------------------------


def test_mqtt_over_websocket_compressed_when_enabled(make_broker):
    broker = ws_broker(make_broker, compression={"mqtt": True, "json": True, "echo": True})
    big = os.urandom(16).hex().encode() * 200  # 6400 compressible bytes

    async def scenario():
        async with websockets.connect(f"ws://127.0.0.1:{broker.ws_port}/mqtt", subprotocols=["mqtt"],
                                      compression="deflate") as ws:
            assert ws.response.headers.get("Sec-WebSocket-Extensions") == \
                "permessage-deflate; client_max_window_bits=13"
            await ws.send(connect_packet(unique("wsz")))
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == connack_bytes()
            await ws.send(subscribe_packet(1, [("wsz/in", 0)]))
            assert (await asyncio.wait_for(ws.recv(), TIMEOUT))[0] == 0x90
            sub = PahoClient(broker.port).start()
            pub = PahoClient(broker.port).start()
            try:
                sub.subscribe([("wsz/out", 0)])
                # Compressed by the websockets client (it compresses every message).
                await ws.send(publish_packet("wsz/out", big))
                assert sub.get(what="compressed MQTT publish").payload == big
                # Compressed by the gateway (above the threshold) and inflated by the client.
                pub.publish("wsz/in", big)
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == publish_packet("wsz/in", big)
            finally:
                sub.stop()
                pub.stop()

    run(scenario())


def test_mqtt_compressed_message_across_frames_and_bomb(make_broker):
    broker = make_broker(listeners={"ws": {"enabled": True}}, limits={"max_packet_size": 4096},
                         websocket={"compression": {"mqtt": True}})
    ws = handshake(broker, "/mqtt", "permessage-deflate; client_no_context_takeover", subprotocol="mqtt")
    try:
        assert ws.headers["sec-websocket-extensions"] == "permessage-deflate; client_no_context_takeover"
        packet = connect_packet(unique("wsz"))
        compressed = deflate_message(packet)
        ws.send_frame(OP_BINARY, compressed[:4], fin=False, rsv=4)
        ws.send_frame(OP_CONT, compressed[4:9], fin=False)
        ws.send_frame(OP_CONT, compressed[9:])
        assert recv_frame(ws)[2:] == (OP_BINARY, connack_bytes())
        # One compressed message inflating past the maximum packet size: 1009.
        ws.send_frame(OP_BINARY, deflate_message(publish_packet("wsz/x", b"\x00" * 40000)), rsv=4)
        assert ws.expect_close() == 1009
    finally:
        ws.close()


# -- the context-takeover budget -------------------------------------------------------------------


def test_context_budget_falls_back_to_no_context_takeover(make_broker):
    broker = make_broker(listeners={"ws": {"enabled": True}}, admin={"enabled": True},
                         websocket={"compression_max_contexts": 1})
    first = handshake(broker, "/ws", "permessage-deflate; client_max_window_bits")
    try:
        assert first.headers["sec-websocket-extensions"] == "permessage-deflate; client_max_window_bits=13"
        second = handshake(broker, "/ws", "permessage-deflate; client_max_window_bits")
        try:
            assert second.headers["sec-websocket-extensions"] == \
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=13"
            # Both still exchange compressed messages.
            for ws in (first, second):
                recv_frame(ws)
                ws.send_frame(OP_TEXT, deflate_message(json.dumps({"op": "ping", "id": "x" * 250}).encode()), rsv=4)
                _, rsv1, _, payload = recv_frame(ws)
                assert rsv1 and "x" * 250 in zlib.decompressobj(-15).decompress(payload + TAIL).decode()
            samples = metric_samples(get(broker.admin_port, "/metrics").body.decode())
            assert samples[("iotgw_websocket_deflate_takeover_connections", ())] == 1
            assert samples[("iotgw_websocket_deflate_takeover_refused_total", ())] >= 1
            # The first keeps its two contexts; the second holds none between messages.
            assert samples[("iotgw_websocket_deflate_contexts", ())] == 2
        finally:
            second.close()
    finally:
        first.close()
    # Its slot comes back when the connection ends.
    time.sleep(0.3)
    third = handshake(broker, "/ws", "permessage-deflate")
    try:
        assert third.headers["sec-websocket-extensions"] == "permessage-deflate"
    finally:
        third.close()


# -- bytes on the wire -----------------------------------------------------------------------------


OFFERS = {"off": None, "takeover": "permessage-deflate",
          "no-takeover": "permessage-deflate; server_no_context_takeover; client_no_context_takeover"}


@pytest.mark.parametrize("threshold", [256, 64, 0])
def test_bytes_on_the_wire_for_1000_json_messages(make_broker, threshold, record_property):
    """1,000 JSON telemetry messages (about 250 bytes each) to one /ws subscriber, without
    permessage-deflate, with it, and with it but no context takeover; the sizes are printed (pytest -s)
    and recorded as properties."""
    broker = ws_broker(make_broker, compression_threshold=threshold)
    n = 1000
    sizes = {}
    for name, offer in OFFERS.items():
        ws = handshake(broker, "/ws?client_id=" + unique("wire"), offer)
        # One inflater for every message the server sends (context takeover).
        inflater = zlib.decompressobj(-15)

        def message() -> tuple[int, bytes]:
            nonlocal inflater
            _, rsv1, _, payload = recv_frame(ws)
            size = len(payload) + (2 if len(payload) < 126 else 4)
            if not rsv1:
                return size, payload
            text = inflater.decompress(payload + TAIL)
            if name == "no-takeover":
                inflater = zlib.decompressobj(-15)
            return size, text

        try:
            assert json.loads(message()[1])["op"] == "connected"
            ws.send_frame(OP_TEXT, json.dumps({"op": "subscribe", "filter": "wire/#", "id": 1}).encode())
            assert json.loads(message()[1])["op"] == "ack"
            pub = PahoClient(broker.port).start()
            try:
                for i in range(n):
                    body = {"device": f"dev-{i % 50:04d}", "seq": i, "temperature": 20 + (i * 7) % 13 / 10,
                            "humidity": 40 + i % 17, "battery": 3.7, "status": "ok",
                            "location": {"lat": 48.85 + i % 5 / 1000, "lon": 2.35}}
                    pub.publish(f"wire/dev-{i % 50:04d}/telemetry", json.dumps(body).encode())
            finally:
                pub.stop()
            wire = plain = 0
            for _ in range(n):
                size, text = message()
                wire += size
                plain += len(text)
                assert json.loads(text)["op"] == "message"
            sizes[name] = (wire, plain)
        finally:
            ws.close()
    assert len({plain for _, plain in sizes.values()}) == 1
    print(f"\nthreshold {threshold}: 1000 JSON messages, {sizes['off'][1]} bytes of JSON; on the wire: " +
          ", ".join(f"{name} {wire}" for name, (wire, _) in sizes.items()))
    record_property("wire_bytes", sizes)
    assert sizes["no-takeover"][0] <= sizes["off"][0]
    if threshold < 250:
        assert sizes["takeover"][0] < sizes["off"][0] / 4
