"""
The clients of a TLS torture run (L{tests.support.tls_torture}), in a
process of their own: pyOpenSSL over blocking sockets, one thread per
connection running at a time (C{concurrency} threads).

Run as C{python -m tests.support.tls_client_peer PLAN}: C{PLAN} is a JSON
file (C{port}, C{ca_path}, C{concurrency}, C{timeout}, C{connections}: each
with C{id}, C{shape}, C{size}, C{extra}, C{tls} "1.2" or "1.3").  Each
connection's outcome is a JSON line on standard output (C{id}, C{received}:
bytes read, C{digest}: their sha256, C{kept}: those bytes in hex for the
shapes checked by prefix, C{end}: how its input ended, C{error}: anything
unexpected), and C{done} once all are.

Ends are named: C{close_notify} (the peer's), C{eof} (the TCP stream ended
without one), C{reset} (an error reading or writing: a reset, an alert),
C{timeout} (nothing within C{timeout} seconds: the connection hung).
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from OpenSSL import SSL

from tests.support.tls_torture import client_bytes

_LINGER_RESET = struct.pack("ii", 1, 0)
#: Seconds a slow reader waits between its reads (of 16 KB).
SLOW_PACE = 0.002
#: Bytes an echoing client sends before reading them back.
ECHO_PIECE = 16384
_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}


class Hung(Exception):
    """The socket's receive or send timeout passed."""


