"""
The servers of a comparison run: their configurations (pure functions of
ports and files, so that a test can validate them with C{haproxy -c},
C{nginx -t} and C{twistd balancer --check}) and how each is started.

 - the backends: nginx (plain HTTP, HTTPS for the direct TLS figures, two
   HTTPS servers named for the SNI figures), C{iperf3 -s}, and a UDP echo
   server (C{udpbench.py echo});
 - the peers: HAProxy (TCP, TLS termination, SNI routing) and nginx's
   C{stream} module (UDP);
 - this balancer from the working tree.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from running import HOST, Processes, free_ports

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
INDEX_BYTES = 612  # about nginx's default index page
# Server names of the SNI figures: the certificate holds both (and NAME).
NAME = "bench.test"
SNI_NAMES = ("a.bench.test", "b.bench.test")
TLS12_CIPHER = "ECDHE-RSA-AES128-GCM-SHA256"
# UDP servers: sessions kept while busy, and one answer a session (nginx's proxy_responses 1).
UDP_ROLES = ("udp", "udp1")


@dataclass(frozen=True)
class Tls:
    """The TLS every server of a run offers: version C{"1.2"} (pinned to L{TLS12_CIPHER}) or C{"1.3"}."""

    version: str
    cert: Path
    key: Path
    # The certificate followed by its key, as HAProxy's C{crt} wants it.
    combined: Path


def make_certificate(workdir: Path, version: str) -> Tls:
    """A self-signed RSA-2048 certificate for L{NAME} and L{SNI_NAMES}, made with C{openssl req}."""
    cert, key, combined = workdir / "cert.pem", workdir / "key.pem", workdir / "combined.pem"
    names = ",".join(f"DNS:{n}" for n in (NAME, *SNI_NAMES))
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", f"/CN={NAME}", "-addext", f"subjectAltName={names}"],
        check=True, capture_output=True, timeout=60,
    )
    combined.write_bytes(cert.read_bytes() + key.read_bytes())
    for path in (cert, key, combined):
        path.chmod(0o644)
    return Tls(version, cert, key, combined)


@dataclass(frozen=True)
class Backends:
    """Where the backends listen: TCP ports by role, the UDP echo port."""

    http: int
    https: int
    sni: tuple[int, int]
    bulk: int
    udp: int


@dataclass
class Endpoints:
    """Where one path (direct, a peer, the balancer) listens, by role, and the pid of its proxy (None: direct)."""

    ports: dict[str, int]
    pid: int | None
    # For SNI: the (server name, port) pairs a client uses in turn.
    sni: list[tuple[str, int]] = field(default_factory=list)


def nginx_backend_config(workdir: Path, backends: Backends, tls: Tls) -> str:
    """nginx as the backend: one worker, keep-alive, logs off; C{/index.html} and C{/big.bin}."""
    temp = workdir / "nginx-temp"
    root = workdir / "www"
    protocols = "TLSv1.2" if tls.version == "1.2" else "TLSv1.3"
    ciphers = f"ssl_ciphers {TLS12_CIPHER};" if tls.version == "1.2" else ""
    ssl = f"""
        ssl_certificate {tls.cert};
        ssl_certificate_key {tls.key};
        ssl_protocols {protocols};
        {ciphers}
        ssl_session_tickets on;
        ssl_session_cache shared:SSL:10m;"""
    sni = "".join(
        f"""
    server {{
        listen {HOST}:{port} ssl backlog=4096;
        server_name {name};
        root {root};{ssl}
    }}"""
        for name, port in zip(SNI_NAMES, backends.sni)
    )
    return f"""
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
        listen {HOST}:{backends.http} backlog=4096;
        root {root};
    }}
    server {{
        listen {HOST}:{backends.https} ssl backlog=4096;
        server_name {NAME};
        root {root};{ssl}
    }}{sni}
}}
"""


def nginx_stream_config(workdir: Path, ports: dict[str, int], echo: int, workers: int) -> str:
    """
    nginx's C{stream} module as the UDP peer, as its documentation shows
    UDP proxying: on C{ports["udp"]} a session per client kept while it is
    busy (C{proxy_timeout 30s}, the balancer's default idle timeout), on
    C{ports["udp1"]} C{proxy_responses 1} (one answer ends the session, as
    for DNS); C{reuseport} with several workers.
    """
    reuseport = " reuseport" if workers > 1 else ""
    servers = "".join(
        f"""
    server {{
        listen {HOST}:{port} udp{reuseport};
        proxy_pass {HOST}:{echo};
        proxy_timeout 30s;{" proxy_responses 1;" if role == "udp1" else ""}
    }}"""
        for role, port in ports.items()
    )
    return f"""
load_module {STREAM_MODULE};
daemon off;
worker_processes {workers};
worker_rlimit_nofile 16384;
pid {workdir}/nginx-stream.pid;
error_log {workdir}/nginx-stream-error.log;
events {{ worker_connections 8192; }}
stream {{{servers}
}}
"""


def haproxy_config(ports: dict[str, int], backends: Backends, tls: Tls, threads: int) -> str:
    """
    HAProxy in C{mode tcp}: plain TCP (C{http}, C{bulk}), TLS termination
    (C{tls}: C{bind ... ssl crt}, to nginx's plain HTTP) and SNI routing
    (C{sni}: C{req.ssl_sni} after C{tcp-request inspect-delay}); no C{log}.
    """
    if tls.version == "1.2":
        versions = f"ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.2 ciphers {TLS12_CIPHER}"
    else:
        versions = "ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3"
    parts = [
        f"""
global
    nbthread {threads}
    maxconn 8000

defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
"""
    ]
    if "http" in ports:
        parts.append(f"\nlisten http\n    bind {HOST}:{ports['http']}\n    server nginx {HOST}:{backends.http}\n")
    if "bulk" in ports:
        parts.append(f"\nlisten bulk\n    bind {HOST}:{ports['bulk']}\n    server iperf3 {HOST}:{backends.bulk}\n")
    if "tls" in ports:
        parts.append(
            f"\nlisten tls\n    bind {HOST}:{ports['tls']} ssl crt {tls.combined} {versions}\n"
            f"    server nginx {HOST}:{backends.http}\n"
        )
    if "sni" in ports:
        uses = "".join(f"    use_backend sni_{i} if {{ req.ssl_sni -i {n} }}\n" for i, n in enumerate(SNI_NAMES))
        servers = "".join(
            f"\nbackend sni_{i}\n    server nginx {HOST}:{p}\n" for i, p in enumerate(backends.sni)
        )
        parts.append(
            f"\nfrontend sni\n    bind {HOST}:{ports['sni']}\n    tcp-request inspect-delay 5s\n"
            f"    tcp-request content accept if {{ req.ssl_hello_type 1 }}\n{uses}{servers}"
        )
    return "".join(parts)


def balancer_config(
    workdir: Path, ports: dict[str, int], backends: Backends, tls: Tls, workers: int, access_log: bool
) -> str:
    """
    This balancer with one server per role of C{ports}: C{http}, C{bulk}
    (plain TCP), C{tls} (C{protocol = "tls"}), C{sni} (C{[sni]}, backends
    with C{sni=}), C{udp} (C{protocol = "udp"}, sessions kept while busy)
    and C{udp1} (C{max_responses = 1} like nginx's C{proxy_responses 1}); logging warnings only, the access log
    off unless C{access_log} (then to a file, the level at info: above it the access log is off too).
    """
    version = f"tls{tls.version}"
    ciphers = f'ciphers = ["{TLS12_CIPHER}"]\n' if tls.version == "1.2" else ""
    head = (
        f'[logging]\nlevel = "{"info" if access_log else "warn"}"\naccess_log = {str(access_log).lower()}\n'
        f'access_output = "{workdir / "access.log"}"\n\n'
        f'[defaults]\nshutdown_grace = "1s"\nworkers = {workers}\n'
    )
    sections = []
    for role, port in ports.items():
        backends_list = {
            "http": [f"{HOST}:{backends.http}"],
            "bulk": [f"{HOST}:{backends.bulk}"],
            "tls": [f"{HOST}:{backends.http}"],
            "sni": [f"{HOST}:{p} sni={n}" for n, p in zip(SNI_NAMES, backends.sni)],
            "udp": [f"{HOST}:{backends.udp}"],
            "udp1": [f"{HOST}:{backends.udp}"],
        }[role]
        protocol = {"tls": "tls", "udp": "udp", "udp1": "udp"}.get(role, "tcp")
        text = (
            f'\n[servers.{role}]\nbind = "{HOST}:{port}"\nprotocol = "{protocol}"\nbalance = "roundrobin"\n'
            f'  [servers.{role}.discovery]\n  kind = "static"\n'
            f"  static_list = [{', '.join(repr(b).replace(chr(39), chr(34)) for b in backends_list)}]\n"
        )
        if role == "tls":
            text += (
                f'  [servers.{role}.tls]\n  cert_path = "{tls.cert}"\n  key_path = "{tls.key}"\n'
                f'  min_version = "{version}"\n  max_version = "{version}"\n  {ciphers}'
            )
        elif role == "sni":
            text += f"  [servers.{role}.sni]\n  read_timeout = \"5s\"\n"
        elif role == "udp1":
            text += f"  [servers.{role}.udp]\n  max_responses = 1\n"
        sections.append(text)
    return head + "".join(sections)


def twistd_path() -> str:
    """The twistd script installed beside the running Python."""
    path = Path(sys.executable).with_name("twistd")
    if not path.exists():
        raise RuntimeError(f"no twistd beside {sys.executable}: run this with the Python that has Twisted")
    return str(path)


def balancer_env(repo: Path = REPO) -> dict[str, str]:
    """The environment of a balancer from the source tree C{repo}: it first on C{PYTHONPATH}."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))


def nginx_argv(workdir: Path, conf: Path, error_log: str, test: bool = False) -> list[str]:
    """How nginx is started on C{conf} (in the foreground, its prefix the work directory), or C{test}s it."""
    return ["nginx", *(["-t"] if test else []), "-p", str(workdir), "-e", str(workdir / error_log), "-c", str(conf)]


def start_backends(procs: Processes, workdir: Path, tls: Tls, big_bytes: int) -> Backends:
    """nginx (one worker), C{iperf3 -s} and the UDP echo server, on free ports."""
    root = workdir / "www"
    root.mkdir()
    (root / "index.html").write_text("x" * (INDEX_BYTES - 1) + "\n")
    with open(root / "big.bin", "wb") as f:
        f.truncate(big_bytes)
    (workdir / "nginx-temp").mkdir()
    # The worker may run as another user: let it read the files.
    for path in (workdir, root, root / "index.html", root / "big.bin"):
        path.chmod(0o755)
    http, https, a, b, bulk = free_ports(5)
    [udp] = free_ports(1, kind=socket.SOCK_DGRAM)
    backends = Backends(http, https, (a, b), bulk, udp)
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_backend_config(workdir, backends, tls))
    procs.start("nginx", nginx_argv(workdir, conf, "nginx-error.log"), [http, https, a, b])
    procs.start("iperf3", ["iperf3", "-s", "-B", HOST, "-p", str(bulk)], [bulk])
    procs.start("udp-echo", [sys.executable, str(BENCH / "udpbench.py"), "echo", "--port", str(udp)], [], udp=(udp,))
    return backends


def start_haproxy(
    procs: Processes, workdir: Path, roles: list[str], backends: Backends, tls: Tls, threads: int
) -> Endpoints:
    """HAProxy with C{threads} threads, one frontend per role."""
    ports = dict(zip(roles, free_ports(len(roles))))
    conf = workdir / "haproxy.cfg"
    conf.write_text(haproxy_config(ports, backends, tls, threads))
    pid = procs.start("haproxy", ["haproxy", "-db", "-f", str(conf)], list(ports.values()))
    return Endpoints(ports, pid, [(n, ports["sni"]) for n in SNI_NAMES] if "sni" in ports else [])


def start_nginx_stream(procs: Processes, workdir: Path, backends: Backends, workers: int) -> Endpoints:
    """nginx's C{stream} UDP proxy in front of the echo server."""
    if not STREAM_MODULE.exists():
        raise RuntimeError(f"no {STREAM_MODULE}: apt-get install libnginx-mod-stream (or leave out udp)")
    ports = dict(zip(UDP_ROLES, free_ports(len(UDP_ROLES), kind=socket.SOCK_DGRAM)))
    conf = workdir / "nginx-stream.conf"
    conf.write_text(nginx_stream_config(workdir, ports, backends.udp, workers))
    argv = nginx_argv(workdir, conf, "nginx-stream-error.log")
    pid = procs.start("nginx-stream", argv, [], udp=tuple(ports.values()))
    return Endpoints(ports, pid)


def start_balancer(
    procs: Processes,
    workdir: Path,
    roles: list[str],
    backends: Backends,
    tls: Tls,
    workers: int,
    access_log: bool,
    name: str = "balancer",
    repo: Path = REPO,
) -> Endpoints:
    """
    This balancer from the source tree C{repo} (default: this working tree),
    one server per role, C{workers} processes; C{name} names its files.
    """
    tcp = [r for r in roles if r not in UDP_ROLES]
    udp_roles = [r for r in roles if r in UDP_ROLES]
    ports = dict(zip(tcp, free_ports(len(tcp))))
    ports.update(zip(udp_roles, free_ports(len(udp_roles), kind=socket.SOCK_DGRAM)))
    conf = workdir / f"{name}.toml"
    conf.write_text(balancer_config(workdir, ports, backends, tls, workers, access_log))
    argv = [twistd_path(), "-n", "--pidfile=", "balancer", f"--config={conf}"]
    udp = tuple(ports[r] for r in udp_roles)
    pid = procs.start(name, argv, [ports[r] for r in tcp], balancer_env(repo), listeners=workers, udp=udp)
    return Endpoints(ports, pid, [(n, ports["sni"]) for n in SNI_NAMES] if "sni" in ports else [])
