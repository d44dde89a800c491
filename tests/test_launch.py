"""How a failed start ends: SystemExit(1) in the foreground, StartFailed (twistd's report to its daemon parent) as a daemon."""

from __future__ import annotations

import io
import os
import sys

from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from balancer.launch import LaunchTerminal, StartFailed


class LaunchTerminalTests(SynchronousTestCase):
    """L{LaunchTerminal.fail} and L{LaunchTerminal.close}."""

    def pipe_as_stderr(self) -> int:
        """Make C{sys.__stderr__} the write end of a new pipe; returns its read end."""
        read, write = os.pipe()
        stream = os.fdopen(write, "w")
        self.addCleanup(stream.close)
        self.addCleanup(os.close, read)
        self.patch(sys, "__stderr__", stream)
        return read

    def test_foregroundPrintsAndExits1(self) -> None:
        stream = io.StringIO()
        self.patch(sys, "__stderr__", stream)
        with self.assertRaises(SystemExit) as caught:
            LaunchTerminal(daemon=False).fail('server "web": cannot listen on 127.0.0.1:1: taken')
        self.assertEqual(caught.exception.code, 1)
        self.assertEqual(stream.getvalue(), 'balancer: server "web": cannot listen on 127.0.0.1:1: taken\n')

    def test_daemonWritesToTheStarterLogsAndRaisesAnException(self) -> None:
        """An Exception, not SystemExit: twistd reports only Exceptions through its status pipe."""
        read = self.pipe_as_stderr()
        terminal = LaunchTerminal(daemon=True)
        with capturedLogs() as events, self.assertRaises(StartFailed) as caught:
            terminal.fail("api: cannot listen on 127.0.0.1:1: taken")
        self.assertEqual(str(caught.exception), "api: cannot listen on 127.0.0.1:1: taken")
        self.assertTrue(caught.exception.__suppress_context__)
        self.assertEqual(os.read(read, 1000), b"balancer: api: cannot listen on 127.0.0.1:1: taken\n")
        self.assertEqual([(e["log_level"], e["reason"]) for e in events],
                         [(LogLevel.critical, "api: cannot listen on 127.0.0.1:1: taken")])

    def test_closeLetsGoOfTheStartersStderr(self) -> None:
        """Once the start succeeded, the daemon holds no copy of its starter's stderr: the pipe's reader sees its end."""
        read = self.pipe_as_stderr()
        terminal = LaunchTerminal(daemon=True)
        terminal.close()
        terminal.close()
        sys.__stderr__.close()  # type: ignore[union-attr]
        self.assertEqual(os.read(read, 10), b"")
