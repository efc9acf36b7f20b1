"""Shared helpers for the end-to-end suite.

Two kinds of client live here:

* ``RawClient``: a plain TCP socket that speaks MQTT 3.1.1 byte by byte. Hostile-client
  tests build packets with the ``*_packet`` functions and compare what comes back with
  exact bytes (the way mosquitto's ``test/broker`` scripts do).
* ``PahoClient``: a thin wrapper over paho-mqtt 2.x (``CallbackAPIVersion.VERSION2``)
  that turns callbacks into queues and events, so tests wait for conditions with a
  deadline instead of sleeping.

Every wait in this module takes a timeout and raises ``AssertionError`` (or returns a
falsy value where documented) when the deadline passes.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable

import paho.mqtt.client as mqtt
import pytest

DEFAULT_TIMEOUT = 5.0

#: Which broker the suite runs against: "iotgw" (default) or "mosquitto".
BROKER_KIND = os.environ.get("IOTGW_BROKER", "iotgw").strip().lower()


def is_iotgw() -> bool:
    return BROKER_KIND == "iotgw"


def is_mosquitto() -> bool:
    return BROKER_KIND == "mosquitto"


def iotgw_only(reason: str) -> None:
    """Skip the current test when running against mosquitto."""
    if is_mosquitto():
        pytest.skip(f"iotgw only: {reason}")


# --------------------------------------------------------------------------------------
# Waiting


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.02,
               message: str = "condition") -> object:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` seconds pass.

    Returns the truthy value; raises ``AssertionError`` naming ``message`` on timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {message}")
        time.sleep(interval)


def unique(prefix: str = "t") -> str:
    """A short unique string for topics and client ids, so tests never see each other's data."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port: int, timeout: float = 0.2) -> bool:
    """True if a TCP connect to 127.0.0.1:port succeeds right now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB, from /proc/PID/status (VmRSS)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


# --------------------------------------------------------------------------------------
# MQTT 3.1.1 wire format (written from the spec, OASIS mqtt-v3.1.1-os)

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

PINGREQ_BYTES = b"\xc0\x00"
PINGRESP_BYTES = b"\xd0\x00"
DISCONNECT_BYTES = b"\xe0\x00"


def encode_remaining_length(n: int) -> bytes:
    """Variable byte integer (spec 2.2.3); at most 4 bytes for n < 268435456."""
    if n < 0:
        raise ValueError(n)
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out.append(byte)
        if not n:
            return bytes(out)


def encode_string(s: str | bytes) -> bytes:
    data = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("!H", len(data)) + data


def fixed(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + encode_remaining_length(len(body)) + body


@dataclass
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


def connect_packet(client_id: str, *, clean_session: bool = True, keepalive: int = 60,
                   will: Will | None = None, username: str | None = None,
                   password: bytes | None = None, proto_name: str = "MQTT",
                   proto_level: int = 4) -> bytes:
    """A CONNECT packet (spec 3.1). ``proto_name="MQIsdp", proto_level=3`` gives MQTT 3.1."""
    flags = 0
    if clean_session:
        flags |= 0x02
    payload = encode_string(client_id)
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += encode_string(will.topic) + encode_string(will.payload)
    if username is not None:
        flags |= 0x80
        payload += encode_string(username)
    if password is not None:
        flags |= 0x40
        payload += encode_string(password)
    variable = encode_string(proto_name) + bytes([proto_level, flags]) + struct.pack("!H", keepalive)
    return fixed(0x10, variable + payload)


def connack_bytes(return_code: int = 0, session_present: bool = False) -> bytes:
    return bytes([0x20, 0x02, 1 if session_present else 0, return_code])


def publish_packet(topic: str, payload: bytes, *, qos: int = 0, packet_id: int | None = None,
                   retain: bool = False, dup: bool = False) -> bytes:
    first = 0x30 | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    body = encode_string(topic)
    if qos > 0:
        if packet_id is None:
            raise ValueError("QoS > 0 needs a packet id")
        body += struct.pack("!H", packet_id)
    return fixed(first, body + payload)


def subscribe_packet(packet_id: int, subscriptions: Iterable[tuple[str, int]]) -> bytes:
    body = struct.pack("!H", packet_id)
    for topic, qos in subscriptions:
        body += encode_string(topic) + bytes([qos])
    return fixed(0x82, body)


def suback_bytes(packet_id: int, granted: Iterable[int]) -> bytes:
    return fixed(0x90, struct.pack("!H", packet_id) + bytes(granted))


def ack_packet(kind: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL (flags 0b0010) or PUBCOMP for ``packet_id``."""
    first = (kind << 4) | (0x02 if kind == PUBREL else 0)
    return bytes([first, 0x02]) + struct.pack("!H", packet_id)


