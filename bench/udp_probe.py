"""
UDP request/response datagrams per second: this balancer against nginx's
C{stream} UDP proxy and against no proxy at all, on 127.0.0.1.

Needs (installs nothing)::

    apt-get install nginx-light libnginx-mod-stream

Run from the repository, with the Python that has Twisted::

    python bench/udp_probe.py [--clients 32] [--size 64] [--rounds 3]
        [--duration 5] [--client-processes 2] [--responses 1] [--paths direct,nginx,balancer]
        [--profile FILE] [--baseline DIR] [--json]
    python bench/udp_probe.py --cost strace|callgrind|cprofile [--sessions N] [--baseline DIR]

It starts, on free ports of 127.0.0.1:

 - an echo backend (C{--echo-processes} processes sharing the port with
   C{SO_REUSEPORT}, each a blocking C{recvfrom_into}/C{sendto} loop);
 - nginx, C{worker_processes 1}, loading C{ngx_stream_module.so}, with
   C{proxy_responses N; proxy_timeout 10s} (N is C{--responses});
 - this balancer from the working tree (C{twistd -n --pidfile= balancer}),
   one C{protocol = "udp"} server with C{[servers.X.udp] max_responses = N},
   C{client_idle_timeout = "10s"} and the access log off.

With C{--responses 1} (the default) every request opens a session on both
proxies, which then ends with its one answer; C{--responses 0} keeps one
session per client socket (nginx without C{proxy_responses}).

Each round measures every path in turn (the proxies started anew each
round, in the order given, rotated by one each round): C{--clients} closed-loop
senders of C{--size}-byte datagrams, spread over C{--client-processes}
processes, each sender a connected UDP socket that sends its next datagram
when the answer to the last one arrives (or after L{RESEND_AFTER} s without
one: a loss, counted).  The first second is warm-up.  The table gives the
medians over the rounds: datagrams per second (answers received), the
proxy's CPU time (user plus system, over its processes) per datagram and the
user part of it, and the
balancer's ratio to nginx measured in each round.

C{--baseline DIR} measures the balancer of another checkout too (for
instance C{git archive COMMIT | tar -x -C DIR}), as the path C{baseline}
(add it to C{--paths}), with its ratio to nginx in the same rounds.

C{--profile FILE} runs the balancer under cProfile (C{twistd --profile})
for one round and writes its statistics to FILE.

C{--cost TOOL} measures, instead of rates, what one session costs the
balancer (of the working tree, and of C{--baseline DIR} when given), free
of the machine's noise (with C{--responses 0}, what one exchange in a kept
session costs): C{--sessions} exchanges from
C{--clients} closed-loop senders after a warm-up of L{COST_WARMUP}, with
C{strace -c -f} attached to it for them (system calls per session, by
call), or under C{valgrind --tool=callgrind} with instrumentation turned on
for them (instructions per session, user space), or under cProfile twice
(C{--sessions} and a quarter of it: the difference gives Python calls per
session, start-up left out, and the functions called).

Everything started is stopped by its pid on exit, on an error and on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from running import tree_cpu_times  # noqa: E402

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
RESEND_AFTER = 0.5
"""Seconds a sender waits for an answer before sending again (the datagram counts as lost)."""
WARMUP = 1.0
START_TIMEOUT = 20.0
COST_WARMUP = 2000
"""Sessions run before C{--cost} starts counting."""
COST_START_TIMEOUT = 300.0
"""Seconds the balancer may take to answer under valgrind."""


def connected_senders(port: int, count: int) -> tuple[select.epoll, dict[int, socket.socket]]:
    """C{count} non-blocking UDP sockets connected to C{HOST:port}, by descriptor, and an epoll set reading them."""
    epoll = select.epoll()
    senders: dict[int, socket.socket] = {}
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect((HOST, port))
        senders[s.fileno()] = s
        epoll.register(s.fileno(), select.EPOLLIN)
    return epoll, senders


def free_udp_port() -> int:
    """A UDP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def echo_worker(port: int) -> None:
    """Answer every datagram on C{HOST:port} with itself, for ever."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((HOST, port))
    buffer = bytearray(65536)
    view = memoryview(buffer)
    recvfrom_into = sock.recvfrom_into
    sendto = sock.sendto
    while True:
        size, address = recvfrom_into(buffer)
        try:
            sendto(view[:size], address)
        except OSError:
            pass


def client_worker(port: int, senders: int, size: int, duration: float) -> None:
    """
    C{senders} closed-loop senders to C{HOST:port}; print, as JSON, the
    answers received and the resends during the C{duration} s after L{WARMUP}.
    """
    payload = b"q" * size
    epoll, sockets = connected_senders(port, senders)
    sent_at: dict[int, float] = {}
    now = time.monotonic()
    for fd, s in sockets.items():
        s.send(payload)
        sent_at[fd] = now
    start = now + WARMUP
    end = start + duration
    answers = resends = 0
    last_check = now
    while True:
        now = time.monotonic()
        if now >= end:
            break
        for fd, _ in epoll.poll(0.1):
            s = sockets[fd]
            while True:
                try:
                    s.recv(65536)
                except BlockingIOError:
                    break
                except ConnectionRefusedError:
                    continue
                if start <= now < end:
                    answers += 1
                try:
                    s.send(payload)
                except OSError:
                    pass
                sent_at[fd] = now
        if now - last_check > RESEND_AFTER / 2:
            last_check = now
            for fd, at in sent_at.items():
                if now - at > RESEND_AFTER:
                    try:
                        sockets[fd].send(payload)
                    except OSError:
                        pass
                    sent_at[fd] = now
                    if start <= now < end:
                        resends += 1
    print(json.dumps({"answers": answers, "resends": resends, "seconds": duration}))


class Processes:
    """The processes this script started, each stopped by its pid."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start C{argv} with its output in C{name}.log."""
        with open(self.workdir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=self.workdir, env=env)
        self.started.append((name, proc))
        return proc

    def output(self, name: str) -> str:
        """The last lines C{name} printed."""
        return "\n".join((self.workdir / f"{name}.log").read_text(errors="replace").splitlines()[-20:])

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM C{proc} (one we started), SIGKILL if it lingers."""
        self.started = [(n, p) for n, p in self.started if p is not proc]
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        """Stop every process still running, newest first."""
        while self.started:
            self.stop(self.started[-1][1])


def wait_answering(port: int, name: str, proc: subprocess.Popen[bytes] | None, procs: Processes,
                   timeout: float = START_TIMEOUT) -> None:
    """Wait until a datagram sent to C{HOST:port} comes back."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode}:\n{procs.output(name)}")
            try:
                s.sendto(b"ping", (HOST, port))
                s.recvfrom(100)
                return
            except OSError:
                continue
    raise RuntimeError(f"{name} did not answer on {HOST}:{port} within {timeout:g} s:\n{procs.output(name)}")


