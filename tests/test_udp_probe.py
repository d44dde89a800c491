"""
Tests for C{bench/udp_probe.py --cost}: what one UDP session costs the
balancer, counted on the balancer alone (real echo and balancer processes).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.paths import ROOT

BENCH = str(Path(ROOT) / "bench")
if BENCH not in sys.path:
    # The bench modules import one another by their plain names, as when run as scripts.
    sys.path.insert(0, BENCH)

import udp_probe  # noqa: E402

STRACE_SUMMARY = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 41.20    0.412000          10     40000           sendto
 30.00    0.300000           7     40600       600 recvfrom
  1.00    0.010000           5      2400           epoll_wait
------ ----------- ----------- --------- --------- ----------------
100.00    1.000000          12     83000       600 total
"""


class StraceSummaryTests(SynchronousTestCase):
    def test_callsReadBySystemCallWithoutTheTotal(self) -> None:
        path = Path(self.mktemp())
        path.write_text(STRACE_SUMMARY)
        self.assertEqual(udp_probe.strace_counts(path), {"sendto": 40000, "recvfrom": 40600, "epoll_wait": 2400})


class CostTests(SynchronousTestCase):
    def test_pythonCallsPerSession(self) -> None:
        """Each session is one datagram received by the proxy, counted once per session (start-up left out)."""
        result = subprocess.run(
            [sys.executable, str(Path(BENCH) / "udp_probe.py"), "--cost", "cprofile", "--sessions", "400",
             "--clients", "4", "--json"],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        balancer = json.loads(result.stdout)["balancer"]
        received = [n for f, n in balancer["by_function"].items() if f.endswith("(datagramReceived)") and "proxy/udp.py" in f]
        self.assertEqual(len(received), 1, balancer["by_function"])
        # Trial's assertAlmostEqual takes a delta but ignores it: compare by hand.
        self.assertLessEqual(abs(received[0] - 1.0), 0.05, received[0])
        self.assertTrue(20 < balancer["per_session"] < 200, balancer["per_session"])
