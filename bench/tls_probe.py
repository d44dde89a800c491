"""
A quick side-by-side of TLS termination and SNI routing: this balancer
against HAProxy (C{nbthread 1}) on 127.0.0.1, the same RSA-2048
certificate, nginx behind both: a quicker look than C{bench/compare.py},
and a before/after of a change in one run (C{--before}).

Measures, per round, interleaved (HAProxy, then the balancer):

  - full handshakes/s: C{openssl s_time -new} (C{--clients} in parallel),
    each connection a full TLS handshake and a small GET through to nginx;
  - resumed handshakes/s: C{openssl s_time -reuse} (the same, resuming);
  - TLS bulk: C{wrk} over HTTPS, kept-alive, a 1 MiB file, MB/s;
  - TLS kept-alive requests/s: C{wrk} over HTTPS, a 612-byte file;
  - SNI new connections/s: C{wrk} with C{Connection: close} through SNI
    routing (TLS passthrough) to nginx terminating TLS.

Prints the medians and the ratio (balancer / HAProxy), and beside them the
CPU time (user + system, from /proc) each proxy spent per connection,
request or MB: on a machine shared with other work the rates swing with
the load, the CPU per operation much less.  C{--before DIR} measures
another source tree of the balancer too (for a before/after in one run).
Starts its own peers, stops them by pid, installs nothing.

    python bench/tls_probe.py --rounds 3 --duration 4 [--before /tmp/base-tree]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
NAME = "127.0.0.1"  # wrk sends the URL's host as SNI


def free_ports(count: int) -> list[int]:
    """Ports free now on 127.0.0.1."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_listening(port: int, timeout: float = 15.0) -> None:
    """Wait until C{port} on 127.0.0.1 accepts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Processes:
    """Children started here, stopped by pid."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], ports: list[int], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.children.append(process)
        for port in ports:
            wait_listening(port)
        return process

    def stop(self) -> None:
        for process in reversed(self.children):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def make_certificate(workdir: Path) -> tuple[Path, Path, Path]:
    """An RSA-2048 self-signed certificate for NAME: (cert, key, both in one file)."""
    cert, key, both = workdir / "cert.pem", workdir / "key.pem", workdir / "both.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={NAME}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    return cert, key, both


def start_nginx(procs: Processes, workdir: Path, cert: Path, key: Path) -> tuple[int, int]:
    """nginx, one worker: plain HTTP and HTTPS (the SNI routes' backend); (http port, https port)."""
    root = workdir / "www"
    root.mkdir()
    (root / "small").write_bytes(b"x" * 612)
    (root / "big").write_bytes(os.urandom(1 << 20))
    for path in (workdir, root, root / "small", root / "big", cert, key):
        path.chmod(0o755)
    http, https = free_ports(2)
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
    ssl_session_cache shared:SSL:10m;
    server {{ listen {HOST}:{http} backlog=4096; root {root}; }}
    server {{
        listen {HOST}:{https} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {root};
    }}
}}
"""
    )
    procs.start(["nginx", "-p", str(workdir), "-e", str(workdir / "nginx-error.log"), "-c", str(conf)], [http, https])
    return http, https


def start_haproxy(procs: Processes, workdir: Path, both: Path, http: int, https: int) -> dict[str, int]:
    """HAProxy, one thread: TLS termination in front of nginx, and SNI routing to nginx's HTTPS."""
    tls, sni = free_ports(2)
    conf = workdir / "haproxy.cfg"
    conf.write_text(
        f"""
global
    nbthread 1
    maxconn 8000
    tune.ssl.default-dh-param 2048

defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s

listen tls
    bind {HOST}:{tls} ssl crt {both}
    server nginx {HOST}:{http}

frontend sni
    bind {HOST}:{sni}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req.ssl_hello_type 1 }}
    use_backend nginx_tls if {{ req.ssl_sni -i {NAME} }}

backend nginx_tls
    server nginx {HOST}:{https}
"""
    )
    process = procs.start(["haproxy", "-db", "-f", str(conf)], [tls, sni])
    return {"tls": tls, "sni": sni, "pid": process.pid}


def start_balancer(procs: Processes, workdir: Path, cert: Path, key: Path, http: int, https: int,
                   python: str, repo: Path = REPO, name: str = "balancer") -> dict[str, int]:
    """This balancer from the working tree: TLS termination, and SNI routing."""
    tls, sni = free_ports(2)
    conf = workdir / f"{name}.toml"
    conf.write_text(
        f"""
[logging]
level = "warn"

[defaults]
shutdown_grace = "1s"

[servers.tls]
bind = "{HOST}:{tls}"
protocol = "tls"
  [servers.tls.tls]
  cert_path = "{cert}"
  key_path = "{key}"
  [servers.tls.discovery]
  kind = "static"
  static_list = ["{HOST}:{http}"]

[servers.sni]
bind = "{HOST}:{sni}"
  [servers.sni.sni]
  [servers.sni.discovery]
  kind = "static"
  static_list = ["{HOST}:{https} sni={NAME}"]
"""
    )
    env = dict(os.environ, PYTHONPATH=str(repo))
    twistd = str(Path(python).with_name("twistd"))
    process = procs.start([twistd, "-n", "--pidfile=", "balancer", f"--config={conf}"], [tls, sni], env)
    return {"tls": tls, "sni": sni, "pid": process.pid}


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds process C{pid} used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: Operations (connections, requests or bytes) the last client run made, for CPU per operation.
LAST = {"count": 0.0}