@dataclass
class Packet:
    first_byte: int
    body: bytes

    @property
    def type(self) -> int:
        return self.first_byte >> 4

    @property
    def flags(self) -> int:
        return self.first_byte & 0x0F

    @property
    def raw(self) -> bytes:
        return bytes([self.first_byte]) + encode_remaining_length(len(self.body)) + self.body

    # PUBLISH accessors
    @property
    def qos(self) -> int:
        return (self.first_byte >> 1) & 0x03

    @property
    def dup(self) -> bool:
        return bool(self.first_byte & 0x08)

    @property
    def retain(self) -> bool:
        return bool(self.first_byte & 0x01)

    def publish_fields(self) -> tuple[str, int | None, bytes]:
        """(topic, packet id or None, payload) of a PUBLISH."""
        assert self.type == PUBLISH, f"not a PUBLISH: {self.raw.hex(' ')}"
        (tlen,) = struct.unpack_from("!H", self.body, 0)
        topic = self.body[2:2 + tlen].decode("utf-8")
        pos = 2 + tlen
        packet_id = None
        if self.qos > 0:
            (packet_id,) = struct.unpack_from("!H", self.body, pos)
            pos += 2
        return topic, packet_id, self.body[pos:]

    def __repr__(self) -> str:
        return f"Packet({self.raw[:64].hex(' ')}{'...' if len(self.raw) > 64 else ''})"


class ConnectionClosed(Exception):
    """The broker closed (EOF or reset) while a packet was expected."""


