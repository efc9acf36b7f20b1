#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (Fuzz/Corpus/<target>/), from hand-built valid inputs.

Each target's input layout is described in its source file. Run from anywhere; the seeds are
checked in, this script only documents and regenerates them."""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(text):
    b = text.encode() if isinstance(text, str) else text
    return struct.pack(">H", len(b)) + b


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def props(*items):
    body = b"".join(items)
    return varint(len(body)) + body


def connect(version, client_id="fuzz", flags=0x02, keep_alive=60, properties=b"", will=None, user=None, password=None):
    if version == 5:
        header = s("MQTT") + bytes([5])
    else:
        header = s("MQTT") + bytes([4])
    payload = s(client_id)
    if will:
        flags |= 0x04 | (will.get("qos", 0) << 3) | (0x20 if will.get("retain") else 0)
        if version == 5:
            payload += props(b"\x18" + struct.pack(">I", 5))
        payload += s(will["topic"]) + s(will["payload"])
    if user is not None:
        flags |= 0x80
        payload += s(user)
    if password is not None:
        flags |= 0x40
        payload += s(password)
    body = header + bytes([flags]) + struct.pack(">H", keep_alive)
    if version == 5:
        body += props(properties) if properties else b"\x00"
    return packet(0x10, body + payload)


def publish(version, topic, payload, qos=0, retain=False, dup=False, pid=1, properties=b""):
    first = 0x30 | (qos << 1) | (1 if retain else 0) | (8 if dup else 0)
    body = s(topic)
    if qos:
        body += struct.pack(">H", pid)
    if version == 5:
        body += props(properties) if properties else b"\x00"
    return packet(first, body + payload)


def ack(kind, pid, version, reason=None, properties=b""):
    first = {"puback": 0x40, "pubrec": 0x50, "pubrel": 0x62, "pubcomp": 0x70}[kind]
    body = struct.pack(">H", pid)
    if version == 5 and reason is not None:
        body += bytes([reason]) + (props(properties) if properties else b"")
    return packet(first, body)


def subscribe(version, pid, filters, properties=b""):
    body = struct.pack(">H", pid)
    if version == 5:
        body += props(properties) if properties else b"\x00"
    for f, opts in filters:
        body += s(f) + bytes([opts])
    return packet(0x82, body)


def unsubscribe(version, pid, filters):
    body = struct.pack(">H", pid)
    if version == 5:
        body += b"\x00"
    for f in filters:
        body += s(f)
    return packet(0xA2, body)


def mqtt_seeds():
    seeds = {}
    for v in (4, 5):
        p5 = v == 5
        session = (
            connect(v, properties=(b"\x11" + struct.pack(">I", 3600) + b"\x21\x00\x10" + b"\x27" + struct.pack(">I", 65536)
                                   + b"\x22\x00\x0a" + b"\x26" + s("k") + s("v")) if p5 else b"",
                    will={"topic": "dev/will", "payload": b"gone", "qos": 1}, user="user", password=b"pass")
            + subscribe(v, 1, [("sensors/+/temp", 1), ("$share/g/a/#", 2), ("#", 0)],
                        properties=(b"\x0b\x07" if p5 else b""))
            + publish(v, "sensors/1/temp", b"21.5", qos=0)
            + publish(v, "sensors/1/temp", b'{"t":21.5}', qos=1, pid=2,
                      properties=(b"\x01\x01" + b"\x02" + struct.pack(">I", 60) + b"\x23\x00\x05" + b"\x08" + s("reply/x")
                                  + b"\x09" + s("corr") + b"\x03" + s("application/json") + b"\x26" + s("a") + s("b")) if p5 else b"")
            + publish(v, "a/b", b"x" * 40, qos=2, pid=3, retain=True)
            + ack("puback", 7, v, 0x10 if p5 else None)
            + ack("pubrec", 8, v, 0x00 if p5 else None)
            + ack("pubrel", 3, v, 0x92 if p5 else None, properties=(b"\x1f" + s("why") if p5 else b""))
            + ack("pubcomp", 9, v)
            + unsubscribe(v, 4, ["sensors/+/temp", "#"])
            + packet(0xC0, b"")
            + (packet(0xE0, b"\x04" + props(b"\x11" + struct.pack(">I", 0) + b"\x1f" + s("bye"))) if p5 else packet(0xE0, b""))
        )
        seeds[f"server-v{v}-session"] = bytes([0, 7]) + session
        seeds[f"server-v{v}-connect"] = bytes([0, 0]) + connect(v)
        if p5:
            seeds["server-v5-auth"] = bytes([0, 3]) + connect(5, properties=b"\x15" + s("SCRAM-SHA-1") + b"\x16" + s(b"data")) \
                + packet(0xF0, b"\x18" + props(b"\x15" + s("SCRAM-SHA-1") + b"\x16" + s(b"more")))
        # A client parsing a server's stream.
        server_stream = (
            packet(0x20, b"\x00\x00" + (props(b"\x24\x01\x25\x00\x27" + struct.pack(">I", 1 << 20) + b"\x22\x00\x08"
                                            + b"\x12" + s("assigned")) if p5 else b""))
            + packet(0x90, struct.pack(">H", 1) + (b"\x00" if p5 else b"") + b"\x00\x01\x80")
            + packet(0xB0, struct.pack(">H", 4) + (b"\x00\x00\x11" if p5 else b""))
            + publish(v, "sensors/1/temp", b"21.5", qos=1, pid=5, properties=(b"\x0b\x07" if p5 else b""))
            + packet(0xD0, b"")
        )
        seeds[f"client-v{v}-stream"] = bytes([1 | (2 if p5 else 0), 11]) + server_stream
    seeds["server-huge-length"] = bytes([0, 0]) + b"\x10\xff\xff\xff\x7f"
    return seeds


def ws_frame(opcode, payload, fin=True, mask=b"\x01\x02\x03\x04", rsv=0):
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([first, 0x80 | n])
    elif n < 65536:
        head = bytes([first, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack(">Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def deflate(data, takeover_state=None):
    """A permessage-deflate message body: raw DEFLATE, sync-flushed, without the final 00 00 ff ff."""
    import zlib
    c = takeover_state or zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def websocket_seeds():
    mqtt = connect(4) + subscribe(4, 1, [("a/#", 1)]) + publish(4, "a/b", b"hello", qos=1, pid=2) + packet(0xE0, b"")
    return {
        "raw-upgrade-mqtt": bytes([0, 5]) + (
            b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: mqttv3.1, mqtt\r\nOrigin: http://x\r\n\r\n") + ws_frame(2, mqtt),
        "raw-not-upgrade": bytes([0, 1]) + b"GET /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.0\r\n\r\n",
        "mqtt-split-frames": bytes([1, 3]) + ws_frame(2, mqtt[:7], fin=False) + ws_frame(0, mqtt[7:20], fin=False)
        + ws_frame(9, b"ping") + ws_frame(0, mqtt[20:]) + ws_frame(8, struct.pack(">H", 1000) + b"bye"),
        "json-requests": bytes([2, 9]) + ws_frame(1, b'{"op":"subscribe","id":1,"filter":"a/#","qos":1}')
        + ws_frame(1, b'{"op":"publish","id":"x","topic":"a/b","payload":{"t":1},"qos":1,"retain":true}')
        + ws_frame(1, b'{"op":"publish","topic":"a/c","payload":"aGk=","encoding":"base64"}')
        + ws_frame(1, b'{"op":"ping"}') + ws_frame(10, b"") + ws_frame(8, struct.pack(">H", 1001)),
        "mqtt-deflate": bytes([4, 6]) + ws_frame(2, deflate(mqtt), rsv=4),
        "json-deflate": bytes([5, 4]) + ws_frame(1, deflate(b'{"op":"publish","topic":"a/b","payload":{"t":' + b"1" * 300 + b'}}'), rsv=4)
        + ws_frame(1, b'{"op":"ping"}'),
        "echo-deflate-fragments": bytes([6, 8]) + ws_frame(1, deflate(b"x" * 3000)[:10], fin=False, rsv=4)
        + ws_frame(0, deflate(b"x" * 3000)[10:]) + ws_frame(2, deflate(bytes(5000)), rsv=4),
        "echo-fragments": bytes([3, 2]) + ws_frame(1, "h\u00e9".encode(), fin=False) + ws_frame(0, b"llo")
        + ws_frame(2, bytes(range(200))) + ws_frame(2, b"x" * 5000) + ws_frame(8, b""),
    }


def jsonapi_seeds():
    docs = [
        b'{"op":"subscribe","id":1,"filter":"sensors/+/temp","qos":1}',
        b'{"op":"unsubscribe","id":"u1","filter":"$share/g/a/#"}',
        b'{"op":"publish","id":2.5e3,"topic":"a/b","payload":{"t":[1,2,{"x":null}],"s":"\\u00e9\\ud83d\\ude00"},"qos":0,"retain":false}',
        b'{"op":"publish","id":null,"topic":"a/b","payload":"aGVsbG8=","encoding":"base64","qos":1}',
        b'{"op":"publish","topic":"a/b","payload":"text \\"quoted\\" \\\\ \\/ \\b\\f\\n\\r\\t","encoding":"json"}',
        b' { "op" : "ping" , "id" : [1] } ',
        b'{"op":"publish","topic":"a/b","payload":-0.0e-5,"qos":2}',
        b'[1,true,false,null,"x",{"a":{}}]',
    ]
    return {f"doc{i}": d for i, d in enumerate(docs)}


def config_seeds():
    root = os.path.dirname(HERE)
    seeds = {}
    configs = os.path.join(root, "Configs")
    for dirpath, _, files in os.walk(configs):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, configs).replace(os.sep, "-")
            with open(path, "rb") as f:
                text = f.read()
            if name.endswith((".yaml", ".yml")):
                seeds[rel] = b"\x00" + text
            elif name.endswith(".json"):
                seeds[rel] = b"\x01" + text
    return seeds


def main():
    targets = {
        "mqtt": mqtt_seeds(),
        "websocket": websocket_seeds(),
        "jsonapi": jsonapi_seeds(),
        "config": config_seeds(),
    }
    for target, seeds in targets.items():
        directory = os.path.join(HERE, "Corpus", target)
        os.makedirs(directory, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)
        print(f"{target}: {len(seeds)} seeds", file=sys.stderr)


if __name__ == "__main__":
    main()
