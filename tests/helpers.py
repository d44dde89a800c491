"""Helpers shared by the tests: fixture paths and small builders."""

from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
ROOT = os.path.dirname(HERE)


def fixture(*parts: str) -> str:
    """The path of a file under C{tests/fixtures}."""
    return os.path.join(FIXTURES, *parts)