class Client:
    """One connection of the plan, played on a blocking socket."""

    def __init__(self, plan: dict[str, Any], conn: dict[str, Any]) -> None:
        self.plan = plan
        self.conn = conn
        self.received = hashlib.sha256()
        self.count = 0
        self.kept = b""
        self.keep = conn["shape"] in ("backend_reset", "client_reset")
        self.end = ""
        self.error = ""

    def context(self) -> SSL.Context:
        """A client context of the connection's TLS version, trusting the test CA."""
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        version = _VERSIONS[self.conn["tls"]]
        context.set_min_proto_version(version)
        context.set_max_proto_version(version)
        context.load_verify_locations(self.plan["ca_path"])
        context.set_verify(SSL.VERIFY_PEER)
        return context

    def connect(self, receive_buffer: int = 0) -> socket.socket:
        """A socket connected to the balancer, blocking with timeouts (and C{receive_buffer} bytes of buffer, if given)."""
        sock = socket.socket()
        timeout = struct.pack("ll", int(self.plan["timeout"]), 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
        if receive_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.connect(("127.0.0.1", self.plan["port"]))
        return sock

    def play(self) -> dict[str, Any]:
        """Play the connection's shape; its outcome."""
        shape = self.conn["shape"]
        try:
            getattr(self, f"shape_{shape}")()
        except Hung:
            self.end = "timeout"
        except Exception as e:  # noqa: BLE001 - reported, and the run goes on
            self.error = f"{type(e).__name__}: {e}"
        return {
            "id": self.conn["id"],
            "received": self.count,
            "digest": self.received.hexdigest(),
            "kept": self.kept.hex() if self.keep else "",
            "end": self.end,
            "error": self.error,
        }

    # Reading and writing

    def tls(self, receive_buffer: int = 0) -> tuple[socket.socket, SSL.Connection]:
        """Connect, handshake and send the header line."""
        sock = self.connect(receive_buffer)
        tls = SSL.Connection(self.context(), sock)
        tls.set_connect_state()
        tls.set_tlsext_host_name(b"torture.test")
        try:
            tls.do_handshake()
        except SSL.WantReadError:
            raise Hung("handshake") from None
        header = f"{self.conn['shape']} {self.conn['id']} {self.conn['size']} {self.conn['extra']}\n".encode()
        self.send(tls, header)
        return sock, tls

    def send(self, tls: SSL.Connection, data: bytes) -> None:
        """Send all of C{data}."""
        try:
            tls.sendall(data)
        except SSL.WantWriteError:
            raise Hung("send") from None

    def read(self, tls: SSL.Connection, limit: int | None = None, chunk: int = 65536, pace: float = 0.0) -> bool:
        """
        Read until the end (then set C{end}, return False), or until C{limit}
        bytes in all (return True); C{pace} seconds between reads, if any.
        """
        pacing = threading.Event()
        while limit is None or self.count < limit:
            if pace:
                pacing.wait(pace)
            want = chunk if limit is None else min(chunk, limit - self.count)
            try:
                data = tls.recv(want)
            except SSL.WantReadError:
                raise Hung("read") from None
            except SSL.ZeroReturnError:
                self.end = "close_notify"
                return False
            except SSL.SysCallError as e:
                self.end = "eof" if e.args[0] == -1 else "reset"
                return False
            except SSL.Error:
                self.end = "reset"
                return False
            self.count += len(data)
            self.received.update(data)
            if self.keep:
                self.kept += data
        return True

    def finish(self, sock: socket.socket, tls: SSL.Connection) -> None:
        """Send close_notify (the TLS connection's end) and read to the end of the input."""
        try:
            tls.shutdown()
        except SSL.Error as e:
            self.error = f"close_notify not sent: {e!r}"
        self.read(tls)
        sock.close()

    # The shapes (see tests.support.tls_torture): each plays its client's part.

    def echo(self, tls: SSL.Connection, data: bytes, until: int) -> None:
        """Send C{data} a piece at a time, reading each back, until C{until} bytes came back."""
        for start in range(0, len(data), ECHO_PIECE):
            if self.count >= until:
                return
            self.send(tls, data[start : start + ECHO_PIECE])
            if not self.read(tls, min(until, start + ECHO_PIECE)):
                return

    def shape_echo(self) -> None:
        sock, tls = self.tls()
        size = self.conn["size"]
        self.echo(tls, client_bytes(self.conn["id"], size), size)
        self.finish(sock, tls)

    def shape_answer(self) -> None:
        sock, tls = self.tls()
        self.read(tls)
        sock.close()

    def shape_slow(self) -> None:
        sock, tls = self.tls(receive_buffer=4096)
        self.read(tls, chunk=16384, pace=SLOW_PACE)
        sock.close()

    def shape_late_close_notify(self) -> None:
        sock, tls = self.tls(receive_buffer=4096)
        if self.read(tls, self.conn["extra"], chunk=16384, pace=SLOW_PACE):
            try:
                tls.shutdown()
            except SSL.Error as e:
                self.error = f"close_notify not sent: {e!r}"
            self.read(tls, chunk=16384, pace=SLOW_PACE)
        sock.close()

    def shape_late_fin(self) -> None:
        sock, tls = self.tls(receive_buffer=4096)
        if self.read(tls, self.conn["extra"], chunk=16384, pace=SLOW_PACE):
            sock.shutdown(socket.SHUT_WR)
            self.read(tls, chunk=16384, pace=SLOW_PACE)
        sock.close()

    def shape_upload(self) -> None:
        sock, tls = self.tls()
        self.send(tls, client_bytes(self.conn["id"], self.conn["size"]))
        self.read(tls)
        sock.close()

    def shape_slow_upload(self) -> None:
        self.shape_upload()

    def shape_slow_upload_half(self) -> None:
        self.shape_half_close()

    def shape_half_close(self) -> None:
        sock, tls = self.tls()
        self.send(tls, client_bytes(self.conn["id"], self.conn["size"]))
        self.finish(sock, tls)

    def shape_half_close_fin(self) -> None:
        sock, tls = self.tls()
        self.send(tls, client_bytes(self.conn["id"], self.conn["size"]))
        sock.shutdown(socket.SHUT_WR)
        self.read(tls)
        sock.close()

    def shape_backend_half(self) -> None:
        sock, tls = self.tls()
        self.read(tls)
        if self.end == "close_notify":
            self.send(tls, client_bytes(self.conn["id"], self.conn["extra"]))
            try:
                tls.shutdown()
            except SSL.Error as e:
                self.error = f"close_notify not sent: {e!r}"
        sock.close()

    def shape_backend_reset(self) -> None:
        sock, tls = self.tls()
        self.read(tls)
        sock.close()

    def shape_client_reset(self) -> None:
        sock, tls = self.tls()
        data = client_bytes(self.conn["id"], self.conn["size"])
        self.echo(tls, data, self.conn["extra"])
        self.send(tls, data[:ECHO_PIECE])  # in flight when the reset comes
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        sock.close()
        self.end = "reset_sent"

    def shape_handshake_leave(self) -> None:
        sock = self.connect()
        how = self.conn["extra"]
        if how:
            hello = SSL.Connection(self.context(), None)
            hello.set_connect_state()
            try:
                hello.do_handshake()
            except SSL.WantReadError:
                pass
            data = hello.bio_read(65536)
            sock.sendall(data[:how] if how < len(data) else data)
            if how >= len(data):
                sock.recv(10)  # a piece of the server's answer: its rest is unread, so the close resets
        sock.close()
        self.end = "left"

    def shape_garbage(self) -> None:
        sock = self.connect()
        sock.sendall(b"GET / HTTP/1.0\r\nHost: torture.test\r\n\r\n")
        try:
            while sock.recv(65536):
                pass
            self.end = "eof"
        except BlockingIOError:
            self.end = "timeout"
        except OSError:
            self.end = "reset"
        sock.close()


def main(path: str) -> None:
    with open(path) as f:
        plan = json.load(f)
    lock = threading.Lock()

    def one(conn: dict[str, Any]) -> None:
        outcome = Client(plan, conn).play()
        with lock:
            sys.stdout.write(json.dumps(outcome) + "\n")
            sys.stdout.flush()

    with ThreadPoolExecutor(plan["concurrency"]) as pool:
        list(pool.map(one, plan["connections"]))
    sys.stdout.write(json.dumps({"done": True}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1])
