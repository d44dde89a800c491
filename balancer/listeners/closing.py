"""
Closing a listening socket without resetting a client: first refuse new
clients, then accept those already connected, then close.

Closing a listening TCP socket resets every connection still in its
backlog: clients whose handshake the kernel completed but that the process
had not accepted yet.  So a listener that moves to another address (the new
one already listening) closes in two steps (L{close_gently}):

 1. a socket filter drops new connection requests (segments with SYN and
    without ACK): a client connecting now gets no answer, sends its SYN
    again a second later and, the socket being closed by then, is refused;
    handshakes already under way complete, since their last segment is an
    ACK;
 2. for L{LINGER} seconds the listener goes on accepting, so those clients
    are served; then it closes, with an empty backlog.

The filter is classic BPF (C{SO_ATTACH_FILTER}), Linux only; elsewhere, or
for a port without a socket (UDP has no backlog to lose), the listener
closes at once.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

#: Seconds a listener that refuses new clients goes on accepting those already connected.
LINGER = 0.25

#: C{SO_ATTACH_FILTER} (Linux, asm-generic); Python's socket module does not name it.
SO_ATTACH_FILTER = 26

#: A segment with SYN and without ACK: a new connection request.  The
#: filter sees the TCP header first: its flags are byte 13.
_DROP_SYN = (
    (0x30, 0, 0, 13),  # ldb [13]
    (0x54, 0, 0, 0x12),  # and #(SYN | ACK)
    (0x15, 0, 1, 0x02),  # jeq #SYN, drop, keep
    (0x06, 0, 0, 0),  # drop: ret #0
    (0x06, 0, 0, 0xFFFFFFFF),  # keep: ret #-1
)


class _Instruction(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Instruction))]


def refuse_new_clients(fileno: int) -> bool:
    """
    Make the listening TCP socket C{fileno} drop new connection requests
    (its other segments pass).

    @return: whether it could (Linux only).
    """
    if not sys.platform.startswith("linux"):
        return False
    instructions = (_Instruction * len(_DROP_SYN))(*(_Instruction(*i) for i in _DROP_SYN))
    program = _Program(len(_DROP_SYN), ctypes.cast(instructions, ctypes.POINTER(_Instruction)))
    try:
        # A duplicate descriptor of the same socket: the filter is the socket's, closing the duplicate leaves it open.
        with socket.socket(fileno=os.dup(fileno)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(program))
    except OSError:
        return False
    return True


def close_gently(port: Any, clock: IReactorTime, linger: float = LINGER) -> Deferred[None]:
    """
    Close a listening C{port} without resetting a client (see the module):
    refuse new clients, accept for C{linger} seconds those already
    connected, then stop listening.  A port whose socket cannot be filtered
    closes at once.

    @return: fires once the port is closed.
    """
    fileno = getattr(port, "fileno", None)
    if linger > 0 and fileno is not None and _is_stream(port) and refuse_new_clients(fileno()):
        return deferLater(clock, linger, lambda: None).addCallback(lambda _: port.stopListening())
    return maybeDeferred(port.stopListening)


def _is_stream(port: Any) -> bool:
    """Whether C{port} listens for TCP (its address says so)."""
    return getattr(port.getHost(), "type", None) == "TCP"
