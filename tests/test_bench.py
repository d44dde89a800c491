"""
The comparison harness (C{bench/compare.py} and its modules): the
configurations it generates for HAProxy, nginx and this balancer are valid
to each (C{haproxy -c}, C{nginx -t}, C{twistd balancer --check}), and the
clients' output is read as it should be.  No benchmark runs here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Generator

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from balancer.accesslog import start_access_log
from balancer.config.load import read_config_file
from balancer.proxy.finished import FinishedConnections
from tests.support.paths import ROOT, scratch_directory
from tests.support.processes import run_twistd
from tests.support.tools import require_tool, unavailable

BENCH = os.path.join(ROOT, "bench")
if BENCH not in sys.path:
    # The bench modules import one another by their plain names, as when run as scripts.
    sys.path.insert(0, BENCH)

import clients  # noqa: E402
import compare  # noqa: E402
import harness  # noqa: E402
import peers  # noqa: E402
import running  # noqa: E402
from running import MeasurementError  # noqa: E402

WRK_OUTPUT = """\
Running 2s test @ http://127.0.0.1:40000/index.html
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.01ms  420.00us   9.00ms   80.00%
    Req/Sec    24.00k     1.00k   26.00k    70.00%
  Latency Distribution
     50%    1.50ms
     75%    2.00ms
     90%    2.50ms
     99%  850.00us
  48000 requests in 2.00s, 38.00MB read
Requests/sec:  24000.50
Transfer/sec:     19.00MB
"""

BACKENDS = peers.Backends(http=40001, https=40002, sni=(40003, 40004), bulk=40005, udp=40006)
ALL_PORTS = {"http": 41001, "bulk": 41002, "tls": 41003, "sni": 41004}


def certificate(test: SynchronousTestCase, version: str = "1.2") -> tuple[Path, peers.Tls]:
    """A scratch directory of C{test}'s and a certificate made in it by the harness (needs openssl)."""
    require_tool("openssl")
    workdir = Path(scratch_directory(test))
    return workdir, peers.make_certificate(workdir, version)


def check(argv: list[str]) -> str:
    """Run a configuration check to completion (60 s at most); its output, or a failure with it."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"{argv[0]} refused the configuration ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout + done.stderr


class ReadingTests(SynchronousTestCase):
    """The clients' output as figures."""

    def test_wrkReportReadAsRatesAndMilliseconds(self) -> None:
        """Requests/s, p50 and p99 in ms (whatever unit wrk printed), bytes/s."""
        self.assertEqual(
            clients.parse_wrk(WRK_OUTPUT),
            {"rps": 24000.5, "p50": 1.5, "p99": 0.85, "bytes_per_s": 19.0 * (1 << 20)},
        )

    def test_wrkErrorsFailTheSample(self) -> None:
        """Socket errors or non-2xx answers fail the sample, naming them."""
        out = WRK_OUTPUT.replace("Requests/sec", "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec")
        with self.assertRaisesRegex(MeasurementError, "Socket errors: connect 0, read 3"):
            clients.parse_wrk(out)
        with self.assertRaisesRegex(MeasurementError, "not understood"):
            clients.parse_wrk("wrk: connection refused")

    def test_iperf3ReceiverThroughput(self) -> None:
        """The receiver's bits/s in Gbit/s; anything else fails the sample."""
        report = {"end": {"sum_received": {"bits_per_second": 12.5e9}, "sum_sent": {"bits_per_second": 13e9}}}
        self.assertEqual(clients.parse_iperf3(json.dumps(report)), 12.5)
        with self.assertRaisesRegex(MeasurementError, "iperf3: the server is busy"):
            clients.parse_iperf3('{"start": {}, "error": "the server is busy running a test. try again later"}')
        with self.assertRaisesRegex(MeasurementError, "iperf3 output not understood"):
            clients.parse_iperf3('{"start": {}}')

    def test_handshakesSummedAndResumptionChecked(self) -> None:
        """Rates add up over the client processes; the share resumed is reported; a full run is never resumed."""
        lines = [json.dumps({"connections": 100, "reused": r, "failures": 0, "seconds": 2.0}) for r in (99, 100)]
        self.assertEqual(clients.parse_handshakes(lines, resume=True),
                         {"rate": 100.0, "connections": 200, "reused": 0.995})
        half = [json.dumps({"connections": 10, "reused": 5, "seconds": 1})]
        self.assertEqual(clients.parse_handshakes(half, resume=True)["reused"], 0.5)
        with self.assertRaisesRegex(MeasurementError, "1 of the full handshakes were resumed"):
            clients.parse_handshakes([json.dumps({"connections": 10, "reused": 1, "seconds": 1})], resume=False)

    def test_udpSummedWithLosses(self) -> None:
        """Answers per second add up over the client processes, and so do losses; no answer fails."""
        lines = [json.dumps({"answers": 1000, "lost": 1, "seconds": 2.0}), json.dumps({"answers": 500, "lost": 0,
                                                                                        "seconds": 1.0})]
        self.assertEqual(clients.parse_udp(lines), {"rate": 1000.0, "lost": 1.0})
        with self.assertRaisesRegex(MeasurementError, "no datagram answered"):
            clients.parse_udp([json.dumps({"answers": 0, "lost": 3, "seconds": 1.0})])

    def test_harnessNamesItsParameters(self) -> None:
        """The output names wrk's -t/-c, iperf3's -l, the handshake and UDP clients; the two settings differ."""
        text = harness.STANDARD.describe()
        for part in ("wrk -t1 -c50", "iperf3 -l 128K", "2 closed-loop client processes", "32 closed-loop clients"):
            self.assertIn(part, text)
        self.assertIn("wrk -t1 -c100", harness.ALT.describe())
        self.assertEqual(harness.SETTINGS["both"], (harness.STANDARD, harness.ALT))


