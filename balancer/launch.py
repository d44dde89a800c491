"""
How a failed start ends the process, in the foreground and as a daemon.

In the foreground (C{twistd -n}) a start failure is one line on stderr and
exit status 1.  As a daemon, twistd's parent process waits for its
daemonised child to report through a status pipe, and only an C{Exception}
raised while the application starts is reported there: a C{SystemExit}
leaves the parent waiting for ever and the pidfile behind.  So a daemon
prints the whole message on the stderr of the command that started it
(kept open across daemonisation for that purpose) and raises
L{StartFailed}, which twistd turns into exit status 1 of its parent and the
removal of the pidfile.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from twisted.logger import Logger

log = Logger()


class StartFailed(Exception):
    """The balancer could not start; the message says why (it names the server and the address or file)."""


class LaunchTerminal:
    """
    Where a start failure is told: the stderr of the command that ran twistd.

    As a daemon, twistd points the daemonised process's stderr at
    C{/dev/null}; this keeps a duplicate of the original stderr, made
    before twistd daemonises, until the start has succeeded or failed.

    @param daemon: C{True} when twistd runs without C{-n}.
    """

    def __init__(self, daemon: bool) -> None:
        self._daemon = daemon
        self._fd: int | None = None
        if daemon and sys.__stderr__ is not None:
            try:
                self._fd = os.dup(sys.__stderr__.fileno())
            except (OSError, ValueError):
                pass  # started with stderr closed: twistd's own report to its parent is all there is

    def fail(self, message: str) -> NoReturn:
        """
        End the start: in the foreground print C{balancer: MESSAGE} and exit
        with status 1; as a daemon print it where twistd was started, log
        it, and raise L{StartFailed} for twistd to report to its parent.
        """
        line = f"balancer: {message}\n"
        if not self._daemon:
            if sys.__stderr__ is not None:
                sys.__stderr__.write(line)
                sys.__stderr__.flush()
            raise SystemExit(1)
        log.critical("start failed: {reason}", reason=message)
        if self._fd is not None:
            os.write(self._fd, line.encode("utf-8", "backslashreplace"))
        self.close()
        raise StartFailed(message) from None

    def close(self) -> None:
        """Let go of the original stderr (the start is over), so a daemon does not hold its starter's terminal or pipe."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
