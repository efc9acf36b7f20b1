"""ACL changes apply to subscriptions that already exist: a SIGHUP whose rules no longer allow a
subscription removes it (the subscriber stops receiving while a still-permitted one keeps receiving,
and ``iotgw_acl_subscriptions_revoked_total`` counts it), and a persistent session restored at
start-up is checked against the rules then in effect, with the username it connected with (so a
revocation made while the gateway was stopped holds, and its stored rows are gone)."""

from __future__ import annotations

import json
import signal

import pytest

from helpers import PahoClient, iotgw_only, stop_all, unique, wait_until
from test_auth import metric
from test_durable_sessions import restart
from test_storage import backend, query  # noqa: F401 (backend is a fixture)


@pytest.fixture(autouse=True)
def _iotgw_only():
    iotgw_only("re-checking subscriptions on an ACL change is iotgw's")


ALLOW = [
    {"permission": "allow", "access": "readwrite", "topic": "devices/%u/#"},
    {"permission": "allow", "access": "readwrite", "topic": "fleet/#"},
]
# The same, except that alice may no longer read the fleet topics.
REVOKE_ALICE = [{"permission": "deny", "access": "read", "topic": "fleet/#", "username": "alice"}] + ALLOW


def acl_gateway(make_broker, db=None):
    """A gateway with the ``ALLOW`` rules, storing into SQLite (``db`` None) or the PostgreSQL database ``db``."""
    b = make_broker(config_format="json", auth={"anonymous": True, "acl": ALLOW}, admin={"enabled": True},
                    storage=db.storage_config() if db is not None else {})
    b.postgres_db = db
    return b


def set_acl(b, acl: list) -> None:
    config = json.loads(b.config_path.read_text())
    config["auth"]["acl"] = acl
    b.config_path.write_text(json.dumps(config, indent=2) + "\n")


def log_count(b, text: str) -> int:
    return b.log_path.read_text(errors="replace").count(text)


def as_user(client: PahoClient, username: str) -> PahoClient:
    """Makes ``client`` present ``username`` (no password: `auth.backend: none` takes it as is)."""
    client.client.username_pw_set(username)
    return client


def nothing_before_barrier(alice: PahoClient) -> None:
    """alice publishes to her own tree and must receive that message next: anything routed to her
    before it (on any filter) would arrive first."""
    marker = unique("barrier").encode()
    alice.publish("devices/alice/barrier", marker, qos=1)
    got = alice.get(what="alice's barrier message")
    assert (got.topic, got.payload) == ("devices/alice/barrier", marker), f"alice received {got} before her barrier"


def test_sighup_revokes_a_connected_subscription(make_broker):
    b = acl_gateway(make_broker)
    cid = unique("alice")
    alice = as_user(PahoClient(b.port, client_id=cid), "alice").start()
    bob = as_user(PahoClient(b.port, client_id=unique("bob")), "bob").start()
    pub = PahoClient(b.port, client_id=unique("pub")).start()
    try:
        assert alice.subscribe([("fleet/#", 1), ("devices/alice/#", 1)]) == [1, 1]
        assert bob.subscribe([("fleet/#", 1)]) == [1]
        pub.publish("fleet/before", b"both", qos=1)
        assert alice.get(what="fleet/before at alice").payload == b"both"
        assert bob.get(what="fleet/before at bob").payload == b"both"
        assert metric(b.admin_port, "iotgw_acl_subscriptions_revoked_total") == 0

        set_acl(b, REVOKE_ALICE)
        before = log_count(b, "configuration reloaded")
        b.signal(signal.SIGHUP)
        wait_until(lambda: log_count(b, "configuration reloaded") > before, 10, message="reload logged")
        text = b.log_path.read_text(errors="replace")
        revoked = [line for line in text.splitlines() if "subscription revoked" in line]
        assert len(revoked) == 1, revoked
        assert cid in revoked[0] and "fleet/#" in revoked[0], revoked[0]

        pub.publish("fleet/after", b"only bob", qos=1)
        got = bob.get(what="fleet/after at bob")
        assert (got.topic, got.payload) == ("fleet/after", b"only bob")
        nothing_before_barrier(alice)
        assert alice.drain() == []
        assert metric(b.admin_port, "iotgw_acl_subscriptions_revoked_total") == 1
        # The connection stays; re-subscribing is refused by the new rules (3.1.1 SUBACK 0x80).
        assert alice.subscribe([("fleet/#", 1)]) == [0x80]
    finally:
        stop_all([alice, bob, pub])


