"""
L{PipePool}: the pipes through which a relay engine's sockets splice their
bytes (L{balancer.proxy.engine.splice}), made when first needed and kept,
empty, for the next relay that has bytes to move.  Each engine owns one.
"""

from __future__ import annotations

import errno
import os

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from balancer.proxy.engine.throttled import ThrottledWarning

if os.name == "posix":
    import fcntl

#: The capacity asked of each pipe: the most one splice moves in one call.
#: Bulk transfers cost less CPU with 1 MiB than with the kernel's default of
#: 64 KiB; its larger ring (about 10 KiB of kernel memory) is only held by
#: pipes in use or kept in the pool, never by an idle relay.
PIPE_SIZE = 1 << 20

#: How many empty pipes a pool keeps for reuse; more are closed.
POOL_KEEP = 32

# Errors of pipe2(2) that mean the process or the system is short of descriptors or memory.
_NO_PIPE = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)

log = Logger()


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
        self._no_pipe = ThrottledWarning(
            log, "no pipe for a relay ({error}): relays copy their bytes until pipes can be had again ({count} reads so far)"
        )

    @property
    def refused(self) -> int:
        """How many times no pipe could be had (out of descriptors or memory), so that a read copied its bytes instead."""
        return self._no_pipe.count

    @property
    def free(self) -> int:
        """How many empty pipes wait in the pool."""
        return len(self._free)

    def acquire(self) -> tuple[int, int]:
        """
        An empty pipe, C{(read end, write end)}: a kept one, or a new one.

        @raise OSError: if no pipe can be made (out of descriptors or memory).
        """
        if self._free:
            self.lent += 1
            return self._free.pop()
        read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.lent += 1
        self.created += 1
        try:
            fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, self.size)
        except OSError:
            # Over /proc/sys/fs/pipe-max-size or the user's pipe quota: use
            # what the kernel gives.
            self.size = fcntl.fcntl(write, fcntl.F_GETPIPE_SZ)
        return read, write

    def acquire_or_none(self, clock: IReactorTime) -> tuple[int, int] | None:
        """
        L{acquire}, or C{None} when the process or the system is out of
        descriptors or memory for a pipe: logged as a warning at most once a
        minute by C{clock}.
        """
        try:
            return self.acquire()
        except OSError as e:
            if e.errno not in _NO_PIPE:
                raise
            self._no_pipe.due(clock, error=e.strerror)
            return None

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

