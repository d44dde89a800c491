"""
The engine of plain TCP relays (docs/DESIGN.md §4): an edge-triggered epoll set of
their sockets, nested in the reactor.

Twisted's epoll reactor watches a socket level-triggered and changes its
registration each time a transport starts or stops reading or writing, and
it wraps every event in its logging context.  For a relay that lives for
one request and one answer those costs outweigh the relaying itself.  The
engine watches each of its sockets once, edge-triggered, for reading, and
from its first writer on for writing too: starting or stopping to read or
write is then only a change to a dictionary, and a socket costs one
C{epoll_ctl} in its life, or two if it ever had to wait to write.  A socket
that is only read (as most clients' are: their answers fit in the kernel's
buffers) brings no writable events to dispatch.

The engine's own epoll file descriptor is one reader of the reactor: when
any of its sockets has an event, the reactor calls L{Engine.doRead}, which
takes the events and dispatches them to the descriptors (L{IReadDescriptor}
and L{IWriteDescriptor} providers with a C{fileno}) added with
L{Engine.addReader} and L{Engine.addWriter}, as a reactor would.  Everything
runs in the reactor's thread.

Edge-triggered events come once per change, so an event nobody wanted when
it came is remembered, and a descriptor added later for it is called at
once (soon after, in the same turn of the reactor) instead of waiting for
an edge that may never come.  A descriptor that stops reading may have left
bytes unread, so that counts as a remembered event too; a call that finds
nothing to read costs one system call.  For the same reason a reader reads
until the socket says it has nothing more (C{EAGAIN}) or its end: a short
read is not proof of that, and the end of the input may have come with the
same edge as the bytes before it.  A reader that stops before then, to let
the others have their turn, asks to be called again with L{Engine.read_again}.

A reader that reads with C{recv} may stop sooner: a C{recv} that gives
fewer bytes than it asked for has taken all the kernel held at that moment,
and whatever comes later (bytes, the end, an error) is a new edge.  Only an
end or an error that came with the edge being dispatched is left to read:
the engine tells its reader of those in L{Engine.ending}.  (A C{splice}
gives no such proof: it also stops when the pipe is full.)

Listening sockets are watched level-triggered: the engine accepts a bounded
number of clients per event and the rest come with the next one.

The loop that takes the events and calls the descriptors runs compiled
where the package was installed with a C compiler at hand (the optional
extension C{balancer_cdispatch}, from C{cdispatch.c} beside this module;
see L{balancer.proxy.compiled}):
it calls every descriptor as the Python loop of L{Engine.doRead} does, and
for a plain relay socket (a L{SplicedTransport<splice.SplicedTransport>})
whose direction copies it does the read and the write to the peer itself,
calling the transport's Python methods only for the rest (counting, a peer
that cannot take the bytes at once, the end, a failure).  C{BALANCER_COMPILED=0}
in the environment turns it off.
"""

from __future__ import annotations

import gc
import select
from collections import deque
from typing import Any, Callable

from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from balancer.proxy.compiled import compiled
from balancer.proxy.engine import splice
from balancer.proxy.engine.deadlines import Deadlines
from balancer.proxy.engine.pipes import PipePool

log = Logger()

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
# PyPy 3.9 lacks the name of EPOLLRDHUP (Linux 2.6.17+).
_RDHUP = getattr(select, "EPOLLRDHUP", 0x2000)
_ENDS = _RDHUP | select.EPOLLHUP | select.EPOLLERR
_READABLE = _IN | _ENDS
_WRITABLE = _OUT | select.EPOLLHUP | select.EPOLLERR
# A stream socket: edge-triggered, for reading and its end; and, once it had a writer, for writing.
_READING = _IN | _RDHUP | select.EPOLLET
_STREAM = _READING | _OUT
# A flag kept with a watched socket's unseen events: it is watched for writing (EPOLLOUT) too.
_OUT_WATCHED = 1 << 24

#: The most events taken from the kernel per call of L{Engine.doRead}.
MAX_EVENTS = 1024

#: The first threshold of the cyclic garbage collector in a process with an engine (L{collect_less_often}).
GC_THRESHOLD = 10000


