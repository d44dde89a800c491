"""
Torture the TCP data plane from outside, on loopback: a seeded mix of the
connection shapes that hang or truncate a relay, through a real
C{twistd -n balancer}, on either data path, every connection checked.
Run by hand (never in the test suite); needs only this repository's Python.

Run from the repository::

    python bench/torture.py [--minutes N | --connections N]
        [--concurrency 50] [--seed S] [--path engine|twisted|both]
    python bench/torture.py --mode greeting [--clients 5000]
    python bench/torture.py --mode backpressure [--clients 50]
    python bench/torture.py --replay SEED [--path ...]

It starts its own peers, on 127.0.0.1 and on ports the kernel picks (there is
no attaching to a running balancer: each shape needs its own backend
behaviour behind its own server):

 - a backend process (this script with C{--backend}): one blocking thread
   per connection, one port per backend behaviour;
 - for each path, the balancer from this working tree as an operator runs it
   (C{twistd -n --pidfile= balancer --config=...}), one server per shape,
   the admin API on; C{--path engine} leaves C{[defaults]} alone (plain TCP on
   the relay engine), C{--path twisted} sets C{splice = false}.

Modes:

 - C{mix} (the default): for C{--minutes} (or up to C{--connections}), up
   to C{--concurrency} clients at once, each of a shape drawn from its own
   seed (C{--seed} times a million plus its number): the backend greets and
   closes at once; greets after a pause; the client speaks first and closes
   first; half-close each way while the other side keeps sending; resets
   (SO_LINGER 0) from either side at several phases; megabytes both ways; a
   slow reader and a slow writer on either side; zero bytes; a refusing
   backend.  Each connection is checked: exact bytes each way (the backend
   checks what it receives against a length and SHA-256 the client sends
   first, and answers with what it got), an end of stream (or a reset, where
   the peer reset) within 1 s of the peer's, a reset never passed off as a
   clean end.  A line every 10 s; at the end connections and failures per
   shape, the failures' seeds (C{--replay SEED} runs one again), the
   balancer's RSS and descriptors sampled every second, and its
   C{active_connections} (root API), which must be 0.
 - C{greeting}: a backend that sends a short greeting and closes as soon as
   it accepts; C{--clients} clients one after another, then as many 50 at a
   time, each reading to the end of stream: hangs (no end of stream within
   3 s) and wrong bytes per path.
 - C{backpressure}: 8 MiB download, the backend closing after it, the client
   reading at about 40 MB/s; and 8 MiB upload, the client half-closing, the
   backend reading slowly; C{--clients} each way, 10 at a time: hangs (no end
   of stream within 3 s of the last byte) per path.

Everything started is stopped by pid when done, on an error and on SIGINT or
SIGTERM.  Only 127.0.0.1 is ever connected to.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import queue
import random
import re
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from processes import read_lines, stop

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
START_TIMEOUT = 30.0
#: No end of stream this long after the last byte: the connection hangs.
HANG = 3.0
#: An end of stream (or reset) must reach the other side this soon after the peer's.
PROMPT = 1.0
GREETING = b"220 torture greeting: hello, then goodbye\r\n"
MAGIC = b"TRT1"
#: magic, seed, upload length, download length, flags, backend reset after (bytes), upload SHA-256
HEADER = struct.Struct("!4sQQQIQ32s")
# Flags of the scripted backend.
TRAILER = 1  # after the upload's end, answer with its length and digest, then close
EARLY_CLOSE = 2  # shut down writing after the download; verdict on the upload to the log only
SLOW_READ = 4  # read 16 KiB every 5 ms (about 3 MB/s)
SLOW_WRITE = 8  # write 1 KiB every 2 ms
RESET = 16  # send "reset after" bytes of the download, then reset
RESET_AFTER_EOF = 32  # read the upload to its end, then reset
VERDICT = struct.Struct("!Q32s")
BACKENDS = ("greet", "greet_later", "scripted", "zero")


def download(seed: int, size: int) -> bytes:
    """The bytes the backend sends on connection C{seed}."""
    return random.Random(seed).randbytes(size)


def upload(seed: int, size: int) -> bytes:
    """The bytes the client sends on connection C{seed}."""
    return random.Random(~seed).randbytes(size)


# The backend process


class _Handler(socketserver.BaseRequestHandler):
    server: "_Server"

    def setup(self) -> None:
        self.request.settimeout(30)

    def reset(self) -> None:
        """Reset the connection (from the thread that reads it)."""
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.request.close()

    def reset_from_sender(self) -> None:
        """
        Ask for a reset from the sending thread: C{SHUT_RD} (which sends
        nothing on Linux) wakes the reading thread, which then closes the
        socket (see L{_Scripted.handle}).  Closing it here instead would
        race with that thread: a C{recv} in progress keeps the socket alive
        past C{close}, holding the reset back, and its descriptor number can
        be reused by another connection's socket, whose bytes it would take.
        """
        self.reset_asked = True
        sock = self.request
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try:
            sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass  # the client reset it first


class _Greet(_Handler):
    """Greets and closes at once."""

    def handle(self) -> None:
        self.request.sendall(GREETING)


class _GreetLater(_Handler):
    """Greets after a pause of 50 to 250 ms, then closes."""

    def handle(self) -> None:
        time.sleep(random.uniform(0.05, 0.25))
        self.request.sendall(GREETING)


class _Zero(_Handler):
    """Reads to the end of input; complains of any byte."""

    def handle(self) -> None:
        data = _read_to_end(self.request)
        if data:
            report(f"FAIL - zero: the backend received {len(data)} bytes from a client that sent none")


class _Scripted(_Handler):
    """Acts as the header the client sends first says (see the flags)."""

    reset_asked = False

    def handle(self) -> None:
        sock = self.request
        head = _read_exactly(sock, HEADER.size)
        if head is None:
            return  # a client that reset or left before its header: nothing to check
        magic, seed, up_len, down_len, flags, reset_after, up_sha = HEADER.unpack(head)
        if magic != MAGIC:
            report(f"FAIL {seed} backend: bad header {head[:16]!r}")
            return
        sender = threading.Thread(target=self.send, args=(seed, down_len, flags, reset_after), daemon=True)
        sender.start()
        got = hashlib.sha256()
        count = 0
        end = "eof"
        last = time.monotonic()
        try:
            while True:
                if flags & SLOW_READ:
                    time.sleep(0.005)
                try:
                    chunk = sock.recv(16384 if flags & SLOW_READ else 262144)
                except socket.timeout:
                    end = "hang"
                    break
                if not chunk:
                    break
                got.update(chunk)
                count += len(chunk)
                last = time.monotonic()
                if count == up_len:
                    sock.settimeout(HANG)
        except ConnectionResetError:
            end = "reset"
        except OSError as e:
            end = f"error {e}"
        waited = time.monotonic() - last
        sender.join()
        if self.reset_asked:
            sock.close()  # with SO_LINGER 0: the reset
        self.server.tally[end] += 1
        complete = count == up_len and got.digest() == up_sha
        if end == "eof" and not complete and not flags & (RESET | RESET_AFTER_EOF):
            report(f"FAIL {seed} backend: upload ended cleanly after {count} of {up_len} bytes"
                   f"{'' if count != up_len else ' (wrong bytes)'}")
        elif end == "hang":
            report(f"FAIL {seed} backend: no end of the upload {HANG:g} s after byte {count} of {up_len}")
        elif end == "eof" and waited > PROMPT and count == up_len:
            report(f"FAIL {seed} backend: end of the upload {waited:.2f} s after its last byte")
        if flags & RESET_AFTER_EOF and end == "eof":
            self.reset()
            return
        if flags & TRAILER and end == "eof" and not flags & RESET:
            try:
                sock.sendall(VERDICT.pack(count, got.digest()))
            except OSError:
                pass

    def send(self, seed: int, size: int, flags: int, reset_after: int) -> None:
        sock = self.request
        data = memoryview(download(seed, size))
        try:
            if flags & RESET:
                sock.sendall(data[:reset_after])
                self.reset_from_sender()
                return
            if flags & SLOW_WRITE:
                for start in range(0, len(data), 1024):
                    sock.sendall(data[start: start + 1024])
                    time.sleep(0.002)
            else:
                sock.sendall(data)
            if flags & EARLY_CLOSE:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    request_queue_size = 4096
    allow_reuse_address = True

    def __init__(self, handler: type[_Handler], tally: collections.Counter[str]) -> None:
        super().__init__((HOST, 0), handler)
        self.tally = tally


_report_lock = threading.Lock()


def report(line: str) -> None:
    """One line to stdout, whole."""
    with _report_lock:
        print(line, flush=True)


def serve_backends() -> None:
    """Serve every behaviour; print their ports; serve until killed."""
    tally: collections.Counter[str] = collections.Counter()
    handlers = {"greet": _Greet, "greet_later": _GreetLater, "scripted": _Scripted, "zero": _Zero}
    servers = [_Server(handlers[name], tally) for name in BACKENDS]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    report("ports " + " ".join(str(s.server_address[1]) for s in servers))
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    try:
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
    except OSError:
        return None
    return data


def _read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError:
        pass
    return b"".join(chunks)


# The client side


@dataclass
class Received:
    """What a client read: the bytes, how the stream ended ("eof", "reset", "hang") and when."""

    data: bytes
    end: str
    last_byte: float
    ended: float


def read_all(sock: socket.socket, rate: float = 0.0, limit: int | None = None) -> Received:
    """
    Read until the end of stream, a reset, or L{HANG} s without anything
    (C{"hang"}); at about C{rate} bytes/s if given.
    """
    sock.settimeout(HANG)
    chunks = []
    start = last = time.monotonic()
    total = 0
    while True:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return Received(b"".join(chunks), "hang", last, time.monotonic())
        except (ConnectionResetError, BrokenPipeError):
            return Received(b"".join(chunks), "reset", last, time.monotonic())
        now = time.monotonic()
        if not chunk:
            return Received(b"".join(chunks), "eof", last, now)
        chunks.append(chunk)
        total += len(chunk)
        last = now
        if rate:
            ahead = start + total / rate - now
            if ahead > 0:
                time.sleep(ahead)


def connect(port: int) -> socket.socket:
    """A connection to 127.0.0.1:C{port}."""
    return socket.create_connection((HOST, port), timeout=10)


def reset(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def header(seed: int, up: bytes, down_len: int, flags: int, reset_after: int = 0) -> bytes:
    """The scripted backend's instructions."""
    return HEADER.pack(MAGIC, seed, len(up), down_len, flags, reset_after, hashlib.sha256(up).digest())