def test_restart_with_revoking_rules_removes_the_restored_subscription(make_broker, backend):
    b = acl_gateway(make_broker, backend)
    cid = unique("alice-dur")
    alice = as_user(PahoClient(b.port, client_id=cid, clean_session=False), "alice").start()
    assert alice.subscribe([("fleet/#", 1), ("devices/alice/#", 1)]) == [1, 1]
    alice.stop()
    pub = PahoClient(b.port, client_id=unique("pub")).start()
    try:
        pub.publish("fleet/queued", b"queued while offline", qos=1)
    finally:
        pub.stop()
    # The stored session carries the username alice connected with.
    wait_until(lambda: [r["username"] for r in query(b, "SELECT username FROM sessions WHERE client_id = ?", (cid,))] == ["alice"],
               10, message="session row with username alice")

    b.signal(signal.SIGTERM)
    assert b.wait(20) == 0, b.log_tail()
    set_acl(b, REVOKE_ALICE)
    b.start()

    text = b.log_path.read_text(errors="replace")
    revoked = [line for line in text.splitlines() if "subscription revoked" in line]
    assert len(revoked) == 1 and cid in revoked[0] and "fleet/#" in revoked[0], revoked
    assert metric(b.admin_port, "iotgw_acl_subscriptions_revoked_total") == 1
    # The queued QoS 1 message of the revoked filter is dropped, and counted.
    assert metric(b.admin_port, 'iotgw_messages_dropped_total{reason="acl_revoked"}') == 1
    wait_until(lambda: [r["topic_key"] for r in query(b, "SELECT topic_key FROM subscriptions WHERE client_id = ?", (cid,))]
               == ["devices/alice/#"], 10, message="the revoked subscription's row deleted")

    again = as_user(PahoClient(b.port, client_id=cid, clean_session=False), "alice").start()
    pub = PahoClient(b.port, client_id=unique("pub")).start()
    try:
        assert again.connack == (True, 0), again.connack
        pub.publish("fleet/live", b"not for alice", qos=1)
        nothing_before_barrier(again)
    finally:
        stop_all([again, pub])

    # And it stays gone: the next start restores one subscription and revokes nothing.
    restart(b, signal.SIGTERM)
    assert metric(b.admin_port, "iotgw_acl_subscriptions_revoked_total") == 0
    assert [r["topic_key"] for r in query(b, "SELECT topic_key FROM subscriptions WHERE client_id = ?", (cid,))] == ["devices/alice/#"]


# The same, except that nobody may publish under fleet/locked/.
LOCK_FLEET = [{"permission": "deny", "access": "write", "topic": "fleet/locked/#"}] + ALLOW


def test_sighup_decides_the_next_publish_of_a_connected_publisher(make_broker):
    """A connection keeps its own copy of the authorizer and the configuration (read again only after a
    change): the PUBLISH right after a reload must be decided by the new rules."""
    b = acl_gateway(make_broker)
    watcher = PahoClient(b.port, client_id=unique("watcher")).start()
    pub = PahoClient(b.port, client_id=unique("pub")).start()
    try:
        assert watcher.subscribe([("fleet/#", 1)]) == [1]
        pub.publish("fleet/locked/before", b"allowed", qos=1)
        got = watcher.get(what="fleet/locked/before at the watcher")
        assert (got.topic, got.payload) == ("fleet/locked/before", b"allowed")

        set_acl(b, LOCK_FLEET)
        before = log_count(b, "configuration reloaded")
        b.signal(signal.SIGHUP)
        wait_until(lambda: log_count(b, "configuration reloaded") > before, 10, message="reload logged")

        # Same connection: the locked topic is refused now, the open one still routed, in that order.
        pub.publish("fleet/locked/after", b"refused", qos=1)
        pub.publish("fleet/open/barrier", b"barrier", qos=1)
        got = watcher.get(what="the barrier at the watcher")
        assert (got.topic, got.payload) == ("fleet/open/barrier", b"barrier"), \
            f"{got} arrived before the barrier: the PUBLISH after the reload was decided by the old rules"
        assert watcher.drain() == []
    finally:
        stop_all([watcher, pub])
