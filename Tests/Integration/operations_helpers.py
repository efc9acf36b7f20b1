"""Helpers for the operations tests: the admin HTTP API, sd_notify capture, asyncio MQTT clients."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from helpers import (CONNACK, DISCONNECT, PUBACK, PUBLISH, SUBACK, connect5_packet, decode_properties,
                     encode_remaining_length, encode_string, fixed)


@dataclass
class HTTPResult:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def http_request(port: int, method: str, path: str, token: str | None = None,
                 timeout: float = 5.0) -> HTTPResult:
    """One request to the admin listener on 127.0.0.1:port (a new connection each time)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        return HTTPResult(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()


def get(port: int, path: str, token: str | None = None) -> HTTPResult:
    return http_request(port, "GET", path, token)


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


class NotifySocket:
    """A test-owned datagram unix socket standing in for systemd's $NOTIFY_SOCKET.

    ``abstract=True`` binds in the abstract namespace and gives ``@name`` as the address. Every
    datagram received is kept with its arrival time.
    """

    def __init__(self, path: str, abstract: bool = False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            self.sock.bind("\0" + path)
            self.address = "@" + path
        else:
            self.sock.bind(path)
            self.address = path
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def snapshot(self) -> list[str]:
        with self._lock:
            return [m for _, m in self.messages]

    def assignments(self) -> list[str]:
        """Every KEY=VALUE line received, in order."""
        return [line for m in self.snapshot() for line in m.split("\n") if line]

    def first_index(self, assignment: str, after: int = -1) -> int | None:
        """Index (in ``assignments()``) of the first ``assignment`` after position ``after``."""
        for i, line in enumerate(self.assignments()):
            if i > after and line == assignment:
                return i
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


# --------------------------------------------------------------------------------------
# asyncio MQTT 5 client (no thread per connection: 1,000 of them share one event loop)


@dataclass
class AsyncClient5:
    """An MQTT 5 client over an asyncio stream: raw bytes, just enough for publish/subscribe tests."""

    client_id: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    acked: set[int] = field(default_factory=set)
    received: list[bytes] = field(default_factory=list)
    disconnect_reason: int | None = None
    closed: bool = False
    #: Set on every PUBACK and when the connection ends (publishers wait on it instead of polling).
    ack_event: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def connect(cls, port: int, client_id: str, timeout: float = 10.0) -> "AsyncClient5":
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        writer.write(connect5_packet(client_id, keepalive=120))
        client = cls(client_id, reader, writer)
        first, body = await asyncio.wait_for(client.read_packet(), timeout)
        assert first >> 4 == CONNACK and body[1] == 0, f"{client_id}: CONNACK {body.hex(' ')}"
        return client

    async def read_packet(self) -> tuple[int, bytes]:
        header = await self.reader.readexactly(1)
        length, multiplier = 0, 1
        for _ in range(4):
            (byte,) = await self.reader.readexactly(1)
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            if not byte & 0x80:
                break
        body = await self.reader.readexactly(length) if length else b""
        return header[0], body

    def publish(self, topic: str, payload: bytes, packet_id: int) -> None:
        variable = encode_string(topic) + struct.pack("!H", packet_id) + b"\x00"  # no properties
        self.writer.write(fixed(0x32, variable + payload))

    def subscribe(self, packet_id: int, topic_filter: str, qos: int) -> None:
        body = struct.pack("!H", packet_id) + b"\x00" + encode_string(topic_filter) + bytes([qos])
        self.writer.write(fixed(0x82, body))

    async def run_reader(self) -> None:
        """Reads until the server closes: records PUBACKs, acknowledges and keeps PUBLISHes, and keeps
        the DISCONNECT reason code."""
        try:
            while True:
                first, body = await self.read_packet()
                kind = first >> 4
                if kind == PUBACK:
                    (pid,) = struct.unpack_from("!H", body, 0)
                    self.acked.add(pid)
                    self.ack_event.set()
                elif kind == PUBLISH:
                    qos = (first >> 1) & 3
                    (tlen,) = struct.unpack_from("!H", body, 0)
                    pos = 2 + tlen
                    if qos:
                        (pid,) = struct.unpack_from("!H", body, pos)
                        pos += 2
                        self.writer.write(bytes([0x40, 0x02]) + struct.pack("!H", pid))
                    _, pos = decode_properties(body, pos)
                    self.received.append(body[pos:])
                elif kind == DISCONNECT:
                    self.disconnect_reason = body[0] if body else 0
                elif kind == SUBACK:
                    pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed = True
            self.ack_event.set()
            self.writer.close()
