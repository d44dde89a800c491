"""
The relay's zero-copy fast path (docs/DESIGN.md §4): on Linux, the bytes of a plain
TCP relay move from one socket to the other through a pipe with
C{os.splice}, without ever becoming Python C{bytes}, once a direction
carries more than a few KiB at a time (before that, see below, they are copied).

Each socket of such a relay is a L{SplicedTransport} on the relay
L{engine<balancer.proxy.engine.engine>}, from the moment it is accepted or
connected (L{balancer.proxy.engine.sockets}) to its close: the transport its
protocol sees, and the engine's reader and writer of the socket.  Until
L{splice} joins it to its peer it reads nothing; from then on it relays.  The protocol handles the endings as with any TCP transport:
it is told of the end of input (C{readConnectionLost}), of its shut write
side (C{writeConnectionLost}) and of the end of the connection
(C{connectionLost}), and it closes either end with the calls it makes on any
TCP transport.  The relay's logic is thus the same on both paths, and so
are its statistics, half-closes and timeouts.

The pipe of a direction is its write buffer.  Flow control is the same as on
the normal path with a buffer of one read: a socket is read only into an
empty pipe, and a read that the other socket cannot take at once stops the
reading until the pipe is drained.  Pipes come from the engine's
L{PipePool<balancer.proxy.engine.pipes.PipePool>} when bytes
arrive and go back to it as soon as they are empty, so an idle relay holds
none.  When the process is out of descriptors for a pipe, a read copies the
bytes through Python instead (C{recv} and C{send}, the buffer then being
those bytes), with a warning at most once a minute.

Each direction starts by copying: a read (C{os.read}, a C{recv} without
the socket object's argument parsing) of up to L{COPY_SIZE} bytes, then a
write (C{os.write}).  Most connections a balancer sees carry a request and an
answer of a few KiB each, and for those two system calls cost less than a
pipe's three (two splices and the one that finds the socket empty): a
C{recv} that gives fewer bytes than it asked for has emptied the socket, so
unless the event being dispatched says the input ended or failed
(L{Engine.ending<balancer.proxy.engine.engine.Engine.ending>}) the reading
stops there until the next edge.  The first read that fills L{COPY_SIZE}
turns that direction to splicing for the rest of the connection.

A socket that splices is read until it has nothing more (C{EAGAIN}) or its
end, however short a read is: a splice stops short when the pipe is full,
so it is no proof that nothing is left, and the end of the input may have
come in the same edge as the last bytes, or while the reading was stopped
by flow control.  After L{READS_PER_EVENT} full reads the socket waits its
turn behind the others
(L{Engine.read_again<balancer.proxy.engine.engine.Engine.read_again>}).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import sys
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress, IReadWriteDescriptor, ISystemHandle
from twisted.python.failure import Failure
from zope.interface import implementer

from balancer.proxy.engine.pipes import PipePool

if TYPE_CHECKING:
    from balancer.proxy.engine.engine import Engine

#: Whether this platform has the fast path (Linux, Python 3.10 or later).
AVAILABLE = sys.platform.startswith("linux") and hasattr(os, "splice")

if AVAILABLE:
    _FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK

#: How many reads a socket gets per call before it lets the others have their turn.
READS_PER_EVENT = 16
# Iterated by each call (a range made once: one call less per event).
_READS = range(READS_PER_EVENT)

#: How many bytes a read takes when copying (before a direction splices, or
#: when no pipe can be had); a read that fills it turns its direction to splicing.
COPY_SIZE = 65536

# Errors of a non-blocking write that only mean "not now" (as Twisted's TCP transport treats them).
_WOULD_BLOCK = (errno.EAGAIN, errno.ENOBUFS)
# Why a connection ended, built once and shared as the reactor shares its
# own: building a Failure walks its exception's class hierarchy.
_DONE = Failure(ConnectionDone())
_LOST = Failure(ConnectionLost())
_ABORTED = Failure(ConnectionAborted())
# SO_LINGER on, for 0 s: close() resets the connection.
_RESET = struct.pack("ii", 1, 0)
# The peer's end of stream (PyPy 3.9 lacks the name of EPOLLRDHUP), and an error, in an event.
_RDHUP = getattr(select, "EPOLLRDHUP", 0x2000)
_ERR = select.EPOLLERR
# Closes a socket: the C method, also for a socket.socket, whose close() adds two Python frames.
_close_socket = socket.SocketType.close


def tcp_address(family: int, address: tuple[Any, ...]) -> IPv4Address | IPv6Address:
    """Twisted's address of a TCP socket of C{family}, from what C{getsockname}/C{accept} give."""
    if family == socket.AF_INET6:
        return IPv6Address("TCP", *address)
    return IPv4Address("TCP", address[0], address[1])