def s_time(port: int, mode: str, duration: int, clients: int) -> float:
    """Connections/s of C{clients} parallel C{openssl s_time -new|-reuse} runs."""
    argv = ["openssl", "s_time", "-connect", f"{HOST}:{port}", f"-{mode}", "-time", str(duration), "-www", "/small"]
    started = time.monotonic()
    runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for _ in range(clients)]
    total = 0
    for run in runs:
        out, _ = run.communicate(timeout=duration + 30)
        found = re.search(r"(\d+) connections in \d+ real seconds", out)
        if found is None:
            raise RuntimeError(f"s_time said: {out[-300:]}")
        total += int(found.group(1))
    LAST["count"] = total
    return total / (time.monotonic() - started)


def wrk(url: str, duration: int, connections: int, close: bool = False) -> dict[str, float]:
    """wrk's requests/s and bytes/s."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", url]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    unit = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[transfer.group(2)]  # type: ignore[union-attr]
    LAST["count"] = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        print(f"  (wrk {url}: {errors.group(0)})", file=sys.stderr)
    return {"rps": rate, "bytes": float(transfer.group(1)) * unit}  # type: ignore[union-attr]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4, help="parallel s_time runs")
    parser.add_argument("--only", default="", help="comma-separated measures (full,resumed,bulk,requests,sni)")
    parser.add_argument("--python", default=sys.executable, help="the Python with Twisted (twistd beside it)")
    parser.add_argument("--before", default="", help="another source tree of the balancer, measured too (as 'before')")
    options = parser.parse_args(argv)
    for tool in ("haproxy", "nginx", "wrk", "openssl"):
        if shutil.which(tool) is None:
            print(f"needs {tool}", file=sys.stderr)
            return 2
    if options.before and not (Path(options.before) / "balancer" / "__init__.py").is_file():
        # Else the "before" twistd would import whatever balancer is installed.
        print(f"--before {options.before}: not a source tree of the balancer", file=sys.stderr)
        return 2
    duration, clients = options.duration, options.clients
    measures: dict[str, Callable[[dict[str, int]], float]] = {
        "full": lambda t: s_time(t["tls"], "new", duration, clients),
        "resumed": lambda t: s_time(t["tls"], "reuse", duration, clients),
        "bulk": lambda t: wrk(f"https://{NAME}:{t['tls']}/big", duration, 8)["bytes"] / 1e6,
        "requests": lambda t: wrk(f"https://{NAME}:{t['tls']}/small", duration, 50)["rps"],
        "sni": lambda t: wrk(f"https://{NAME}:{t['sni']}/small", duration, 50, close=True)["rps"],
    }
    chosen = [m for m in options.only.split(",") if m] or list(measures)
    procs = Processes()
    names = ["haproxy", "balancer"] + (["before"] if options.before else [])
    samples: dict[str, dict[str, list[float]]] = {m: {n: [] for n in names} for m in chosen}
    # CPU microseconds of the proxy per connection or request (per MB for bulk): robust to a busy machine.
    cpu: dict[str, dict[str, list[float]]] = {m: {n: [] for n in names} for m in chosen}
    with tempfile.TemporaryDirectory(prefix="tls-probe-") as tmp:
        workdir = Path(tmp)
        try:
            cert, key, both = make_certificate(workdir)
            http, https = start_nginx(procs, workdir, cert, key)
            targets = {
                "haproxy": start_haproxy(procs, workdir, both, http, https),
                "balancer": start_balancer(procs, workdir, cert, key, http, https, options.python),
            }
            if options.before:
                targets["before"] = start_balancer(
                    procs, workdir, cert, key, http, https, options.python, Path(options.before), "before"
                )
            for _ in range(options.rounds):
                for measure in chosen:
                    for name, target in targets.items():
                        before = cpu_seconds(target["pid"])
                        rate = measures[measure](target)
                        used = cpu_seconds(target["pid"]) - before
                        samples[measure][name].append(rate)
                        count = LAST["count"] if measure != "bulk" else rate * duration
                        cpu[measure][name].append(used * 1e6 / max(count, 1))
        finally:
            procs.stop()
    units = {"full": "handshakes/s", "resumed": "handshakes/s", "bulk": "MB/s", "requests": "req/s", "sni": "conn/s"}
    result = {}
    for measure in chosen:
        medians = {n: statistics.median(samples[measure][n]) for n in names}
        h = medians["haproxy"]
        result[measure] = {**{n: round(m, 1) for n, m in medians.items()}, "unit": units[measure],
                           "ratios": {n: round(m / h, 2) for n, m in medians.items() if n != "haproxy"},
                           "samples": samples[measure]}
        line = "  ".join(f"{n} {m:9.1f} ({m / h:4.2f}x)" for n, m in medians.items() if n != "haproxy")
        print(f"{measure:9} haproxy {h:9.1f}  {line}  {units[measure]}")
        costs = {n: statistics.median(cpu[measure][n]) for n in names}
        result[measure]["cpu_us"] = {n: round(c, 1) for n, c in costs.items()}
        line = "  ".join(f"{n} {c:9.1f} ({costs['haproxy'] / c:4.2f}x)" for n, c in costs.items() if n != "haproxy")
        per = "MB" if measure == "bulk" else "operation"
        print(f"{'':9} CPU us/{per}: haproxy {costs['haproxy']:9.1f}  {line}  (ratio: haproxy's cost / ours)")
    print(json.dumps({"rounds": options.rounds, "duration": duration, "clients": clients, "result": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