class RawClient:
    """One TCP connection to the broker that speaks MQTT as raw bytes.

    All reads take a timeout; ``expect`` compares exact bytes and fails with a hex dump.
    """

    def __init__(self, port: int, timeout: float = DEFAULT_TIMEOUT, rcvbuf: int | None = None,
                 source: str | None = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Must be set before connect() for the window to be small from the start.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            # Another loopback address (127.0.0.x) as the source: another client machine to the broker.
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()

    # -- lifecycle
    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def abort(self) -> None:
        """Close with RST (SO_LINGER 0): a client that vanishes without DISCONNECT."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    # -- sending
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    # -- receiving
    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("deadline passed")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError as e:
            raise ConnectionClosed("connection reset by broker") from e
        if not chunk:
            raise ConnectionClosed("EOF from broker")
        self._buf += chunk

    def recv_exact(self, n: int, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self._buf) < n:
            self._fill(deadline)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def read_packet(self, timeout: float = DEFAULT_TIMEOUT) -> Packet:
        """Read one whole packet. Raises ``socket.timeout`` or ``ConnectionClosed``."""
        deadline = time.monotonic() + timeout
        while True:
            parsed = self._try_parse()
            if parsed is not None:
                return parsed
            self._fill(deadline)

    def _try_parse(self) -> Packet | None:
        if len(self._buf) < 2:
            return None
        mult, length, pos = 1, 0, 1
        while True:
            if pos >= len(self._buf):
                return None
            b = self._buf[pos]
            length += (b & 0x7F) * mult
            mult *= 128
            pos += 1
            if not b & 0x80:
                break
            if pos > 4:
                raise AssertionError(f"broker sent a remaining length over 4 bytes: {self._buf[:8].hex(' ')}")
        if len(self._buf) < pos + length:
            return None
        packet = Packet(self._buf[0], bytes(self._buf[pos:pos + length]))
        del self._buf[:pos + length]
        return packet

    def expect(self, expected: bytes, timeout: float = DEFAULT_TIMEOUT, what: str = "packet") -> None:
        """Read exactly ``len(expected)`` bytes and assert they are ``expected``."""
        try:
            got = self.recv_exact(len(expected), timeout)
        except ConnectionClosed as e:
            raise AssertionError(f"expected {what} {expected.hex(' ')}, but {e} "
                                 f"(had {bytes(self._buf).hex(' ') or 'nothing'})") from None
        except socket.timeout:
            raise AssertionError(f"expected {what} {expected.hex(' ')}, got only "
                                 f"{bytes(self._buf).hex(' ') or 'nothing'} within {timeout}s") from None
        assert got == expected, f"expected {what} {expected.hex(' ')}, got {got.hex(' ')}"

    def expect_packet(self, timeout: float = DEFAULT_TIMEOUT, what: str = "a packet") -> Packet:
        try:
            return self.read_packet(timeout)
        except ConnectionClosed as e:
            raise AssertionError(f"expected {what}, but {e}") from None
        except socket.timeout:
            raise AssertionError(f"expected {what}, got nothing within {timeout}s "
                                 f"(buffered: {bytes(self._buf).hex(' ') or 'nothing'})") from None

    def closed_within(self, timeout: float) -> bool:
        """True if the broker closes the connection (EOF or RST) within ``timeout`` seconds.

        Any bytes that arrive meanwhile are kept in the buffer (see ``pending``).
        """
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._fill(deadline)
        except ConnectionClosed:
            return True
        except socket.timeout:
            return False
        except OSError:
            return True

    @property
    def pending(self) -> bytes:
        return bytes(self._buf)

    def assert_closed(self, timeout: float = DEFAULT_TIMEOUT, what: str = "") -> None:
        closed = self.closed_within(timeout)
        assert closed, (f"broker did not close the connection within {timeout}s {what}; "
                        f"received {self.pending.hex(' ') or 'nothing'}")

    # -- conveniences
    def connect(self, client_id: str, expect_rc: int = 0, session_present: bool = False,
                timeout: float = DEFAULT_TIMEOUT, **kwargs) -> None:
        """Send CONNECT and expect the exact CONNACK."""
        self.send(connect_packet(client_id, **kwargs))
        self.expect(connack_bytes(expect_rc, session_present), timeout, what="CONNACK")

    def subscribe(self, packet_id: int, subscriptions: list[tuple[str, int]],
                  granted: list[int] | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.send(subscribe_packet(packet_id, subscriptions))
        self.expect(suback_bytes(packet_id, granted if granted is not None else [q for _, q in subscriptions]),
                    timeout, what="SUBACK")


def raw_connected(port: int, client_id: str | None = None, **kwargs) -> RawClient:
    c = RawClient(port)
    try:
        c.connect(client_id or unique("raw"), **kwargs)
    except BaseException:
        c.close()
        raise
    return c


# --------------------------------------------------------------------------------------
# paho-mqtt 2.x


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class QueuedPahoClient:
    """What both paho wrappers share: received messages in ``self.messages`` (a queue), the paho client in
    ``self.client``, its network thread started when ``self._started``.

    CONNACKs are counted rather than read from ``self.connected``: a refused CONNACK is followed at once by the
    server closing, and paho's thread can run on_connect and on_disconnect (which clears ``connected``) before
    the thread that called ``start`` begins to wait."""

    def __init__(self) -> None:
        self._connack_cv = threading.Condition()
        self._connack_count = 0

    def _count_connack(self) -> None:
        with self._connack_cv:
            self._connack_count += 1
            self._connack_cv.notify_all()

    def _connacks_so_far(self) -> int:
        with self._connack_cv:
            return self._connack_count

    def _wait_for_connack(self, after: int, timeout: float) -> bool:
        """Whether a CONNACK beyond the first ``after`` arrived within ``timeout``."""
        with self._connack_cv:
            return self._connack_cv.wait_for(lambda: self._connack_count > after, timeout)

    def get(self, timeout: float = DEFAULT_TIMEOUT, what: str = "a message"):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"expected {what} within {timeout}s, got none") from None

    def drain(self) -> list:
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def stop(self) -> None:
        """DISCONNECT (if connected) and stop the network thread. Safe to call twice."""
        try:
            self.client.disconnect()
        except Exception:
            pass
        if self._started:
            self.client.loop_stop()
            self._started = False


class PahoClient(QueuedPahoClient):
    """paho-mqtt (MQTT 3.1.1, callback API v2) with its network loop on a background thread.

    Received messages go to ``self.messages`` (a ``queue.Queue`` of ``Received``).
    """

    def __init__(self, port: int, client_id: str = "", clean_session: bool = True,
                 keepalive: int = 30, auto_reconnect: bool = False, transport: str = "tcp",
                 protocol: int = mqtt.MQTTv311, ws_path: str = "/mqtt", tls: dict | None = None):
        """``transport="websockets"`` connects to ``ws_path``; ``tls`` holds ``tls_set`` arguments."""
        super().__init__()
        self.port = port
        self.keepalive = keepalive
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=None if protocol == mqtt.MQTTv5 else clean_session,
                                  protocol=protocol, transport=transport)
        if transport == "websockets":
            self.client.ws_set_options(path=ws_path)
        if tls is not None:
            self.client.tls_set(**tls)
        self.messages: "queue.Queue[Received]" = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack: tuple[bool, int] | None = None  # (session present, return code)
        self._subacks: dict[int, list[int]] = {}
        self._suback_cv = threading.Condition()
        self._auto_reconnect = auto_reconnect
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._started = False

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = (bool(flags.session_present), reason_code.value if hasattr(reason_code, "value") else int(reason_code))
        self.disconnected.clear()
        self.connected.set()
        self._count_connack()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected.clear()
        self.disconnected.set()
        if not self._auto_reconnect:
            # Stop paho's loop from reconnecting on its own; the test decides.
            client.disconnect()

    def _on_message(self, client, userdata, msg):
        self.messages.put(Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._suback_cv:
            self._subacks[mid] = [rc.value for rc in reason_codes]
            self._suback_cv.notify_all()

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> "PahoClient":
        """Connect and wait for a successful CONNACK."""
        before = self._connacks_so_far()
        self.client.connect("127.0.0.1", self.port, keepalive=self.keepalive)
        if not self._started:
            self.client.loop_start()
            self._started = True
        assert self._wait_for_connack(before, timeout), f"paho client did not get CONNACK within {timeout}s"
        assert self.connack is not None and self.connack[1] == 0, f"CONNACK refused: {self.connack}"
        return self

    def subscribe(self, subscriptions: list[tuple[str, int]], timeout: float = DEFAULT_TIMEOUT) -> list[int]:
        """Subscribe and wait for SUBACK; returns the granted QoS values."""
        rc, mid = self.client.subscribe(subscriptions)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed to send: {rc}"
        with self._suback_cv:
            ok = self._suback_cv.wait_for(lambda: mid in self._subacks, timeout)
            assert ok, f"no SUBACK within {timeout}s"
            return self._subacks.pop(mid)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                timeout: float | None = DEFAULT_TIMEOUT) -> mqtt.MQTTMessageInfo:
        """Publish; for QoS > 0 (and timeout not None) wait until the handshake completes."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if timeout is not None:
            info.wait_for_publish(timeout)
            assert info.is_published(), f"publish to {topic!r} not acknowledged within {timeout}s"
        return info

    def get_n(self, n: int, timeout: float = DEFAULT_TIMEOUT) -> list[Received]:
        deadline = time.monotonic() + timeout
        out: list[Received] = []
        while len(out) < n:
            remaining = deadline - time.monotonic()
            try:
                out.append(self.messages.get(timeout=max(remaining, 0.001)))
            except queue.Empty:
                raise AssertionError(f"expected {n} messages within {timeout}s, got {len(out)}") from None
        return out



def stop_all(clients: list[PahoClient], timeout: float = 10.0) -> None:
    """Stop many paho clients at once.

    ``loop_stop`` joins a network thread that may sit in a 1 s select; stopping 100 clients
    one after the other would take up to 100 s, so each gets its own short-lived thread.
    """
    threads = [threading.Thread(target=c.stop, daemon=True) for c in clients]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0.001))


