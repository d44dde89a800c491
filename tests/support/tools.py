"""
System tools some tests need (installed outside pip, e.g. C{pebble}):
L{require_tool} skips a test with a one-line reason where the tool is
missing, except with C{CI=true} in the environment, where that fails it.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

from twisted.trial.unittest import FailTest, SkipTest


def unavailable(reason: str) -> NoReturn:
    """
    A test cannot run here, for C{reason} (one line): skip it, or fail it
    with C{CI=true}, where everything a test needs must be installed.
    """
    if os.environ.get("CI") == "true":
        raise FailTest(f"{reason}; with CI=true that is a failure")
    raise SkipTest(reason)


def require_tool(name: str, package: str | None = None) -> str:
    """
    The path of the executable C{name} on C{PATH}.

    @param package: the Debian package that has it, when not C{name}.
    @raise SkipTest: when it is missing (C{apt-get install PACKAGE} gives it on Debian).
    @raise FailTest: instead, when C{CI=true} (see L{unavailable}).
    """
    path = shutil.which(name)
    if path is not None:
        return path
    unavailable(f"needs the {name} tool (apt-get install {package or name}), which is not on PATH")