def check_end(got: Received, expected: bytes, end: str = "eof") -> str | None:
    """A failure text, or C{None}: C{expected} exactly, then C{end} within L{PROMPT} s of the last byte."""
    if got.end == "hang":
        return f"hang: no end of stream {HANG:g} s after byte {len(got.data)} of {len(expected)}"
    if got.data != expected:
        return f"received {len(got.data)} bytes, expected {len(expected)}" + (
            "" if len(got.data) != len(expected) else " (different bytes)")
    if got.end != end:
        return f"the stream ended with {got.end}, expected {end}"
    if got.ended - got.last_byte > PROMPT:
        return f"{got.end} came {got.ended - got.last_byte:.2f} s after the last byte"
    return None


def sending(sock: socket.socket, data: bytes, then_shutdown: bool, chunk: int = 0, pause: float = 0.0) -> threading.Thread:
    """Send C{data} from a thread (then shut down writing); returns the started thread."""

    def run() -> None:
        try:
            if chunk:
                for start in range(0, len(data), chunk):
                    sock.sendall(data[start: start + chunk])
                    time.sleep(pause)
            else:
                sock.sendall(data)
            if then_shutdown:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def verdict(up: bytes) -> bytes:
    """What the scripted backend answers after receiving C{up} whole."""
    return VERDICT.pack(len(up), hashlib.sha256(up).digest())


