"""
Tests for C{bench/message_cost.py}: the work per request and answer on a
kept-alive connection through the relay engine, counted in a real run
(balancer in the probe's process, real backend and client processes).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from balancer.proxy.engine import splice
from tests.support.paths import ROOT

PROBE = str(Path(ROOT) / "bench" / "message_cost.py")


class MessageCostTests(SynchronousTestCase):
    def test_profileCountsCallsPerMessageOverKeptConnections(self) -> None:
        """
        A short run prints the Python calls per message, over connections
        made before it (the probe checks every answer and that no other
        connection was made).
        """
        if not splice.AVAILABLE:
            self.skipTest("no relay engine on this platform")
        done = subprocess.run(
            [sys.executable, PROBE, "--messages", "300", "--warmup", "30", "--connections", "3", "--profile", "--top", "5"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("messages: 300 over 3 connections", done.stdout)
        calls = [line for line in done.stdout.splitlines() if line.startswith("python calls per message")]
        self.assertEqual(len(calls), 1, done.stdout)
        self.assertGreater(float(calls[0].split(":")[1]), 0)
