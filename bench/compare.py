"""
Compare this balancer with HAProxy and with no proxy at all, on loopback.

Needs (installs nothing)::

    apt-get install haproxy iperf3 wrk nginx-light

Run from the repository, with the Python that has Twisted::

    /work/venv/bin/python bench/compare.py [--repeat N] [--duration S] [--workers N] [--quick] [--json]

It starts, on 127.0.0.1 only and on free ports:

 - nginx (one worker, keep-alive on, a small static file) and C{iperf3 -s} as
   the backends;
 - HAProxy in C{mode tcp} with C{nbthread N}, from a generated configuration;
 - this balancer from the working tree (C{twistd -n --pidfile= balancer} with
   a generated configuration, C{[defaults] workers = N}, and the repository
   first on C{PYTHONPATH}).

N is C{--workers} (default 1): both proxies get as many cores.

Each repetition (with HAProxy and the balancer started anew) measures every
figure for the three paths in turn (direct, HAProxy, balancer); the table
gives the median of the repetitions and the balancer's ratios to the others:

 - bulk throughput: C{iperf3 -c}, 1 and 4 streams (C{-P 4}), receiver side;
 - new connections per second: C{wrk -t1 -c50} with C{Connection: close},
   and the proxy's CPU time (user plus system, over its process and its
   workers) per connection meanwhile: the figure least affected by the
   client and the backend sharing the machine's cores;
 - requests per second and p50/p99 latency over 50 kept-alive connections:
   C{wrk --latency -t1 -c50};
 - resident memory per idle connection: the proxy's VmRSS before and after
   this script opens 1,000 idle connections through it (the balancer's is the
   sum over the twistd process and its worker processes), and the system-wide Slab growth (kernel memory,
   every socket of every process on the machine, so noisy) over the same time.

Everything started is stopped by pid on exit, on an error, on SIGINT and on
SIGTERM; every client run has a time limit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PATHS = ("direct", "haproxy", "balancer")
TOOLS = ("haproxy", "iperf3", "wrk", "nginx")
IDLE_CONNECTIONS = 1000
WRK_CONNECTIONS = 50
# Seconds allowed, beyond the measurement's own duration, for a client to finish.
CLIENT_SLACK = 20.0
# Seconds a server has to start listening, a process to exit, connections to settle.
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
SETTLE_TIMEOUT = 15.0
INDEX_BYTES = 612  # about nginx's default index page


@dataclass(frozen=True)
class Metric:
    """One row of the table."""

    key: str
    label: str
    unit: str
    higher_is_better: bool


METRICS = (
    Metric("bulk_1", "bulk throughput, 1 stream", "Gbit/s", True),
    Metric("bulk_4", "bulk throughput, 4 streams", "Gbit/s", True),
    Metric("conn_rate", "new connections (Connection: close)", "conn/s", True),
    Metric("conn_cpu", "  proxy CPU per new connection", "us", False),
    Metric("keepalive_rps", "requests, 50 kept-alive conns", "req/s", True),
    Metric("keepalive_p50", "  latency p50", "ms", False),
    Metric("keepalive_p99", "  latency p99", "ms", False),
    Metric("idle_rss", "proxy RSS per idle connection", "KiB", False),
    Metric("idle_slab", "kernel Slab per idle connection", "KiB", False),
)


class MeasurementError(Exception):
    """A client failed or its output could not be read; the sample is dropped."""


@dataclass(frozen=True)
class Endpoints:
    """Where each path listens: (HTTP port, iperf3 port) and the proxy's pid (None: direct)."""

    http: int
    bulk: int
    pid: int | None


def free_ports(count: int) -> list[int]:
    """C{count} distinct TCP ports on 127.0.0.1 that were free a moment ago (bound to port 0, then released)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for s in sockets:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in sockets]


def tcp_sockets() -> list[tuple[int, int, int]]:
    """(local port, remote port, state) of every IPv4 TCP socket, from /proc/net/tcp."""
    rows = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            rows.append((int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16), int(fields[3], 16)))
    return rows


TCP_ESTABLISHED = 0x01
TCP_LISTEN = 0x0A


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll C{condition} every 50 ms; raise L{MeasurementError} naming C{what} after C{timeout} s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise MeasurementError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def established_to(port: int) -> int:
    """How many established sockets have C{port} as their remote port (connections made to it)."""
    return sum(1 for _, remote, state in tcp_sockets() if remote == port and state == TCP_ESTABLISHED)


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
        self, name: str, argv: list[str], ports: list[int], env: dict[str, str] | None = None, listeners: int = 1
    ) -> int:
        """
        Start C{argv}, wait until it listens on every one of C{ports} (with
        C{listeners} sockets each: one per worker process), and return its pid.
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
            bound = [local for local, _, state in tcp_sockets() if state == TCP_LISTEN]
            return all(bound.count(port) >= listeners for port in ports)

        try:
            wait_until(listening, START_TIMEOUT, f"{name} to listen on {ports}")
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


