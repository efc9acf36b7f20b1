"""Raw WebSocket (RFC 6455) client over a plain socket, for protocol-edge tests.

Python's ``websockets`` library refuses to send what these tests need (unmasked frames, invalid
UTF-8 in text frames, hand-made fragmentation), so this speaks the wire format byte by byte.
Every read has a deadline.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct
import time

from helpers import DEFAULT_TIMEOUT

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class Closed(Exception):
    pass


class RawWebSocket:
    def __init__(self, port: int, path: str, subprotocol: str | None = None,
                 headers: dict[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT,
                 tls_context: ssl.SSLContext | None = None):
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls_context is not None:
            sock = tls_context.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.buf = bytearray()
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        self.buf = bytearray(rest)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines if ":" in h)}

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("deadline passed")
        self.sock.settimeout(remaining)
        data = self.sock.recv(65536)
        if not data:
            raise Closed("connection closed by the server")
        self.buf += data

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True, mask: bool = True, rsv: int = 0) -> None:
        first = (0x80 if fin else 0) | (rsv << 4) | opcode
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", first, (0x80 if mask else 0) | n)
        elif n < 65536:
            header = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, n)
        else:
            header = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, n)
        if mask:
            key = os.urandom(4)
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            header += key
        self.sock.sendall(header + payload)

    def recv_frame(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[bool, int, bytes]:
        """(fin, opcode, payload) of the next frame from the server (which must not mask)."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                b0, b1 = self.buf[0], self.buf[1]
                assert not b1 & 0x80, "server frames must not be masked"
                n = b1 & 0x7F
                pos = 2
                if n == 126:
                    if len(self.buf) < 4:
                        self._fill(deadline)
                        continue
                    n = struct.unpack("!H", self.buf[2:4])[0]
                    pos = 4
                elif n == 127:
                    if len(self.buf) < 10:
                        self._fill(deadline)
                        continue
                    n = struct.unpack("!Q", self.buf[2:10])[0]
                    pos = 10
                if len(self.buf) >= pos + n:
                    payload = bytes(self.buf[pos:pos + n])
                    del self.buf[:pos + n]
                    return bool(b0 & 0x80), b0 & 0x0F, payload
            self._fill(deadline)

    def recv_data(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, bytes]:
        """The next data frame (skipping pings and pongs)."""
        deadline = time.monotonic() + timeout
        while True:
            _, op, payload = self.recv_frame(max(deadline - time.monotonic(), 0.001))
            if op not in (OP_PING, OP_PONG):
                return op, payload

    def expect_close(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Read frames until a close frame; return its status code. Then expect the TCP close."""
        deadline = time.monotonic() + timeout
        while True:
            _, op, payload = self.recv_frame(max(deadline - time.monotonic(), 0.001))
            if op == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                break
        assert self.closed_within(max(deadline - time.monotonic(), 1.0)), "server did not close TCP after close frame"
        return code

    def closed_within(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._fill(deadline)
                self.buf.clear()
        except Closed:
            return True
        except socket.timeout:
            return False
        except OSError:
            return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
