#!/usr/bin/env python3
"""Idle-connection benchmark: how many MQTT clients a broker holds and what each costs.

Opens N raw MQTT 3.1.1 connections (CONNECT, wait for CONNACK, then stay idle), samples the broker's
RSS from /proc/PID/status before, while all are connected, and after they all disconnected.
The same client drives every broker, so the figures are comparable.

Usage: idle_connections.py --port PORT --pid BROKER_PID --count N [--json]
Loopback only; bounded by --count and --timeout.
"""
import argparse
import asyncio
import struct
import time
from benchutil import raise_open_files, rss_kib, report



def connect_packet(client_id, keep_alive=600):
    cid = client_id.encode()
    var = struct.pack("!H", 4) + b"MQTT" + bytes([4, 0x02]) + struct.pack("!H", keep_alive)
    payload = struct.pack("!H", len(cid)) + cid
    body = var + payload
    return bytes([0x10, len(body)]) + body


async def open_client(host, port, index, sem):
    async with sem:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(connect_packet(f"idle-{index}"))
        await writer.drain()
        ack = await reader.readexactly(4)
        if ack[0] != 0x20 or ack[3] != 0:
            raise RuntimeError(f"bad CONNACK {ack.hex()}")
        return reader, writer


async def settle(pid, seconds=2.0):
    """Waits until RSS stops changing (or `seconds` pass), returns the last sample."""
    last = rss_kib(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = rss_kib(pid)
        if abs(now - last) < 64:
            return now
        last = now
    return last


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    raise_open_files(args.count)

    before = await settle(args.pid)
    sem = asyncio.Semaphore(500)
    start = time.monotonic()
    clients = await asyncio.wait_for(
        asyncio.gather(*(open_client(args.host, args.port, i, sem) for i in range(args.count))),
        timeout=args.timeout,
    )
    connect_seconds = time.monotonic() - start
    held = await settle(args.pid)
    for _, writer in clients:
        writer.write(b"\xe0\x00")  # DISCONNECT
        writer.close()
    await asyncio.gather(*(w.wait_closed() for _, w in clients), return_exceptions=True)
    await asyncio.sleep(1.0)
    await asyncio.sleep(2.0)  # the gateway trims freed memory on its 1 s housekeeping tick
    after = await settle(args.pid, 4.0)
    result = {
        "connections": len(clients),
        "connect_seconds": round(connect_seconds, 2),
        "rss_before_kib": before,
        "rss_held_kib": held,
        "rss_after_kib": after,
        "kib_per_connection": round((held - before) / len(clients), 2),
    }
    report(result, args.json)


if __name__ == "__main__":
    asyncio.run(main())