def start_nginx(procs: Processes, workdir: Path) -> int:
    """nginx, one worker, serving a small index.html with keep-alive on; return its port."""
    root = workdir / "www"
    root.mkdir()
    (root / "index.html").write_text("x" * (INDEX_BYTES - 1) + "\n")
    # The worker may run as another user: let it read the files.
    for path in (workdir, root, root / "index.html"):
        path.chmod(0o755)
    [port] = free_ports(1)
    temp = workdir / "nginx-temp"
    temp.mkdir()
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""
daemon off;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    server {{
        listen {HOST}:{port} backlog=4096;
        root {root};
    }}
}}
"""
    )
    procs.start("nginx", ["nginx", "-p", str(workdir), "-e", str(workdir / "nginx-error.log"), "-c", str(conf)], [port])
    return port


def start_iperf3(procs: Processes) -> int:
    """C{iperf3 -s} on 127.0.0.1; return its port."""
    [port] = free_ports(1)
    procs.start("iperf3", ["iperf3", "-s", "-B", HOST, "-p", str(port)], [port])
    return port


def start_haproxy(procs: Processes, workdir: Path, http: int, bulk: int, threads: int) -> Endpoints:
    """HAProxy, C{mode tcp}, C{threads} threads, one frontend per backend."""
    ports = free_ports(2)
    conf = workdir / "haproxy.cfg"
    conf.write_text(
        f"""
global
    nbthread {threads}
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s

listen http
    bind {HOST}:{ports[0]}
    server nginx {HOST}:{http}

listen bulk
    bind {HOST}:{ports[1]}
    server iperf3 {HOST}:{bulk}
"""
    )
    pid = procs.start("haproxy", ["haproxy", "-db", "-f", str(conf)], list(ports))
    return Endpoints(ports[0], ports[1], pid)


def twistd_path() -> str:
    """The twistd script installed beside the running Python."""
    path = Path(sys.executable).with_name("twistd")
    if not path.exists():
        raise RuntimeError(f"no twistd beside {sys.executable}: run this with the Python that has Twisted")
    return str(path)


def start_balancer(procs: Processes, workdir: Path, http: int, bulk: int, workers: int) -> Endpoints:
    """This balancer from the working tree, one server per backend, C{workers} processes, logging warnings only."""
    ports = free_ports(2)
    conf = workdir / "balancer.toml"
    servers = "".join(
        f"""
[servers.{name}]
bind = "{HOST}:{port}"
balance = "roundrobin"
  [servers.{name}.discovery]
  kind = "static"
  static_list = ["{HOST}:{backend}"]
"""
        for name, port, backend in (("http", ports[0], http), ("bulk", ports[1], bulk))
    )
    conf.write_text(f'[logging]\nlevel = "warn"\n\n[defaults]\nshutdown_grace = "1s"\nworkers = {workers}\n{servers}')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    argv = [twistd_path(), "-n", "--pidfile=", "balancer", f"--config={conf}"]
    pid = procs.start("balancer", argv, list(ports), env, listeners=workers)
    return Endpoints(ports[0], ports[1], pid)


def run_client(argv: list[str], duration: float) -> str:
    """Run a client to completion within C{duration} + L{CLIENT_SLACK} s; return its stdout."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + CLIENT_SLACK)
    except subprocess.TimeoutExpired:
        raise MeasurementError(f"{argv[0]} did not finish within {duration + CLIENT_SLACK:g} s") from None
    if done.returncode != 0:
        raise MeasurementError(f"{argv[0]} exited {done.returncode}: {(done.stdout + done.stderr).strip()[-500:]}")
    return done.stdout


def measure_bulk(port: int, streams: int, duration: float) -> float:
    """Throughput in Gbit/s that the iperf3 server received through C{port}."""
    out = run_client(
        ["iperf3", "-c", HOST, "-p", str(port), "-t", f"{duration:g}", "-P", str(streams), "-J"]
        + ["--connect-timeout", "5000"],
        duration,
    )
    try:
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9
    except (ValueError, KeyError) as e:
        raise MeasurementError(f"iperf3 output not understood ({e!r}): {out[-500:]}") from None


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def wrk(port: int, duration: float, *, close: bool) -> dict[str, float]:
    """
    Run wrk (1 thread, 50 connections) against nginx's index through C{port}.

    Returns requests per second and the p50 and p99 latency in ms.  Any
    socket error or non-2xx answer fails the measurement.
    """
    argv = ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{duration:g}s", "--latency", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    out = run_client(argv + [f"http://{HOST}:{port}/index.html"], duration)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    quantiles = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+[a-z]+)", out, re.M))
    if not rps or set(quantiles) != {"50", "99"}:
        raise MeasurementError(f"wrk output not understood: {out}")
    errors = re.search(r"^\s+(Socket errors:.*|Non-2xx or 3xx responses:.*)$", out, re.M)
    if errors:
        raise MeasurementError(f"wrk: {errors.group(1)}")

    def ms(text: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)([a-z]+)", text).groups()  # type: ignore[union-attr]
        return float(number) * UNITS[unit]

    return {"rps": float(rps.group(1)), "p50": ms(quantiles["50"]), "p99": ms(quantiles["99"])}


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


