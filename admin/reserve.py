"""
A spare descriptor for the API's listening socket, so the API still answers
when the process is out of descriptors (as HAProxy and nginx-style servers
do): when C{accept} fails with C{EMFILE} (or C{ENFILE}), the spare is closed,
the waiting connection accepted in its place, answered 503 with the JSON
error, and closed, and the spare opened again.

Twisted keeps a reserve of its own (one for the whole process), but closes
such clients without a word; the API's listening socket is wrapped in
L{ReservedListener} so the API's own connections get an answer instead.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from admin.answers import error_answer, target_of

log = Logger()

#: The most waiting connections answered in one go, before the reactor gets its turn.
REFUSALS_PER_CALL = 64

#: What an answered connection is told.
DETAIL = "the balancer is out of file descriptors: try again later"

_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


class DescriptorReserve:
    """One descriptor held open (C{os.devnull}, read-only) to be given up when there is no other."""

    def __init__(self) -> None:
        self._descriptor: int | None = None
        self.restore()

    @property
    def held(self) -> bool:
        """Whether the spare descriptor is open."""
        return self._descriptor is not None

    def restore(self) -> bool:
        """Open the spare again, if it is not open; C{False} when that fails (descriptors are still short)."""
        if self._descriptor is None:
            try:
                self._descriptor = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
        return True

    def release(self) -> None:
        """Close the spare, freeing one descriptor."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


class ReservedListener:
    """
    A listening socket whose C{accept}, out of descriptors, answers the
    waiting connections with the reserve (see the module) and then reports
    that none is left (C{EAGAIN}), so Twisted's port waits for the next one.
    Everything else is the wrapped socket's.

    @ivar refused: connections answered 503 (or closed, over TLS) since descriptors last ran out.
    """

    def __init__(self, listener: Any, reserve: DescriptorReserve, answer: bool = True) -> None:
        """
        @param listener: the listening socket.
        @param answer: write the 503 (plain HTTP); C{False} closes at once (over TLS, where an
            answer needs a handshake the spare descriptor cannot wait for).
        """
        self._listener = listener
        self._reserve = reserve
        self._answer = answer
        self.refused = 0

    def accept(self) -> tuple[socket.socket, Any]:
        """Accept a connection; out of descriptors, answer those waiting and raise C{EAGAIN}."""
        for _ in range(REFUSALS_PER_CALL):
            try:
                accepted = self._listener.accept()
            except OSError as e:
                if e.errno not in _OUT_OF_DESCRIPTORS or not self._reserve.held:
                    raise
                if not self._refuse_one():
                    raise BlockingIOError(errno.EAGAIN, "no connection left to answer") from e
                continue
            self._recovered()
            return accepted
        raise BlockingIOError(errno.EAGAIN, "answered enough for now")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._listener, name)

    def _refuse_one(self) -> bool:
        """Accept one connection on the spare descriptor, answer it and close it; C{False} if none was waiting."""
        self._reserve.release()
        try:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return False
            with client:
                if self._answer:
                    _answer(client)
        finally:
            self._reserve.restore()
        if not self.refused:
            log.warn("api: out of file descriptors: new API connections are {what}",
                     what="answered 503 and closed" if self._answer else "closed")
        self.refused += 1
        return True

    def _recovered(self) -> None:
        self._reserve.restore()
        if self.refused:
            log.info("api: accepting again; {count} connections were refused while out of file descriptors",
                     count=self.refused)
            self.refused = 0


def _answer(client: socket.socket) -> None:
    """Read what the client sent so far (so closing does not reset the answer away), answer 503."""
    client.setblocking(False)
    received = b""
    try:
        while len(received) < 65536:
            data = client.recv(65536)
            if not data:
                break
            received += data
    except OSError:
        pass
    target = target_of(received.split(b"\r\n", 1)[0])
    try:
        client.send(error_answer(503, DETAIL, target, (b"Retry-After: 1",)))
        client.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def keep_reserve(port: IListeningPort, answer: bool = True) -> None:
    """
    Give C{port}'s listening socket a L{DescriptorReserve}.

    A port of Twisted's TCP reactor accepts through its C{socket} attribute,
    and no public hook sees an C{accept} that failed, so that socket is
    wrapped.  Ports of other reactors (the fakes of unit tests) are left as
    they are.

    @param answer: see L{ReservedListener}.
    """
    if isinstance(port, tcp.Port):
        port.socket = ReservedListener(port.socket, DescriptorReserve(), answer)
