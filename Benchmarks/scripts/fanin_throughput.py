#!/usr/bin/env python3
"""QoS 0 fan-in throughput: P publishers -> one wildcard subscriber, with the mosquitto command-line
clients driving the broker (the same clients for every broker).

Each publisher is `mosquitto_pub -l` reading N lines; one `mosquitto_sub -t 'bench/#' -C P*N` counts
deliveries. The figure is messages delivered to the subscriber per second, from the first publisher
start to the subscriber's exit, and how many arrived (QoS 0 may be dropped by a broker under load).

Usage: fanin_throughput.py --port PORT [--publishers 10] [--messages 100000] [--qos 0] [--json]
Loopback only; bounded by --timeout.
"""
import argparse
import os
import subprocess
import tempfile
import time
from benchutil import report


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--publishers", type=int, default=10)
    parser.add_argument("--messages", type=int, default=100000, help="per publisher")
    parser.add_argument("--qos", type=int, default=0)
    parser.add_argument("--payload", type=int, default=64, help="payload bytes")
    parser.add_argument("--protocol", default="311", choices=["311", "5"])
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    total = args.publishers * args.messages
    with tempfile.NamedTemporaryFile("w", delete=False, suffix=".txt") as f:
        line = "x" * (args.payload - 1)
        f.write((line + "\n") * args.messages)
        lines_path = f.name
    sub = subprocess.Popen(
        ["mosquitto_sub", "-V", args.protocol, "-h", args.host, "-p", str(args.port), "-t", "bench/#",
         "-q", str(args.qos), "-C", str(total), "-i", f"bench-sub-{os.getpid()}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    # mosquitto_sub gives no signal when its SUBACK arrived; half a second on loopback is ample, and a
    # late subscription would only lower the count, which the report shows.
    time.sleep(0.5)
    start = time.monotonic()
    pubs = []
    for i in range(args.publishers):
        with open(lines_path, "rb") as stdin:
            pubs.append(subprocess.Popen(
                ["mosquitto_pub", "-V", args.protocol, "-h", args.host, "-p", str(args.port),
                 "-t", f"bench/p{i}", "-q", str(args.qos), "-l", "-i", f"bench-pub-{os.getpid()}-{i}"],
                stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
    state = {"received": 0, "last": start}

    def count():
        for _ in iter(sub.stdout.readline, b""):
            state["received"] += 1
            state["last"] = time.monotonic()

    import threading
    reader = threading.Thread(target=count, daemon=True)
    reader.start()
    deadline = start + args.timeout
    # Done when everything arrived, or when the publishers finished and nothing arrived for 2 s
    # (a broker that dropped QoS 0 messages), or at the deadline.
    while time.monotonic() < deadline:
        if state["received"] >= total:
            break
        if all(p.poll() is not None for p in pubs) and time.monotonic() - state["last"] > 2:
            break
        time.sleep(0.05)
    publish_done = all(p.poll() == 0 for p in pubs)
    for p in pubs:
        if p.poll() is None:
            p.kill()
    sub.kill()
    sub.wait()
    reader.join(2)
    os.unlink(lines_path)
    received = state["received"]
    elapsed = state["last"] - start
    result = {
        "publishers": args.publishers,
        "messages_sent": total,
        "messages_received": received,
        "seconds": round(elapsed, 3),
        "received_per_second": round(received / elapsed) if elapsed > 0 else 0,
        "publishers_ok": publish_done,
    }
    report(result, args.json)


if __name__ == "__main__":
    main()
