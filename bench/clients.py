"""
The clients of a comparison run and the reading of their output: wrk
(HTTP and HTTPS), iperf3, the TLS handshake client (C{handshakes.py}) and
the UDP request/response client (C{udpbench.py}).  Each run is bounded in
time; output that cannot be read fails the sample (L{MeasurementError}).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from running import HOST, MeasurementError, run_client, run_clients

BENCH = Path(__file__).resolve().parent
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
SIZES = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def parse_wrk(out: str) -> dict[str, float]:
    """
    wrk's report (with C{--latency}) as requests per second, p50 and p99 in
    ms, and bytes per second; a socket error or a non-2xx answer fails it.
    """
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    transfer = re.search(r"^Transfer/sec:\s+([\d.]+)([KMGT]?B)", out, re.M)
    quantiles = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+[a-z]+)", out, re.M))
    if not rps or not transfer or set(quantiles) != {"50", "99"}:
        raise MeasurementError(f"wrk output not understood: {out}")
    errors = re.search(r"^\s+(Socket errors:.*|Non-2xx or 3xx responses:.*)$", out, re.M)
    if errors:
        raise MeasurementError(f"wrk: {errors.group(1)}")

    def ms(text: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)([a-z]+)", text).groups()  # type: ignore[union-attr]
        return float(number) * UNITS[unit]

    return {
        "rps": float(rps.group(1)),
        "p50": ms(quantiles["50"]),
        "p99": ms(quantiles["99"]),
        "bytes_per_s": float(transfer.group(1)) * SIZES[transfer.group(2)],
    }


def wrk(
    url: str, duration: float, connections: int, *, close: bool = False, threads: int = 1, timeout: float = 5
) -> dict[str, float]:
    """
    Run wrk (C{threads} threads, C{connections} connections) on C{url}, a
    request unanswered after C{timeout} s counting as an error; see
    L{parse_wrk}.
    """
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", f"{timeout:g}s"]
    if close:
        argv += ["-H", "Connection: close"]
    return parse_wrk(run_client(argv + [url], duration))


def parse_iperf3(out: str) -> float:
    """iperf3's JSON report as the receiver's throughput in Gbit/s; its error, if it reports one, fails it."""
    try:
        report = json.loads(out)
        if "error" in report:
            raise MeasurementError(f"iperf3: {report['error']}")
        return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9
    except (ValueError, KeyError, TypeError) as e:
        raise MeasurementError(f"iperf3 output not understood ({e!r}): {out[-500:]}") from None


def iperf3(port: int, streams: int, duration: float, length: str, attempts: int = 10) -> float:
    """
    Throughput in Gbit/s that the iperf3 server received through C{port},
    with C{-l length}; asked again (C{attempts} times at most, 0.5 s apart)
    while the server is busy with the test before.
    """
    argv = ["iperf3", "-c", HOST, "-p", str(port), "-t", f"{duration:g}", "-P", str(streams), "-l", length, "-J"]
    for _ in range(attempts - 1):
        try:
            return parse_iperf3(run_client(argv + ["--connect-timeout", "5000"], duration))
        except MeasurementError as e:
            if "server is busy" not in str(e):
                raise
        time.sleep(0.5)
    return parse_iperf3(run_client(argv + ["--connect-timeout", "5000"], duration))


def parse_handshakes(outputs: list[str], resume: bool) -> dict[str, float]:
    """
    The JSON lines of several C{handshakes.py} processes as connections per
    second (summed) and the share of them resumed (for a resumed run:
    reported, as a server may fail to resume, e.g. several processes each
    with its own ticket key); fails a full run where any was resumed.
    """
    connections = reused = 0
    rate = 0.0
    for out in outputs:
        try:
            one = json.loads(out)
            connections += one["connections"]
            reused += one["reused"]
            rate += one["connections"] / one["seconds"]
        except (ValueError, KeyError, TypeError, ZeroDivisionError) as e:
            raise MeasurementError(f"handshake client output not understood ({e!r}): {out[-300:]}") from None
    if not connections:
        raise MeasurementError("no connection made")
    share = reused / connections
    if not resume and reused:
        raise MeasurementError(f"{reused} of the full handshakes were resumed")
    return {"rate": rate, "connections": connections, "reused": share}


def handshakes(
    targets: list[tuple[str, int]], clients: int, duration: float, tls: str, resume: bool
) -> dict[str, float]:
    """C{clients} processes of C{handshakes.py} on C{targets} for C{duration} s; see L{parse_handshakes}."""
    argv = [sys.executable, str(BENCH / "handshakes.py"), "--seconds", f"{duration:g}", "--tls", tls]
    argv += [a for name, port in targets for a in ("--target", f"{name}@{port}")]
    if resume:
        argv.append("--resume")
    return parse_handshakes(run_clients([argv] * clients, duration), resume)


def parse_udp(outputs: list[str]) -> dict[str, float]:
    """The JSON lines of several C{udpbench.py client} processes as answers per second (summed) and losses."""
    rate = lost = 0.0
    for out in outputs:
        try:
            one = json.loads(out)
            rate += one["answers"] / one["seconds"]
            lost += one["lost"]
        except (ValueError, KeyError, TypeError, ZeroDivisionError) as e:
            raise MeasurementError(f"UDP client output not understood ({e!r}): {out[-300:]}") from None
    if not rate:
        raise MeasurementError("no datagram answered")
    return {"rate": rate, "lost": lost}


def udp(port: int, clients: int, processes: int, duration: float, size: int) -> dict[str, float]:
    """C{clients} closed-loop UDP clients spread over C{processes} processes; see L{parse_udp}."""
    share = [clients // processes + (i < clients % processes) for i in range(processes)]
    argvs = [
        [sys.executable, str(BENCH / "udpbench.py"), "client", "--port", str(port), "--clients", str(n),
         "--seconds", f"{duration:g}", "--size", str(size)]
        for n in share if n
    ]
    return parse_udp(run_clients(argvs, duration))
