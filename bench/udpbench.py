"""
UDP for the comparison: an echo server (the backend) and closed-loop
request/response clients.  Run by C{compare.py}::

    python bench/udpbench.py echo --port PORT
    python bench/udpbench.py client --port PORT --clients N --seconds S [--size 64]

The echo server answers each datagram with itself, from one socket in a
blocking loop: one C{recvfrom} and one C{sendto} a datagram (about 6 µs on
the 2-core VM measured), half of a proxy's system calls, so not the
bottleneck of a proxied path; the direct figure shows its ceiling together
with the clients'.

A client process holds C{--clients} connected sockets, each with one
datagram outstanding: when its answer comes (it must equal the request) the
next is sent, numbered anew, so that a late answer to a datagram sent again
is told apart and dropped (each socket keeps one datagram outstanding).  A
socket without an answer for a whole 200 ms period counts a loss and sends
again.  Prints one JSON line: answers, lost, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time

HOST = "127.0.0.1"
LOST_AFTER = 0.2


def echo(port: int) -> None:
    """Answer every datagram on C{port} with itself, until killed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((HOST, port))
    receive, send = sock.recvfrom, sock.sendto
    while True:
        data, peer = receive(65536)
        send(data, peer)


def client(port: int, clients: int, seconds: float, size: int) -> dict[str, float]:
    """C{clients} closed-loop request/response clients for C{seconds}; the answers and losses counted."""
    poller = select.epoll()
    socks: dict[int, socket.socket] = {}
    payloads: dict[int, bytes] = {}
    numbers: dict[int, int] = {}
    index_of: dict[int, int] = {}
    tag = struct.Struct("!IQ")
    for i in range(clients):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect((HOST, port))
        fd = s.fileno()
        socks[fd] = s
        numbers[fd] = 0
        index_of[fd] = i
        payloads[fd] = (tag.pack(i, 0) + os.urandom(size)).ljust(size, b".")[:size]
        poller.register(fd, select.EPOLLIN)
    answers = lost = 0
    start = time.monotonic()
    deadline = start + seconds
    for fd, s in socks.items():
        s.send(payloads[fd])
    answered: set[int] = set()
    sweep = start + LOST_AFTER
    now = start
    while now < deadline:
        for fd, _ in poller.poll(0.05):
            s = socks[fd]
            try:
                while True:
                    data = s.recv(65536)
                    if data != payloads[fd]:
                        index, number = tag.unpack_from(data)
                        if index != index_of[fd] or data[tag.size:] != payloads[fd][tag.size:] or number >= numbers[fd]:
                            sys.exit(f"answer {data[:16]!r} is not a request of this socket")
                        continue  # the late answer to a datagram sent again
                    answers += 1
                    answered.add(fd)
                    numbers[fd] += 1
                    payload = payloads[fd] = tag.pack(index_of[fd], numbers[fd]) + payloads[fd][tag.size:]
                    s.send(payload)
            except BlockingIOError:
                pass
            except ConnectionRefusedError:
                sys.exit("connection refused: nothing listens on the port")
        now = time.monotonic()
        if now >= sweep:
            # A socket with no answer for a whole period lost its datagram (or its answer): send again.
            for fd, s in socks.items():
                if fd not in answered:
                    lost += 1
                    s.send(payloads[fd])
            answered.clear()
            sweep = now + LOST_AFTER
    return {"answers": answers, "lost": lost, "seconds": time.monotonic() - start}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("echo", "client"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    if args.size < 12 or args.clients < 1:
        parser.error("--size must be at least 12 (the datagram's number) and --clients at least 1")
    if args.mode == "echo":
        echo(args.port)
    else:
        print(json.dumps(client(args.port, args.clients, args.seconds, args.size)))


if __name__ == "__main__":
    main()
