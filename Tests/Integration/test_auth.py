"""Users, passwords and ACLs: `iotgw user` against the real binary, CONNECT with the users table
(`auth.backend: database`) from raw sockets, mosquitto_pub and paho (3.1.1 and 5.0), ACL rules on
PUBLISH and SUBSCRIBE, password changes through the cache and SIGHUP, and a burst of 2,000
authenticated CONNECTs through a pool of 4 database connections."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import struct
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from conftest import IOTGW_BIN
from helpers import (PUBACK, PUBLISH, SUBACK, RawClient, ack_packet, connack_bytes, connect_packet, encode_properties,
                     encode_string, fixed, iotgw_only, publish5_packet, publish_packet, subscribe5_packet, unique,
                     wait_until)
from operations_helpers import get


@pytest.fixture(autouse=True)
def _iotgw_only():
    iotgw_only("users, ACLs and `iotgw user` are iotgw's")


AUTH_ON = {"anonymous": False, "backend": "database"}


def user(b, *args: str, password: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs `iotgw user ARGS --config <b's file>`; with ``password`` it goes to standard input."""
    argv = [str(IOTGW_BIN), "user", *args, "--config", str(b.config_path)]
    if password is not None:
        argv.append("--password-stdin")
    return subprocess.run(argv, input=(password + "\n").encode() if password is not None else None,
                          stdin=None if password is not None else subprocess.DEVNULL,
                          capture_output=True, timeout=timeout)


def add_user(b, name: str, password: str) -> None:
    r = user(b, "add", name, password=password)
    assert r.returncode == 0, r.stderr.decode()


def connack311(port: int, client_id: str, username: str | None, password: str | None) -> int:
    """The 3.1.1 CONNACK return code for these credentials. 30 s: a password check is a deliberately slow
    scrypt run, 0.5-2 s in a debug build on a loaded machine."""
    with RawClient(port) as c:
        c.send(connect_packet(client_id, username=username, password=password.encode() if password is not None else None))
        packet = c.expect_packet(30, what="CONNACK")
        assert packet.type == 2, packet
        return packet.raw[3]


