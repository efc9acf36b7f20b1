"""(14) The JSON WebSocket API, driven by the Python `websockets` client: subscribe, publish,
receive from MQTT publishers, error replies; and RFC 6455 edges on raw sockets (fragmentation,
ping/pong, close codes 1007 and 1009, unmasked frames, dead clients, the echo endpoint)."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import struct

import pytest
import websockets

from helpers import PahoClient, iotgw_only, unique
from websocket_helpers import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawWebSocket

TIMEOUT = 5.0


@pytest.fixture(autouse=True)
def _iotgw_only():
    iotgw_only("the JSON API and these WebSocket details are iotgw's")


def ws_broker(make_broker, **websocket):
    return make_broker(listeners={"ws": {"enabled": True}}, websocket=websocket)


async def recv_json(ws, timeout: float = TIMEOUT) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def request(ws, message: dict) -> dict:
    await ws.send(json.dumps(message))
    return await recv_json(ws)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_json_api_subscribe_publish_and_receive_from_mqtt(make_broker):
    broker = ws_broker(make_broker)

    async def scenario():
        async with websockets.connect(f"ws://127.0.0.1:{broker.ws_port}/ws?client_id=dash-1") as ws:
            hello = await recv_json(ws)
            assert hello == {"op": "connected", "client_id": "dash-1"}
            assert await request(ws, {"op": "subscribe", "filter": "sensors/#", "qos": 1, "id": 1}) == \
                {"op": "ack", "id": 1, "qos": 1}
            # From an MQTT publisher: JSON payload stays JSON, other bytes are base64.
            pub = PahoClient(broker.port).start()
            try:
                pub.publish("sensors/t1", b'{"t": 21.5}', qos=1)
                pub.publish("sensors/raw", b"\xff\x00binary", qos=0)
                pub.publish("sensors/text", b"hello", qos=0)
            finally:
                pub.stop()
            m1, m2, m3 = [await recv_json(ws) for _ in range(3)]
            assert (m1["op"], m1["topic"], m1["payload"], m1["qos"], m1["retain"]) == \
                ("message", "sensors/t1", {"t": 21.5}, 1, False)
            assert isinstance(m1["ts"], int) and m1["ts"] > 1_600_000_000_000
            assert "encoding" not in m1
            assert m2["encoding"] == "base64" and base64.b64decode(m2["payload"]) == b"\xff\x00binary"
            assert m3["encoding"] == "base64" and base64.b64decode(m3["payload"]) == b"hello"
            # To an MQTT subscriber.
            sub = PahoClient(broker.port).start()
            try:
                sub.subscribe([("out/#", 1)])
                assert await request(ws, {"op": "publish", "topic": "out/a", "payload": {"on": True},
                                          "qos": 1, "id": "p1"}) == {"op": "ack", "id": "p1"}
                got = sub.get(what="JSON API publish")
                assert (got.topic, json.loads(got.payload), got.qos) == ("out/a", {"on": True}, 1)
                assert await request(ws, {"op": "publish", "topic": "out/b", "encoding": "base64",
                                          "payload": base64.b64encode(b"\x00\x01").decode(), "id": 2}) == \
                    {"op": "ack", "id": 2}
                assert sub.get(what="base64 publish").payload == b"\x00\x01"
            finally:
                sub.stop()
            # Its own publish comes back through its subscription; then unsubscribe stops that.
            assert (await request(ws, {"op": "publish", "topic": "sensors/self", "payload": [1, 2], "id": 3}))["op"] == "ack"
            echo = await recv_json(ws)
            assert (echo["topic"], echo["payload"], echo["qos"]) == ("sensors/self", [1, 2], 0)
            assert await request(ws, {"op": "unsubscribe", "filter": "sensors/#", "id": 4}) == {"op": "ack", "id": 4}
            assert (await request(ws, {"op": "publish", "topic": "sensors/self", "payload": 1, "id": 5}))["op"] == "ack"
            assert await request(ws, {"op": "ping", "id": 6}) == {"op": "ack", "id": 6}

    run(scenario())


def test_json_api_retained_and_generated_client_id(make_broker):
    broker = ws_broker(make_broker)

    async def scenario():
        async with websockets.connect(f"ws://127.0.0.1:{broker.ws_port}/ws") as ws:
            hello = await recv_json(ws)
            assert hello["op"] == "connected" and hello["client_id"]
            assert (await request(ws, {"op": "publish", "topic": "r/1", "payload": "kept", "retain": True, "qos": 1,
                                       "id": 1}))["op"] == "ack"
        async with websockets.connect(f"ws://127.0.0.1:{broker.ws_port}/ws") as ws:
            await recv_json(ws)
            await ws.send(json.dumps({"op": "subscribe", "filter": "r/#", "id": 2}))
            replies = [await recv_json(ws), await recv_json(ws)]
            assert {"op": "ack", "id": 2, "qos": 0} in replies
            message = next(r for r in replies if r["op"] == "message")
            assert (message["topic"], message["payload"], message["retain"]) == ("r/1", "kept", True)

    run(scenario())


@pytest.mark.parametrize("text,expected_id,reason_part", [
    ("{not json", None, "bad JSON"),
    ('{"op":"subscribe","filter":"a/#"', None, "bad JSON"),
    ("[1,2]", None, "bad JSON"),
    ('{"op":"frobnicate","id":7}', 7, "unknown op"),
    ('{"id":8}', 8, "missing op"),
    ('{"op":"publish","topic":"a/+/b","payload":1,"id":"x"}', "x", "bad topic"),
    ('{"op":"publish","topic":"","payload":1,"id":9}', 9, "bad topic"),
    ('{"op":"subscribe","filter":"a/#/b","id":10}', 10, "bad topic filter"),
    ('{"op":"subscribe","filter":"a/b#","id":11}', 11, "bad topic filter"),
    ('{"op":"publish","topic":"a","payload":1,"qos":2,"id":12}', 12, "qos"),
    ('{"op":"publish","topic":"a","encoding":"base64","payload":"%%%","id":13}', 13, "base64"),
])
def test_json_api_error_replies(make_broker, text, expected_id, reason_part):
    broker = ws_broker(make_broker)

    async def scenario():
        async with websockets.connect(f"ws://127.0.0.1:{broker.ws_port}/ws") as ws:
            await recv_json(ws)
            await ws.send(text)
            reply = await recv_json(ws)
            assert reply["op"] == "error" and reply["id"] == expected_id, reply
            assert reason_part in reply["reason"], reply
            # The connection stays usable after an error.
            assert await request(ws, {"op": "ping", "id": "still"}) == {"op": "ack", "id": "still"}

    run(scenario())


def test_json_api_shutdown_close_1001(make_broker):
    broker = ws_broker(make_broker)

    async def scenario():
        async with websockets.connect(f"ws://127.0.0.1:{broker.ws_port}/ws") as ws:
            await recv_json(ws)
            broker.signal(signal.SIGTERM)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001

    run(scenario())
    assert broker.wait(15) == 0


# -- RFC 6455 edges on raw sockets -----------------------------------------------------------


def raw_json(broker) -> RawWebSocket:
    ws = RawWebSocket(broker.ws_port, "/ws")
    assert ws.status == 101, ws.status
    op, data = ws.recv_data()
    assert op == OP_TEXT and json.loads(data)["op"] == "connected"
    return ws


def test_fragmented_text_message_is_reassembled(make_broker):
    broker = ws_broker(make_broker)
    ws = raw_json(broker)
    try:
        text = json.dumps({"op": "ping", "id": "fragmented"}).encode()
        ws.send_frame(OP_TEXT, text[:5], fin=False)
        ws.send_frame(OP_PING, b"in-between")  # control frames may sit between fragments
        ws.send_frame(0x0, text[5:12], fin=False)
        ws.send_frame(0x0, text[12:], fin=True)
        frames = [ws.recv_frame(), ws.recv_frame()]
        assert (True, OP_PONG, b"in-between") in frames
        assert (True, OP_TEXT, b'{"op":"ack","id":"fragmented"}') in frames
    finally:
        ws.close()


def test_server_pings_idle_client_and_drops_dead_one(make_broker):
    # Ping ticks share the loop's one-second deadline wheel: each may come up to a second late.
    broker = ws_broker(make_broker, ping_interval=1)
    ws = raw_json(broker)
    try:
        fin, op, payload = ws.recv_frame(timeout=6)
        assert op == OP_PING
        ws.send_frame(OP_PONG, payload)  # alive: answered
        fin, op, payload = ws.recv_frame(timeout=6)
        assert op == OP_PING
        # Now play dead: no pong. Two silent intervals later the server drops the connection.
        assert ws.closed_within(8.0), "dead client was not disconnected"
    finally:
        ws.close()


@pytest.mark.parametrize("case", ["invalid-utf8", "invalid-utf8-fragmented"])
def test_invalid_utf8_text_closes_1007(make_broker, case):
    broker = ws_broker(make_broker)
    ws = raw_json(broker)
    try:
        if case == "invalid-utf8":
            ws.send_frame(OP_TEXT, b'{"op":"ping","id":"\xc3\x28"}')
        else:
            ws.send_frame(OP_TEXT, b'{"op":"ping","id":"\xe2\x82', fin=False)
            ws.send_frame(0x0, b'\x28"}', fin=True)
        assert ws.expect_close() == 1007
    finally:
        ws.close()


@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragments"])
def test_oversized_message_closes_1009(make_broker, fragmented):
    broker = ws_broker(make_broker, max_message_size=1024)
    ws = raw_json(broker)
    try:
        if fragmented:
            for _ in range(3):
                ws.send_frame(OP_TEXT if _ == 0 else 0x0, b" " * 500, fin=False)
        else:
            ws.send_frame(OP_TEXT, b" " * 2000)
        assert ws.expect_close() == 1009
    finally:
        ws.close()


def test_unmasked_client_frame_closes_1002(make_broker):
    broker = ws_broker(make_broker)
    ws = raw_json(broker)
    try:
        ws.send_frame(OP_TEXT, b'{"op":"ping"}', mask=False)
        assert ws.expect_close() == 1002
    finally:
        ws.close()


def test_binary_frame_on_json_api_closes_1003(make_broker):
    broker = ws_broker(make_broker)
    ws = raw_json(broker)
    try:
        ws.send_frame(OP_BINARY, b"\x01\x02")
        assert ws.expect_close() == 1003
    finally:
        ws.close()


def test_client_close_handshake_is_answered(make_broker):
    broker = ws_broker(make_broker)
    ws = raw_json(broker)
    try:
        ws.send_frame(OP_CLOSE, struct.pack("!H", 1000) + b"bye")
        assert ws.expect_close() == 1000
    finally:
        ws.close()


def test_echo_endpoint(make_broker):
    broker = ws_broker(make_broker, echo_path="/echo")
    ws = RawWebSocket(broker.ws_port, "/echo")
    try:
        assert ws.status == 101
        ws.send_frame(OP_TEXT, "héllo".encode())
        assert ws.recv_data() == (OP_TEXT, "héllo".encode())
        ws.send_frame(OP_BINARY, b"\x00\xff", fin=False)
        ws.send_frame(0x0, b"\x01", fin=True)
        assert ws.recv_data() == (OP_BINARY, b"\x00\xff\x01")
        ws.send_frame(OP_PING, b"p")
        assert ws.recv_frame() == (True, OP_PONG, b"p")
    finally:
        ws.close()
    # Off by default.
    off = ws_broker(make_broker)
    ws = RawWebSocket(off.ws_port, "/echo")
    try:
        assert ws.status == 404
    finally:
        ws.close()
