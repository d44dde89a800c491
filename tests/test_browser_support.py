"""
L{tests.support.browser.require}: the browser tests skip with a one-line
reason where Chromium or Playwright is missing, and fail under C{CI=true}.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.support import browser


class RequireTests(SynchronousTestCase):
    """What L{browser.require} does without Chromium."""

    def setUp(self) -> None:
        self.patch(browser, "CHROMIUM", os.path.join(self.mktemp(), "chromium"))

    def test_skipsWithTheReason(self) -> None:
        """Outside CI: a skip naming the missing executable and how to get it."""
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "CI"})
        skipped = self.assertRaises(SkipTest, browser.require)
        self.assertIn("no Chromium at", str(skipped))
        self.assertIn("apt-get install chromium", str(skipped))
        self.assertNotIn("\n", str(skipped))

    def test_failsUnderCI(self) -> None:
        """Under C{CI=true}: a failure saying why the browser tests cannot run."""
        self.patch(os, "environ", {**os.environ, "CI": "true"})
        failed = self.assertRaises(self.failureException, browser.require)
        self.assertIn("the browser tests cannot run: no Chromium at", str(failed))
        self.assertIn("with CI=true that is a failure", str(failed))
