"""
The type gate: mypy, with the repository's C{mypy.ini} (balancer, admin,
the plugin and tests/support; mypy-zope for the interfaces), finds no
error.  It runs with the suite, so the README's test command and CI run it.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.support.paths import ROOT


class TypeGateTests(TestCase):
    """mypy over the code, as configured in C{mypy.ini}."""

    timeout = 600

    def setUp(self) -> None:
        if importlib.util.find_spec("mypy") is None or importlib.util.find_spec("mypy_zope") is None:
            if os.environ.get("CI") == "true":
                self.fail("mypy and mypy-zope are missing: pip install '.[test]'")
            self.skipTest("mypy and mypy-zope are not installed (pip install '.[test]')")

    def test_mypyFindsNoError(self) -> None:
        run: Deferred[tuple[bytes, bytes, int]] = getProcessOutputAndValue(
            sys.executable, ["-m", "mypy", "--no-error-summary"], env=dict(os.environ), path=ROOT, reactor=reactor)

        def checked(result: tuple[bytes, bytes, int]) -> None:
            out, err, code = result
            self.assertEqual(code, 0, (out + err).decode("utf-8", "replace"))

        return run.addCallback(checked)
