#!/usr/bin/env python3
"""Shutdown benchmark: SIGTERM to exit with N connected MQTT 5 clients.

Starts the gateway itself (so it can wait for the exit status), with a generated JSON config on a free
loopback port, storage on (SQLite in a temporary directory) and `shutdown.timeout` 30 s; opens N raw
MQTT 5 connections (CONNECT, CONNACK, idle), sends SIGTERM, and measures the time to the process's exit.
Every client's socket is then read to its end: the report counts the clients that received DISCONNECT
with reason 0x8B (server shutting down) before the close.

Usage: shutdown_time.py --iotgw PATH --count N [--rounds R] [--json]
Loopback only; bounded by --count and --timeout.
"""
import argparse
import asyncio
import json
import os
import signal
import statistics
import struct
import subprocess
import tempfile
import time
from benchutil import free_port, raise_open_files, report



def connect_packet_v5(client_id, keep_alive=600):
    cid = client_id.encode()
    var = struct.pack("!H", 4) + b"MQTT" + bytes([5, 0x02]) + struct.pack("!H", keep_alive) + b"\x00"
    body = var + struct.pack("!H", len(cid)) + cid
    return bytes([0x10, len(body)]) + body


async def read_packet(reader):
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    return first, await reader.readexactly(length)


async def open_client(port, index, sem):
    async with sem:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(connect_packet_v5(f"shutdown-{index}"))
        await writer.drain()
        first, body = await read_packet(reader)
        if first != 0x20 or body[1] != 0:
            raise RuntimeError(f"bad CONNACK {first:#x} {body.hex()}")
        return reader, writer


async def disconnect_reason(reader):
    """The reason code of the DISCONNECT the gateway sent before closing, or None."""
    try:
        while True:
            first, body = await read_packet(reader)
            if first == 0xE0:
                return body[0] if body else 0
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


async def wait_listening(port, deadline):
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError("gateway did not start listening")


async def one_round(args, workdir, round_index):
    port = free_port()
    config = {
        "log": {"level": args.log_level},
        "listeners": {"mqtt": {"enabled": True, "host": "127.0.0.1", "port": port},
                      "ws": {"enabled": False}},
        "admin": {"enabled": False},
        "limits": {"max_connections": args.count + 100},
        "shutdown": {"timeout": 30},
        "storage": {"data_dir": os.path.join(workdir, f"data{round_index}")},
    }
    path = os.path.join(workdir, f"shutdown{round_index}.json")
    with open(path, "w") as f:
        json.dump(config, f)
    gateway = subprocess.Popen([args.iotgw, "run", "--config", path], stdout=subprocess.DEVNULL)
    try:
        await wait_listening(port, time.monotonic() + 30)
        sem = asyncio.Semaphore(500)
        clients = await asyncio.wait_for(
            asyncio.gather(*(open_client(port, i, sem) for i in range(args.count))), timeout=args.timeout)
        reasons = [asyncio.create_task(disconnect_reason(r)) for r, _ in clients]
        started = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        status = await loop.run_in_executor(None, gateway.wait, args.timeout)
        elapsed = time.monotonic() - started
        got = await asyncio.wait_for(asyncio.gather(*reasons), timeout=args.timeout)
        for _, writer in clients:
            writer.close()
        return {"seconds": elapsed, "status": status, "with_0x8b": sum(1 for r in got if r == 0x8B)}
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iotgw", required=True)
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    raise_open_files(args.count)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="iotgw-shutdown-") as workdir:
        for i in range(args.rounds):
            rounds.append(await one_round(args, workdir, i))
    result = {
        "connections": args.count,
        "rounds": rounds,
        "median_seconds": round(statistics.median(r["seconds"] for r in rounds), 3),
        "all_exit_0": all(r["status"] == 0 for r in rounds),
        "all_got_0x8b": all(r["with_0x8b"] == args.count for r in rounds),
    }
    report(result, args.json)


if __name__ == "__main__":
    asyncio.run(main())