#: The compiled dispatch loop new engines use (L{balancer.proxy.compiled}), or C{None}:
#: they run L{Engine.doRead}'s loop in Python.
compiled_dispatch: Callable[..., None] | None = compiled.dispatch if compiled is not None else None


@implementer(IReadDescriptor)
class Engine:
    """
    An edge-triggered epoll set of sockets, nested in a reactor as one of its
    readers, with the reactor's C{IReactorFDSet} methods for the
    descriptors of those sockets and its C{callLater}.

    The engine is a reader of the reactor only while it watches a socket.
    Whoever makes it closes it (L{close}) when done with it.

    @ivar deadlines: coarse timeouts on the reactor's clock, for connects.
    @ivar pipes: the pipes its sockets splice through.
    @ivar ending: while a descriptor is called, the end and error bits
        (C{EPOLLRDHUP}, C{EPOLLHUP}, C{EPOLLERR}) of the event it is called
        for; all of them when that is not known (a remembered event, or a
        call from outside the engine).  With none, a read that finds fewer
        bytes than it asked for has emptied the socket (see the module's
        docstring), and a socket writable after a connect is connected.
    """

    def __init__(self, reactor: Any, pipes: PipePool | None = None) -> None:
        """
        @param reactor: the reactor to nest in (an C{IReactorFDSet} and
            C{IReactorTime} polling file descriptors).
        @param pipes: the pool of its pipes (by default, a new one).
        """
        self.reactor = reactor
        self.deadlines = Deadlines(reactor)
        self.pipes = pipes if pipes is not None else PipePool()
        self._epoll = select.epoll()
        self._epoll_fd = self._epoll.fileno()
        self._compiled = compiled_dispatch
        self._readers: dict[int, Any] = {}
        self._writers: dict[int, Any] = {}
        # Watched file descriptors and the events they had that nobody took yet.
        self._unseen: dict[int, int] = {}
        # Descriptors to call soon for an event they were added too late to get.
        self._soon: deque[tuple[Any, int]] = deque()
        self._soon_call: Any = None
        # File descriptors closed while dispatching: later events of the same batch are theirs, not a new socket's.
        self._gone: set[int] = set()
        self._dispatching = False
        self._nested = False
        self.ending = _ENDS

    # The reactor's interface, for the engine's descriptors

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """The reactor's C{callLater}."""
        return self.reactor.callLater(delay, f, *args, **kwargs)

    def addReader(self, reader: Any) -> None:
        """Call C{reader.doRead} when its socket has bytes, an end or an error."""
        self.add_reader(reader.fileno(), reader)

    def addWriter(self, writer: Any) -> None:
        """Call C{writer.doWrite} when its socket takes bytes again (or fails)."""
        self.add_writer(writer.fileno(), writer)

    def removeReader(self, reader: Any) -> None:
        """Stop calling C{reader.doRead}; bytes may be left, so a later L{addReader} reads at once."""
        self.remove_reader(reader.fileno(), reader)

    def removeWriter(self, writer: Any) -> None:
        """Stop calling C{writer.doWrite}."""
        self.remove_writer(writer.fileno(), writer)

    # The same, for a descriptor that knows its file descriptor (one call less)

    def add_reader(self, fd: int, reader: Any) -> None:
        """L{addReader} of C{reader}, whose file descriptor is C{fd}."""
        self._readers[fd] = reader
        unseen = self._unseen.get(fd)
        if unseen is None:
            # As _watch(fd, _READING), inlined: once for each client.
            self._epoll.register(fd, _READING)
            self._unseen[fd] = 0
            if not self._nested:
                self._nested = True
                self.reactor.addReader(self)
        elif unseen & _IN:
            self._call_soon(reader, _IN)

    def add_writer(self, fd: int, writer: Any) -> None:
        """L{addWriter} of C{writer}, whose file descriptor is C{fd}."""
        self._writers[fd] = writer
        unseen = self._unseen.get(fd)
        if unseen is None:
            self._watch(fd, _STREAM, _OUT_WATCHED)
        elif not unseen & _OUT_WATCHED:
            # Watched for reading only until now: whether it is writable is
            # not known, so the writer is called soon, as for a missed edge.
            self._epoll.modify(fd, _STREAM)
            self._unseen[fd] = unseen | _OUT_WATCHED | _OUT
            self._call_soon(writer, _OUT)
        elif unseen & _OUT:
            self._call_soon(writer, _OUT)

    def remove_reader(self, fd: int, reader: Any) -> None:
        """L{removeReader} of C{reader}, whose file descriptor is C{fd}."""
        if self._readers.pop(fd, None) is not None and fd in self._unseen:
            self._unseen[fd] |= _IN

    def remove_writer(self, fd: int, writer: Any) -> None:
        """L{removeWriter} of C{writer}, whose file descriptor is C{fd}."""
        if self._writers.pop(fd, None) is not None and fd in self._unseen:
            self._unseen[fd] |= _OUT

    def read_again(self, reader: Any) -> None:
        """
        Call C{reader.doRead} again soon, after the descriptors waiting now:
        it stopped reading a socket that may have more.
        """
        fd = reader.fileno()
        if self._readers.get(fd) is reader and fd in self._unseen:
            self._unseen[fd] |= _IN
            self._call_soon(reader, _IN)

    def listen(self, listener: Any) -> None:
        """Watch a listening socket, level-triggered: C{listener.doRead} is called while clients wait."""
        fd = listener.fileno()
        self._readers[fd] = listener
        if fd not in self._unseen:
            self._watch(fd, _IN)

    def unlisten(self, listener: Any) -> None:
        """Stop watching a listening socket that stays open (until L{listen} again)."""
        fd = listener.fileno()
        if fd in self._unseen:
            self._epoll.unregister(fd)
            self.forget(fd)

    def forget(self, fd: int) -> None:
        """
        Stop watching C{fd}, which its owner closes right after: the kernel
        drops a closed socket from the epoll set, and the engine drops its
        descriptors and any event of it still to dispatch.
        """
        self._readers.pop(fd, None)
        self._writers.pop(fd, None)
        if self._unseen.pop(fd, None) is not None:
            if self._dispatching:
                self._gone.add(fd)
            if not self._unseen:
                self._unnest()

    def getReaders(self) -> list[Any]:
        """The descriptors called when their socket is readable (as C{IReactorFDSet.getReaders})."""
        return list(self._readers.values())

    def getWriters(self) -> list[Any]:
        """The descriptors called when their socket is writable (as C{IReactorFDSet.getWriters})."""
        return list(self._writers.values())

    @property
    def watched(self) -> int:
        """How many sockets the engine watches."""
        return len(self._unseen)

    # The engine, as the reactor sees it

    def fileno(self) -> int:
        """The epoll set's file descriptor."""
        return self._epoll.fileno()

    def logPrefix(self) -> str:
        """How the reactor names the engine in its log."""
        return "balancer.engine"

    def doRead(self) -> None:
        """
        The epoll set has events: dispatch them, then call the descriptors
        added since for events they had missed.

        The dispatch runs compiled where the extension is built
        (L{compiled_dispatch}, which copies for a plain relay socket in C),
        else in Python (L{_dispatch_in_python}); both call the descriptors alike.
        """
        gone = self._gone
        gone.clear()
        self._dispatching = True
        try:
            if self._compiled is not None:
                self._compiled(self, self._epoll_fd, self._readers, self._writers, self._unseen, gone,
                               splice.SplicedTransport)
            else:
                self._dispatch_in_python()
            self.ending = _ENDS
            if self._soon:
                self._run_soon()
        finally:
            self._dispatching = False
            self.ending = _ENDS
            gone.clear()

    def _dispatch_in_python(self) -> None:
        """The events of one poll, each to its descriptors: the compiled C{dispatch}'s loop, in Python."""
        readers, writers, unseen, gone = self._readers, self._writers, self._unseen, self._gone
        for fd, events in self._epoll.poll(0, MAX_EVENTS):
            if fd in gone:
                continue
            # For the calls of this event (no descriptor calls another's doRead or doWrite).
            self.ending = events & _ENDS
            try:
                if events & _READABLE:
                    descriptor = readers.get(fd)
                    if descriptor is None:
                        if fd in unseen:
                            unseen[fd] |= _IN
                    else:
                        descriptor.doRead()
                        if fd in gone:
                            continue
                if events & _WRITABLE:
                    descriptor = writers.get(fd)
                    if descriptor is None:
                        if fd in unseen:
                            unseen[fd] |= _OUT
                    else:
                        descriptor.doWrite()
            except Exception:
                self._failed(descriptor)

    def connectionLost(self, reason: Failure) -> None:
        """The reactor stopped watching the engine (it is shutting down)."""
        self._nested = False

    def close(self) -> None:
        """
        Leave the reactor, and close the epoll set and the pipes kept: the
        engine is done (its sockets are closed; it watches only what was
        left to it).
        """
        if self._soon_call is not None and self._soon_call.active():
            self._soon_call.cancel()
        self._soon_call = None
        self._soon.clear()
        self._readers.clear()
        self._writers.clear()
        self._unseen.clear()
        self._unnest()
        self._epoll.close()
        self.pipes.close()

    # Inside

    def _failed(self, descriptor: Any) -> None:
        """
        C{descriptor} raised: log it, and it loses its connection (with the
        ending of the event it was called for unknown again).  Nothing
        raised here leaves the engine, which would make the reactor drop it
        and with it every relay.
        """
        self.ending = _ENDS
        failure = Failure()
        log.failure("{descriptor} failed", failure, descriptor=descriptor)
        self.forget(descriptor.fileno())
        try:
            descriptor.connectionLost(failure)
        except Exception:
            log.failure("{descriptor} failed to close", descriptor=descriptor)

    def _watch(self, fd: int, events: int, flags: int = 0) -> None:
        self._epoll.register(fd, events)
        self._unseen[fd] = flags
        if not self._nested:
            self._nested = True
            self.reactor.addReader(self)

    def _unnest(self) -> None:
        """Watching nothing: leave the reactor (and so no timer of a connect is left either)."""
        if self._nested:
            self._nested = False
            self.reactor.removeReader(self)
        self.deadlines.stop_if_idle()

    def _call_soon(self, descriptor: Any, event: int) -> None:
        self._soon.append((descriptor, event))
        if not self._dispatching and self._soon_call is None:
            self._soon_call = self.reactor.callLater(0, self._run_soon_now)

    def _run_soon_now(self) -> None:
        """L{_run_soon} outside of L{doRead}: descriptors were added from a timer or an API call, or read again."""
        self._soon_call = None
        self._dispatching = True
        try:
            self._run_soon()
        finally:
            self._dispatching = False
            self._gone.clear()

    def _run_soon(self) -> None:
        """
        Call each descriptor queued by L{_call_soon} whose event is still
        unseen and wanted.  Those queued meanwhile (a reader that asked to
        read again) are called in a later turn of the reactor, after the
        others' events.
        """
        soon, unseen = self._soon, self._unseen
        for _ in range(len(soon)):
            descriptor, event = soon.popleft()
            fd = descriptor.fileno()
            wanted = self._readers if event == _IN else self._writers
            if fd in wanted and wanted[fd] is descriptor and unseen.get(fd, 0) & event:
                unseen[fd] &= ~event
                try:
                    if event == _IN:
                        descriptor.doRead()
                    else:
                        descriptor.doWrite()
                except Exception:
                    self._failed(descriptor)
        if soon and self._soon_call is None:
            self._soon_call = self.reactor.callLater(0, self._run_soon_now)


def make_engine(reactor: Any) -> Engine | None:
    """
    A new engine nested in C{reactor}; C{None} where there can be none:
    without C{os.splice} and epoll (not Linux), or for a reactor that does
    not poll file descriptors (a test's memory reactor).

    With an engine, the process's cyclic garbage collector runs its
    youngest generation less often (L{collect_less_often}).
    """
    if not (splice.AVAILABLE and isinstance(reactor, PosixReactorBase)):
        return None
    collect_less_often()
    return Engine(reactor)


def collect_less_often() -> None:
    """
    Raise the first threshold of Python's cyclic garbage collector to
    L{GC_THRESHOLD} (never lower it).

    A relay's objects are freed by reference counting when it ends (it
    breaks its reference cycles then), but while it lives they count as
    new objects: at Python's default threshold (700) the youngest
    generation is walked every few dozen new concurrent connections, each
    time with the live relays' objects, which it then promotes and walks
    again in the older generations.  Ten thousand lets most relays end
    before they are walked.
    """
    first, second, third = gc.get_threshold()
    if first < GC_THRESHOLD:
        gc.set_threshold(GC_THRESHOLD, second, third)