class PeerConfigurationTests(SynchronousTestCase):
    """HAProxy's and nginx's configurations, checked by the programs themselves."""

    def test_haproxyAcceptsEveryFrontend(self) -> None:
        """C{haproxy -c}: plain TCP, TLS termination (both versions) and SNI routing together."""
        haproxy = require_tool("haproxy")
        for version in ("1.2", "1.3"):
            workdir, tls = certificate(self, version)
            conf = workdir / "haproxy.cfg"
            conf.write_text(peers.haproxy_config(ALL_PORTS, BACKENDS, tls, threads=2))
            out = check([haproxy, "-c", "-f", str(conf)])
            self.assertIn("Configuration file is valid", out)
        text = conf.read_text()
        self.assertIn("req.ssl_sni -i a.bench.test", text)
        self.assertNotIn("\n    log", text)

    def test_nginxBackendAccepted(self) -> None:
        """C{nginx -t} on the backends: HTTP, HTTPS, the two named HTTPS servers."""
        require_tool("nginx")
        workdir, tls = certificate(self)
        (workdir / "nginx-temp").mkdir()
        conf = workdir / "nginx.conf"
        conf.write_text(peers.nginx_backend_config(workdir, BACKENDS, tls))
        self.assertIn("test is successful", check(peers.nginx_argv(workdir, conf, "error.log", test=True)))

    def test_nginxStreamAccepted(self) -> None:
        """C{nginx -t} on the UDP peer (both servers: sessions kept, and C{proxy_responses 1})."""
        require_tool("nginx")
        if not peers.STREAM_MODULE.exists():
            unavailable(f"needs {peers.STREAM_MODULE} (apt-get install libnginx-mod-stream)")
        workdir = Path(scratch_directory(self))
        conf = workdir / "stream.conf"
        conf.write_text(peers.nginx_stream_config(workdir, {"udp": 42001, "udp1": 42002}, 40006, workers=2))
        self.assertIn("test is successful", check(peers.nginx_argv(workdir, conf, "error.log", test=True)))
        self.assertEqual(conf.read_text().count("proxy_responses 1;"), 1)


