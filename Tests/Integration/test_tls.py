"""(15) TLS: a test CA and certificates made with openssl during the run; mosquitto_pub --cafile over
mqtts, paho over wss, the JSON API over wss, mTLS with and without a client certificate, the client
certificate's CN as the username, and bad certificate files failing check-config and start-up."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import websockets

from conftest import DEFAULT_CONFIG, IOTGW_BIN, deep_merge, to_yaml
from helpers import PahoClient, free_port, iotgw_only, unique, wait_until
from operations_helpers import get, metric_samples

pytestmark = pytest.mark.usefixtures("_iotgw_only")


@pytest.fixture
def _iotgw_only():
    iotgw_only("iotgw's TLS configuration keys")


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, timeout=60)
    assert result.returncode == 0, f"openssl {' '.join(args)}: {result.stderr.decode(errors='replace')}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate with CN=device-42."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=iotgw test CA", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=d)
    _openssl("req", *ec, "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=device-42", cwd=d)
    _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "client.pem", "-days", "2", cwd=d)
    (d / "garbage.pem").write_text("not a certificate\n")
    return {name: str(d / f"{name}") for name in
            ("ca.pem", "server.pem", "server.key", "client.pem", "client.key", "garbage.pem", "ca.key")}


def tls_broker(make_broker, pki, **tls):
    return make_broker(
        listeners={"mqtts": {"enabled": True}, "wss": {"enabled": True}},
        tls={"cert_file": pki["server.pem"], "key_file": pki["server.key"], **tls},
    )


def mosquitto_pub_tls(port: int, topic: str, message: str, extra: list[str]) -> subprocess.CompletedProcess:
    argv = ["mosquitto_pub", "-V", "311", "-h", "localhost", "-p", str(port), "-t", topic, "-m", message,
            "-q", "1", "-i", unique("tlspub"), *extra]
    return subprocess.run(argv, capture_output=True, timeout=15)


def test_mosquitto_pub_over_mqtts_with_cafile(make_broker, pki):
    broker = tls_broker(make_broker, pki)
    sub = PahoClient(broker.port).start()
    try:
        sub.subscribe([("tls/#", 1)])
        r = mosquitto_pub_tls(broker.mqtts_port, "tls/a", "secure", ["--cafile", pki["ca.pem"]])
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        got = sub.get(what="message published over mqtts")
        assert (got.topic, got.payload) == ("tls/a", b"secure")
        # Without the CA the client cannot verify the server: no connection.
        r = mosquitto_pub_tls(broker.mqtts_port, "tls/b", "x", ["--cafile", pki["client.pem"]])
        assert r.returncode != 0
    finally:
        sub.stop()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["mqtt311", "mqtt5"])
def test_paho_over_wss(make_broker, pki, protocol):
    broker = tls_broker(make_broker, pki)
    tcp = PahoClient(broker.port).start()
    wss = PahoClient(broker.wss_port, transport="websockets", protocol=protocol,
                     tls={"ca_certs": pki["ca.pem"]})
    wss.client.tls_insecure_set(False)
    try:
        # paho connects to 127.0.0.1, which the server certificate names as an IP SAN.
        wss.start()
        tcp.subscribe([("wss/#", 1)])
        wss.subscribe([("back/#", 1)])
        wss.publish("wss/x", b"over-wss", qos=1)
        assert tcp.get(what="message over wss").payload == b"over-wss"
        tcp.publish("back/y", b"to-wss", qos=1)
        assert wss.get(what="message to the wss client").payload == b"to-wss"
    finally:
        wss.stop()
        tcp.stop()


def test_json_api_over_wss(make_broker, pki):
    broker = tls_broker(make_broker, pki)
    context = ssl.create_default_context(cafile=pki["ca.pem"])

    async def scenario():
        async with websockets.connect(f"wss://localhost:{broker.wss_port}/ws", ssl=context) as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert hello["op"] == "connected"
            await ws.send(json.dumps({"op": "ping", "id": 1}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"op": "ack", "id": 1}

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_mtls_requires_client_certificate(make_broker, pki):
    broker = tls_broker(make_broker, pki, ca_file=pki["ca.pem"], verify_client=True)
    sub = PahoClient(broker.port).start()
    try:
        sub.subscribe([("mtls/#", 1)])
        with_cert = mosquitto_pub_tls(broker.mqtts_port, "mtls/a", "with-cert",
                                      ["--cafile", pki["ca.pem"], "--cert", pki["client.pem"], "--key", pki["client.key"]])
        assert with_cert.returncode == 0, with_cert.stderr.decode(errors="replace")
        assert sub.get(what="message from the mTLS client").payload == b"with-cert"
        without = mosquitto_pub_tls(broker.mqtts_port, "mtls/b", "without-cert", ["--cafile", pki["ca.pem"]])
        assert without.returncode != 0, "a client without a certificate was accepted"
    finally:
        sub.stop()
    # wss refuses a client without a certificate too.
    context = ssl.create_default_context(cafile=pki["ca.pem"])

    async def no_cert():
        async with websockets.connect(f"wss://localhost:{broker.wss_port}/ws", ssl=context) as ws:
            await asyncio.wait_for(ws.recv(), 5)

    with pytest.raises((ssl.SSLError, websockets.exceptions.WebSocketException, OSError, EOFError)):
        asyncio.run(asyncio.wait_for(no_cert(), 10))


def _connack_code(port: int, pki, cert: bool) -> int:
    tls = {"ca_certs": pki["ca.pem"]}
    if cert:
        tls.update(certfile=pki["client.pem"], keyfile=pki["client.key"])
    c = PahoClient(port, tls=tls)
    try:
        before = c._connacks_so_far()
        c.client.connect("localhost", port)
        c.client.loop_start()
        c._started = True
        assert c._wait_for_connack(before, 5), "no CONNACK"
        return c.connack[1]
    finally:
        c.stop()


def test_certificate_cn_becomes_the_username(make_broker, pki):
    """With use_cn_as_username, a CA and anonymous access off (users table on, and empty), a client with
    a certificate is authenticated by it (its CN is its username; no password needed), and one without
    a certificate and without a username gets 5 (not authorized)."""
    broker = make_broker(
        listeners={"mqtts": {"enabled": True}},
        tls={"cert_file": pki["server.pem"], "key_file": pki["server.key"], "ca_file": pki["ca.pem"],
             "use_cn_as_username": True},
        auth={"anonymous": False, "backend": "database"},
    )
    assert _connack_code(broker.mqtts_port, pki, cert=True) == 0
    # paho reports the 3.1.1 return code 5 as the MQTT 5 reason code 0x87.
    assert _connack_code(broker.mqtts_port, pki, cert=False) in (5, 0x87)


def test_handshake_flood_is_bounded_and_timed_out(make_broker, pki):
    """tls.max_concurrent_handshakes 5, tls.handshake_timeout 2: a TLS client connected before the flood keeps
    working while 5 sockets sit in their handshake; a 6th is closed at once (counted); the stalled ones are
    closed after the timeout (counted), and then a new TLS client connects."""
    broker = make_broker(
        listeners={"mqtts": {"enabled": True}},
        admin={"enabled": True},
        tls={"cert_file": pki["server.pem"], "key_file": pki["server.key"],
             "max_concurrent_handshakes": 5, "handshake_timeout": 2},
    )
    established = PahoClient(broker.mqtts_port, tls={"ca_certs": pki["ca.pem"]}).start()
    stalled = [socket.create_connection(("127.0.0.1", broker.mqtts_port)) for _ in range(5)]
    try:
        def gauge():
            samples = metric_samples(get(broker.admin_port, "/metrics").body.decode())
            return samples.get(("iotgw_tls_handshakes_in_progress", ()), 0) == 5
        wait_until(gauge, 10, interval=0.1, message="5 TLS handshakes in progress")
        with socket.create_connection(("127.0.0.1", broker.mqtts_port)) as sixth:
            sixth.settimeout(5)
            assert sixth.recv(1) == b"", "the 6th handshake was not refused"
        established.subscribe([("flood/#", 1)])
        established.publish("flood/x", b"still served", qos=1)
        assert established.get(what="a message during the handshake flood").payload == b"still served"
        for s in stalled:
            s.settimeout(10)
            try:
                assert s.recv(1) == b"", "a stalled handshake was not closed"
            except ConnectionResetError:
                pass
        assert _connack_code(broker.mqtts_port, pki, cert=False) == 0
        samples = metric_samples(get(broker.admin_port, "/metrics").body.decode())
        assert samples[("iotgw_tls_handshakes_refused_total", ())] >= 1
        assert samples[("iotgw_tls_handshake_timeouts_total", ())] >= 5
    finally:
        for s in stalled:
            s.close()
        established.stop()


# -- bad files ----------------------------------------------------------------------------------


def _config(pki, **tls) -> dict:
    return deep_merge(DEFAULT_CONFIG, {
        "listeners": {"mqtt": {"port": free_port()}, "mqtts": {"enabled": True, "port": free_port()}},
        "tls": {"cert_file": pki["server.pem"], "key_file": pki["server.key"], **tls},
    })


BAD_FILES = [
    ("missing-cert", {"cert_file": "/nonexistent/server.pem"}, "tls.cert_file"),
    ("garbage-cert", {"cert_file": "garbage.pem"}, "tls.cert_file"),
    ("missing-key", {"key_file": "/nonexistent/server.key"}, "tls.key_file"),
    ("garbage-key", {"key_file": "garbage.pem"}, "tls.key_file"),
    ("mismatched-key", {"key_file": "ca.key"}, "tls.key_file"),
    ("missing-ca", {"ca_file": "/nonexistent/ca.pem"}, "tls.ca_file"),
    ("empty-cert", {"cert_file": ""}, "tls.cert_file"),
]


@pytest.mark.parametrize("case", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_certificate_files_fail_check_config_and_start(tmp_path, pki, case):
    _, tls, key = case
    tls = {k: (pki[v] if v in pki else v) for k, v in tls.items()}
    path = tmp_path / "iotgw.yaml"
    path.write_text(to_yaml(_config(pki, **tls)) + "\n")
    check = subprocess.run([str(IOTGW_BIN), "check-config", str(path)], capture_output=True, text=True, timeout=15)
    assert check.returncode == 2, check
    assert key in check.stderr and str(path) in check.stderr, check.stderr
    run = subprocess.run([str(IOTGW_BIN), "run", "--config", str(path)], capture_output=True, text=True, timeout=15)
    assert run.returncode == 2, run
    assert key in run.stderr, run.stderr
