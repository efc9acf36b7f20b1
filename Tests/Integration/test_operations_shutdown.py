"""(Operations) Graceful drain at scale and the forced exit.

* SIGTERM with 1,000 connected MQTT 5 clients publishing QoS 1 (asyncio, one event loop, no thread per
  client) with storage on and `ack: persisted`: exit 0 within shutdown.timeout, every client received
  DISCONNECT 0x8B, and every message whose PUBACK a publisher received reached the subscriber and is
  in the `messages` table after the exit.
* A second SIGTERM during the drain forces the exit with status 3 and logs what was abandoned.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from helpers import iotgw_only, publish_packet, raw_connected, unique, wait_until
from operations_helpers import AsyncClient5

CLIENTS = 1000
SIGTERM_AFTER = 3000          # messages at the subscriber before SIGTERM
PUBLISH_PAUSE = 0.25          # seconds each publisher waits between acknowledged messages
MAX_BACKLOG = 2000            # acknowledged but not yet at the subscriber, across all publishers


@pytest.fixture(autouse=True)
def _iotgw_only():
    iotgw_only("measures iotgw's own drain")


def test_sigterm_with_1000_publishing_clients(make_broker):
    shutdown_timeout = 10
    b = make_broker(
        shutdown={"timeout": shutdown_timeout},
        limits={"max_queued_messages": 200000, "max_queued_bytes": 64 * 1024 * 1024},
        storage={"ack": "persisted"},
    )
    topic = unique("scale")
    result: dict = {}

    async def main() -> None:
        sub = await AsyncClient5.connect(b.port, unique("scale-sub"))
        sub.subscribe(1, f"{topic}/#", 1)
        sub_reader = asyncio.create_task(sub.run_reader())

        limit = asyncio.Semaphore(100)

        async def connect(i: int) -> AsyncClient5:
            async with limit:
                return await AsyncClient5.connect(b.port, f"{topic}-pub-{i}")

        pubs = await asyncio.gather(*(connect(i) for i in range(CLIENTS)))
        readers = [asyncio.create_task(p.run_reader()) for p in pubs]
        acked: list[bytes] = []

        async def publisher(i: int, client: AsyncClient5) -> None:
            seq = 0
            while not client.closed:
                seq += 1
                pid = seq % 65535 + 1
                payload = f"{i}-{seq}".encode()
                client.acked.discard(pid)
                try:
                    client.publish(f"{topic}/{i}", payload, pid)
                except (ConnectionError, RuntimeError):
                    return
                while pid not in client.acked and not client.closed:
                    client.ack_event.clear()
                    await client.ack_event.wait()
                if pid in client.acked:
                    acked.append(payload)
                await asyncio.sleep(PUBLISH_PAUSE)
                # Keep the subscriber (one Python coroutine) within reach of the publishers, so the
                # drain is bounded by the gateway, not by this test's own CPU.
                while len(acked) - len(sub.received) > MAX_BACKLOG and not client.closed:
                    await asyncio.sleep(0.05)

        publishers = [asyncio.create_task(publisher(i, p)) for i, p in enumerate(pubs)]
        deadline = time.monotonic() + 60
        while len(sub.received) < SIGTERM_AFTER:
            assert time.monotonic() < deadline, f"only {len(sub.received)} messages at the subscriber after 60 s"
            await asyncio.sleep(0.05)

        connected = sum(not p.closed for p in pubs)
        t0 = time.monotonic()
        b.signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        rc = await loop.run_in_executor(None, b.wait, shutdown_timeout + 10)
        result["elapsed"] = time.monotonic() - t0
        result["rc"] = rc
        await asyncio.wait_for(asyncio.gather(*readers, sub_reader), 15)
        await asyncio.wait_for(asyncio.gather(*publishers), 15)
        result.update(connected=connected, acked=acked, received=list(sub.received),
                      reasons=[p.disconnect_reason for p in pubs], sub_reason=sub.disconnect_reason)

    asyncio.run(main())
    assert result["connected"] == CLIENTS
    assert result["rc"] == 0, f"exit status {result['rc']}"
    assert result["elapsed"] < shutdown_timeout, f"exit {result['elapsed']:.2f}s after SIGTERM"
    not_8b = [r for r in result["reasons"] if r != 0x8B]
    assert not not_8b and result["sub_reason"] == 0x8B, (
        f"{len(not_8b)} publishers did not get DISCONNECT 0x8B (e.g. {not_8b[:5]}); subscriber: {result['sub_reason']}")
    missing = set(result["acked"]) - set(result["received"])
    print(f"{CLIENTS} clients: acknowledged {len(result['acked'])}, received {len(result['received'])}, "
          f"exit 0 {result['elapsed']:.2f} s after SIGTERM")
    assert not missing, f"{len(missing)} acknowledged messages never reached the subscriber"
    database = Path(b.config["storage"]["data_dir"]) / "iotgw.db"
    con = sqlite3.connect(str(database), timeout=5)
    try:
        stored = {row[0] for row in con.execute("SELECT payload FROM messages WHERE topic LIKE ?", (f"{topic}/%",))}
    finally:
        con.close()
    not_stored = set(result["acked"]) - stored
    print(f"stored after the exit: {len(stored)} rows")
    assert not not_stored, f"{len(not_stored)} acknowledged messages are not in the messages table"


def test_second_sigterm_forces_exit_and_logs_abandoned(make_broker):
    b = make_broker(shutdown={"timeout": 8})
    topic = unique("force")
    sub = raw_connected(b.port)
    pub = raw_connected(b.port)
    try:
        sub.subscribe(1, [(topic, 1)])
        for pid in range(1, 6):
            pub.send(publish_packet(topic, b"held", qos=1, packet_id=pid))
            pub.expect(bytes([0x40, 0x02, 0x00, pid]), what="PUBACK")
        # The subscriber never acknowledges: the drain waits for it.
        t0 = time.monotonic()
        b.signal(signal.SIGTERM)
        wait_until(lambda: "graceful shutdown: draining" in b.log_path.read_text(), 5, message="the drain to start")
        b.signal(signal.SIGTERM)
        rc = b.wait(5)
        elapsed = time.monotonic() - t0
        assert rc == 3, f"exit status {rc} after a second SIGTERM (expected 3, forced)"
        assert elapsed < 5, f"forced exit took {elapsed:.2f}s"
        line = next(l for l in b.log_path.read_text().splitlines() if "forced exit" in l)
        m = re.search(r"iotgw\.undelivered\.messages=(\d+)", line)
        assert m and int(m.group(1)) >= 1, line
        assert "second SIGTERM" in line, line
    finally:
        sub.close()
        pub.close()