class BalancerConfigurationTests(TestCase):
    """The balancer's configuration, checked by C{twistd balancer --check}."""

    @inlineCallbacks
    def test_balancerAcceptsEveryRole(self) -> Generator[Deferred[Any], Any, None]:
        """Every role (TCP, TLS, SNI, both UDP servers), with the access log on and off, and both TLS versions."""
        for version, access_log in (("1.2", False), ("1.3", True)):
            workdir, tls = certificate(self, version)
            ports = {**ALL_PORTS, "udp": 41005, "udp1": 41006}
            conf = workdir / "balancer.toml"
            conf.write_text(peers.balancer_config(workdir, ports, BACKENDS, tls, workers=2, access_log=access_log))
            out, err, code = yield run_twistd("balancer", "--check", f"--config={conf}", cwd=str(workdir))
            self.assertEqual((code, err), (0, b""), out)
        text = conf.read_text()
        self.assertIn('sni=a.bench.test"', text)
        self.assertIn("max_responses = 1", text)

    def test_accessLogWrittenWhenAskedFor(self) -> None:
        """C{--access-log} configures a balancer whose access log subscribes (its level lets the lines through)."""
        for access_log in (False, True):
            workdir, tls = certificate(self, "1.2")
            conf = workdir / "balancer.toml"
            conf.write_text(peers.balancer_config(workdir, ALL_PORTS, BACKENDS, tls, workers=1, access_log=access_log))
            finished = FinishedConnections()
            start_access_log(read_config_file(str(conf)).logging, finished)
            self.assertEqual(finished.wanted, access_log)


class SummaryTests(SynchronousTestCase):
    """The medians and ratios of the tables."""

    def test_ratiosArePerRoundWhenPaired(self) -> None:
        """Samples in every round: the median of the rounds' ratios, so load drifting between rounds cancels out."""
        samples = {"standard": {"tcp.conn_rate": {
            "direct": [100.0, 50.0, 100.0], "peer": [10.0, 5.0, 10.0], "balancer": [8.0, 4.0, 9.0],
        }}}
        row = compare.summarize(samples, ["direct", "peer", "balancer"])["standard"]["tcp.conn_rate"]
        self.assertEqual((row["peer"], row["balancer"]), (10.0, 8.0))
        self.assertEqual(row["balancer/peer"], 0.8)
        self.assertEqual(row["balancer/direct"], 0.08)

    def test_ratioOfMediansWhenASampleFailed(self) -> None:
        """A round without a sample of one path: the ratio of the medians; none without samples."""
        self.assertEqual(compare.ratio([8.0, 4.0], [10.0, 5.0, 20.0]), 0.6)
        self.assertIsNone(compare.ratio([], [1.0]))

    def test_harnessCheckFlagsShiftsAndShowsTheNoise(self) -> None:
        """A balancer-to-peer ratio moved beyond 10% by the alt setting is flagged, beside each setting's spread."""
        def rounds(peer: float, balancer: float) -> dict[str, list[float]]:
            return {"direct": [100.0] * 3, "peer": [peer] * 3, "balancer": [balancer, balancer * 1.2, balancer]}

        samples = {
            "standard": {"udp.rate": rounds(10.0, 8.0), "udp.rate_1": rounds(10.0, 8.0)},
            "alt": {"udp.rate": rounds(10.0, 6.0), "udp.rate_1": rounds(10.0, 8.0)},
        }
        options = compare.Options(["udp"], 3, 5.0, 1, "1.2", (harness.STANDARD, harness.ALT), False)
        names = compare.path_names(options)
        table = compare.summarize(samples, names)
        lines = compare.harness_check(table, samples, options)
        kept = [line for line in lines if "sessions kept" in line][0]
        self.assertEqual(kept.split()[-6:], ["1.00", "1.00", "0.75*", "0.75*", "20%", "20%"])
        one = [line for line in lines if "1 answer a session" in line][0]
        self.assertEqual(one.split()[-3:], ["1.00", "20%", "20%"])
        self.assertIn("largest shift of a bal/peer ratio: 25%", lines)

    def test_renderNamesTheHarnessTheTlsAndTheMachine(self) -> None:
        """The text output: the client parameters, one table per protocol with the peer named, TLS, machine."""
        options = compare.Options(["tls"], 3, 5.0, 2, "1.2", (harness.STANDARD,), False)
        names = compare.path_names(options)
        samples = {"standard": {m.key: {p: [1.0, 2.0, 3.0] for p in names} for m in compare.METRICS["tls"]}}
        info: dict[str, object] = {
            "machine": {"nproc": "2"}, "versions": {"haproxy": "2.6"},
            "tls": {p: "TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256" for p in names},
        }
        text = compare.render(compare.summarize(samples, names), samples, options, info)
        self.assertIn(harness.STANDARD.describe(), text)
        self.assertIn("TLS (standard)", text)
        self.assertIn("haproxy nbthread 2", text)
        self.assertIn("TLS: RSA-2048 certificate, TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256 on every path", text)
        self.assertIn("machine: nproc 2", text)


