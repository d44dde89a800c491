"""
How long a reload takes: start this checkout's balancer with N servers
(static backends, no traffic), rewrite its configuration file (10 servers
removed, half of the others changed in place, 10 added), send SIGHUP and
time it until the reload's log line.  Run by hand:

    python bench/reload.py [N ...]        # default: 100 500

Only 127.0.0.1, only the process it starts (stopped by pid), bounded waits.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def write(path: str, servers: list[tuple[str, str]]) -> None:
    """A configuration of C{servers} (name, balance) on port 0, each with one static backend."""
    with open(path, "w", encoding="utf-8") as f:
        f.write('[api]\nenabled = true\nbind = "127.0.0.1:0"\n')
        for name, balance in servers:
            f.write(f'[servers.{name}]\nbind = "127.0.0.1:0"\nbalance = "{balance}"\n'
                    f'[servers.{name}.discovery]\nkind = "static"\nstatic_list = ["127.0.0.1:9"]\n')


class Output:
    """The process's output so far, and waits for a pattern in it."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.text = b""

    def wait(self, pattern: bytes, seconds: float = 60) -> re.Match[bytes]:
        end = time.monotonic() + seconds
        assert self.process.stdout is not None
        while time.monotonic() < end:
            match = re.search(pattern, self.text)
            if match:
                return match
            ready, _, _ = select.select([self.process.stdout], [], [], 0.5)
            if ready:
                self.text += os.read(self.process.stdout.fileno(), 65536)
        raise SystemExit(f"no {pattern!r} within {seconds} s:\n{self.text[-2000:].decode()}")


def measure(count: int) -> float:
    """Milliseconds from SIGHUP to the reload's log line, with C{count} servers."""
    with tempfile.TemporaryDirectory() as directory:
        config = os.path.join(directory, "balancer.toml")
        write(config, [(f"s{i}", "roundrobin") for i in range(count)])
        env = dict(os.environ, PYTHONPATH=ROOT)
        process = subprocess.Popen([TWISTD, "-n", "--pidfile=", "balancer", "--config", config],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=directory)
        try:
            output = Output(process)
            output.wait(rb"api: listening")
            kept = [(f"s{i}", "leastconn" if i % 2 else "roundrobin") for i in range(10, count)]
            write(config, kept + [(f"n{i}", "roundrobin") for i in range(10)])
            started = time.perf_counter()
            os.kill(process.pid, signal.SIGHUP)
            output.wait(rb"reload: servers [^\n]*")
            return (time.perf_counter() - started) * 1000
        finally:
            process.terminate()
            process.wait(30)


def main() -> None:
    for count in [int(arg) for arg in sys.argv[1:]] or [100, 500]:
        print(f"{count} servers: reload (10 removed, {(count - 10) // 2} changed in place, 10 added): "
              f"{measure(count):.1f} ms from SIGHUP to the log line")


if __name__ == "__main__":
    main()
