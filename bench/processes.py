"""The child processes of the benchmarks: reading their output without blocking, and stopping them."""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
from typing import Any


def read_lines(stream: Any) -> queue.Queue[str]:
    """A queue that a daemon thread fills with the lines of C{stream} (a child's output) as they come."""
    lines: queue.Queue[str] = queue.Queue()

    def forward() -> None:
        for line in iter(stream.readline, ""):
            lines.put(line)

    threading.Thread(target=forward, daemon=True).start()
    return lines


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM the process we started, then SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
