"""
The relay's zero-copy fast path (DESIGN §4): on Linux, the bytes of a plain
TCP relay move from one socket to the other through a pipe with
C{os.splice}, without ever becoming Python C{bytes}.

L{splice} takes over the two connected transports of a relay: Twisted stops
reading them, and a L{SplicedTransport} for each socket, added to the
reactor as its reader and writer, moves the bytes instead.  Each
L{SplicedTransport} then stands in for the Twisted transport in front of the
same protocol, which keeps handling the endings as before: it is told of the
end of input (C{readConnectionLost}), of its shut write side
(C{writeConnectionLost}) and of the end of the connection
(C{connectionLost}, through the Twisted transport, which closes the socket),
and it closes either end with the calls it makes on any TCP transport.  The
relay's logic is thus the same on both paths, and so are its statistics,
half-closes and timeouts.

The pipe of a direction is its write buffer.  Flow control is the same as on
the normal path with a buffer of one read: a socket is read only into an
empty pipe, and a read that the other socket cannot take at once stops the
reading until the pipe is drained.  Pipes come from a L{PipePool} when bytes
arrive and go back to it as soon as they are empty, so an idle relay holds
none.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import Any, Callable

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress, IReadWriteDescriptor, ISystemHandle
from twisted.python.failure import Failure
from zope.interface import implementer

#: Whether this platform has the fast path (Linux, Python 3.10 or later).
AVAILABLE = sys.platform.startswith("linux") and hasattr(os, "splice")

if AVAILABLE:
    import fcntl

    _FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK

#: The capacity asked of each pipe: the most one splice moves in one call.
#: Bulk transfers cost less CPU with 1 MiB than with the kernel's default of
#: 64 KiB; its larger ring (about 10 KiB of kernel memory) is only held by
#: pipes in use or kept in the pool, never by an idle relay.
PIPE_SIZE = 1 << 20

#: How many empty pipes a pool keeps for reuse; more are closed.
POOL_KEEP = 32

# Errors of a non-blocking write that only mean "not now" (as Twisted's TCP transport treats them).
_WOULD_BLOCK = (errno.EAGAIN, errno.ENOBUFS)
# Why a connection ended, built once and shared as the reactor shares its
# own: building a Failure walks its exception's class hierarchy.
_DONE = Failure(ConnectionDone())
_LOST = Failure(ConnectionLost())


class PipePool:
    """
    Non-blocking pipes for splicing, created when first needed and kept,
    empty, for the next relay that has bytes to move.

    @ivar size: the capacity of its pipes, in bytes: C{PIPE_SIZE} when the
        kernel allows it, else the kernel's default.
    @ivar created: how many pipes it has opened in all.
    @ivar lent: how many pipes are out (acquired, neither released nor
        discarded yet).
    """

    def __init__(self, size: int = PIPE_SIZE, keep: int = POOL_KEEP) -> None:
        self.size = size
        self.created = 0
        self.lent = 0
        self._keep = keep
        self._free: list[tuple[int, int]] = []

    @property
    def free(self) -> int:
        """How many empty pipes wait in the pool."""
        return len(self._free)

    def acquire(self) -> tuple[int, int]:
        """An empty pipe, C{(read end, write end)}: a kept one, or a new one."""
        self.lent += 1
        if self._free:
            return self._free.pop()
        read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.created += 1
        try:
            fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, self.size)
        except OSError:
            # Over /proc/sys/fs/pipe-max-size or the user's pipe quota: use
            # what the kernel gives.
            self.size = fcntl.fcntl(write, fcntl.F_GETPIPE_SZ)
        return read, write

    def release(self, pipe: tuple[int, int]) -> None:
        """Take back an empty pipe (closed if the pool is full)."""
        if len(self._free) < self._keep:
            self.lent -= 1
            self._free.append(pipe)
        else:
            self.discard(pipe)

    def discard(self, pipe: tuple[int, int]) -> None:
        """Take back a pipe that may still hold bytes, and close it."""
        self.lent -= 1
        os.close(pipe[0])
        os.close(pipe[1])

    def close(self) -> None:
        """Close the pipes kept."""
        free, self._free = self._free, []
        for read, write in free:
            os.close(read)
            os.close(write)


#: The pool of the process's relays.
PIPES = PipePool()


@implementer(IReadWriteDescriptor, ISystemHandle)
class SplicedTransport:
    """
    One socket of a spliced relay: reads from it into the pipe of the other
    socket, writes to it from its own pipe, and offers its protocol the part
    of C{ITCPTransport} a relay uses.

    It is the reactor's reader and writer of the socket, and its peer's
    producer: when the peer cannot take a read at once, this transport stops
    reading until the peer's pipe is drained.
    """

    # Two per relay for as long as it lives: no instance dictionaries.
    __slots__ = (
        "_reactor",
        "_transport",
        "_protocol",
        "_socket",
        "_fd",
        "_pool",
        "_count",
        "_peer",
        "_producer",
        "_pipe",
        "_buffered",
        "_reading",
        "_writing",
        "_read_open",
        "_write_closing",
        "_closing",
        "_closed",
    )

    def __init__(self, reactor: Any, transport: Any, count: Callable[[int], None], pool: PipePool) -> None:
        """
        @param reactor: the reactor C{transport} runs on (an C{IReactorFDSet}
            and C{IReactorTime}).
        @param transport: a connected Twisted TCP transport that neither
            reads nor writes any more and holds no unsent bytes.
        @param count: called with the size of every read from the socket.
        @param pool: where pipes come from and go back to.
        """
        self._reactor: Any = reactor
        self._transport = transport
        self._protocol = transport.protocol
        self._socket: socket.socket = transport.getHandle()
        self._fd = self._socket.fileno()
        self._pool = pool
        self._count = count
        self._peer: SplicedTransport = self  # until splice() pairs them
        self._producer: SplicedTransport | None = None
        self._pipe: tuple[int, int] | None = None
        self._buffered = 0
        self._reading = False
        self._writing = False
        self._read_open = True
        self._write_closing = False
        self._closing = False
        self._closed = False

    # The transport, as the relay's protocol sees it

    def getPeer(self) -> IAddress:
        """The remote address."""
        return self._transport.getPeer()  # type: ignore[no-any-return]

    def getHost(self) -> IAddress:
        """The local address."""
        return self._transport.getHost()  # type: ignore[no-any-return]

    def getHandle(self) -> socket.socket:
        """The socket."""
        return self._socket

    def unregisterProducer(self) -> None:
        """Stop resuming the peer's reading once this transport's pipe is drained."""
        self._producer = None

    def loseWriteConnection(self) -> None:
        """Shut down the socket's write side once the pipe is drained; then tell the protocol."""
        if self._write_closing or self._closed:
            return
        self._write_closing = True
        if not self._buffered:
            self._shutdown_write()

    def loseConnection(self) -> None:
        """Stop reading; close the connection once the pipe is drained."""
        if self._closing or self._closed:
            return
        self._closing = True
        self._stop_reading()
        if not self._buffered:
            self._close(_DONE)

    def abortConnection(self) -> None:
        """Drop the pipe's bytes and reset the connection (the protocol hears of it a reactor turn later)."""
        if self._closed:
            return
        self._closed = True
        self._detach()
        self._transport.abortConnection()

    # The descriptor, as the reactor sees it

    def fileno(self) -> int:
        """The socket's file descriptor."""
        return self._fd

    def logPrefix(self) -> str:
        """The Twisted transport's log prefix."""
        return self._transport.logPrefix()  # type: ignore[no-any-return]

    def doRead(self) -> None:
        """
        Splice what the socket has into the peer's (empty) pipe and on to
        the peer's socket; again while a read fills the pipe and the peer
        takes it all.  Each read is counted; the end of input is passed to
        the protocol.
        """
        peer = self._peer
        pool = self._pool
        while not peer._closed:
            pipe = peer._pipe
            if pipe is None:
                pipe = peer._pipe = pool.acquire()
            try:
                moved = os.splice(self._fd, pipe[1], pool.size, flags=_FLAGS)
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
            self._count(moved)
            peer._buffered += moved
            if not peer._flush():
                self._stop_reading()
                return
            if moved < pool.size:
                return
        self._stop_reading()

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
        return True

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
            self._reactor.addReader(self)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._reactor.removeReader(self)

    def _start_writing(self) -> None:
        if not self._writing:
            self._writing = True
            self._reactor.addWriter(self)

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            self._reactor.removeWriter(self)

    # Endings

    def _end_of_input(self) -> None:
        """The peer shut down its write side: stop reading and tell the protocol."""
        self._read_open = False
        self._stop_reading()
        self._protocol.readConnectionLost()

    def _shutdown_write(self) -> None:
        try:
            self._socket.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already reset by the peer: Twisted ignores this too
        self._protocol.writeConnectionLost()

    def _detach(self) -> None:
        """Leave the reactor and give back (or, holding unsent bytes, close) the pipe."""
        self._stop_reading()
        self._stop_writing()
        pipe = self._pipe
        if pipe is not None:
            self._pipe = None
            if self._buffered:
                self._pool.discard(pipe)
            else:
                self._pool.release(pipe)
            self._buffered = 0

    def _close(self, reason: Failure) -> None:
        """Close the socket through the Twisted transport, which tells the protocol."""
        if self._closed:
            return
        self._closed = True
        self._detach()
        self._transport.connectionLost(reason)

    def _fail(self) -> None:
        """
        Reading or writing the socket failed: the connection is lost.  The
        protocol hears of it a reactor turn later, as from a Twisted
        transport, not in the middle of the peer's read.
        """
        if self._closed:
            return
        self._closed = True
        self._detach()
        self._reactor.callLater(0, self._transport.connectionLost, _LOST)


