#!/usr/bin/env python3
"""QoS 1 through a bridged path: device -> edge A -> upstream mosquitto -> edge B -> subscriber.

Runs the same measurement twice in one invocation: with the edges being two iotgw gateways bridged to
the upstream (`bridges:` with a `both` rule on `bench/#`), and with the edges being two mosquitto
brokers bridged to the upstream with mosquitto's own `connection` bridge (`topic bench/# both 1`).
Everything is on loopback; every process is started and stopped here.

Two figures per path:
* throughput: one paho publisher sends --messages QoS 1 messages with --inflight unacknowledged at most;
  messages per second = messages received by the subscriber on B / (last arrival - first send).
* latency: --rate messages per second for --seconds; each payload carries its send time
  (time.monotonic_ns, same host); p50/p99/max of arrival - send at the subscriber.

Usage: bridge_path.py --iotgw PATH [--messages 20000] [--inflight 100] [--rate 500] [--seconds 10] [--json]
"""
import argparse
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import paho.mqtt.client as mqtt

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {timeout}s")


def start(argv, log):
    return subprocess.Popen(argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def mosquitto_conf(port, bridge_to=None, name=None):
    lines = ["per_listener_settings false", "allow_anonymous true", f"listener {port} 127.0.0.1",
             "persistence false", "max_queued_messages 100000", "max_inflight_messages 100",
             "log_dest stderr", "log_type error", "log_type warning"]
    if bridge_to:
        lines += [f"connection {name}", f"address 127.0.0.1:{bridge_to}", "bridge_protocol_version mqttv50",
                  "cleansession false", f"remote_clientid {name}", "topic bench/# both 1",
                  "bridge_max_packet_size 0", "try_private true"]
    return "\n".join(lines) + "\n"


def iotgw_conf(port, upstream, name):
    return json.dumps({
        "log": {"level": "notice"},
        "listeners": {"mqtt": {"host": "127.0.0.1", "port": port}, "ws": {"enabled": False}},
        "admin": {"enabled": False},
        "storage": {"enabled": False},
        "limits": {"max_queued_messages": 100000, "max_queued_bytes": 67108864},
        "bridges": [{"name": "up", "host": "127.0.0.1", "port": upstream, "client_id": name,
                     "rules": [{"topic": "bench/#", "direction": "both", "qos": 1}],
                     "queue": {"max_messages": 100000, "max_bytes": 67108864}, "max_inflight": 100}],
    })


class Subscriber:
    def __init__(self, port):
        self.arrivals = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{port}")
        self.subscribed = threading.Event()
        self.client.on_message = lambda c, u, m: self.arrivals.put((time.monotonic_ns(), m.payload))
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe("bench/#", qos=1)
        if not self.subscribed.wait(10):
            raise SystemExit("no SUBACK")

    def collect(self, count, timeout):
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            try:
                out.append(self.arrivals.get(timeout=0.2))
            except queue.Empty:
                pass
        return out

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()


def publisher(port, inflight):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{port}")
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def path_ready(pub_port, sub):
    """Send probes until one crosses (the bridges are connected and subscribed)."""
    client = publisher(pub_port, 10)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            client.publish("bench/probe", b"probe", qos=1).wait_for_publish(5)
            got = sub.collect(1, 0.5)
            if got:
                time.sleep(0.5)
                while not sub.arrivals.empty():
                    sub.arrivals.get()
                return
        raise SystemExit("the bridged path did not carry a probe within 30 s")
    finally:
        client.disconnect()
        client.loop_stop()


def measure(pub_port, sub, args):
    path_ready(pub_port, sub)
    # Throughput: as fast as the window allows.
    client = publisher(pub_port, args.inflight)
    payload = b"x" * 64
    started = time.monotonic_ns()
    infos = [client.publish("bench/t", payload, qos=1) for _ in range(args.messages)]
    got = sub.collect(args.messages, args.timeout)
    for info in infos[-1:]:
        info.wait_for_publish(10)
    elapsed = (got[-1][0] - started) / 1e9 if got else float("nan")
    throughput = {"sent": args.messages, "received": len(got), "seconds": round(elapsed, 3),
                  "msg_per_s": round(len(got) / elapsed, 1) if got else 0}
    # Latency at a fixed rate.
    total = int(args.rate * args.seconds)
    interval = 1.0 / args.rate
    t0 = time.monotonic()
    for i in range(total):
        due = t0 + i * interval
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        client.publish("bench/l", str(time.monotonic_ns()).encode(), qos=1)
    got = sub.collect(total, args.timeout)
    client.disconnect()
    client.loop_stop()
    latencies = sorted((arrival - int(p)) / 1e6 for arrival, p in got)
    def pct(q):
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2) if latencies else None
    latency = {"rate": args.rate, "sent": total, "received": len(got), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
               "max_ms": round(latencies[-1], 2) if latencies else None}
    return {"throughput": throughput, "latency": latency}


def run_path(kind, args, workdir):
    procs = []
    try:
        up = free_port()
        conf = os.path.join(workdir, f"{kind}-upstream.conf")
        open(conf, "w").write(mosquitto_conf(up))
        procs.append(start([MOSQUITTO, "-c", conf], os.path.join(workdir, f"{kind}-upstream.log")))
        wait_port(up)
        ports = []
        for name in ("edge-a", "edge-b"):
            port = free_port()
            ports.append(port)
            if kind == "iotgw":
                path = os.path.join(workdir, f"{kind}-{name}.json")
                open(path, "w").write(iotgw_conf(port, up, name))
                argv = [args.iotgw, "run", "--config", path]
            else:
                path = os.path.join(workdir, f"{kind}-{name}.conf")
                open(path, "w").write(mosquitto_conf(port, bridge_to=up, name=name))
                argv = [MOSQUITTO, "-c", path]
            procs.append(start(argv, os.path.join(workdir, f"{kind}-{name}.log")))
            wait_port(port)
        sub = Subscriber(ports[1])
        try:
            return measure(ports[0], sub, args)
        finally:
            sub.stop()
    finally:
        for proc in reversed(procs):
            stop(proc)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iotgw", required=True)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--inflight", type=int, default=100)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="bridge-bench-")
    results = {}
    for kind in ("iotgw", "mosquitto"):
        results[kind] = run_path(kind, args, workdir)
        print(f"{kind}: {json.dumps(results[kind])}", file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2) if args.json else results)
    print(f"logs in {workdir}", file=sys.stderr)


if __name__ == "__main__":
    main()
