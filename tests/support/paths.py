"""Paths for tests: the checkout's root and the fixture files."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

#: The root of this checkout.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: The fixture files, C{tests/fixtures}.
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def fixture(*parts: str) -> str:
    """The path of a file under C{tests/fixtures}."""
    return os.path.join(FIXTURES, *parts)


def scratch_directory(test: SynchronousTestCase) -> str:
    """A new empty directory of C{test}'s own (under its temporary directory); its absolute path."""
    path = os.path.abspath(test.mktemp())
    os.makedirs(path)
    return path
