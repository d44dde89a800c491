"""
A backend run as its own process so that a test can kill it with SIGKILL
(C{python -m tests.support.killable_backend SIZE}): it listens on 127.0.0.1 port 0
and prints C{port N}; to every connection it sends C{SIZE} bytes of
L{stream} and then holds the connection open, never reading and never
closing, so that what its kernel does on the kill (a FIN after every byte
sent, or a reset if input is left unread) is all the peer sees.

Whenever its state changes it prints one line
C{status connections=C sent=S unread=U}: C connections accepted, S of them
with all C{SIZE} bytes handed to the kernel, U bytes received and not read
(C{FIONREAD}) over all of them.  Only the standard library is used.
"""

from __future__ import annotations

import fcntl
import hashlib
import socket
import struct
import sys
import termios
import threading
import time

BLOCK = 64 * 1024


def stream(size: int) -> bytes:
    """The first C{size} bytes the backend sends: 64 KiB blocks, each distinct, so loss and reordering show."""
    blocks = (hashlib.sha256(i.to_bytes(8, "big")).digest() * (BLOCK // 32) for i in range(-(-size // BLOCK)))
    return b"".join(blocks)[:size]


def unread(sock: socket.socket) -> int:
    """Bytes received on C{sock} that were not read yet."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])


def main() -> None:
    """Serve until killed."""
    payload = stream(int(sys.argv[1]))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    print(f"port {listener.getsockname()[1]}", flush=True)
    connections: list[socket.socket] = []
    sent: list[socket.socket] = []
    lock = threading.Lock()

    def send(sock: socket.socket) -> None:
        sock.sendall(payload)
        with lock:
            sent.append(sock)

    def accept() -> None:
        while True:
            sock, _ = listener.accept()
            with lock:
                connections.append(sock)
            threading.Thread(target=send, args=(sock,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    last = None
    while True:
        with lock:
            state = (len(connections), len(sent), sum(unread(s) for s in connections))
        if state != last:
            print("status connections={} sent={} unread={}".format(*state), flush=True)
            last = state
        time.sleep(0.01)


if __name__ == "__main__":
    main()