def can_splice(transport: Any) -> bool:
    """Whether L{splice} can take over C{transport}: a TCP connection without TLS, on a platform with the fast path."""
    return AVAILABLE and isinstance(transport, tcp.Connection) and not transport.TLS


def splice(
    reactor: Any,
    client: Any,
    backend: Any,
    count_tx: Callable[[int], None],
    count_rx: Callable[[int], None],
    pool: PipePool = PIPES,
) -> None:
    """
    Move the bytes between two connected TCP protocols with C{os.splice}
    from now on.

    Both Twisted transports stop reading and are replaced, as
    C{protocol.transport}, by a L{SplicedTransport} each; both start reading.

    @param reactor: the reactor both transports run on (an C{IReactorFDSet}
        and C{IReactorTime}).
    @param client: the protocol of the accepted connection, an
        C{IHalfCloseableProtocol}; its transport (see L{can_splice}) has
        been written nothing and has no producer.
    @param backend: the protocol of the connection to the backend, likewise.
    @param count_tx: called with the size of each read from the client.
    @param count_rx: called with the size of each read from the backend.
    @param pool: where the pipes come from.
    """
    ends = []
    for protocol, count in ((client, count_tx), (backend, count_rx)):
        transport = protocol.transport
        transport.stopReading()
        ends.append(SplicedTransport(reactor, transport, count, pool))
    from_client, from_backend = ends
    from_client._peer = from_client._producer = from_backend
    from_backend._peer = from_backend._producer = from_client
    client.transport, backend.transport = from_client, from_backend
    from_client._start_reading()
    from_backend._start_reading()
