"""
System tools some tests need (installed outside pip, e.g. C{pebble}):
L{require_tool} skips a test with a one-line reason where the tool is
missing, except with C{CI=true} in the environment, where that fails it.
"""

from __future__ import annotations

import os
import shutil

from twisted.trial.unittest import SkipTest


def require_tool(name: str) -> str:
    """
    The path of the executable C{name} on C{PATH}.

    @raise SkipTest: when it is missing (C{apt-get install NAME} gives it on Debian).
    @raise RuntimeError: instead, when C{CI=true}: there every tool must be installed.
    """
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"needs the {name} tool (apt-get install {name}), which is not on PATH"
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"{reason}; with CI=true a missing tool is a failure")
    raise SkipTest(reason)