def barrier_publish(port: int, sub: PahoClient, topic: str, timeout: float = DEFAULT_TIMEOUT) -> list[Received]:
    """Publish a sentinel to ``topic`` (which ``sub`` subscribes to) and wait for it.

    Returns everything ``sub`` received before the sentinel: a way to assert that some
    message was *not* delivered without sleeping.
    """
    marker = f"sentinel-{uuid.uuid4().hex}".encode()
    pub = PahoClient(port).start()
    try:
        pub.publish(topic, marker, qos=1)
    finally:
        pub.stop()
    before: list[Received] = []
    deadline = time.monotonic() + timeout
    while True:
        m = sub.get(max(deadline - time.monotonic(), 0.001), what=f"sentinel on {topic}")
        if m.payload == marker:
            return before
        before.append(m)


def proc_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------
# mosquitto_sub / mosquitto_pub processes

MSG_FORMAT = "MSG %q %r %t %x"


@dataclass
class SubLine:
    qos: int
    retain: bool
    topic: str
    payload: bytes


class MosquittoSub:
    """A ``mosquitto_sub -V 311 -d`` process whose output is read on a background thread.

    ``-d`` makes it print "Client ... received SUBACK", which tells us the subscription is
    in place; messages are printed as ``MSG <qos> <retain> <topic> <hex payload>``.
    """

    def __init__(self, port: int, topics: list[str], qos: int = 0, extra: list[str] | None = None,
                 client_id: str | None = None):
        # stdbuf -oL: mosquitto_sub's stdout is block-buffered on a pipe, and we need each
        # line (SUBACK, messages) as soon as it is printed.
        argv = ["stdbuf", "-oL", "mosquitto_sub", "-V", "311", "-h", "127.0.0.1", "-p", str(port), "-q", str(qos),
                "-d", "-F", MSG_FORMAT, "-i", client_id or unique("msub")]
        for t in topics:
            argv += ["-t", t]
        argv += extra or []
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def _next_line(self, deadline: float, what: str) -> str:
        try:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
        except queue.Empty:
            raise AssertionError(f"mosquitto_sub: no {what} in time; output so far:\n" + "\n".join(self.output)) from None
        if line is None:
            raise AssertionError(f"mosquitto_sub exited ({self.proc.poll()}) before {what}; output:\n"
                                 + "\n".join(self.output))
        return line

    def wait_subscribed(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while "received SUBACK" not in self._next_line(deadline, "SUBACK"):
            pass

    def messages(self, n: int, timeout: float = DEFAULT_TIMEOUT) -> list[SubLine]:
        deadline = time.monotonic() + timeout
        out: list[SubLine] = []
        while len(out) < n:
            line = self._next_line(deadline, f"message {len(out) + 1} of {n}")
            if line.startswith("MSG "):
                parts = line.split(" ", 4)
                out.append(SubLine(int(parts[1]), parts[2] == "1", parts[3],
                                   bytes.fromhex(parts[4]) if len(parts) > 4 else b""))
        return out

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"mosquitto_sub did not exit within {timeout}s; output:\n"
                                 + "\n".join(self.output)) from None


