"""Upstream bridge (issue 8): iotgw bridged to Debian's mosquitto through libmosquitto.

Every upstream here is a real ``mosquitto`` process on a loopback port (and, in the netns test, on
its own network stack). Clients are paho-mqtt on both sides. Messages carry ``publisher:seq``
payloads so the tests can check "each message exactly once" and "in order per publisher".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from conftest import IOTGW_BIN, MOSQUITTO_BIN
from helpers import (P_CONTENT_TYPE, P_CORRELATION_DATA, P_MESSAGE_EXPIRY, P_PAYLOAD_FORMAT, P_RESPONSE_TOPIC,
                     P_USER_PROPERTY, PUBACK, PahoClient, Publish5, ack5_packet, free_port, iotgw_only, parse_ack5,
                     port_accepts, prop, publish5_packet, raw5_connected, wait_until)
from operations_helpers import get, http_request
from test_tls import pki  # noqa: F401  (the module-scoped CA and certificates fixture)


class Upstream:
    """A mosquitto upstream on 127.0.0.1:port that can be stopped and started again on the same port.

    Persistence is on (in the test's tmp dir), so the sessions of persistent subscribers survive a
    restart and messages for them queue, as in a real broker cluster.
    """

    def __init__(self, tmp_path: Path, name: str = "upstream", host: str = "127.0.0.1",
                 port: int | None = None, netns: str | None = None, extra: list[str] | None = None):
        self.port = port or free_port()
        self.host = host
        self.netns = netns
        self.dir = tmp_path / name
        self.dir.mkdir(exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join([
            # As root, mosquitto would drop to the `mosquitto` user, which cannot write the persistence
            # file into the test's private tmp dir.
            *(["user root"] if os.geteuid() == 0 else []),
            "per_listener_settings false",
            "allow_anonymous true",
            f"listener {self.port} {host}",
            "persistence true",
            f"persistence_location {self.dir}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            *(extra or []),
        ]) + "\n")
        self.log_path = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Upstream":
        argv = [MOSQUITTO_BIN, "-c", str(self.conf)]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns] + argv
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        if not self.netns:
            wait_until(lambda: port_accepts(self.port), 10, message=f"mosquitto on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@pytest.fixture
def upstreams(tmp_path):
    started: list[Upstream] = []

    def factory(**kwargs) -> Upstream:
        upstream = Upstream(tmp_path, name=f"upstream{len(started)}", **kwargs)
        started.append(upstream)
        return upstream.start()

    yield factory
    for upstream in started:
        upstream.stop()


def bridge_config(upstream_port: int, rules: list[dict], name: str = "up", **extra) -> dict:
    bridge = {"name": name, "host": "127.0.0.1", "port": upstream_port, "rules": rules,
              "reconnect": {"initial_delay": 0.2, "max_delay": 1.0}}
    bridge.update(extra)
    return bridge


def start_gateway(make_broker, bridges: list[dict], **overrides):
    overrides.setdefault("storage", {})["enabled"] = overrides.get("storage", {}).get("enabled", False)
    return make_broker(config_format="json", bridges=bridges, admin={"enabled": True}, **overrides)


def bridge_stats(gateway, name: str = "up") -> dict:
    stats = get(gateway.admin_port, "/api/v1/stats").json()
    return next(b for b in stats["bridges"] if b["name"] == name)


def wait_bridge_state(gateway, state: str, name: str = "up", timeout: float = 15.0) -> dict:
    return wait_until(lambda: (s := bridge_stats(gateway, name))["state"] == state and s,
                      timeout, interval=0.05, message=f"bridge {name} {state}")


def payloads(messages) -> list[str]:
    return [m.payload.decode() for m in messages]


def no_more(client: PahoClient, seconds: float = 1.0) -> list[str]:
    """What else arrives within `seconds` (the quiet period that shows nothing was duplicated)."""
    deadline = time.monotonic() + seconds
    extra = []
    while time.monotonic() < deadline:
        try:
            extra.append(client.messages.get(timeout=max(deadline - time.monotonic(), 0.001)))
        except Exception:
            break
    return payloads(extra)


# --------------------------------------------------------------------------------------
# (1) One gateway and a mosquitto upstream


@pytest.mark.parametrize("protocol", ["mqttv5", "mqttv311"])
def test_bridge_out_and_in(make_broker, upstreams, protocol):
    iotgw_only("the bridge is an iotgw feature")
    upstream = upstreams()
    gateway = start_gateway(make_broker, [bridge_config(upstream.port, protocol=protocol, rules=[
        {"topic": "devices/#", "direction": "out", "qos": 1},
        {"topic": "commands/#", "direction": "in", "qos": 1},
    ])])
    wait_bridge_state(gateway, "connected")

    upstream_sub = PahoClient(upstream.port, client_id="up-sub").start()
    upstream_sub.subscribe([("#", 1)])
    gateway_sub = PahoClient(gateway.port, client_id="gw-sub").start()
    gateway_sub.subscribe([("commands/#", 1), ("devices/#", 1)])
    device = PahoClient(gateway.port, client_id="device-x").start()
    try:
        for i in range(5):
            device.publish("devices/x", f"d:{i}".encode(), qos=1)
        got = upstream_sub.get_n(5, timeout=10)
        assert [(m.topic, m.payload.decode()) for m in got] == [("devices/x", f"d:{i}") for i in range(5)]
        assert all(m.qos == 1 for m in got)

        commander = PahoClient(upstream.port, client_id="commander").start()
        for i in range(5):
            commander.publish("commands/x", f"c:{i}".encode(), qos=1)
        commander.stop()
        local = gateway_sub.get_n(10, timeout=10)
        assert sorted(payloads(local)) == sorted([f"d:{i}" for i in range(5)] + [f"c:{i}" for i in range(5)])
        assert [p for p in payloads(local) if p.startswith("c:")] == [f"c:{i}" for i in range(5)]
        # Nothing duplicated on either side, and the commands were not sent back up (the upstream
        # subscriber, on "#", sees each command once: from the commander, never again from the bridge).
        assert no_more(gateway_sub) == []
        upstream_rest = payloads(upstream_sub.drain())
        assert sorted(upstream_rest) == [f"c:{i}" for i in range(5)], upstream_rest

        stats = wait_until(lambda: (s := bridge_stats(gateway))["forwarded"] >= 5 and s, 5)
        assert stats["state"] == "connected" and stats["received"] == 5 and stats["queued"] == 0
        metrics = get(gateway.admin_port, "/metrics").body.decode()
        assert re.search(r'^iotgw_bridge_state\{bridge="up"\} 2(\.0)?$', metrics, re.M), metrics
        assert re.search(r'^iotgw_bridge_messages_total\{bridge="up",direction="in"\} 5(\.0)?$', metrics, re.M)
        assert re.search(r'^iotgw_bridge_messages_total\{bridge="up",direction="out"\} 5(\.0)?$', metrics, re.M)
    finally:
        for client in (device, gateway_sub, upstream_sub):
            client.stop()


def test_bridge_over_mutual_tls(make_broker, upstreams, pki):  # noqa: F811
    iotgw_only("the bridge is an iotgw feature")
    tls_port = free_port()
    # A plain listener for the test's own clients, and a TLS listener that requires a client certificate.
    upstream = upstreams(extra=[f"listener {tls_port} 127.0.0.1", f"cafile {pki['ca.pem']}",
                                f"certfile {pki['server.pem']}", f"keyfile {pki['server.key']}",
                                "require_certificate true"])
    gateway = start_gateway(make_broker, [bridge_config(tls_port, [{"topic": "devices/#", "direction": "out", "qos": 1}],
                                                        tls={"enabled": True, "ca_file": pki["ca.pem"],
                                                             "cert_file": pki["client.pem"], "key_file": pki["client.key"]})])
    wait_bridge_state(gateway, "connected")
    watcher = PahoClient(upstream.port, client_id="tls-watcher").start()
    watcher.subscribe([("devices/#", 1)])
    device = PahoClient(gateway.port, client_id="tls-device").start()
    try:
        for i in range(3):
            device.publish("devices/t", f"t:{i}".encode(), qos=1)
        assert payloads(watcher.get_n(3, timeout=10)) == [f"t:{i}" for i in range(3)]
    finally:
        device.stop()
        watcher.stop()


def test_bridge_without_client_certificate_is_down_with_error(make_broker, upstreams, pki):  # noqa: F811
    iotgw_only("the bridge is an iotgw feature")
    tls_port = free_port()
    upstreams(extra=[f"listener {tls_port} 127.0.0.1", f"cafile {pki['ca.pem']}", f"certfile {pki['server.pem']}",
                     f"keyfile {pki['server.key']}", "require_certificate true"])
    gateway = start_gateway(make_broker, [bridge_config(tls_port, [{"topic": "devices/#", "direction": "out", "qos": 1}],
                                                        tls={"enabled": True, "ca_file": pki["ca.pem"]})])
    stats = wait_bridge_state(gateway, "down")
    assert stats["last_error"], stats
    # Readiness is not affected by default (required_for_readiness: false).
    assert get(gateway.admin_port, "/readyz").status == 200


def test_internal_session_is_listed_and_an_admin_disconnect_reconnects(make_broker, upstreams):
    iotgw_only("the bridge is an iotgw feature")
    upstream = upstreams()
    gateway = start_gateway(make_broker, [bridge_config(upstream.port, [{"topic": "devices/#", "direction": "out"}])])
    wait_bridge_state(gateway, "connected")
    listed = get(gateway.admin_port, "/api/v1/clients?prefix=%24bridge%2F").json()
    assert [(c["client_id"], c["connected"], c["persistent"]) for c in listed["clients"]] == [("$bridge/up", True, True)]
    assert http_request(gateway.admin_port, "DELETE", "/api/v1/clients/%24bridge%2Fup").status == 200

    def reconnected():
        metrics = get(gateway.admin_port, "/metrics").body.decode()
        return re.search(r'^iotgw_bridge_connects_total\{bridge="up",result="success"\} 2(\.0)?$', metrics, re.M)
    wait_until(reconnected, 10, message="the bridge connected a second time")
    wait_bridge_state(gateway, "connected")
    # A network client cannot take the internal session over.
    client = PahoClient(gateway.port, client_id="$bridge/up")
    with pytest.raises(AssertionError, match="CONNACK refused"):
        client.start()
    client.stop()


# --------------------------------------------------------------------------------------
# (2) Two gateways meeting in one upstream


@pytest.mark.parametrize("protocol", ["mqttv5", "mqttv311"])
def test_two_gateways_exactly_once(make_broker, upstreams, protocol):
    iotgw_only("the bridge is an iotgw feature")
    upstream = upstreams()
    rules = [{"topic": "fleet/#", "direction": "both", "qos": 1}]
    gw_a = start_gateway(make_broker, [bridge_config(upstream.port, rules, client_id="gw-a", protocol=protocol)])
    gw_b = start_gateway(make_broker, [bridge_config(upstream.port, rules, client_id="gw-b", protocol=protocol)])
    wait_bridge_state(gw_a, "connected")
    wait_bridge_state(gw_b, "connected")

    upstream_sub = PahoClient(upstream.port, client_id="up-watch").start()
    upstream_sub.subscribe([("fleet/#", 1)])
    sub_a = PahoClient(gw_a.port, client_id="sub-a").start()
    sub_a.subscribe([("fleet/#", 1)])
    sub_b = PahoClient(gw_b.port, client_id="sub-b").start()
    sub_b.subscribe([("fleet/#", 1)])
    dev_a = PahoClient(gw_a.port, client_id="dev-a").start()
    dev_b = PahoClient(gw_b.port, client_id="dev-b").start()
    try:
        n = 20
        for i in range(n):
            dev_a.publish("fleet/a", f"a:{i}".encode(), qos=1)
            dev_b.publish("fleet/b", f"b:{i}".encode(), qos=1)
        expected = sorted([f"a:{i}" for i in range(n)] + [f"b:{i}" for i in range(n)])
        # Every subscriber, on A, on B and upstream, sees every message exactly once.
        for name, client in (("A", sub_a), ("B", sub_b), ("upstream", upstream_sub)):
            got = payloads(client.get_n(2 * n, timeout=15))
            got += no_more(client, 1.5)
            assert sorted(got) == expected, f"{name}: {len(got)} messages, duplicates or gaps"
            for prefix in ("a:", "b:"):
                assert [p for p in got if p.startswith(prefix)] == [f"{prefix}{i}" for i in range(n)], name
        if protocol == "mqttv311":
            # 3.1.1 has no No Local: the upstream echoed each gateway's messages and the bridge dropped them.
            assert bridge_stats(gw_a)["dropped"] >= n and bridge_stats(gw_b)["dropped"] >= n
    finally:
        for client in (dev_a, dev_b, sub_a, sub_b, upstream_sub):
            client.stop()


# --------------------------------------------------------------------------------------
# (3) Store and forward across an upstream outage


def _publishers(port: int, count: int) -> list[PahoClient]:
    return [PahoClient(port, client_id=f"pub-{i}").start() for i in range(count)]


def _check_in_order(messages: list[str], publishers: int, per_publisher: int) -> int:
    """All messages present; first occurrences in order per publisher. Returns the duplicates seen."""
    seen: set[str] = set()
    firsts: dict[str, list[int]] = {}
    duplicates = 0
    for payload in messages:
        if payload in seen:
            duplicates += 1
            continue
        seen.add(payload)
        publisher, seq = payload.split(":")
        firsts.setdefault(publisher, []).append(int(seq))
    for p in range(publishers):
        assert firsts.get(f"p{p}") == list(range(per_publisher)), f"publisher p{p}: {firsts.get(f'p{p}')}"
    return duplicates


def test_upstream_outage_store_and_forward(make_broker, upstreams):
    iotgw_only("the bridge is an iotgw feature")
    upstream = upstreams()
    gateway = start_gateway(make_broker, [bridge_config(
        upstream.port, [{"topic": "devices/#", "direction": "out", "qos": 1}], required_for_readiness=True)])
    wait_bridge_state(gateway, "connected")
    assert get(gateway.admin_port, "/readyz").status == 200

    # A persistent subscriber upstream: its session survives the upstream restart (persistence on).
    watcher = PahoClient(upstream.port, client_id="watcher", clean_session=False, auto_reconnect=True)
    watcher.client.reconnect_delay_set(min_delay=1, max_delay=1)
    watcher.start()
    watcher.subscribe([("devices/#", 1)])
    publishers, per_publisher = 3, 40
    devices = _publishers(gateway.port, publishers)
    try:
        # A few before the outage, to show the path works.
        for p, device in enumerate(devices):
            device.publish(f"devices/p{p}", f"p{p}:0".encode(), qos=1)
        before = payloads(watcher.get_n(publishers, timeout=10))
        # The watcher's PUBACKs went out before this SUBSCRIBE on the same connection, so once its SUBACK
        # is back the upstream has them: stopping it now cannot make it redeliver these (QoS 1 DUP).
        watcher.subscribe([("sync/none", 0)])

        upstream.stop()
        wait_bridge_state(gateway, "down")
        wait_until(lambda: get(gateway.admin_port, "/readyz").status == 503, 5, message="/readyz 503 while down")
        ready = get(gateway.admin_port, "/readyz").json()
        assert any(c["name"] == "bridge:up" and c["state"] == "not_ready" for c in ready["components"])
        outage_started = time.monotonic()
        # QoS 1 publishes are acknowledged by the gateway while the upstream is away: a fixed count, spread
        # over the outage, which then lasts at least 10 s however long the publishing took.
        for seq in range(1, per_publisher):
            for p, device in enumerate(devices):
                device.publish(f"devices/p{p}", f"p{p}:{seq}".encode(), qos=1)
            time.sleep(0.2)
        time.sleep(max(0.0, 10 - (time.monotonic() - outage_started)))
        queued = publishers * (per_publisher - 1)
        wait_until(lambda: bridge_stats(gateway)["queued"] == queued, 5, message=f"{queued} messages in the bridge queue")

        upstream.start()
        wait_bridge_state(gateway, "connected")
        wait_until(lambda: get(gateway.admin_port, "/readyz").status == 200, 10, message="/readyz 200 again")
        rest = payloads(watcher.get_n(publishers * (per_publisher - 1), timeout=30))
        rest += no_more(watcher, 1.0)
        duplicates = _check_in_order(before + rest, publishers, per_publisher)
        assert duplicates == 0, f"{duplicates} duplicates in {before + rest}"
        wait_until(lambda: bridge_stats(gateway)["queued"] == 0, 5, message="bridge queue empty")
    finally:
        for client in devices + [watcher]:
            client.stop()


def test_gateway_kill9_while_upstream_down(make_broker, upstreams):
    iotgw_only("the bridge is an iotgw feature")
    upstream = upstreams()
    bridges = [bridge_config(upstream.port, [{"topic": "devices/#", "direction": "out", "qos": 1}])]
    gateway = start_gateway(make_broker, bridges, storage={"enabled": True})
    wait_bridge_state(gateway, "connected")
    watcher = PahoClient(upstream.port, client_id="watcher", clean_session=False, auto_reconnect=True)
    watcher.client.reconnect_delay_set(min_delay=1, max_delay=1)
    watcher.start()
    watcher.subscribe([("devices/#", 1)])
    upstream.stop()
    wait_bridge_state(gateway, "down")
    device = PahoClient(gateway.port, client_id="pub-0").start()
    acknowledged = []
    for i in range(50):
        device.publish("devices/p0", f"p0:{i}".encode(), qos=1)  # waits for the gateway's PUBACK
        acknowledged.append(f"p0:{i}")
    device.stop()
    gateway.proc.kill()
    gateway.proc.wait(5)
    gateway.start()
    upstream.start()
    wait_bridge_state(gateway, "connected")
    got = payloads(watcher.get_n(len(acknowledged), timeout=30)) + no_more(watcher, 1.0)
    _check_in_order(got, 1, len(acknowledged))
    watcher.stop()


# --------------------------------------------------------------------------------------
# (5) Three hosts in network namespaces


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=20)


class NetnsLab:
    """An upstream and two gateway hosts, each a network namespace with one veth leg on a Linux
    bridge that lives in a fourth namespace (so the host's own network is never touched)."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.switch = f"iotgw-sw-{tag}"
        self.hosts = {"up": (f"iotgw-up-{tag}", "10.231.0.1"),
                      "a": (f"iotgw-a-{tag}", "10.231.0.2"),
                      "b": (f"iotgw-b-{tag}", "10.231.0.3")}
        self.tag = tag
        self.created: list[str] = []

    def __enter__(self) -> "NetnsLab":
        _sh("ip", "netns", "add", self.switch)
        self.created.append(self.switch)
        _sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        for index, (key, (ns, address)) in enumerate(self.hosts.items()):
            _sh("ip", "netns", "add", ns)
            self.created.append(ns)
            outer, inner = f"iv{self.tag}{index}o", f"iv{self.tag}{index}i"
            _sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            _sh("ip", "link", "set", outer, "netns", self.switch)
            _sh("ip", "link", "set", inner, "netns", ns)
            _sh("ip", "-n", self.switch, "link", "set", outer, "master", "br0")
            _sh("ip", "-n", self.switch, "link", "set", outer, "up")
            _sh("ip", "-n", ns, "link", "set", inner, "name", "eth0")
            _sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _sh("ip", "-n", ns, "link", "set", "eth0", "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        return self

    def __exit__(self, *exc) -> None:
        # Deleting a namespace deletes its veth legs (and their peers) and the bridge with it.
        for ns in reversed(self.created):
            _sh("ip", "netns", "del", ns, check=False)

    def ns(self, key: str) -> str:
        return self.hosts[key][0]

    def address(self, key: str) -> str:
        return self.hosts[key][1]

    def run(self, key: str, argv: list[str], log: Path) -> subprocess.Popen:
        out = open(log, "ab")
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(key)] + argv, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        return proc

    def accepts(self, key: str, address: str, port: int) -> bool:
        probe = ("import socket,sys\ns=socket.socket();s.settimeout(0.3)\n"
                 f"sys.exit(0 if s.connect_ex(('{address}',{port}))==0 else 1)")
        return _sh("ip", "netns", "exec", self.ns(key), "python3", "-c", probe, check=False).returncode == 0


NS_SUBSCRIBER = """
import queue, sys, time
import paho.mqtt.client as mqtt
port, client_id, topic, count, timeout = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
got = queue.Queue()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
c.on_subscribe = lambda *a: print("SUBSCRIBED", flush=True)
c.on_message = lambda cl, u, m: got.put(m.payload.decode())
c.connect("127.0.0.1", port)
c.subscribe(topic, qos=1)
c.loop_start()
deadline = time.monotonic() + timeout
received = 0
extra_until = None
while time.monotonic() < deadline:
    try:
        print(got.get(timeout=0.2), flush=True)
        received += 1
    except queue.Empty:
        pass
    if received >= count:
        # Keep listening a moment: a duplicate would show up here.
        extra_until = extra_until or time.monotonic() + 1.5
        if time.monotonic() >= extra_until:
            break
c.disconnect()
c.loop_stop()
"""


def test_bridge_across_network_namespaces(tmp_path):
    iotgw_only("the bridge is an iotgw feature")
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces and veth pairs (CI runs as root)")
    if not shutil.which("ip"):
        pytest.fail("iproute2 (`ip`) is missing: `make test` installs it")
    procs: list[subprocess.Popen] = []
    with NetnsLab() as lab:
        try:
            upstream = Upstream(tmp_path, name="ns-upstream", host="0.0.0.0", port=1883, netns=lab.ns("up")).start()
            procs.append(upstream.proc)
            wait_until(lambda: lab.accepts("a", lab.address("up"), 1883), 10, message="upstream reachable from host a")
            gateways = {}
            for key in ("a", "b"):
                config = {
                    "log": {"level": "info"},
                    "listeners": {"mqtt": {"host": "127.0.0.1", "port": 1883}, "ws": {"enabled": False}},
                    "admin": {"enabled": False},
                    "storage": {"enabled": False},
                    "bridges": [{"name": "up", "host": lab.address("up"), "port": 1883, "client_id": f"gw-{key}",
                                 "rules": [{"topic": "fleet/#", "direction": "both", "qos": 1}],
                                 "reconnect": {"initial_delay": 0.2, "max_delay": 1.0}}],
                }
                path = tmp_path / f"gw-{key}.json"
                path.write_text(json.dumps(config))
                gateways[key] = lab.run(key, [str(IOTGW_BIN), "run", "--config", str(path)], tmp_path / f"gw-{key}.log")
                procs.append(gateways[key])
            for key in ("a", "b"):
                wait_until(lambda: lab.accepts(key, "127.0.0.1", 1883), 15, message=f"gateway {key} listening")
                wait_until(lambda: "bridge connected" in (tmp_path / f"gw-{key}.log").read_text(errors="replace"),
                           15, message=f"gateway {key}'s bridge connected across the veth link")
            n = 10
            # A subscriber on each gateway host (paho inside the namespace; it prints SUBSCRIBED after
            # SUBACK, then one payload per line), then a device on each host (mosquitto_pub, QoS 1).
            script = tmp_path / "ns_subscriber.py"
            script.write_text(NS_SUBSCRIBER)
            subs = {}
            for key in ("a", "b"):
                subs[key] = lab.run(key, ["python3", str(script), "1883", f"sub-{key}", "fleet/#", str(2 * n), "40"],
                                    tmp_path / f"sub-{key}.out")
                procs.append(subs[key])
            for key in ("a", "b"):
                wait_until(lambda: "SUBSCRIBED" in (tmp_path / f"sub-{key}.out").read_text(), 10,
                           message=f"subscriber on host {key}")
            for key in ("a", "b"):
                for i in range(n):
                    _sh("ip", "netns", "exec", lab.ns(key), "mosquitto_pub", "-h", "127.0.0.1", "-p", "1883",
                        "-q", "1", "-i", f"dev-{key}", "-t", f"fleet/{key}", "-m", f"{key}:{i}")
            for key in ("a", "b"):
                subs[key].wait(45)
            expected = sorted([f"a:{i}" for i in range(n)] + [f"b:{i}" for i in range(n)])
            for key in ("a", "b"):
                lines = [line for line in (tmp_path / f"sub-{key}.out").read_text().split() if line != "SUBSCRIBED"]
                assert sorted(lines) == expected, f"subscriber on host {key}: {lines}"
                # Per publisher, in order.
                for prefix in ("a:", "b:"):
                    assert [x for x in lines if x.startswith(prefix)] == [f"{prefix}{i}" for i in range(n)]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


# --------------------------------------------------------------------------------------
# (6) Bad bridge configuration


@pytest.mark.parametrize("case", [
    ("missing CA file", {"tls": {"enabled": True, "ca_file": "/nonexistent/ca.pem"}}, "bridges[0].tls.ca_file"),
    ("bad rule", {"rules": [{"topic": "devices/#"}, {"topic": "x/#", "direction": "sideways"}]},
     "bridges[0].rules[1].direction"),
    ("unknown key", {"keepalive": 30}, "bridges[0].keepalive"),
])
def test_check_config_rejects_bad_bridge(tmp_path, case):
    iotgw_only("check-config is an iotgw command")
    what, extra, key = case
    bridge = {"name": "up", "host": "127.0.0.1", "port": 1884, "rules": [{"topic": "devices/#"}]}
    bridge.update(extra)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"bridges": [bridge]}))
    r = subprocess.run([str(IOTGW_BIN), "check-config", str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, f"{what}: exit {r.returncode}\n{r.stdout}{r.stderr}"
    assert key in r.stderr and str(path) in r.stderr, f"{what}: {r.stderr}"


def test_check_config_accepts_shipped_bridge_example():
    iotgw_only("check-config is an iotgw command")
    example = Path(__file__).resolve().parents[2] / "Configs" / "bridge.yaml"
    r = subprocess.run([str(IOTGW_BIN), "check-config", str(example)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------------------
# (6) MQTT 5 properties across the bridge


def test_mqtt5_bridge_carries_message_properties_both_ways(make_broker, upstreams):
    """On an MQTT 5 bridge a message keeps what a broker forwards (§3.3.2.3): Payload Format Indicator,
    the rest of its Message Expiry Interval, Content Type, Response Topic, Correlation Data and User
    Properties in order with repeats, gateway → upstream and upstream → gateway. Raw MQTT 5 clients on
    both sides read the properties off the wire."""
    iotgw_only("the bridge is an iotgw feature")
    upstream = upstreams()
    gateway = start_gateway(make_broker, [bridge_config(upstream.port, protocol="mqttv5", rules=[
        {"topic": "devices/#", "direction": "out", "qos": 1},
        {"topic": "commands/#", "direction": "in", "qos": 1},
    ])])
    wait_bridge_state(gateway, "connected")
    sent = [(P_PAYLOAD_FORMAT, 1), (P_MESSAGE_EXPIRY, 300), (P_CONTENT_TYPE, "application/json"),
            (P_RESPONSE_TOPIC, "replies/x"), (P_CORRELATION_DATA, b"\x00\x01corr"),
            (P_USER_PROPERTY, ("site", "north")), (P_USER_PROPERTY, ("unit", "C")), (P_USER_PROPERTY, ("site", "south"))]

    def check(got: Publish5, topic: str, payload: bytes) -> None:
        assert (got.topic, got.payload, got.qos) == (topic, payload, 1), got
        props = got.properties
        assert prop(props, P_PAYLOAD_FORMAT) == 1, props
        assert 290 <= prop(props, P_MESSAGE_EXPIRY, 0) <= 300, props
        assert prop(props, P_CONTENT_TYPE) == "application/json", props
        assert prop(props, P_RESPONSE_TOPIC) == "replies/x", props
        assert prop(props, P_CORRELATION_DATA) == b"\x00\x01corr", props
        assert [v for i, v in props if i == P_USER_PROPERTY] == [("site", "north"), ("unit", "C"), ("site", "south")], props

    def cross(publisher_port: int, client_id: str, topic: str, payload: bytes, receiver) -> None:
        """Publish with every property on one side; the receiver on the other side gets them all."""
        with raw5_connected(publisher_port, client_id) as publisher:
            publisher.send(publish5_packet(topic, payload, qos=1, packet_id=1, properties=sent))
            ack = publisher.expect_packet(what="PUBACK")
            assert parse_ack5(ack)[:2] == (1, 0), ack
        got = receiver.expect_publish5(what=f"{topic} across the bridge")
        check(got, topic, payload)
        receiver.send(ack5_packet(PUBACK, got.packet_id))

    with raw5_connected(upstream.port, "up-sub5") as up_sub, raw5_connected(gateway.port, "gw-sub5") as gw_sub:
        assert up_sub.subscribe5(1, [("devices/#", 1)]) == [1]
        assert gw_sub.subscribe5(1, [("commands/#", 1)]) == [1]
        cross(gateway.port, "device-5", "devices/x", b'{"t":21.5}', up_sub)
        cross(upstream.port, "commander-5", "commands/x", b'{"set":1}', gw_sub)
