"""
TCP ports for tests on 127.0.0.1: one that refuses connections for as long as
the test runs, and (only where a port must be written into a configuration
before anything can listen on it) one that was free a moment ago.
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import SynchronousTestCase


def refusing_port(test: SynchronousTestCase) -> int:
    """
    A TCP port on 127.0.0.1 that refuses every connection until C{test}
    ends: a socket of this process is bound to it, so no other process can
    take it, and does not listen.
    """
    held = socket.socket()
    test.addCleanup(held.close)
    held.bind(("127.0.0.1", 0))
    return int(held.getsockname()[1])


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick for
    port 0).  Racy: another process may take it before the test uses it.
    Only for ports a child process must listen on that it cannot report
    (listening on port 0 and reading the port from the log is better).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