def mosquitto_pub(port: int, topic: str, *, message: bytes | None = None, file: str | None = None,
                  qos: int = 0, retain: bool = False, null: bool = False, extra: list[str] | None = None,
                  timeout: float = 10.0) -> subprocess.CompletedProcess:
    """Run ``mosquitto_pub -V 311`` once and assert it exits 0."""
    argv = ["mosquitto_pub", "-V", "311", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", str(qos),
            "-i", unique("mpub")]
    if retain:
        argv.append("-r")
    if null:
        argv.append("-n")
    elif file is not None:
        argv += ["-f", file]
    elif message is not None:
        argv += ["-m", message.decode("utf-8")]
    argv += extra or []
    result = subprocess.run(argv, capture_output=True, timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(argv)} exited {result.returncode}: "
                                    f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}")
    return result


# --------------------------------------------------------------------------------------
# MQTT 5.0 (written from the spec, OASIS mqtt-v5.0-os): packets with properties, a raw
# MQTT 5 client, and a paho-mqtt MQTTv5 client.

from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from paho.mqtt.subscribeoptions import SubscribeOptions  # noqa: E402

# Property identifiers (spec 2.2.2.2) and their wire types.
P_PAYLOAD_FORMAT, P_MESSAGE_EXPIRY, P_CONTENT_TYPE = 0x01, 0x02, 0x03
P_RESPONSE_TOPIC, P_CORRELATION_DATA, P_SUBSCRIPTION_ID = 0x08, 0x09, 0x0B
P_SESSION_EXPIRY, P_ASSIGNED_CLIENT_ID, P_SERVER_KEEP_ALIVE = 0x11, 0x12, 0x13
P_REASON_STRING, P_RECEIVE_MAXIMUM, P_TOPIC_ALIAS_MAXIMUM, P_TOPIC_ALIAS = 0x1F, 0x21, 0x22, 0x23
P_USER_PROPERTY, P_MAXIMUM_PACKET_SIZE = 0x26, 0x27
_PROPERTY_TYPES = {
    0x01: "byte", 0x02: "u32", 0x03: "str", 0x08: "str", 0x09: "bin", 0x0B: "varint", 0x11: "u32",
    0x12: "str", 0x13: "u16", 0x15: "str", 0x16: "bin", 0x17: "byte", 0x18: "u32", 0x19: "byte",
    0x1A: "str", 0x1C: "str", 0x1F: "str", 0x21: "u16", 0x22: "u16", 0x23: "u16", 0x24: "byte",
    0x25: "byte", 0x26: "pair", 0x27: "u32", 0x28: "byte", 0x29: "byte", 0x2A: "byte",
}

#: Properties as an ordered list of (identifier, value): duplicates and order stay visible.
PropertyList = list[tuple[int, object]]


def encode_properties(props: Iterable[tuple[int, object]] = ()) -> bytes:
    """Property Length (variable byte integer) followed by the properties, in the given order."""
    out = bytearray()
    for ident, value in props:
        kind = _PROPERTY_TYPES[ident]
        out.append(ident)
        if kind == "byte":
            out.append(value)
        elif kind == "u16":
            out += struct.pack("!H", value)
        elif kind == "u32":
            out += struct.pack("!I", value)
        elif kind == "varint":
            out += encode_remaining_length(value)
        elif kind in ("str", "bin"):
            out += encode_string(value)
        else:  # pair
            out += encode_string(value[0]) + encode_string(value[1])
    return encode_remaining_length(len(out)) + bytes(out)


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, mult = 0, 1
    while True:
        b = data[pos]
        pos += 1
        value += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            return value, pos


