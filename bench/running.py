"""
The processes and sockets a comparison run deals with: free ports, waiting,
the servers it starts (each stopped by its pid), the clients it runs (each
with a time limit), and what C{/proc} says of them (CPU, memory, sockets).
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

HOST = "127.0.0.1"
# Seconds allowed, beyond the measurement's own duration, for a client to finish.
CLIENT_SLACK = 20.0
# Seconds a server has to start listening, a process to exit, connections to settle.
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
SETTLE_TIMEOUT = 15.0
TCP_ESTABLISHED = 0x01
TCP_LISTEN = 0x0A
UDP_UNCONNECTED = 0x07


class MeasurementError(Exception):
    """A client failed or its output could not be read; the sample is dropped."""


def free_ports(count: int, kind: int = socket.SOCK_STREAM) -> list[int]:
    """C{count} distinct ports on 127.0.0.1 (TCP, or UDP for C{SOCK_DGRAM}) that were free a moment ago."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, kind)) for _ in range(count)]
        for s in sockets:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in sockets]


def sockets(table: str = "tcp") -> list[tuple[int, int, int]]:
    """(local port, remote port, state) of every IPv4 socket of C{/proc/net/<table>} (C{tcp} or C{udp})."""
    rows = []
    with open(f"/proc/net/{table}") as f:
        next(f)
        for line in f:
            fields = line.split()
            rows.append((int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16), int(fields[3], 16)))
    return rows


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll C{condition} every 50 ms; raise L{MeasurementError} naming C{what} after C{timeout} s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise MeasurementError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def established_to(port: int) -> int:
    """How many established sockets have C{port} as their remote port (connections made to it)."""
    return sum(1 for _, remote, state in sockets() if remote == port and state == TCP_ESTABLISHED)


class Processes:
    """
    The long-running processes this script started, each stopped by its pid.

    Their output goes to files in the work directory, shown when one fails
    to start.
    """

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self,
        name: str,
        argv: list[str],
        ports: list[int],
        env: dict[str, str] | None = None,
        listeners: int = 1,
        udp: tuple[int, ...] = (),
    ) -> int:
        """
        Start C{argv}, wait until it listens on every one of TCP C{ports}
        (with C{listeners} sockets each: one per worker process) and has
        bound every one of C{udp}, and return its pid.
        """
        log = open(self._workdir / f"{name}.log", "wb")
        with log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self._workdir, env=env
            )
        self._started.append((name, proc))

        def listening() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode}:\n{self.output(name)}")
            bound = [local for local, _, state in sockets() if state == TCP_LISTEN]
            datagram = [local for local, _, _ in sockets("udp")]
            return all(bound.count(port) >= listeners for port in ports) and all(p in datagram for p in udp)

        try:
            wait_until(listening, START_TIMEOUT, f"{name} to listen on {[*ports, *udp]}")
        except MeasurementError as e:
            raise RuntimeError(f"{e}:\n{self.output(name)}") from None
        return proc.pid

    def output(self, name: str) -> str:
        """The last lines C{name} printed."""
        text = (self._workdir / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-20:])

    def stop_all(self) -> None:
        """SIGTERM each process by pid, newest first; SIGKILL one still running after L{STOP_TIMEOUT}."""
        while self._started:
            _, proc = self._started.pop()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def run_client(argv: list[str], duration: float) -> str:
    """Run a client to completion within C{duration} + L{CLIENT_SLACK} s; return its stdout."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + CLIENT_SLACK)
    except subprocess.TimeoutExpired:
        raise MeasurementError(f"{argv[0]} did not finish within {duration + CLIENT_SLACK:g} s") from None
    if done.returncode != 0:
        raise MeasurementError(f"{argv[0]} exited {done.returncode}: {(done.stdout + done.stderr).strip()[-500:]}")
    return done.stdout


def run_clients(argvs: list[list[str]], duration: float) -> list[str]:
    """
    Run several clients at once, each within C{duration} + L{CLIENT_SLACK} s
    (the ones left are killed by pid when one fails); return their outputs.
    """
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in argvs]
    deadline = time.monotonic() + duration + CLIENT_SLACK
    outputs = []
    try:
        for argv, proc in zip(argvs, procs):
            try:
                out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise MeasurementError(f"{argv[0]} did not finish within {duration + CLIENT_SLACK:g} s") from None
            if proc.returncode != 0:
                raise MeasurementError(f"{' '.join(argv[:3])} exited {proc.returncode}: {(out + err).strip()[-500:]}")
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs


def vm_rss_kib(pid: int) -> int:
    """VmRSS of C{pid} in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise MeasurementError(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    """The pids of C{pid}'s child processes, from each process's C{/proc/PID/stat}."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The fourth field, after the parenthesised command name (which may hold spaces).
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def tree_cpu_times(pid: int) -> tuple[float, float]:
    """
    User and system CPU time of C{pid} and its child processes, in seconds,
    from C{/proc/PID/stat} (a child that ended meanwhile is left out).
    """
    user = system = 0
    for p in [pid, *children(pid)]:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def tree_rss_kib(pid: int) -> int:
    """VmRSS of C{pid} and its child processes (a balancer's workers, nginx's worker), in KiB."""
    return sum(vm_rss_kib(p) for p in [pid, *children(pid)])


def slab_kib() -> int:
    """The kernel's Slab memory in KiB, system-wide, from /proc/meminfo."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                return int(line.split()[1])
    raise MeasurementError("no Slab in /proc/meminfo")


def raise_nofile(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE (inherited by the servers started after) to at least C{needed}."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise RuntimeError(f"RLIMIT_NOFILE hard limit {hard} is below the {needed} descriptors needed")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