# The shapes: each takes (seed, ports) and returns None or a failure text.

Shape = Callable[[int, dict[str, int]], "str | None"]


def greet_close(seed: int, ports: dict[str, int]) -> str | None:
    with connect(ports["greet"]) as sock:
        return check_end(read_all(sock), GREETING)


def greet_later(seed: int, ports: dict[str, int]) -> str | None:
    with connect(ports["greet_later"]) as sock:
        return check_end(read_all(sock), GREETING)


def client_first_close(seed: int, ports: dict[str, int]) -> str | None:
    """The client sends, then closes without reading: the backend checks the bytes and the end."""
    up = upload(seed, random.Random(seed).randrange(0, 256 * 1024))
    with connect(ports["scripted"]) as sock:
        sock.sendall(header(seed, up, 0, 0) + up)
    return None


def half_close_client(seed: int, ports: dict[str, int]) -> str | None:
    """The client half-closes after a little; the backend keeps sending megabytes, then its verdict."""
    rng = random.Random(seed)
    up, down_len = upload(seed, rng.randrange(0, 64 * 1024)), rng.randrange(0, 4 << 20)
    with connect(ports["scripted"]) as sock:
        sock.sendall(header(seed, up, down_len, TRAILER) + up)
        sock.shutdown(socket.SHUT_WR)
        return check_end(read_all(sock), download(seed, down_len) + verdict(up))