def start_nginx(procs: Processes, backend: int, responses: int) -> tuple[int, subprocess.Popen[bytes]]:
    """nginx's stream UDP proxy to C{backend}, one worker."""
    if not NGINX_STREAM_MODULE.exists():
        raise RuntimeError(f"{NGINX_STREAM_MODULE} is missing: apt-get install libnginx-mod-stream")
    port = free_udp_port()
    workdir = procs.workdir
    conf = workdir / "nginx.conf"
    proxy_responses = f"proxy_responses {responses};" if responses else ""
    conf.write_text(f"""
load_module {NGINX_STREAM_MODULE};
daemon off;
worker_processes 1;
worker_rlimit_nofile 65536;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 16384; }}
stream {{
    server {{
        listen {HOST}:{port} udp;
        proxy_pass {HOST}:{backend};
        {proxy_responses}
        proxy_timeout 10s;
    }}
}}
""")
    proc = procs.start("nginx", ["nginx", "-p", str(workdir), "-e", str(workdir / "nginx-error.log"), "-c", str(conf)])
    wait_answering(port, "nginx", proc, procs)
    return port, proc


def start_balancer(
    procs: Processes, backend: int, responses: int, profile: Path | None, tree: Path = REPO,
    wrapper: list[str] | None = None, timeout: float = START_TIMEOUT,
) -> tuple[int, subprocess.Popen[bytes]]:
    """
    This balancer from C{tree} (by default the working tree), one UDP server
    to C{backend}; C{wrapper} is a command line it runs under (valgrind's).
    """
    port = free_udp_port()
    conf = procs.workdir / "balancer.toml"
    conf.write_text(f"""
[logging]
level = "warn"
access_log = false

[servers.udp]
bind = "{HOST}:{port}"
protocol = "udp"
balance = "roundrobin"
client_idle_timeout = "10s"
  [servers.udp.discovery]
  kind = "static"
  static_list = ["{HOST}:{backend}"]
  [servers.udp.udp]
  max_responses = {responses}
""")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])))
    twistd = str(Path(sys.executable).with_name("twistd"))
    argv = (wrapper or []) + [twistd, "-n", "--pidfile="]
    if profile is not None:
        argv += ["--profiler=cprofile", f"--profile={profile}", "--savestats"]
    argv += ["balancer", f"--config={conf}"]
    proc = procs.start("balancer", argv, env)
    wait_answering(port, "balancer", proc, procs, timeout)
    return port, proc


