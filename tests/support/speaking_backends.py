"""
Backends that speak first, as a separate process (so that they run at the
same time as the balancer, as real ones do, not in turns of its reactor):

    python -m tests.support.speaking_backends

It listens on 127.0.0.1 port 0 once per script of
L{tests.support.torture.FIXED_BACKENDS} and prints one JSON line of the
ports, by name.  Each connection runs its script on a blocking socket at
once after C{accept}, with no event loop in between: a greeting and a close
reach the balancer as fast as the kernel carries them.  A line on standard
input asks for the results (a JSON line of counts by name: connections, and
how many read exactly what they expected and then an end of stream);
standard input closed ends the process.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time
from collections import Counter

from tests.support.torture import FIXED_BACKENDS, Close, HalfClose, Pause, Reset, Send, WaitEof

_LINGER_RESET = struct.pack("ii", 1, 0)
_counts: Counter[str] = Counter()
_lock = threading.Lock()


def _count(key: str) -> None:
    with _lock:
        _counts[key] += 1


def _serve_one(name: str, conn: socket.socket, expects: bytes) -> None:
    """Run C{name}'s script on one accepted connection."""
    script, _ = FIXED_BACKENDS[name]
    read = b""
    eof = False
    try:
        for step in script:
            if isinstance(step, Send):
                conn.sendall(step.data)
            elif isinstance(step, Pause):
                time.sleep(step.seconds)  # a real peer's think time, in this peer process
            elif isinstance(step, WaitEof):
                conn.settimeout(10)
                while chunk := conn.recv(65536):
                    read += chunk
                eof = True
            elif isinstance(step, HalfClose):
                conn.shutdown(socket.SHUT_WR)
            elif isinstance(step, Reset):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                break
            elif isinstance(step, Close):
                break
        if expects and eof and read == expects:
            _count(f"{name}.expected")
    except OSError:
        _count(f"{name}.errors")
    finally:
        conn.close()


def _accept_forever(name: str, listener: socket.socket) -> None:
    _, expects = FIXED_BACKENDS[name]
    threaded = any(isinstance(step, (WaitEof, Pause)) for step in FIXED_BACKENDS[name][0])
    while True:
        conn, _ = listener.accept()
        _count(f"{name}.connections")
        if threaded:
            threading.Thread(target=_serve_one, args=(name, conn, expects), daemon=True).start()
        else:
            _serve_one(name, conn, expects)


def main() -> None:
    """Listen for each fixed script, print the ports, answer report requests until stdin closes."""
    ports = {}
    for name in FIXED_BACKENDS:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        ports[name] = listener.getsockname()[1]
        threading.Thread(target=_accept_forever, args=(name, listener), daemon=True).start()
    print(json.dumps(ports), flush=True)
    for _ in sys.stdin:
        with _lock:
            print(json.dumps(dict(_counts)), flush=True)


if __name__ == "__main__":
    main()