def half_close_backend(seed: int, ports: dict[str, int]) -> str | None:
    """The backend half-closes after a little; the client keeps sending megabytes (checked by the backend)."""
    rng = random.Random(seed)
    up, down_len = upload(seed, rng.randrange(0, 4 << 20)), rng.randrange(0, 64 * 1024)
    with connect(ports["scripted"]) as sock:
        sender = sending(sock, header(seed, up, down_len, EARLY_CLOSE) + up, then_shutdown=True)
        got = read_all(sock)
        sender.join()
        return check_end(got, download(seed, down_len))


def both_ways(seed: int, ports: dict[str, int]) -> str | None:
    """Megabytes both ways at once."""
    rng = random.Random(seed)
    up, down_len = upload(seed, rng.randrange(1 << 20, 8 << 20)), rng.randrange(1 << 20, 8 << 20)
    with connect(ports["scripted"]) as sock:
        sender = sending(sock, header(seed, up, down_len, TRAILER) + up, then_shutdown=True)
        got = read_all(sock)
        sender.join()
        return check_end(got, download(seed, down_len) + verdict(up))


def slow_client_reader(seed: int, ports: dict[str, int]) -> str | None:
    """The client reads 2 MiB at about 8 MB/s."""
    up, down_len = upload(seed, 100), 2 << 20
    with connect(ports["scripted"]) as sock:
        sock.sendall(header(seed, up, down_len, TRAILER) + up)
        sock.shutdown(socket.SHUT_WR)
        return check_end(read_all(sock, rate=8e6), download(seed, down_len) + verdict(up))


def slow_backend_reader(seed: int, ports: dict[str, int]) -> str | None:
    """The backend reads 1 MiB at about 3 MB/s."""
    up = upload(seed, 1 << 20)
    with connect(ports["scripted"]) as sock:
        sender = sending(sock, header(seed, up, 0, TRAILER | SLOW_READ) + up, then_shutdown=True)
        got = read_all(sock)
        sender.join()
        return check_end(got, verdict(up))


def slow_writers(seed: int, ports: dict[str, int]) -> str | None:
    """Both sides write 64 KiB a kilobyte at a time."""
    up = upload(seed, 64 * 1024)
    with connect(ports["scripted"]) as sock:
        sock.sendall(header(seed, up, 64 * 1024, TRAILER | SLOW_WRITE))
        sender = sending(sock, up, then_shutdown=True, chunk=1024, pause=0.002)
        got = read_all(sock)
        sender.join()
        return check_end(got, download(seed, 64 * 1024) + verdict(up))