def decode_properties(data: bytes, pos: int) -> tuple[PropertyList, int]:
    """Decode a property block at ``pos``; returns (properties, position after the block)."""
    length, pos = decode_varint(data, pos)
    end = pos + length
    props: PropertyList = []
    while pos < end:
        ident = data[pos]
        pos += 1
        kind = _PROPERTY_TYPES.get(ident)
        assert kind is not None, f"unknown property identifier 0x{ident:02x} in {data.hex(' ')}"
        if kind == "byte":
            value, pos = data[pos], pos + 1
        elif kind == "u16":
            (value,), pos = struct.unpack_from("!H", data, pos), pos + 2
        elif kind == "u32":
            (value,), pos = struct.unpack_from("!I", data, pos), pos + 4
        elif kind == "varint":
            value, pos = decode_varint(data, pos)
        else:
            fields = []
            for _ in range(2 if kind == "pair" else 1):
                (n,) = struct.unpack_from("!H", data, pos)
                fields.append(data[pos + 2:pos + 2 + n])
                pos += 2 + n
            value = (fields[0].decode(), fields[1].decode()) if kind == "pair" else (
                fields[0] if kind == "bin" else fields[0].decode())
        props.append((ident, value))
    assert pos == end, f"property block overran its length in {data.hex(' ')}"
    return props, end


def prop(props: PropertyList, ident: int, default: object = None) -> object:
    """The first value of property ``ident``, or ``default``."""
    return next((v for i, v in props if i == ident), default)


def connect5_packet(client_id: str, *, clean_start: bool = True, keepalive: int = 60,
                    properties: Iterable[tuple[int, object]] = ()) -> bytes:
    """An MQTT 5 CONNECT (spec 3.1) without will or credentials."""
    variable = encode_string("MQTT") + bytes([5, 0x02 if clean_start else 0]) + struct.pack("!H", keepalive)
    return fixed(0x10, variable + encode_properties(properties) + encode_string(client_id))


def publish5_packet(topic: str, payload: bytes, *, qos: int = 0, packet_id: int | None = None,
                    retain: bool = False, properties: Iterable[tuple[int, object]] = ()) -> bytes:
    first = 0x30 | (qos << 1) | (0x01 if retain else 0)
    body = encode_string(topic)
    if qos > 0:
        body += struct.pack("!H", packet_id)
    return fixed(first, body + encode_properties(properties) + payload)


def subscribe5_packet(packet_id: int, subscriptions: Iterable[tuple[str, int]],
                      properties: Iterable[tuple[int, object]] = ()) -> bytes:
    """SUBSCRIBE; each subscription is (filter, options byte) where options = QoS | NL<<2 | RAP<<3 | RH<<4."""
    body = struct.pack("!H", packet_id) + encode_properties(properties)
    for topic, options in subscriptions:
        body += encode_string(topic) + bytes([options])
    return fixed(0x82, body)


def ack5_packet(kind: int, packet_id: int, reason: int = 0) -> bytes:
    """PUBACK/PUBREC/PUBREL/PUBCOMP with a reason code and no properties."""
    first = (kind << 4) | (0x02 if kind == PUBREL else 0)
    return bytes([first, 0x03]) + struct.pack("!HB", packet_id, reason)


def disconnect5_packet(reason: int = 0, properties: Iterable[tuple[int, object]] = ()) -> bytes:
    return fixed(0xE0, bytes([reason]) + encode_properties(properties))


@dataclass
class Publish5:
    topic: str
    packet_id: int | None
    properties: PropertyList
    payload: bytes
    qos: int
    retain: bool
    dup: bool


def parse_publish5(p: Packet) -> Publish5:
    assert p.type == PUBLISH, f"expected PUBLISH, got {p!r}"
    (tlen,) = struct.unpack_from("!H", p.body, 0)
    topic = p.body[2:2 + tlen].decode("utf-8")
    pos, packet_id = 2 + tlen, None
    if p.qos > 0:
        (packet_id,) = struct.unpack_from("!H", p.body, pos)
        pos += 2
    props, pos = decode_properties(p.body, pos)
    return Publish5(topic, packet_id, props, p.body[pos:], p.qos, p.retain, p.dup)