def connack5(port: int, username: str | None, password: str | None, timeout: float = 30) -> int:
    """The MQTT 5 CONNACK reason code paho gets for these credentials."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique("p5"), protocol=mqtt.MQTTv5)
    if username is not None:
        client.username_pw_set(username, password)
    codes: list[int] = []
    client.on_connect = lambda c, u, f, rc, p: codes.append(rc.value)
    client.connect("127.0.0.1", port)
    deadline = time.monotonic() + timeout
    try:
        while not codes and time.monotonic() < deadline:
            client.loop(0.05)
    finally:
        client.disconnect()
    assert codes, "no CONNACK"
    return codes[0]


def connect5_auth_packet(client_id: str, username: str, password: str) -> bytes:
    """An MQTT 5 CONNECT with username and password (flags 0x80 | 0x40 | clean start)."""
    variable = encode_string("MQTT") + bytes([5, 0xC2]) + struct.pack("!H", 60)
    payload = encode_string(client_id) + encode_string(username) + encode_string(password.encode())
    return fixed(0x10, variable + encode_properties(()) + payload)


def metric(port: int, name: str) -> float:
    """The sum of every sample of ``name`` on /metrics."""
    text = get(port, "/metrics").body.decode()
    values = [float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    assert values, f"{name} not in /metrics"
    return sum(values)


# -- iotgw user --------------------------------------------------------------------------------


def test_user_command(make_broker):
    b = make_broker(start=False, auth=AUTH_ON)
    add_user(b, "alice", "s3cret")
    r = user(b, "add", "alice", password="other")
    assert r.returncode == 1 and b"already exists" in r.stderr, r
    r = user(b, "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0].split() == ["USERNAME", "CREATED", "UPDATED"]
    assert re.match(r"^alice\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", lines[1]), lines
    r = user(b, "passwd", "bob", password="x")
    assert r.returncode == 1 and b"no user 'bob'" in r.stderr, r
    r = user(b, "remove", "bob")
    assert r.returncode == 1 and b"no user 'bob'" in r.stderr, r
    # No password on standard input, an empty one, no terminal: refused, nothing written.
    r = user(b, "add", "carol", password="")
    assert r.returncode == 2 and b"must not be empty" in r.stderr, r
    r = user(b, "add", "carol")
    assert r.returncode == 2 and b"not a terminal" in r.stderr, r
    r = user(b, "add", "a/b", password="x")
    assert r.returncode == 2 and b"'/'" in r.stderr, r
    assert user(b, "passwd", "alice", password="n3w").returncode == 0
    r = user(b, "list")
    assert [line.split()[0] for line in r.stdout.decode().splitlines()[1:]] == ["alice"]
    assert user(b, "remove", "alice").returncode == 0
    assert user(b, "list").stdout.decode().splitlines()[1:] == []


# -- CONNECT -----------------------------------------------------------------------------------


def test_password_check_311_and_5(make_broker):
    b = make_broker(start=False, auth=AUTH_ON)
    add_user(b, "dev1", "right-password")
    b.start()
    # 3.1.1 return codes.
    assert connack311(b.port, unique("ok"), "dev1", "right-password") == 0
    assert connack311(b.port, unique("bad"), "dev1", "wrong-password") == 4
    assert connack311(b.port, unique("who"), "nobody", "right-password") == 4
    assert connack311(b.port, unique("nopw"), "dev1", None) == 4
    assert connack311(b.port, unique("anon"), None, None) == 5
    # MQTT 5 reason codes (paho).
    assert connack5(b.port, "dev1", "right-password") == 0
    assert connack5(b.port, "dev1", "wrong-password") == 0x86
    assert connack5(b.port, "nobody", "x") == 0x86
    assert connack5(b.port, None, None) == 0x87
    # mosquitto_pub: accepted with the right password, refused (non-zero exit) with a wrong one.
    ok = subprocess.run(["mosquitto_pub", "-V", "311", "-h", "127.0.0.1", "-p", str(b.port), "-t", "t/x", "-m", "1",
                         "-q", "1", "-u", "dev1", "-P", "right-password"], capture_output=True, timeout=10)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(["mosquitto_pub", "-V", "5", "-h", "127.0.0.1", "-p", str(b.port), "-t", "t/x", "-m", "1",
                          "-u", "dev1", "-P", "nope"], capture_output=True, timeout=10)
    assert bad.returncode != 0 and b"Bad User Name or Password" in bad.stderr, bad


def test_anonymous_still_allowed_when_enabled(make_broker):
    """auth.anonymous true with the users table: no username → accepted, a username → checked."""
    b = make_broker(start=False, auth={"anonymous": True, "backend": "database"})
    add_user(b, "dev2", "pw2")
    b.start()
    assert connack311(b.port, unique("anon"), None, None) == 0
    assert connack311(b.port, unique("named"), "dev2", "pw2") == 0
    assert connack311(b.port, unique("named"), "dev2", "pw3") == 4


def test_password_change_takes_effect_after_ttl_and_on_sighup(make_broker):
    b = make_broker(start=False, auth={**AUTH_ON, "cache_ttl": 1, "negative_cache_ttl": 0})
    add_user(b, "dev", "old-pw")
    b.start()
    assert connack311(b.port, unique("c"), "dev", "old-pw") == 0
    assert user(b, "passwd", "dev", password="new-pw").returncode == 0
    # Within cache_ttl (1 s) plus a margin the old password stops working.
    wait_until(lambda: connack311(b.port, unique("c"), "dev", "old-pw") == 4, 10, interval=0.2,
               message="old password refused after cache_ttl")
    assert connack311(b.port, unique("c"), "dev", "new-pw") == 0

    # With a long TTL the old entry is still cached... until SIGHUP flushes it.
    long_ttl = make_broker(start=False, auth={**AUTH_ON, "cache_ttl": 3600})
    add_user(long_ttl, "dev", "old-pw")
    long_ttl.start()
    assert connack311(long_ttl.port, unique("c"), "dev", "old-pw") == 0
    assert user(long_ttl, "passwd", "dev", password="new-pw").returncode == 0
    assert connack311(long_ttl.port, unique("c"), "dev", "old-pw") == 0
    before = long_ttl.log_path.read_text().count("configuration reloaded")
    long_ttl.signal(signal.SIGHUP)
    wait_until(lambda: long_ttl.log_path.read_text().count("configuration reloaded") > before, 10,
               message="reload logged")
    assert connack311(long_ttl.port, unique("c"), "dev", "old-pw") == 4
    assert connack311(long_ttl.port, unique("c"), "dev", "new-pw") == 0


# -- ACL ----------------------------------------------------------------------------------------

ACL = [
    {"permission": "allow", "access": "readwrite", "topic": "devices/%u/#"},
    {"permission": "allow", "access": "read", "topic": "broadcast/#"},
]


def acl_broker(make_broker, acl=ACL):
    b = make_broker(start=False, config_format="json", auth={**AUTH_ON, "acl": acl})
    add_user(b, "alice", "pa")
    add_user(b, "bob", "pb")
    b.start()
    return b


def test_acl_311(make_broker):
    b = acl_broker(make_broker)
    with RawClient(b.port) as alice, RawClient(b.port) as bob:
        alice.connect(unique("alice"), username="alice", password=b"pa")
        alice.subscribe(1, [("devices/alice/#", 1)])
        # Nothing under devices/bob/ is readable for alice: refused. devices/# is granted, filtered per message.
        alice.subscribe(2, [("devices/bob/#", 1)], granted=[0x80])
        alice.subscribe(4, [("devices/#", 1)], granted=[1])
        alice.subscribe(3, [("$share/g/devices/bob/+", 1)], granted=[0x80])
        bob.connect(unique("bob"), username="bob", password=b"pb")
        # bob may not write into alice's tree: PUBACK anyway (3.1.1 cannot refuse), nothing delivered.
        bob.send(publish_packet("devices/alice/cmd", b"evil", qos=1, packet_id=5))
        bob.expect(ack_packet(PUBACK, 5), what="PUBACK of the refused PUBLISH")
        bob.send(publish_packet("broadcast/news", b"evil", qos=0))
        # A barrier alice is allowed to send: the next message alice sees must be it.
        alice.send(publish_packet("devices/alice/barrier", b"ok", qos=0))
        packet = alice.expect_packet(what="the barrier message")
        assert packet.type == PUBLISH and packet.publish_fields()[0] == "devices/alice/barrier", packet
        assert alice.pending == b""


def test_acl_5(make_broker):
    b = acl_broker(make_broker)
    with RawClient(b.port) as bob:
        bob.send(connect5_auth_packet(unique("bob5"), "bob", "pb"))
        connack = bob.expect_packet(what="CONNACK")
        assert connack.type == 2 and connack.raw[3] == 0, connack
        bob.send(publish5_packet("devices/alice/cmd", b"evil", qos=1, packet_id=9))
        ack = bob.expect_packet(what="PUBACK")
        assert ack.type == PUBACK and struct.unpack_from("!H", ack.raw, 2)[0] == 9 and ack.raw[4] == 0x87, ack
        bob.send(publish5_packet("devices/alice/cmd", b"evil", qos=2, packet_id=10))
        rec = bob.expect_packet(what="PUBREC")
        assert rec.type == 5 and rec.raw[4] == 0x87, rec
        bob.send(subscribe5_packet(11, [("devices/alice/#", 1), ("devices/bob/+", 1), ("broadcast/#", 0)]))
        suback = bob.expect_packet(what="SUBACK")
        assert suback.type == SUBACK, suback
        assert list(suback.raw[-3:]) == [0x87, 1, 0], suback


def test_acl_reload_applies_to_connected_clients(make_broker):
    b = acl_broker(make_broker, acl=[{"permission": "allow", "access": "readwrite", "topic": "a/#"}])
    with RawClient(b.port) as c:
        c.connect(unique("live"), username="alice", password=b"pa")
        c.subscribe(1, [("b/#", 0)], granted=[0x80])
        config = json.loads(b.config_path.read_text())
        config["auth"]["acl"] = [{"permission": "allow", "access": "readwrite", "topic": "b/#"}]
        b.config_path.write_text(json.dumps(config))
        before = b.log_path.read_text().count("configuration reloaded")
        b.signal(signal.SIGHUP)
        wait_until(lambda: b.log_path.read_text().count("configuration reloaded") > before, 10, message="reload")
        text = b.log_path.read_text()
        assert "iotgw.config.applied=auth.acl]" in text and "restart_required" not in text, text[-2000:]
        # Same connection, new rules.
        c.subscribe(2, [("b/#", 0)])
        c.subscribe(3, [("a/#", 0)], granted=[0x80])


# -- a burst ------------------------------------------------------------------------------------

USERS = 8
CONNECTS = 2000


async def _connect_all(port: int, n: int) -> list[int]:
    """Opens ``n`` connections at once (each a CONNECT with one of USERS accounts) and returns the
    CONNACK codes; every connection stays open until all have their CONNACK."""
    writers = []

    async def one(i: int) -> int:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
        writers.append(writer)
        k = i % USERS
        writer.write(connect_packet(f"burst-{i}", username=f"user{k}", password=f"pw-{k}".encode()))
        header = await asyncio.wait_for(reader.readexactly(4), 60)
        return header[3] if header[0] == 0x20 else -1

    try:
        codes = await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        for writer in writers:
            writer.close()
    return list(codes)


def _connect_burst(b, backend: str) -> None:
    """2,000 simultaneous authenticated CONNECTs: all accepted, the pool never above 4, one look-up and one
    scrypt verification per user. The brokers get connect_timeout 30, which also bounds the wait for
    authentication after CONNECT: scrypt in a debug build takes 0.5-2 s per run on a loaded machine, and
    8 runs share 2 hashing threads."""
    for k in range(USERS):
        add_user(b, f"user{k}", f"pw-{k}")
    b.start()
    started = time.monotonic()
    codes = asyncio.run(_connect_all(b.port, CONNECTS))
    elapsed = time.monotonic() - started
    assert codes.count(0) == CONNECTS, {c: codes.count(c) for c in set(codes)}
    peak = metric(b.admin_port, "iotgw_db_pool_peak_in_use")
    lookups = metric(b.admin_port, "iotgw_auth_lookups_total")
    verifications = metric(b.admin_port, "iotgw_auth_verifications_total")
    print(f"\n{backend}: {CONNECTS} authenticated CONNECTs ({USERS} users) in {elapsed:.2f} s; "
          f"pool peak {peak:.0f}, look-ups {lookups:.0f}, scrypt verifications {verifications:.0f}")
    assert peak <= 4
    # One look-up and one verification per user: single flight plus the caches.
    assert lookups == USERS
    assert verifications == USERS


def test_2000_authenticated_connects_through_a_pool_of_4(make_broker):
    b = make_broker(start=False, auth=AUTH_ON, storage={"pool": {"size": 4}},
                    limits={"max_connections": 5000, "connect_timeout": 30}, admin={"enabled": True})
    _connect_burst(b, "sqlite")


def test_2000_authenticated_connects_postgres_sees_at_most_4_sessions(make_broker, postgres_db):
    """The same burst with the users table in PostgreSQL; the server's own view (pg_stat_activity,
    sampled every 20 ms during the burst) never shows more than pool.size sessions of the gateway."""
    storage = postgres_db.storage_config()
    storage["pool"] = {"size": 4}
    b = make_broker(start=False, auth=AUTH_ON, storage=storage,
                    limits={"max_connections": 5000, "connect_timeout": 30}, admin={"enabled": True})
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        con = postgres_db.server.connect(postgres_db.name)
        try:
            with con.cursor() as cur:
                while not stop.is_set():
                    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'iotgw'",
                                (postgres_db.name,))
                    samples.append(cur.fetchone()[0])
                    stop.wait(0.02)
        finally:
            con.close()

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        sampler.start()
        _connect_burst(b, "postgres")
    finally:
        stop.set()
        sampler.join(10)
    print(f"pg_stat_activity: at most {max(samples)} gateway sessions in {len(samples)} samples")
    assert samples and max(samples) <= 4, f"PostgreSQL saw {max(samples)} sessions from the gateway"


# -- without telemetry storage ------------------------------------------------------------------


def test_users_table_without_telemetry_storage(make_broker):
    """storage.enabled false still opens the database for the users table, and closes it on SIGTERM."""
    b = make_broker(start=False, auth=AUTH_ON, storage={"enabled": False})
    add_user(b, "solo", "pw")
    b.start()
    assert connack311(b.port, unique("s"), "solo", "pw") == 0
    assert connack311(b.port, unique("s"), "solo", "nope") == 4
    assert b.stop() == 0


def test_switching_to_the_users_table_without_a_database_needs_a_restart(make_broker):
    b = make_broker(storage={"enabled": False})
    b.config_path.write_text(b.config_path.read_text().replace("anonymous: true", "anonymous: false\n  backend: \"database\""))
    before = b.log_path.read_text().count("configuration reloaded")
    b.signal(signal.SIGHUP)
    wait_until(lambda: b.log_path.read_text().count("configuration reloaded") > before, 10, message="reload")
    # The restart-required line follows "configuration reloaded" and may reach the file a moment later.
    wait_until(lambda: "iotgw.config.restart_required=auth.anonymous, auth.backend]" in b.log_path.read_text(), 10,
               message="the restart_required log line")
    # Nothing of auth changed: anonymous clients are still accepted.
    assert connack311(b.port, unique("a"), None, None) == 0


def test_user_add_prompts_on_a_terminal_without_echo(make_broker, tmp_path):
    """Without --password-stdin the password is read twice from the terminal with echo off: the
    terminal never shows it, a mismatch is refused, and the stored password works."""
    import os
    import pty
    import select

    b = make_broker(start=False, auth=AUTH_ON)

    def run_on_pty(name: str, answers: list[str]) -> tuple[int, bytes, bytes]:
        master, slave = pty.openpty()
        proc = subprocess.Popen([str(IOTGW_BIN), "user", "add", name, "--config", str(b.config_path)],
                                stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.close(slave)
        echoed = b""
        try:
            for answer in answers:
                # Wait for the prompt on stderr before typing (the prompt comes after echo is off).
                prompt = b""
                deadline = time.monotonic() + 30
                while b"assword: " not in prompt and time.monotonic() < deadline:
                    ready, _, _ = select.select([proc.stderr], [], [], 0.5)
                    if ready:
                        chunk = os.read(proc.stderr.fileno(), 1024)
                        if not chunk:
                            break
                        prompt += chunk
                assert b"assword: " in prompt, prompt
                os.write(master, answer.encode() + b"\n")
            out, err = proc.communicate(timeout=60)
            while True:
                ready, _, _ = select.select([master], [], [], 0.2)
                if not ready:
                    break
                try:
                    chunk = os.read(master, 1024)
                except OSError:
                    break
                if not chunk:
                    break
                echoed += chunk
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
        return proc.returncode, err, echoed

    code, err, echoed = run_on_pty("tty-user", ["typed-secret", "typed-secret"])
    assert code == 0, err
    assert b"typed-secret" not in echoed, echoed
    code, err, _ = run_on_pty("tty-other", ["one", "two"])
    assert code == 2 and b"do not match" in err, err
    b.start()
    assert connack311(b.port, unique("t"), "tty-user", "typed-secret") == 0
    assert connack311(b.port, unique("t"), "tty-other", "one") == 4


# -- login throttle ----------------------------------------------------------------------------


def test_failed_logins_block_the_address_then_expire(make_broker):
    """auth.login_throttle: 3 failed logins from 127.0.0.1 block it; the right password is then refused
    too, without a password check (MQTT 5 0x9F, 3.1.1 return code 5), counted in a metric and logged;
    once the block is over the right password is accepted again."""
    b = make_broker(start=False, auth={**AUTH_ON, "login_throttle": {"max_failures": 3, "window": 60, "block": 10}},
                    admin={"enabled": True})
    add_user(b, "dev1", "right-password")
    b.start()
    assert connack311(b.port, unique("ok"), "dev1", "right-password") == 0
    assert connack311(b.port, unique("bad"), "dev1", "wrong-1") == 4
    assert connack5(b.port, "dev1", "wrong-2") == 0x86
    # The block starts when the gateway counts this third failure, so not before this moment: it cannot
    # end before blocked_at + 10 s. 10 s leaves the checks below room on a slow machine.
    blocked_at = time.monotonic()
    assert connack311(b.port, unique("who"), "nobody", "x") == 4
    verifications = metric(b.admin_port, "iotgw_auth_verifications_total")
    assert connack5(b.port, "dev1", "right-password") == 0x9F
    assert connack311(b.port, unique("blocked"), "dev1", "right-password") == 5
    assert metric(b.admin_port, "iotgw_auth_verifications_total") == verifications, "a blocked CONNECT was hashed"
    assert metric(b.admin_port, "iotgw_auth_throttled_connects_total") == 2
    assert metric(b.admin_port, "iotgw_auth_login_blocks_total") == 1
    wait_until(lambda: "login throttled: too many failed logins from one address" in b.log_path.read_text(errors="replace"),
               10, message="the login-throttled log line")
    wait_until(lambda: connack311(b.port, unique("again"), "dev1", "right-password") == 0, 30, interval=0.5,
               message="the right password accepted once the 10 s block is over")
    assert time.monotonic() - blocked_at >= 10, "the block ended early"


def test_login_throttle_off_and_bad_settings(make_broker, tmp_path):
    """max_failures 0 turns the throttle off; a bad value names the key and the daemon refuses to start."""
    b = make_broker(start=False, auth={**AUTH_ON, "login_throttle": {"max_failures": 0}})
    add_user(b, "dev1", "right-password")
    b.start()
    for i in range(12):
        assert connack311(b.port, unique(f"bad{i}"), "dev1", "wrong") == 4
    assert connack311(b.port, unique("ok"), "dev1", "right-password") == 0
    bad = make_broker(start=False, auth={**AUTH_ON, "login_throttle": {"window": 0}})
    r = subprocess.run(bad.argv, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert r.returncode != 0 and "auth.login_throttle.window" in r.stdout + r.stderr, r