def backend_resets(seed: int, ports: dict[str, int]) -> str | None:
    """The backend resets before sending, mid-download, or after the upload's end: the client must see a reset."""
    rng = random.Random(seed)
    phase = rng.choice(("before", "mid", "after_eof"))
    up, down_len = upload(seed, rng.randrange(0, 64 * 1024)), 1 << 20
    if phase == "after_eof":
        flags, after = RESET_AFTER_EOF, 0
        down_len = rng.randrange(0, 64 * 1024)
    else:
        flags, after = RESET, 0 if phase == "before" else rng.randrange(1, down_len)
    with connect(ports["scripted"]) as sock:
        try:
            sock.sendall(header(seed, up, down_len, flags, after) + up)
            sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            if phase == "after_eof":
                return f"{phase}: the upload failed ({e}) before the backend could reset"
            return None  # the reset reached the client while it was still sending: what it must see
        got = read_all(sock)
    expected = download(seed, down_len if phase == "after_eof" else after)
    if got.end == "hang":
        return f"{phase}: hang: no end of stream {HANG:g} s after byte {len(got.data)}"
    if got.data != expected[: len(got.data)]:
        return f"{phase}: the {len(got.data)} bytes received are not what the backend sent"
    if got.end != "reset":
        return f"{phase}: the backend reset, the client got a clean end after {len(got.data)} of {len(expected)} bytes"
    return None


def client_resets(seed: int, ports: dict[str, int]) -> str | None:
    """The client resets at once, mid-upload, or after its own end of stream (the backend checks the rest)."""
    rng = random.Random(seed)
    phase = rng.choice(("at_once", "mid", "after_eof"))
    up = upload(seed, rng.randrange(1024, 1 << 20))
    sock = connect(ports["scripted"])
    if phase == "mid":
        sock.sendall(header(seed, up, 1 << 20, 0) + up[: rng.randrange(0, len(up))])
    elif phase == "after_eof":
        sock.sendall(header(seed, up, 1 << 20, RESET_AFTER_EOF) + up)
        sock.shutdown(socket.SHUT_WR)
    reset(sock)
    return None


def zero_bytes(seed: int, ports: dict[str, int]) -> str | None:
    """Nothing either way: an end of stream each way."""
    with connect(ports["zero"]) as sock:
        sock.shutdown(socket.SHUT_WR)
        return check_end(read_all(sock), b"")


def refused(seed: int, ports: dict[str, int]) -> str | None:
    """The only backend refuses: the client is closed at once, no byte."""
    with connect(ports["refused"]) as sock:
        start = time.monotonic()
        got = read_all(sock)
    if got.end == "hang" or got.data:
        return f"{got.end} with {len(got.data)} bytes"
    if got.ended - start > PROMPT:
        return f"closed {got.ended - start:.2f} s after connecting"
    return None


SHAPES: dict[str, Shape] = {
    shape.__name__: shape
    for shape in (greet_close, greet_later, client_first_close, half_close_client, half_close_backend, both_ways,
                  slow_client_reader, slow_backend_reader, slow_writers, backend_resets, client_resets, zero_bytes,
                  refused)
}
#: Which server of the balancer each shape goes through.
SERVERS = ("greet", "greet_later", "scripted", "zero", "refused")


def run_one(seed: int, ports: dict[str, int]) -> tuple[str, str | None]:
    """One connection of the shape drawn from C{seed}; returns (shape, failure or None)."""
    name = random.Random(seed).choice(sorted(SHAPES))
    return name, guarded(SHAPES[name], seed, ports)


def guarded(shape: Shape, seed: int, ports: dict[str, int]) -> str | None:
    """Run C{shape}; an exception (a refused connect, a reset while sending) is its failure."""
    try:
        return shape(seed, ports)
    except Exception as e:
        return f"{type(e).__name__}: {e}"


# The balancer


CONFIG_HEAD = """\
[api]
enabled = true
bind = "127.0.0.1:0"

[defaults]
splice = {splice}
shutdown_grace = "1s"
backend_connection_timeout = "2s"
"""