@implementer(IReadWriteDescriptor, ISystemHandle)
class SplicedTransport:
    """
    One socket of a relay on the engine: the transport its protocol sees
    (the part of C{ITCPTransport} a relay uses), and, once L{splice}d, the
    engine's reader and writer of the socket, reading into the pipe of the
    other socket and writing from its own.

    It is its peer's producer: when the peer cannot take a read at once,
    this transport stops reading until the peer's pipe is drained.

    @ivar protocol: the protocol in front of it (set before C{makeConnection}).
    """

    # Two per relay for as long as it lives: no instance dictionaries.
    __slots__ = (
        "protocol",
        "_engine",
        "_socket",
        "_fd",
        "_address",
        "_host",
        "_pool",
        "_count",
        "_peer",
        "_producer",
        "_pipe",
        "_buffered",
        "_pending",
        "_reading",
        "_writing",
        "_read_open",
        "_write_closing",
        "_closing",
        "_closed",
        "_splicing",
        "_plain",
    )

    #: Whether a peer's reads may be spliced into this transport's pipe
    #: (a transport that encrypts what it sends takes copies).
    takes_pipes = True

    def __init__(self, engine: Engine, sock: Any, address: IAddress | None = None) -> None:
        """
        @param engine: the engine the socket runs on (L{balancer.proxy.engine.engine.Engine}).
        @param sock: a connected, non-blocking TCP socket.
        @param address: its peer's address (by default read from the socket when asked for).
        """
        self.protocol: Any = None
        self._engine = engine
        self._socket = sock
        self._fd: int = sock.fileno()
        self._address: IAddress | None = address
        self._host: IAddress | None = None
        self._pool: PipePool = engine.pipes
        self._count: Callable[[int], None] | None = None
        self._peer: SplicedTransport | None = None  # until splice() pairs them
        self._producer: SplicedTransport | None = None
        self._pipe: tuple[int, int] | None = None
        self._buffered = 0
        self._pending = b""
        self._reading = False
        self._writing = False
        self._read_open = True
        self._write_closing = False
        self._closing = False
        self._closed = False
        self._splicing = False
        # takes_pipes, read once: a class attribute is read on Python's slow path.
        self._plain = self.takes_pipes

    # The transport, as the relay's protocol sees it

    def getPeer(self) -> IAddress:
        """The remote address."""
        if self._address is None:
            self._address = tcp_address(self._socket.family, self._socket.getpeername())
        return self._address

    def getHost(self) -> IAddress:
        """The local address."""
        if self._host is None:
            self._host = tcp_address(self._socket.family, self._socket.getsockname())
        return self._host

    def getHandle(self) -> Any:
        """The socket."""
        return self._socket

    def pauseProducing(self) -> None:
        """Nothing to do: the socket is not read before L{splice} joins it to its peer."""

    def write(self, data: bytes) -> None:
        """
        Send C{data} ahead of the bytes relayed (a PROXY protocol header,
        written before L{splice}): it goes through the pipe as they do.  The
        pipe is empty then, so it takes these few bytes whole.  With no pipe
        to be had, it waits in Python (L{_more_pipe}).
        """
        if self._closed or self._closing or self._write_closing:
            return
        pipe = self._pipe or self._more_pipe()
        if pipe is None:
            self._pending += data
            self._flush()
            return
        written = os.write(pipe[1], data)
        self._buffered += written
        if written < len(data):
            self._fail()
        else:
            self._flush()

    def unregisterProducer(self) -> None:
        """Stop resuming the peer's reading once this transport's pipe is drained."""
        self._producer = None

    def loseWriteConnection(self) -> None:
        """Shut down the socket's write side once the pipe is drained; then tell the protocol."""
        if self._write_closing or self._closed:
            return
        self._write_closing = True
        if not (self._buffered or self._pending):
            self._shutdown_write()

    def loseConnection(self) -> None:
        """Stop reading; close the connection once the pipe is drained."""
        if self._closing or self._closed:
            return
        self._closing = True
        if self._reading:
            self._stop_reading()
        if not (self._buffered or self._pending):
            self._close(_DONE)

    def abortConnection(self) -> None:
        """Drop the pipe's bytes and reset the connection (the protocol hears of it a reactor turn later)."""
        if self._closed:
            return
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        except OSError:
            pass  # already reset
        self._close_later(_ABORTED)

    # The descriptor, as the engine sees it

    def fileno(self) -> int:
        """The socket's file descriptor."""
        return self._fd

    def logPrefix(self) -> str:
        """How the log names this socket."""
        return f"relay socket {self._fd}"

    def doRead(self) -> None:
        """
        Move what the socket has to the peer: copied (C{os.read} what the
        socket has, C{os.write} it on, keeping what the peer cannot take yet)
        until a read fills L{COPY_SIZE}, then spliced into the peer's
        (empty) pipe and on to the peer's socket, until the socket has
        nothing more, its input ends, or the peer cannot take a read at once
        (then reading stops until the peer's pipe or buffer is drained).
        Each read is counted; the end of input is passed to the protocol.
        After L{READS_PER_EVENT} reads the socket is read again later, after
        the other sockets' events.

        A copying read stops at a short read, unless the event being
        dispatched brought an error or is not known (see the module's
        docstring); one that brought the peer's end without an error ends
        the input at once, without a read that finds nothing.  A read that
        fills L{COPY_SIZE} turns this direction to splicing (if the peer
        L{takes_pipes}); without a pipe to be had, a splicing direction copies.
        """
        peer = self._peer
        assert peer is not None, "read before splice()"
        fd = self._fd
        for _ in _READS:
            if peer._closed:
                self._stop_reading()
                return
            if self._splicing:
                pipe = peer._pipe or peer._more_pipe()
                if pipe is not None:
                    try:
                        moved = os.splice(fd, pipe[1], self._pool.size, flags=_FLAGS)
                    except BlockingIOError:
                        peer._release_if_empty()
                        return
                    except OSError:
                        peer._release_if_empty()
                        self._fail()
                        return
                    if not moved:
                        peer._release_if_empty()
                        self._end_of_input()
                        return
                    self._count(moved)  # type: ignore[misc]
                    peer._buffered += moved
                    if not peer._flush():
                        self._stop_reading()
                        return
                    continue
            try:
                data = os.read(fd, COPY_SIZE)
            except BlockingIOError:
                return
            except OSError:
                self._fail()
                return
            if not data:
                self._end_of_input()
                return
            size = len(data)
            self._count(size)  # type: ignore[misc]
            if peer._pending or peer._buffered or not peer._plain:
                peer._pending += data
                if not peer._flush():
                    self._stop_reading()
                    return
            else:
                # The peer holds nothing: send at once; what it cannot take waits in its buffer.
                try:
                    sent = os.write(peer._fd, data)
                except OSError:
                    sent = 0
                if sent < size:
                    peer._pending = data[sent:]
                    if not peer._flush():
                        self._stop_reading()
                        return
            if size == COPY_SIZE:
                self._splicing = peer._plain
                continue
            ending = self._engine.ending
            if ending & _RDHUP and not ending & _ERR:
                # The peer's end came before this read, after all its bytes (TCP
                # delivers them in order), and this short read took them all:
                # what is left is the end, with no error to read first.
                self._end_of_input()
                return
            if not ending:
                return
        self._engine.read_again(self)

    def doWrite(self) -> None:
        """The socket takes bytes again: drain the pipe, then finish what waited for it."""
        if not self._closed and self._flush():
            self._drained()

    def connectionLost(self, reason: Failure) -> None:
        """The reactor gave up on the socket (an error, or the reactor stops): close it."""
        self._reading = self._writing = False
        self._close(reason)

    # Moving bytes

    def _flush(self) -> bool:
        """
        Move the pipe's bytes to the socket; give the pipe back once empty.

        @return: whether the pipe is empty (else the socket is full, and this
            transport waits for it, or it failed).
        """
        pipe = self._pipe
        while self._buffered:
            try:
                self._buffered -= os.splice(pipe[0], self._fd, self._buffered, flags=_FLAGS)  # type: ignore[index]
            except OSError as e:
                if e.errno in _WOULD_BLOCK:
                    self._start_writing()
                else:
                    self._fail()
                return False
        if pipe is not None:
            self._pipe = None
            self._pool.release(pipe)
        pending = self._pending
        while pending:
            try:
                pending = pending[os.write(self._fd, pending) :]
            except OSError as e:
                self._pending = pending
                if e.errno in _WOULD_BLOCK:
                    self._start_writing()
                else:
                    self._fail()
                return False
        self._pending = b""
        return True

    def _more_pipe(self) -> tuple[int, int] | None:
        """
        A pipe for bytes this transport has no pipe for: a new one, unless
        bytes already wait outside a pipe (copied when none could be had:
        they must go first, so the new ones join them), or none can be had.
        """
        if self._pending:
            return None
        self._pipe = self._pool.acquire_or_none(self._engine.reactor)
        return self._pipe

    def _drained(self) -> None:
        """The pipe is empty: stop waiting to write; close or resume the producer."""
        self._stop_writing()
        if self._closing:
            self._close(_DONE)
        elif self._write_closing:
            self._shutdown_write()
        elif self._producer is not None:
            self._producer._resume()

    def _release_if_empty(self) -> None:
        """Give back a pipe taken for a read that brought nothing."""
        pipe = self._pipe
        if pipe is not None and not self._buffered:
            self._pipe = None
            self._pool.release(pipe)

    def _resume(self) -> None:
        if self._read_open and not self._closing and not self._closed:
            self._start_reading()

    def _start_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._engine.add_reader(self._fd, self)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._engine.remove_reader(self._fd, self)

    def _start_writing(self) -> None:
        if not self._writing:
            self._writing = True
            self._engine.add_writer(self._fd, self)

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            self._engine.remove_writer(self._fd, self)

    # Endings

    def _end_of_input(self) -> None:
        """The peer shut down its write side: stop reading and tell the protocol."""
        self._read_open = False
        if self._reading:  # as _stop_reading, inlined: once per relay side
            self._reading = False
            self._engine.remove_reader(self._fd, self)
        self.protocol.readConnectionLost()

    def _shutdown_write(self) -> None:
        try:
            self._socket.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already reset by the peer: Twisted ignores this too
        self.protocol.writeConnectionLost()

    def _detach(self) -> None:
        """
        Leave the engine and give back (or, holding unsent bytes, close) the
        pipe; forget the peer and the counting, so that no reference cycle
        keeps the closed relay's objects for the cyclic garbage collector.
        """
        self._reading = self._writing = False
        self._peer = self._producer = self._count = None
        self._engine.forget(self._fd)
        pipe = self._pipe
        if pipe is not None:
            self._pipe = None
            if self._buffered:
                self._pool.discard(pipe)
            else:
                self._pool.release(pipe)
            self._buffered = 0
        self._pending = b""

    def _close(self, reason: Failure) -> None:
        """Close the socket and tell the protocol."""
        if self._closed:
            return
        self._closed = True
        self._detach()
        _close_socket(self._socket)
        protocol, self.protocol = self.protocol, None
        protocol.connectionLost(reason)

    def _close_later(self, reason: Failure) -> None:
        """Close the socket now; the protocol hears of it a reactor turn later, as from a Twisted transport."""
        self._closed = True
        self._detach()
        _close_socket(self._socket)
        protocol, self.protocol = self.protocol, None
        self._engine.callLater(0, protocol.connectionLost, reason)

    def _fail(self) -> None:
        """
        Reading or writing the socket failed: the connection is lost.  The
        protocol hears of it a reactor turn later, not in the middle of the
        peer's read.
        """
        if not self._closed:
            self._close_later(_LOST)


def splice(
    client: Any,
    backend: Any,
    count_tx: Callable[[int], None],
    count_rx: Callable[[int], None],
) -> None:
    """
    Move the bytes between two connected protocols on L{SplicedTransport}s
    with C{os.splice} from now on: both start reading.

    @param client: the protocol of the accepted connection, an
        C{IHalfCloseableProtocol}, on a L{SplicedTransport}.
    @param backend: the protocol of the connection to the backend, likewise.
    @param count_tx: called with the size of each read from the client.
    @param count_rx: called with the size of each read from the backend.
    """
    from_client: SplicedTransport = client.transport
    from_backend: SplicedTransport = backend.transport
    from_client._count = count_tx
    from_backend._count = count_rx
    from_client._peer = from_client._producer = from_backend
    from_backend._peer = from_backend._producer = from_client
    # Both start reading (as _start_reading, inlined: two calls less per relay).
    engine = from_client._engine
    if not from_client._reading:
        from_client._reading = True
        engine.add_reader(from_client._fd, from_client)
    if not from_backend._reading:
        from_backend._reading = True
        engine.add_reader(from_backend._fd, from_backend)
