"""(Hardening) ACL read checks per message: a deny rule that overlaps a wildcard subscription filters it
instead of refusing it, as mosquitto does. Paho's 3.1.1 interoperability suite relies on this
(`deny read test/nosubscribe` before `allow readwrite #`)."""

from __future__ import annotations

from helpers import PUBACK, PUBLISH, RawClient, ack_packet, iotgw_only, publish_packet, unique, wait_until
from operations_helpers import get, metric_samples

ACL = [
    {"permission": "deny", "access": "read", "topic": "test/nosubscribe"},
    {"permission": "allow", "access": "readwrite", "topic": "#"},
]


def _publishes(client: RawClient, count: int) -> list[tuple[str, bytes]]:
    out = []
    for _ in range(count):
        p = client.expect_packet(what="PUBLISH")
        assert p.type == PUBLISH, p
        topic, _, payload = p.publish_fields()
        out.append((topic, payload))
    return out


def test_hash_subscriber_gets_everything_but_the_denied_topic_live_and_retained(make_broker):
    iotgw_only("per-message ACL read checks are iotgw's rule semantics")
    b = make_broker(config_format="json", auth={"anonymous": True, "acl": ACL}, admin={"enabled": True},
                    storage={"enabled": False})
    prefix = unique("acl")
    with RawClient(b.port) as pub, RawClient(b.port) as sub, RawClient(b.port) as denied:
        pub.connect(unique("pub"))
        # Retained first (acknowledged, so stored): one on the denied topic, one on an open one.
        pub.send(publish_packet("test/nosubscribe", b"retained secret", qos=1, packet_id=1, retain=True))
        pub.expect(ack_packet(PUBACK, 1), what="PUBACK of the retained secret")
        pub.send(publish_packet(f"{prefix}/open", b"retained open", qos=1, packet_id=2, retain=True))
        pub.expect(ack_packet(PUBACK, 2), what="PUBACK of the retained open message")
        # The denied topic itself cannot be subscribed to.
        denied.connect(unique("denied"))
        denied.subscribe(1, [("test/nosubscribe", 0)], granted=[0x80])

        sub.connect(unique("sub"))
        sub.subscribe(1, [("#", 0)], granted=[0])
        retained = _publishes(sub, 1)
        assert retained == [(f"{prefix}/open", b"retained open")], retained

        pub.send(publish_packet("test/nosubscribe", b"live secret", qos=0))
        pub.send(publish_packet(f"{prefix}/a", b"live open", qos=0))
        live = _publishes(sub, 1)
        assert live == [(f"{prefix}/a", b"live open")], live
        assert sub.pending == b""

        def withheld():
            samples = metric_samples(get(b.admin_port, "/metrics").body.decode())
            return samples.get(("iotgw_messages_dropped_total", (("reason", "acl_filtered"),)), 0) >= 2
        wait_until(withheld, 10, message="two deliveries withheld by the ACL read check")