SERVER = """
[servers.{name}]
bind = "127.0.0.1:0"
balance = "roundrobin"
[servers.{name}.discovery]
kind = "static"
static_list = ["127.0.0.1:{port}"]
"""


class Balancer:
    """A C{twistd -n balancer} we started: its process, API port and server ports, its log lines."""

    def __init__(self, directory: str, backends: dict[str, int], splice: bool) -> None:
        config = os.path.join(directory, f"torture-{'engine' if splice else 'twisted'}.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(CONFIG_HEAD.format(splice="true" if splice else "false"))
            for name, port in backends.items():
                f.write(SERVER.format(name=name, port=port))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        self.process = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "balancer", "--config", config],
            cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        self.lines = read_lines(self.process.stdout)
        self.log: list[str] = []
        self.ports: dict[str, int] = {}
        self.api = 0
        deadline = time.monotonic() + START_TIMEOUT
        while len(self.ports) < len(backends) or not self.api:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError("the balancer did not start:\n" + "".join(self.log)) from None
            self.log.append(line)
            match = re.search(r"(\w+): listening on 127\.0\.0\.1:(\d+)", line)
            if match and match.group(1) == "api":
                self.api = int(match.group(2))
            elif match:
                self.ports[match.group(1)] = int(match.group(2))

    def drain(self) -> list[str]:
        """The log lines written since the last call."""
        new = []
        while True:
            try:
                new.append(self.lines.get_nowait())
            except queue.Empty:
                self.log += new
                return new

    def stats(self, server: str) -> dict[str, Any]:
        """C{GET /servers/SERVER/stats}."""
        with urllib.request.urlopen(f"http://{HOST}:{self.api}/servers/{server}/stats", timeout=10) as answer:
            return dict(json.load(answer))

    def sample(self) -> tuple[int, int]:
        """(VmRSS in bytes, open descriptors) of the process."""
        pid = self.process.pid
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))




class Backends:
    """The backend process we started, its ports by behaviour, and the lines it reports."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--backend"], stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        words = self.process.stdout.readline().split()  # type: ignore[union-attr]
        self.ports = dict(zip(BACKENDS, (int(w) for w in words[1:])))
        self.lines = read_lines(self.process.stdout)

    def failures(self) -> list[str]:
        """The failures the backend reported since the last call."""
        found = []
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return found
            if line.startswith("FAIL"):
                found.append(line.strip())


def closed_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago: a backend that refuses."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# The runs


@dataclass
class Run:
    """What one run of a path saw."""

    path: str
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, seed: int, shape: str, failure: str | None) -> None:
        with self.lock:
            self.counts[shape] += 1
            if failure is not None:
                self.failures.append(f"{shape} #{seed}: {failure}")


def sampler(balancer: Balancer, run: Run, stop_event: threading.Event) -> threading.Thread:
    """Sample the balancer's RSS and descriptors every second into C{run.samples}."""

    def loop() -> None:
        start = time.monotonic()
        while not stop_event.wait(1.0):
            try:
                rss, fds = balancer.sample()
            except OSError:
                return
            run.samples.append((time.monotonic() - start, rss, fds))

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def seeds(args: argparse.Namespace) -> Iterator[int]:
    """Connection seeds until the run's time or count is up."""
    deadline = time.monotonic() + args.minutes * 60 if args.minutes else None
    for number in range(args.connections if args.connections else 1 << 62):
        if deadline is not None and time.monotonic() > deadline:
            return
        yield args.seed * 1_000_000 + number


def mix(args: argparse.Namespace, balancer: Balancer, backends: Backends, run: Run) -> None:
    """The seeded mix, C{--concurrency} at once, a progress line every 10 s."""
    start = last = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as pool:
        pending: set[Any] = set()
        for seed in seeds(args):
            while len(pending) >= args.concurrency * 2:
                done = {f for f in pending if f.done()}
                if not done:
                    time.sleep(0.005)
                pending -= done
            future = pool.submit(run_one, seed, balancer.ports)
            future.add_done_callback(lambda f, seed=seed: run.record(seed, *f.result()))
            pending.add(future)
            if time.monotonic() - last >= 10:
                last = time.monotonic()
                progress(run, balancer, backends, last - start)
    run.failures += backends.failures()
    progress(run, balancer, backends, time.monotonic() - start)