def tree_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of C{pid} and its child processes, in seconds, from C{/proc/PID/stat}."""
    ticks = 0
    for p in [pid, *children(pid)]:
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def measure_new_connections(path: Endpoints, duration: float) -> dict[str, float]:
    """New connections per second and, for a proxy, its CPU time per connection in microseconds."""
    cpu_before = tree_cpu_seconds(path.pid) if path.pid else 0.0
    result = wrk(path.http, duration, close=True)
    connections = result["rps"] * duration
    rate = {"conn_rate": result["rps"]}
    if path.pid and connections:
        rate["conn_cpu"] = (tree_cpu_seconds(path.pid) - cpu_before) / connections * 1e6
    return rate


def tree_rss_kib(pid: int) -> int:
    """VmRSS of C{pid} and its child processes (a balancer's workers), in KiB."""
    return sum(vm_rss_kib(p) for p in [pid, *children(pid)])


def slab_kib() -> int:
    """The kernel's Slab memory in KiB, system-wide, from /proc/meminfo."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                return int(line.split()[1])
    raise MeasurementError("no Slab in /proc/meminfo")


@contextlib.contextmanager
def idle_connections(port: int, backend: int, count: int) -> Iterator[None]:
    """
    Hold C{count} idle connections to C{port} open while the block runs.

    Waits first for earlier connections to the C{backend} port to be gone;
    the block is entered once C{count} connections reach it (for a proxy:
    once it connected to the backend for each client), and left once they
    are gone again.
    """
    wait_until(lambda: established_to(backend) == 0, SETTLE_TIMEOUT, "earlier connections to the backend to close")
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.settimeout(5)
            s.connect((HOST, port))
        wait_until(lambda: established_to(backend) >= count, SETTLE_TIMEOUT, f"{count} connections to the backend")
        yield
    finally:
        for s in sockets:
            s.close()
    wait_until(lambda: established_to(backend) == 0, SETTLE_TIMEOUT, "the idle connections to close")


def measure_idle(path: Endpoints, backend: int) -> dict[str, float]:
    """KiB per idle connection: the proxy's RSS growth (not for direct) and the kernel's Slab growth."""
    rss_before = tree_rss_kib(path.pid) if path.pid else 0
    slab_before = slab_kib()
    with idle_connections(path.http, backend, IDLE_CONNECTIONS):
        time.sleep(0.5)
        rss_after = tree_rss_kib(path.pid) if path.pid else 0
        slab_after = slab_kib()
    result = {"idle_slab": (slab_after - slab_before) / IDLE_CONNECTIONS}
    if path.pid:
        result["idle_rss"] = (rss_after - rss_before) / IDLE_CONNECTIONS
    return result


def raise_nofile(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE (inherited by the servers started after) to at least C{needed}."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise RuntimeError(f"RLIMIT_NOFILE hard limit {hard} is below the {needed} descriptors needed")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def command_output(argv: list[str]) -> str:
    """First line that C{argv} prints (on stdout or stderr), or why it could not run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    return ((done.stdout or done.stderr).strip().splitlines() or ["?"])[0]


def machine() -> dict[str, str]:
    """CPU count and model, kernel."""
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": str(os.cpu_count()), "cpu": model, "kernel": platform.release()}


def versions() -> dict[str, str]:
    """Versions of everything measured or measuring."""
    return {
        "balancer": command_output(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        "python": platform.python_version(),
        "twisted": command_output([sys.executable, "-c", "import twisted; print(twisted.__version__)"]),
        "haproxy": command_output(["haproxy", "-v"]),
        "nginx": command_output(["nginx", "-v"]),
        "iperf3": command_output(["iperf3", "--version"]),
        "wrk": command_output(["wrk", "-v"]),
    }


def run(
    repeat: int, duration: float, workers: int, progress: Callable[[str], None]
) -> dict[str, dict[str, list[float]]]:
    """
    Start the backends, take C{repeat} interleaved rounds of samples, stop everything.

    Both proxies get C{workers} cores: HAProxy as threads, the balancer as processes.

    HAProxy and the balancer are started anew for each round, so that the
    idle-connection memory, measured first, is that of a fresh process and
    not memory freed by an earlier load and reused.  Returns the samples, by
    metric key then path.  A failed measurement is reported through
    C{progress} and leaves its sample out.
    """
    raise_nofile(4 * IDLE_CONNECTIONS + 1024)
    samples: dict[str, dict[str, list[float]]] = {m.key: {p: [] for p in PATHS} for m in METRICS}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        workdir = Path(tmp)
        backends = Processes(workdir)
        try:
            http, bulk = start_nginx(backends, workdir), start_iperf3(backends)
            steps: list[tuple[str, Callable[[Endpoints], dict[str, float]]]] = [
                ("idle connections", lambda e: measure_idle(e, http)),
                ("bulk, 1 stream", lambda e: {"bulk_1": measure_bulk(e.bulk, 1, duration)}),
                ("bulk, 4 streams", lambda e: {"bulk_4": measure_bulk(e.bulk, 4, duration)}),
                ("new connections", lambda e: measure_new_connections(e, duration)),
                ("keep-alive", lambda e: {f"keepalive_{k}": v for k, v in wrk(e.http, duration, close=False).items()}),
            ]
            for round_ in range(1, repeat + 1):
                proxies = Processes(workdir)
                try:
                    paths = {
                        "direct": Endpoints(http, bulk, None),
                        "haproxy": start_haproxy(proxies, workdir, http, bulk, workers),
                        "balancer": start_balancer(proxies, workdir, http, bulk, workers),
                    }
                    for what, step in steps:
                        for name, endpoints in paths.items():
                            progress(f"round {round_}/{repeat}: {what}, {name}")
                            try:
                                for key, value in step(endpoints).items():
                                    samples[key][name].append(value)
                            except MeasurementError as e:
                                progress(f"  failed: {e}")
                finally:
                    proxies.stop_all()
        finally:
            backends.stop_all()
    return samples


def summarize(samples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float | None]]:
    """Median per metric and path, and the balancer's ratios to HAProxy and to direct."""
    table: dict[str, dict[str, float | None]] = {}
    for m in METRICS:
        row: dict[str, float | None] = {p: statistics.median(v) if v else None for p, v in samples[m.key].items()}
        for other in ("haproxy", "direct"):
            b, o = row["balancer"], row[other]
            row[f"balancer/{other}"] = b / o if b is not None and o else None
        table[m.key] = row
    return table


def render(
    table: dict[str, dict[str, float | None]], info: dict[str, dict[str, str]], settings: dict[str, float]
) -> str:
    """The table as text, with the machine and versions."""

    def cell(value: float | None, ratio: bool = False) -> str:
        if value is None:
            return "-"
        if ratio:
            return f"{value:.2f}"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"

    header = ("metric", "unit", "better", *PATHS, "bal/hap", "bal/direct")
    rows = [header] + [
        (
            m.label,
            m.unit,
            "higher" if m.higher_is_better else "lower",
            *(cell(table[m.key][p]) for p in PATHS),
            cell(table[m.key]["balancer/haproxy"], True),
            cell(table[m.key]["balancer/direct"], True),
        )
        for m in METRICS
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines += [
        "",
        f"median of {settings['repeat']:g} interleaved rounds, {settings['duration']:g} s per client run, "
        f"{IDLE_CONNECTIONS} idle connections; {settings['workers']:g} balancer workers and HAProxy threads; "
        "all on 127.0.0.1",
        "machine: " + ", ".join(f"{k} {v}" for k, v in info["machine"].items()),
        *(f"  {k}: {v}" for k, v in info["versions"].items()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse the options, check the tools, measure, print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--repeat", type=int, default=3, help="rounds of measurements (default 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per iperf3/wrk run (default 5)")
    parser.add_argument("--workers", type=int, default=1,
                        help="balancer worker processes ([defaults] workers) and HAProxy threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 2 s runs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.duration = 1, 2.0
    if args.repeat < 1 or args.duration <= 0 or not 1 <= args.workers <= 256:
        parser.error("--repeat must be at least 1, --duration positive and --workers from 1 to 256")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        parser.error(f"not installed: {', '.join(missing)} (apt-get install haproxy iperf3 wrk nginx-light)")

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Also when started with SIGINT ignored (as a shell's background job).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)
    info = {"machine": machine(), "versions": versions()}
    try:
        samples = run(args.repeat, args.duration, args.workers, lambda line: print(line, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"compare: {e}", file=sys.stderr)
        return 1
    table = summarize(samples)
    settings = {
        "repeat": args.repeat, "duration": args.duration, "workers": args.workers, "idle_connections": IDLE_CONNECTIONS
    }
    if args.json:
        print(json.dumps({**info, "settings": settings, "samples": samples, "medians": table}, indent=2))
    else:
        print(render(table, info, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
