"""`iotgw simulate` keeps at most `publish.window` QoS 1 messages unacknowledged per device, and at QoS 0
holds messages back while the broker does not read them.

The broker here is a few lines of Python that accepts CONNECT, answers CONNACK and then acknowledges a
PUBLISH only when the test says so, so the window is the only thing that limits the devices. Without the
window the simulator handed every due message to libmosquitto, whose queue grew without bound while the
broker was slow (and whose PUBACK handling walks that queue: a run at 100,000 msg/s offered per device into
a gateway committing at 50,000 msg/s slowed to a few hundred acknowledgements a second).
"""

import json
import socket
import subprocess
import threading
from contextlib import contextmanager

from conftest import IOTGW_BIN
from helpers import wait_until


class SilentBroker:
    """Accepts MQTT 3.1.1 clients on loopback, answers CONNACK, counts PUBLISH packets per client and sends
    PUBACKs only for what `release()` allows."""

    def __init__(self, read_after_connect: bool = True) -> None:
        self.read_after_connect = read_after_connect
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.lock = threading.Lock()
        self.published: dict[int, list[int]] = {}  # connection number -> packet ids seen
        self.connects = 0
        self.connections: list[socket.socket] = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self.lock:
                number = len(self.connections)
                self.connections.append(conn)
                self.published[number] = []
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        buffer = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while True:
                if len(buffer) < 2:
                    break
                length, multiplier, i = 0, 1, 1
                while True:
                    if i >= len(buffer):
                        break
                    byte = buffer[i]
                    length += (byte & 0x7F) * multiplier
                    multiplier *= 128
                    i += 1
                    if not byte & 0x80:
                        break
                else:
                    break
                if i >= len(buffer) and buffer[i - 1] & 0x80:
                    break
                if len(buffer) < i + length:
                    break
                kind, body = buffer[0], buffer[i:i + length]
                buffer = buffer[i + length:]
                if kind >> 4 == 1:  # CONNECT
                    conn.sendall(bytes([0x20, 2, 0, 0]))
                    with self.lock:
                        self.connects += 1
                    if not self.read_after_connect:
                        return  # never read again: the client's socket fills up
                elif kind >> 4 == 3:  # PUBLISH
                    topic_length = int.from_bytes(body[0:2], "big")
                    packet_id = int.from_bytes(body[2 + topic_length:4 + topic_length], "big")
                    with self.lock:
                        self.published[number].append(packet_id)
                elif kind >> 4 == 12:  # PINGREQ
                    conn.sendall(bytes([0xD0, 0]))

    def count(self) -> int:
        with self.lock:
            return sum(len(ids) for ids in self.published.values())

    def acknowledge_all(self) -> int:
        """Sends a PUBACK for every PUBLISH seen so far that has not had one; returns how many."""
        sent = 0
        with self.lock:
            for number, ids in self.published.items():
                conn = self.connections[number]
                for packet_id in ids:
                    conn.sendall(bytes([0x40, 2]) + packet_id.to_bytes(2, "big"))
                    sent += 1
                ids.clear()
        return sent

    def stop(self) -> None:
        self.stopped = True
        self.server.close()
        with self.lock:
            for conn in self.connections:
                try:
                    conn.close()
                except OSError:
                    pass


@contextmanager
def simulating(broker: SilentBroker, *args: str):
    """Runs `iotgw simulate` against `broker` (no consumers, losses tolerated) while the body runs, then
    waits for it to end; yields a dict that holds the report's `messages` afterwards."""
    proc = subprocess.Popen(
        [str(IOTGW_BIN), "simulate", "--port", str(broker.port), *args, "--consumers", "0", "--connect-rate", "0",
         "--loss-tolerance", "1", "--json", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    messages: dict = {}
    try:
        yield messages
        out, _ = proc.communicate(timeout=30)
        messages.update(json.loads(out)["messages"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        broker.stop()


def test_window_holds_devices_back_until_the_broker_acknowledges():
    broker = SilentBroker()
    with simulating(broker, "--mqtt-devices", "3", "--qos", "1", "--rate", "200", "--window", "5",
                    "--duration", "4s", "--drain", "1s") as messages:
        # 3 devices x a window of 5: 15 PUBLISHes, then nothing more while none is acknowledged.
        wait_until(lambda: broker.count() >= 15, 10, message="15 PUBLISH packets (3 devices x window 5)")
        seen_at_full = broker.count()
        assert seen_at_full == 15, f"{seen_at_full} PUBLISH packets with windows of 5 on 3 devices"
        # Releasing the windows lets each device send up to 5 more.
        released = broker.acknowledge_all()
        assert released == 15
        wait_until(lambda: broker.count() >= 15, 10, message="15 more PUBLISH packets after the PUBACKs")
        assert broker.count() == 15, f"{broker.count()} PUBLISH packets after releasing windows of 5"
    # Due: 3 x 200/s x 4 s = 2,400; sent: 30 (two windows); every other one was held back.
    assert messages["published"] == 30, messages
    assert messages["acknowledged"] == 15, messages
    assert messages["heldBack"] >= 2_000, messages
    assert messages["publishErrors"] == 0, messages


def test_qos0_devices_hold_back_while_the_broker_does_not_read():
    broker = SilentBroker(read_after_connect=False)
    with simulating(broker, "--mqtt-devices", "1", "--qos", "0", "--rate", "50000", "--payload-size", "1024",
                    "--duration", "3s", "--drain", "1s") as messages:
        wait_until(lambda: broker.connects >= 1, 10, message="the device to connect")
    # 150,000 messages of 1 KiB fell due; the socket buffers take a few MB, and then the device waits.
    assert messages["heldBack"] > 100_000, messages
    assert messages["published"] * 1_100 < 32 * 1024 * 1024, messages
    assert messages["publishErrors"] == 0, messages