def progress(run: Run, balancer: Balancer, backends: Backends, elapsed: float) -> None:
    """One progress line."""
    run.failures += backends.failures()
    balancer.drain()
    rss, fds = balancer.sample()
    report(f"[{run.path}] {elapsed:6.0f} s  {sum(run.counts.values()):8,} connections  "
           f"{len(run.failures)} failures  RSS {rss / 2**20:.1f} MiB  {fds} descriptors")


def greeting(args: argparse.Namespace, balancer: Balancer, backends: Backends, run: Run) -> None:
    """The greeting-then-close shape: C{--clients} sequential, then as many 50 at a time."""
    for label, concurrency in (("sequential", 1), ("50 at a time", 50)):
        started = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(lambda s: (s, guarded(greet_close, s, balancer.ports)), range(args.clients)))
        hangs = sum(1 for _, failure in results if failure and failure.startswith("hang"))
        wrong = sum(1 for _, failure in results if failure and not failure.startswith("hang"))
        run.counts[f"greeting {label}"] += len(results)
        run.failures += [f"greeting {label} #{s}: {f}" for s, f in results if f]
        report(f"[{run.path}] greeting then close, {args.clients} clients {label}: {hangs} hangs, "
               f"{wrong} other failures, {time.monotonic() - started:.1f} s")


def backpressure(args: argparse.Namespace, balancer: Balancer, backends: Backends, run: Run) -> None:
    """8 MiB each way under backpressure, C{--clients} each, 10 at a time."""
    size = 8 << 20

    def down(seed: int, ports: dict[str, int]) -> str | None:
        with connect(balancer.ports["scripted"]) as sock:
            sock.sendall(header(seed, b"", size, 0))
            sock.shutdown(socket.SHUT_WR)
            return check_end(read_all(sock, rate=40e6), download(seed, size))

    def up(seed: int, ports: dict[str, int]) -> str | None:
        data = upload(seed, size)
        with connect(balancer.ports["scripted"]) as sock:
            sender = sending(sock, header(seed, data, 0, TRAILER | SLOW_READ) + data, then_shutdown=True)
            got = read_all(sock)
            sender.join()
            return check_end(got, verdict(data))

    for label, shape in (("8 MiB download, client reading at ~40 MB/s", down),
                         ("8 MiB upload, half-closed, backend reading slowly", up)):
        started = time.monotonic()
        with ThreadPoolExecutor(10) as pool:
            seeds = [args.seed * 1_000_000 + n for n in range(args.clients)]
            results = list(pool.map(lambda s: (s, guarded(shape, s, balancer.ports)), seeds))
        failed = backends.failures()
        hangs = sum(1 for _, f in results if f and f.startswith("hang")) + sum("no end" in f for f in failed)
        run.counts[label] += len(results)
        run.failures += [f"{label} #{s}: {f}" for s, f in results if f] + failed
        report(f"[{run.path}] {label}, {args.clients} clients: {hangs} hangs, "
               f"{len(run.failures)} failures so far, {time.monotonic() - started:.1f} s")


def settle(balancer: Balancer, run: Run) -> None:
    """Wait (up to 10 s) for every server's C{active_connections} to be 0; a failure if not."""
    deadline = time.monotonic() + 10
    while True:
        active = {name: balancer.stats(name)["active_connections"] for name in SERVERS}
        if not any(active.values()):
            return
        if time.monotonic() > deadline:
            run.failures.append(f"active_connections not back to 0 after 10 s: {active}")
            return
        time.sleep(0.1)