class CpuTests(SynchronousTestCase):
    """The proxy's CPU time per counted thing, in all and in user space (from C{/proc})."""

    def test_userSpaceShareOfTheCpuPerCount(self) -> None:
        """
        An action that spins in user space until C{/proc} counts three clock
        ticks of it (a measured amount, not a timed one) costs at least that
        much per count, nearly all of it in user space.
        """
        tick = 1 / os.sysconf("SC_CLK_TCK")

        def spin() -> dict[str, float]:
            start = running.tree_cpu_times(os.getpid())[0]
            while running.tree_cpu_times(os.getpid())[0] - start < 3 * tick:
                sum(range(10000))
            return {"count": 2.0}

        result, cost = compare.cpu_per(os.getpid(), spin, "count")
        self.assertEqual(result, {"count": 2.0})
        assert cost is not None
        self.assertGreaterEqual(cost.user, 1.5 * tick * 1e6)
        self.assertLessEqual(cost.user, cost.total)

    def test_noCostWithoutAProxyOrACount(self) -> None:
        """Direct (no proxy pid), or a run that counted nothing: no CPU figure."""
        self.assertEqual(compare.cpu_per(None, lambda: {"count": 5.0}, "count"), ({"count": 5.0}, None))
        self.assertEqual(compare.cpu_per(os.getpid(), lambda: {"count": 0.0}, "count"), ({"count": 0.0}, None))


class BeforeTests(SynchronousTestCase):
    """C{--before DIR}: the balancer of another source tree measured in the same rounds."""

    def test_beforeMustBeASourceTreeOfTheBalancer(self) -> None:
        """A directory without the balancer's package is refused with its name (else the installed one would run)."""
        empty = scratch_directory(self)
        error = io.StringIO()
        with contextlib.redirect_stderr(error), self.assertRaises(SystemExit) as raised:
            compare.parse_options(["--before", empty])
        self.assertEqual(raised.exception.code, 2)
        self.assertIn(f"--before {empty}: not a source tree of the balancer", error.getvalue())

    def test_beforeBalancerRunsItsOwnTree(self) -> None:
        """The before balancer's environment puts its tree first on the import path."""
        env = peers.balancer_env(Path("/elsewhere/tree"))
        self.assertEqual(env["PYTHONPATH"].split(os.pathsep)[0], "/elsewhere/tree")
        self.assertEqual(peers.balancer_env()["PYTHONPATH"].split(os.pathsep)[0], str(peers.REPO))

    def test_beforeHasItsColumnAndRatio(self) -> None:
        """The before path is a column of every table, with the balancer's ratio to it per round."""
        options = compare.Options(["tcp"], 3, 5.0, 1, "1.2", (harness.STANDARD,), False, Path("/base"))
        names = compare.path_names(options)
        self.assertEqual(names, ["direct", "peer", "balancer", "before"])
        samples = {"standard": {m.key: {p: [1.0, 2.0, 3.0] for p in names} for m in compare.METRICS["tcp"]}}
        samples["standard"]["tcp.conn_rate"]["before"] = [0.5, 1.0, 1.0]
        table = compare.summarize(samples, names)
        self.assertEqual(table["standard"]["tcp.conn_rate"]["balancer/before"], 2.0)
        info: dict[str, object] = {"machine": {"nproc": "2"}, "versions": {}}
        lines = compare.render(table, samples, options, info).splitlines()
        header = [line for line in lines if line.startswith("metric")][0]
        self.assertEqual(header.split()[-2:], ["before", "bal/before"])
        row = [line for line in lines if line.startswith("new connections")][0]
        self.assertEqual(row.split()[-2:], ["1", "2.00"])
        self.assertIn("before: the balancer of /base, measured in the same rounds", lines)
