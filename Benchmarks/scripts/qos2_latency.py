#!/usr/bin/env python3
"""QoS 2 round trip of one persistent publisher with storage on and `ack: persisted`.

Starts the gateway (--iotgw BIN) on a free loopback port with SQLite in a temporary directory, connects one
paho-mqtt MQTT 5 client with Session Expiry 3600 (a persistent session, so its inbound QoS 2 packet ids are
stored before PUBREC), and times --count QoS 2 publishes sent one at a time: PUBLISH to PUBCOMP, p50/p99/mean.
Pass several --iotgw to compare builds; they run alternately --rounds times.

Usage: qos2_latency.py --iotgw BIN [--iotgw OTHER ...] [--count 500] [--rounds 2] [--json]
"""
import argparse
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from benchutil import free_port, report


def wait_for_port(port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"gateway did not listen on {port}")


def measure(binary, count):
    directory = tempfile.mkdtemp(prefix="iotgw-qos2-")
    port, admin = free_port(), free_port()
    config = {"listeners": {"mqtt": {"host": "127.0.0.1", "port": port}}, "admin": {"host": "127.0.0.1", "port": admin},
              "storage": {"enabled": True, "data_dir": directory, "ack": "persisted"}}
    with open(f"{directory}/config.json", "w") as f:
        json.dump(config, f)
    proc = subprocess.Popen([binary, "run", "--config", f"{directory}/config.json"], stderr=subprocess.DEVNULL)
    client = None
    try:
        wait_for_port(port)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="qos2-bench", protocol=mqtt.MQTTv5)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
        client.connect("127.0.0.1", port, clean_start=False, properties=properties)
        client.loop_start()
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            client.publish("bench/qos2", b"x" * 64, qos=2).wait_for_publish(10)
            samples.append((time.perf_counter() - started) * 1000)
        samples.sort()
        return {"count": count, "p50_ms": round(samples[len(samples) // 2], 2),
                "p99_ms": round(samples[int(len(samples) * 0.99)], 2), "mean_ms": round(statistics.mean(samples), 2)}
    finally:
        if client is not None:
            client.loop_stop()
            client.disconnect()
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(directory, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iotgw", action="append", required=True)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {binary: [] for binary in args.iotgw}
    for _ in range(args.rounds):
        for binary in args.iotgw:
            results[binary].append(measure(binary, args.count))
    report(results, args.json)


if __name__ == "__main__":
    main()