def summary(run: Run, balancer: Balancer) -> None:
    """The closing lines of one path's run."""
    report(f"\n== {run.path}: {sum(run.counts.values()):,} connections, {len(run.failures)} failures")
    for shape, count in sorted(run.counts.items()):
        failed = sum(1 for f in run.failures if f.startswith(shape + " #"))
        report(f"   {shape:45} {count:8,}  {failed} failed")
    for failure in run.failures[:50]:
        report(f"   FAIL {failure}")
    if len(run.failures) > 50:
        report(f"   ... and {len(run.failures) - 50} more")
    if run.samples:
        rss = [s[1] for s in run.samples]
        fds = [s[2] for s in run.samples]
        report(f"   RSS MiB: first {rss[0] / 2**20:.1f}, min {min(rss) / 2**20:.1f}, max {max(rss) / 2**20:.1f}, "
               f"last {rss[-1] / 2**20:.1f}  ({len(rss)} samples, 1 s apart)")
        report(f"   descriptors: first {fds[0]}, min {min(fds)}, max {max(fds)}, last {fds[-1]}")
    errors = [line.rstrip() for line in balancer.log if re.search(r"#(error|critical)\]|Traceback", line)]
    report(f"   balancer log: {len(balancer.log)} lines, {len(errors)} errors or tracebacks")
    for line in errors[:10]:
        report(f"     {line}")


def run_path(args: argparse.Namespace, backends: Backends, path: str, directory: str,
             started: list[subprocess.Popen[str]]) -> Run:
    """Start a balancer on C{path}, run the mode through it, stop it; returns what was seen."""
    servers = dict(backends.ports, refused=closed_port())
    balancer = Balancer(directory, servers, splice=path == "engine")
    started.append(balancer.process)
    run = Run(path)
    stop_event = threading.Event()
    sampling = sampler(balancer, run, stop_event)
    try:
        if args.replay is not None:
            shape, failure = run_one(args.replay, balancer.ports)
            run.record(args.replay, shape, failure)
            run.failures += backends.failures()
        else:
            {"mix": mix, "greeting": greeting, "backpressure": backpressure}[args.mode](args, balancer, backends, run)
        time.sleep(0.5)  # the backend's last verdicts
        run.failures += backends.failures()
        settle(balancer, run)
        balancer.drain()
    finally:
        stop_event.set()
        sampling.join()
        stop(balancer.process)
    summary(run, balancer)
    return run


def main() -> None:
    """Parse the options, start the peers, run each path, print, stop."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("mix", "greeting", "backpressure"), default="mix")
    parser.add_argument("--minutes", type=float, default=0.0, help="mix: run this long (default: --connections)")
    parser.add_argument("--connections", type=int, default=0, help="mix: this many connections (default 5000 "
                        "without --minutes)")
    parser.add_argument("--concurrency", type=int, default=50, help="mix: clients at once (default 50)")
    parser.add_argument("--clients", type=int, default=0, help="greeting: 5000; backpressure: 50 each way")
    parser.add_argument("--seed", type=int, default=1, help="the run's seed (default 1)")
    parser.add_argument("--path", choices=("engine", "twisted", "both"), default="both")
    parser.add_argument("--replay", type=int, default=None, help="run the one connection of this seed")
    parser.add_argument("--backend", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend:
        serve_backends()
        return
    if args.mode == "mix" and not args.minutes and not args.connections:
        args.connections = 5000
    if not args.clients:
        args.clients = 5000 if args.mode == "greeting" else 50
    started: list[subprocess.Popen[str]] = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    runs = []
    try:
        backends = Backends()
        started.append(backends.process)
        with tempfile.TemporaryDirectory() as directory:
            for path in ("engine", "twisted") if args.path == "both" else (args.path,):
                runs.append(run_path(args, backends, path, directory, started))
    finally:
        for process in reversed(started):
            stop(process)
    report(f"\n# bench/torture.py {' '.join(sys.argv[1:])}: "
           + ", ".join(f"{r.path} {sum(r.counts.values()):,} connections {len(r.failures)} failures" for r in runs))
    sys.exit(1 if any(r.failures for r in runs) else 0)


if __name__ == "__main__":
    main()