def measure(port: int, pid: int | None, clients: int, size: int, duration: float, processes: int) -> dict[str, float]:
    """Datagrams per second through C{HOST:port}, losses, and the CPU time of C{pid} per datagram (µs)."""
    shares = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    argv = [sys.executable, __file__, "--client-worker", str(port), "--size", str(size), "--duration", str(duration)]
    workers = [subprocess.Popen(argv + ["--clients", str(n)], stdout=subprocess.PIPE, text=True) for n in shares if n]
    time.sleep(WARMUP)
    cpu_before = tree_cpu_times(pid) if pid is not None else (0.0, 0.0)
    time.sleep(duration)
    cpu_after = tree_cpu_times(pid) if pid is not None else (0.0, 0.0)
    answers = resends = 0
    for w in workers:
        out, _ = w.communicate(timeout=duration + WARMUP + 30)
        result = json.loads(out)
        answers += result["answers"]
        resends += result["resends"]
    rate = answers / duration
    user, system = ((after - before) / answers * 1e6 if answers else 0.0 for before, after in zip(cpu_before, cpu_after))
    return {"rate": rate, "resends": resends, "cpu_us": user + system, "user_us": user, "sys_us": system}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every round of every path; the samples and their medians."""
    paths: list[str] = args.paths.split(",")
    samples: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
    ratios: list[float] = []
    baseline_ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="udp-probe-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        procs = Processes(workdir)
        try:
            backend = free_udp_port()
            for i in range(args.echo_processes):
                procs.start(f"echo{i}", [sys.executable, __file__, "--echo-worker", str(backend)])
            wait_answering(backend, "echo0", None, procs)
            for round_number in range(args.rounds):
                order = paths[round_number % len(paths):] + paths[:round_number % len(paths)]
                this_round: dict[str, float] = {}
                for path in order:
                    proc = None
                    if path == "direct":
                        port, pid = backend, None
                    elif path == "nginx":
                        port, proc = start_nginx(procs, backend, args.responses)
                        pid = proc.pid
                    elif path == "balancer":
                        profile = args.profile if args.profile and round_number == 0 else None
                        port, proc = start_balancer(procs, backend, args.responses, profile)
                        pid = proc.pid
                    elif path == "baseline" and args.baseline is not None:
                        port, proc = start_balancer(procs, backend, args.responses, None, args.baseline)
                        pid = proc.pid
                    else:
                        raise SystemExit(f"--paths: unknown path {path!r} (direct, nginx, balancer, and baseline with --baseline)")
                    try:
                        result = measure(port, pid, args.clients, args.size, args.duration, args.client_processes)
                    finally:
                        if proc is not None:
                            procs.stop(proc)
                    samples[path].append(result)
                    this_round[path] = result["rate"]
                    print(f"round {round_number + 1} {path}: {result['rate']:,.0f}/s, "
                          f"{result['cpu_us']:.1f} µs CPU/datagram ({result['user_us']:.1f} user), "
                          f"{result['resends']} resends", file=sys.stderr)
                if "nginx" in this_round and this_round["nginx"]:
                    if "balancer" in this_round:
                        ratios.append(this_round["balancer"] / this_round["nginx"])
                    if "baseline" in this_round:
                        baseline_ratios.append(this_round["baseline"] / this_round["nginx"])
        finally:
            procs.stop_all()
    medians = {
        p: {k: statistics.median(s[k] for s in samples[p]) for k in ("rate", "cpu_us", "user_us", "sys_us", "resends")}
        for p in paths if samples[p]
    }
    return {"samples": samples, "medians": medians, "ratio_median": statistics.median(ratios) if ratios else None,
            "ratios": ratios, "baseline_ratios": baseline_ratios}


def exchange(port: int, sessions: int, clients: int, size: int) -> None:
    """
    C{sessions} request/response exchanges with C{HOST:port} from C{clients}
    closed-loop senders in this process (a lost datagram is sent again
    after L{RESEND_AFTER} s of silence).
    """
    payload = b"q" * size
    epoll, senders = connected_senders(port, clients)
    sent = answered = 0
    try:
        for s in senders.values():
            if sent < sessions:
                s.send(payload)
                sent += 1
        while answered < sessions:
            ready = epoll.poll(RESEND_AFTER)
            if not ready:
                for s in senders.values():
                    s.send(payload)
            for fd, _ in ready:
                s = senders[fd]
                try:
                    s.recv(65536)
                except (BlockingIOError, ConnectionRefusedError):
                    continue
                answered += 1
                if sent < sessions:
                    s.send(payload)
                    sent += 1
    finally:
        epoll.close()
        for s in senders.values():
            s.close()


def strace_counts(path: Path) -> dict[str, int]:
    """System calls by name in C{strace -c} output."""
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[-1] != "total" and fields[0][0].isdigit() and fields[3].isdigit():
            counts[fields[-1]] = int(fields[3])
    return counts


def cost(tool: str, tree: Path, sessions: int, clients: int, size: int, responses: int = 1) -> dict[str, Any]:
    """
    What one session costs the balancer of C{tree} (see C{--cost} in the
    module docstring); with C{responses = 0}, what one exchange in a kept
    session costs.
    """
    with tempfile.TemporaryDirectory(prefix="udp-cost-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        try:
            backend = free_udp_port()
            procs.start("echo", [sys.executable, __file__, "--echo-worker", str(backend)])
            wait_answering(backend, "echo", None, procs)
            if tool == "cprofile":
                stats = []
                for n in (sessions // 4, sessions):
                    profile = workdir / f"profile-{n}"
                    port, proc = start_balancer(procs, backend, responses, profile, tree)
                    exchange(port, n, clients, size)
                    procs.stop(proc)
                    stats.append(pstats.Stats(str(profile)))
                few, many = stats
                counted = sessions - sessions // 4
                before = {f: row[1] for f, row in few.stats.items()}  # type: ignore[attr-defined]
                calls = {f"{f[0].replace(str(tree), '')}:{f[1]}({f[2]})": (row[1] - before.get(f, 0)) / counted
                         for f, row in many.stats.items()}  # type: ignore[attr-defined]
                total = (many.total_calls - few.total_calls) / counted  # type: ignore[attr-defined]
                return {"per_session": total, "by_function": {f: n for f, n in sorted(calls.items(), key=lambda i: -i[1]) if n >= 0.05}}
            wrapper = None
            if tool == "callgrind":
                wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={workdir}/callgrind.out"]
            port, proc = start_balancer(procs, backend, responses, None, tree, wrapper, COST_START_TIMEOUT)
            exchange(port, COST_WARMUP, clients, size)
            if tool == "strace":
                out = workdir / "strace.txt"
                tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", str(proc.pid)], stderr=subprocess.DEVNULL)
                time.sleep(1.0)  # strace attached
                exchange(port, sessions, clients, size)
                tracer.send_signal(signal.SIGINT)
                tracer.wait()
                counts = strace_counts(out)
                return {"per_session": sum(counts.values()) / sessions,
                        "by_function": {name: n / sessions for name, n in sorted(counts.items(), key=lambda i: -i[1])}}
            subprocess.run(["callgrind_control", "--instr=on", str(proc.pid)], check=True, capture_output=True)
            exchange(port, sessions, clients, size)
            subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True)
            totals = [int(line.split()[1]) for dump in workdir.glob("callgrind.out*")
                      for line in dump.read_text(errors="replace").splitlines() if line.startswith("totals:")]
            return {"per_session": max(totals) / sessions, "by_function": {}}
        finally:
            procs.stop_all()


def print_cost(args: argparse.Namespace) -> None:
    """The C{--cost} figures of the working tree, and of C{--baseline} when given."""
    unit = {"strace": "system calls", "callgrind": "instructions (user space)", "cprofile": "Python calls"}[args.cost]
    trees = [("balancer", REPO)] + ([("baseline", args.baseline)] if args.baseline is not None else [])
    results = {name: cost(args.cost, tree, args.sessions, args.clients, args.size, args.responses) for name, tree in trees}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    what = "one-answer UDP session" if args.responses == 1 else f"request/response (responses={args.responses})"
    print(f"{unit} per {what}, {args.sessions} exchanges from {args.clients} closed-loop clients "
          f"({args.size}-byte datagrams)")
    for name, result in results.items():
        print(f"{name:10} {result['per_session']:,.1f}")
        for function, n in result["by_function"].items():
            print(f"    {n:7.2f}  {function}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--echo-processes", type=int, default=1)
    parser.add_argument("--responses", type=int, default=1)
    parser.add_argument("--paths", default="direct,nginx,balancer")
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--baseline", type=Path, help="another checkout of the balancer, measured as the path 'baseline'")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cost", choices=("strace", "callgrind", "cprofile"),
                        help="measure what one session costs the balancer instead of rates (see above)")
    parser.add_argument("--sessions", type=int, default=20000, help="sessions counted by --cost")
    parser.add_argument("--echo-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_worker:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        echo_worker(args.echo_worker)
        return 0
    if args.client_worker:
        client_worker(args.client_worker, args.clients, args.size, args.duration)
        return 0

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    if args.cost:
        print_cost(args)
        return 0
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"UDP request/response, {args.clients} closed-loop clients in {args.client_processes} processes, "
          f"{args.size}-byte datagrams, responses={args.responses}, {args.duration:g} s x {args.rounds} rounds (medians)")
    print(f"{'path':10} {'datagrams/s':>12} {'proxy CPU µs/dgram':>19} {'of it user':>11} {'resends':>8}")
    for path, m in result["medians"].items():
        print(f"{path:10} {m['rate']:>12,.0f} {m['cpu_us']:>19.1f} {m['user_us']:>11.1f} {m['resends']:>8.0f}")
    if result["ratio_median"] is not None:
        each = ", ".join(f"{r:.2f}" for r in result["ratios"])
        print(f"balancer / nginx: {result['ratio_median']:.2f}x (each round: {each})")
    if result["baseline_ratios"]:
        each = ", ".join(f"{r:.2f}" for r in result["baseline_ratios"])
        print(f"baseline / nginx: {statistics.median(result['baseline_ratios']):.2f}x (each round: {each})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
