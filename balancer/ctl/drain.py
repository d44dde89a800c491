"""
C{drain server ID --wait}: poll the server's live connections and show
them going, with C{rich}'s progress display (on stderr), until none is
left or the time is up.
"""

from __future__ import annotations

import re
import time
from typing import Callable

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

#: How often the connections are read, in seconds.
POLL = 0.2

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}


def parse_duration(text: str) -> float:
    """
    Seconds in C{text}: a number with C{ms}, C{s}, C{m} or C{h} (seconds if none).

    @raise click.BadParameter: for anything else (a usage error).
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|)\s*", text)
    if match is None:
        raise click.BadParameter(f'"{text}": expected a duration like 60s, 2m, 500ms', param_hint="--timeout")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wait(connections: Callable[[], int], timeout: float, title: str, *, console: Console | None = None,
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> int:
    """
    Read C{connections()} every L{POLL} seconds, showing how many are left
    on C{console} (by default stderr), until none is or C{timeout} seconds
    have passed (by C{clock}); returns the number left.
    """
    deadline = clock() + timeout
    left = connections()
    start = max(left, 1)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[left]} left"),
               TimeElapsedColumn())
    with Progress(*columns, console=console or Console(stderr=True), transient=False) as progress:
        task = progress.add_task(title, total=start, completed=start - left, left=left)
        while left and clock() < deadline:
            sleep(min(POLL, max(0.0, deadline - clock())))
            left = connections()
            start = max(start, left)
            progress.update(task, total=start, completed=start - left, left=left)
    return left