def parse_ack5(p: Packet) -> tuple[int, int, PropertyList]:
    """(packet id, reason code, properties) of a PUBACK/PUBREC/PUBREL/PUBCOMP (reason 0 if omitted)."""
    (packet_id,) = struct.unpack_from("!H", p.body, 0)
    if len(p.body) == 2:
        return packet_id, 0, []
    props: PropertyList = []
    if len(p.body) > 3:
        props, _ = decode_properties(p.body, 3)
    return packet_id, p.body[2], props


def parse_disconnect5(p: Packet) -> tuple[int, PropertyList]:
    """(reason code, properties) of a DISCONNECT (reason 0 if the body is empty)."""
    assert p.type == DISCONNECT, f"expected DISCONNECT, got {p!r}"
    if not p.body:
        return 0, []
    props: PropertyList = []
    if len(p.body) > 1:
        props, _ = decode_properties(p.body, 1)
    return p.body[0], props


@dataclass
class Connack5:
    session_present: bool
    reason: int
    properties: PropertyList


class RawClient5(RawClient):
    """``RawClient`` speaking MQTT 5: CONNECT/SUBSCRIBE with properties, parsed replies."""

    def connect5(self, client_id: str, *, expect_reason: int = 0, timeout: float = DEFAULT_TIMEOUT,
                 **kwargs) -> Connack5:
        self.send(connect5_packet(client_id, **kwargs))
        p = self.expect_packet(timeout, what="CONNACK")
        assert p.type == CONNACK, f"expected CONNACK, got {p!r}"
        props, _ = decode_properties(p.body, 2)
        ack = Connack5(bool(p.body[0] & 1), p.body[1], props)
        assert ack.reason == expect_reason, f"CONNACK reason 0x{ack.reason:02x}, expected 0x{expect_reason:02x}"
        return ack

    def subscribe5(self, packet_id: int, subscriptions: list[tuple[str, int]],
                   properties: Iterable[tuple[int, object]] = (), timeout: float = DEFAULT_TIMEOUT) -> list[int]:
        """SUBSCRIBE and wait for its SUBACK; returns the reason codes."""
        self.send(subscribe5_packet(packet_id, subscriptions, properties))
        p = self.expect_packet(timeout, what="SUBACK")
        assert p.type == SUBACK, f"expected SUBACK, got {p!r}"
        (pid,) = struct.unpack_from("!H", p.body, 0)
        assert pid == packet_id, f"SUBACK for {pid}, expected {packet_id}"
        _, pos = decode_properties(p.body, 2)
        return list(p.body[pos:])

    def expect_publish5(self, timeout: float = DEFAULT_TIMEOUT, what: str = "a PUBLISH") -> Publish5:
        p = self.expect_packet(timeout, what=what)
        assert p.type == PUBLISH, f"expected {what}, got {p!r}"
        return parse_publish5(p)

    def publishes_within(self, timeout: float) -> list[Publish5]:
        """Every PUBLISH that arrives within ``timeout`` seconds (a deliberate, bounded silence)."""
        out: list[Publish5] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                p = self.read_packet(max(deadline - time.monotonic(), 0.001))
            except socket.timeout:
                return out
            assert p.type == PUBLISH, f"expected only PUBLISH, got {p!r}"
            out.append(parse_publish5(p))

    def expect_disconnect(self, timeout: float = DEFAULT_TIMEOUT, what: str = "") -> tuple[int, PropertyList]:
        """Read until the server's DISCONNECT (other packets are skipped), then expect the close."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            try:
                p = self.read_packet(max(deadline - time.monotonic(), 0.001))
            except ConnectionClosed:
                raise AssertionError(f"connection closed without DISCONNECT {what}; before it: {seen}") from None
            except socket.timeout:
                raise AssertionError(f"no DISCONNECT within {timeout}s {what}; got {seen}") from None
            if p.type == DISCONNECT:
                result = parse_disconnect5(p)
                self.assert_closed(DEFAULT_TIMEOUT, f"after DISCONNECT 0x{result[0]:02x}")
                return result
            seen.append(p)


def raw5_connected(port: int, client_id: str | None = None, **kwargs) -> RawClient5:
    c = RawClient5(port)
    try:
        c.connect5(client_id or unique("raw5"), **kwargs)
    except BaseException:
        c.close()
        raise
    return c


def paho_properties(packet_type: int, values: dict[str, object]) -> Properties:
    """``Properties(packet_type)`` with attributes set from ``values`` (paho names, e.g. ``UserProperty``)."""
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def properties_dict(p: Properties | None) -> dict[str, object]:
    """The properties paho decoded, by paho name (``CorrelationData`` stays bytes)."""
    if p is None:
        return {}
    out = {}
    for name in p.names:
        key = name.replace(" ", "")
        if hasattr(p, key):
            out[key] = getattr(p, key)
    return out


@dataclass
class Received5:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict[str, object]


class PahoV5Client(QueuedPahoClient):
    """paho-mqtt with ``protocol=MQTTv5`` (callback API v2), network loop on a background thread.

    Received messages go to ``self.messages`` (``Received5``); CONNACK lands in ``connack``
    (session present, reason code) and ``connack_properties``; a DISCONNECT from the server
    (or a lost connection) in ``disconnect_reason``.
    """

    def __init__(self, port: int, client_id: str = "", *, clean_start: bool = True, keepalive: int = 30,
                 session_expiry: int | None = None, connect_properties: dict[str, object] | None = None):
        super().__init__()
        self.port = port
        self.keepalive = keepalive
        self.clean_start = clean_start
        values = dict(connect_properties or {})
        if session_expiry is not None:
            values["SessionExpiryInterval"] = session_expiry
        self.connect_properties = paho_properties(PacketTypes.CONNECT, values) if values else None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.messages: "queue.Queue[Received5]" = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack: tuple[bool, int] | None = None
        self.connack_properties: dict[str, object] = {}
        self.disconnect_reason: int | None = None
        self._subacks: dict[int, list[int]] = {}
        self._suback_cv = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._started = False

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = (bool(flags.session_present), reason_code.value)
        self.connack_properties = properties_dict(properties)
        self.disconnected.clear()
        self.connected.set()
        self._count_connack()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnect_reason = reason_code.value
        self.connected.clear()
        self.disconnected.set()
        client.disconnect()  # no automatic reconnect: the test decides

    def _on_message(self, client, userdata, msg):
        self.messages.put(Received5(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain),
                                    properties_dict(getattr(msg, "properties", None))))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._suback_cv:
            self._subacks[mid] = [rc.value for rc in reason_codes]
            self._suback_cv.notify_all()

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> "PahoV5Client":
        """Connect and wait for a successful CONNACK."""
        self.connected.clear()
        before = self._connacks_so_far()
        self.client.connect("127.0.0.1", self.port, keepalive=self.keepalive, clean_start=self.clean_start,
                            properties=self.connect_properties)
        if not self._started:
            self.client.loop_start()
            self._started = True
        assert self._wait_for_connack(before, timeout), f"paho v5 client did not get CONNACK within {timeout}s"
        assert self.connack is not None and self.connack[1] == 0, f"CONNACK refused: {self.connack}"
        return self

    def subscribe(self, topic: str, qos: int = 1, *, no_local: bool = False, retain_as_published: bool = False,
                  retain_handling: int = 0, subscription_id: int | None = None,
                  timeout: float = DEFAULT_TIMEOUT) -> list[int]:
        """Subscribe to one filter and wait for SUBACK; returns the reason codes."""
        options = SubscribeOptions(qos=qos, noLocal=no_local, retainAsPublished=retain_as_published,
                                   retainHandling=retain_handling)
        props = (paho_properties(PacketTypes.SUBSCRIBE, {"SubscriptionIdentifier": subscription_id})
                 if subscription_id is not None else None)
        rc, mid = self.client.subscribe(topic, options=options, properties=props)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed to send: {rc}"
        with self._suback_cv:
            assert self._suback_cv.wait_for(lambda: mid in self._subacks, timeout), f"no SUBACK within {timeout}s"
            return self._subacks.pop(mid)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                properties: dict[str, object] | None = None,
                timeout: float | None = DEFAULT_TIMEOUT) -> mqtt.MQTTMessageInfo:
        """Publish (with paho-named PUBLISH properties); for QoS > 0 wait for the handshake."""
        props = paho_properties(PacketTypes.PUBLISH, properties) if properties else None
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if timeout is not None and qos > 0:
            info.wait_for_publish(timeout)
            assert info.is_published(), f"publish to {topic!r} not acknowledged within {timeout}s"
        return info

    def get_n(self, n: int, timeout: float = DEFAULT_TIMEOUT) -> list[Received5]:
        deadline = time.monotonic() + timeout
        return [self.get(max(deadline - time.monotonic(), 0.001), what=f"message {i + 1} of {n}") for i in range(n)]

    def until(self, payload: bytes, timeout: float = DEFAULT_TIMEOUT) -> list[Received5]:
        """Messages received before the one with ``payload`` (which must arrive in time)."""
        deadline = time.monotonic() + timeout
        before: list[Received5] = []
        while True:
            m = self.get(max(deadline - time.monotonic(), 0.001), what=f"message {payload!r}")
            if m.payload == payload:
                return before
            before.append(m)

