#!/usr/bin/env python3
"""WebSocket benchmarks against a running gateway (loopback only, bounded by --count/--seconds).

idle:   opens N WebSocket connections (JSON API at /ws, or MQTT over WebSocket at /mqtt with a
        CONNECT each), waits until every one is established, samples the gateway's RSS from
        /proc/PID/status before, with all connected, and after all disconnected.
json:   P JSON API publishers send QoS 0 (or QoS 1, waiting for each ack) publishes for S seconds
        while one JSON API subscriber counts what arrives; prints messages/s sent and received.

Usage:
  websocket_load.py idle --port 8083 --pid PID --count 5000 [--endpoint json|mqtt]
  websocket_load.py json --port 8083 --publishers 100 --seconds 10 [--qos 0|1]
"""
import argparse
import asyncio
import base64
import json
import os
import resource
import struct
import sys
import time
from benchutil import rss_kib



class WS:
    """A minimal RFC 6455 client on asyncio streams (masked frames, no fragmentation)."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port, path, subprotocol=None):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"upgrade refused: {head[:40]!r}")
        return cls(reader, writer)

    def send(self, opcode, payload):
        n = len(payload)
        header = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
        mask = os.urandom(4)
        self.writer.write(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    async def recv(self):
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        payload = await self.reader.readexactly(n)
        op = b0 & 0x0F
        if op == 0x9:  # ping: answer
            self.send(0xA, payload)
            return await self.recv()
        return op, payload

    def close(self):
        self.writer.close()


def connect_packet(client_id):
    cid = client_id.encode()
    body = struct.pack("!H", 4) + b"MQTT" + bytes([4, 0x02]) + struct.pack("!H", 600) + struct.pack("!H", len(cid)) + cid
    return bytes([0x10, len(body)]) + body


async def open_idle(port, endpoint, index, sem):
    async with sem:
        if endpoint == "json":
            ws = await WS.connect(port, f"/ws?client_id=idle-{index}")
            op, payload = await ws.recv()
            assert json.loads(payload)["op"] == "connected"
        else:
            ws = await WS.connect(port, "/mqtt", "mqtt")
            ws.send(0x2, connect_packet(f"idle-{index}"))
            op, payload = await ws.recv()
            assert payload[:1] == b"\x20" and payload[3] == 0, payload
        return ws


async def settle(pid, seconds=3.0):
    last = rss_kib(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = rss_kib(pid)
        if abs(now - last) < 64:
            return now
        last = now
    return last


async def idle(args):
    before = await settle(args.pid)
    sem = asyncio.Semaphore(200)
    started = time.monotonic()
    clients = await asyncio.wait_for(
        asyncio.gather(*(open_idle(args.port, args.endpoint, i, sem) for i in range(args.count))), args.timeout)
    connect_seconds = time.monotonic() - started
    connected = await settle(args.pid)
    for c in clients:
        c.close()
    await asyncio.sleep(1.0)
    after = await settle(args.pid, 5.0)
    result = {
        "endpoint": args.endpoint, "connections": len(clients), "connect_seconds": round(connect_seconds, 2),
        "rss_before_mb": round(before / 1024, 1), "rss_connected_mb": round(connected / 1024, 1),
        "rss_after_mb": round(after / 1024, 1),
        "rss_per_connection_kib": round((connected - before) / len(clients), 2),
    }
    print(json.dumps(result))


async def throughput(args):
    sub = await WS.connect(args.port, "/ws?client_id=bench-sub")
    await sub.recv()
    sub.send(0x1, json.dumps({"op": "subscribe", "filter": "bench/#", "qos": 0, "id": 0}).encode())
    assert json.loads((await sub.recv())[1])["op"] == "ack"
    received = 0
    stop_at = time.monotonic() + args.seconds

    async def count():
        nonlocal received
        while True:
            _, payload = await sub.recv()
            if payload.startswith(b'{"op":"message"'):
                received += 1

    sent = 0

    async def publisher(i):
        nonlocal sent
        ws = await WS.connect(args.port, f"/ws?client_id=bench-pub-{i}")
        await ws.recv()
        message = json.dumps({"op": "publish", "topic": f"bench/{i}", "payload": {"seq": 1, "v": 21.5},
                              "qos": args.qos}).encode()
        while time.monotonic() < stop_at:
            for _ in range(10):
                ws.send(0x1, message)
            await ws.writer.drain()
            for _ in range(10):
                await ws.recv()  # the ack: bounds how far each publisher runs ahead
            sent += 10
        ws.close()

    counter = asyncio.create_task(count())
    started = time.monotonic()
    await asyncio.gather(*(publisher(i) for i in range(args.publishers)))
    elapsed = time.monotonic() - started
    await asyncio.sleep(1.0)  # let in-flight deliveries arrive
    counter.cancel()
    print(json.dumps({"publishers": args.publishers, "qos": args.qos, "seconds": round(elapsed, 2), "sent": sent,
                      "received": received, "sent_per_second": round(sent / elapsed),
                      "received_per_second": round(received / elapsed)}))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("idle")
    p.add_argument("--port", type=int, default=8083)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--endpoint", choices=["json", "mqtt"], default="json")
    p.add_argument("--timeout", type=float, default=300)
    p = sub.add_parser("json")
    p.add_argument("--port", type=int, default=8083)
    p.add_argument("--publishers", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--qos", type=int, choices=[0, 1], default=0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(idle(args) if args.mode == "idle" else throughput(args))


if __name__ == "__main__":
    sys.exit(main())
