"""
The access log of a real C{twistd balancer}: one line per connection, with
the right reason for each ending (client closed, backend closed, client
idle timeout, backend refused, no backend, denied by the access rules), on
the relay engine (C{[defaults] splice}, the default) with JSON lines and on
Twisted's transports (C{splice = false}) with text lines.
"""

from __future__ import annotations

import json
import os
import re
import signal
from typing import Any, Generator

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SkipTest, TestCase

from tests.support.clients import Echo, Named, exchange, listen, port_number
from tests.support.paths import scratch_directory
from tests.support.processes import WatchedProcess, spawn_balancer
from tests.support.waiting import until

#: A text access line (see L{balancer.accesslog}).
TEXT_LINE = re.compile(
    r"\[balancer\.access#info\] server=(?P<server>\S+) client=(?P<client>\S+) backend=(?P<backend>\S+)"
    r" protocol=(?P<protocol>\S+) connect=(?P<connect>\S+) duration=(?P<duration>\S+)"
    r' from_client=(?P<tx>\d+) to_client=(?P<rx>\d+) reason="(?P<reason>[^"]*)"$'
)


class Silent(Protocol):
    """A backend that reads and never answers nor closes."""


def access_lines(process: WatchedProcess) -> list[dict[str, Any]]:
    """The access log lines the process wrote so far, each as a dictionary (JSON or text lines)."""
    lines = []
    for raw in process.output.decode("utf-8", "replace").splitlines():
        if raw.startswith("{"):
            record = json.loads(raw)
            if record.get("namespace") == "balancer.access":
                lines.append(record)
            continue
        match = TEXT_LINE.search(raw)
        if match is not None:
            lines.append(match.groupdict())
    return lines


def file_lines(path: str) -> list[str]:
    """The lines of the file at C{path} (none when there is no file)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


class AccessLogProcess:
    """One twistd with a server for each ending, on the data path of C{splice}, logging in C{format}."""

    splice: bool
    format: str
    timeout = 60

    @inlineCallbacks
    def start(self) -> Generator[Deferred[Any], Any, None]:
        """Start the backends and twistd; fires once every server listens."""
        test: Any = self
        directory = scratch_directory(test)
        config = os.path.join(directory, "balancer.toml")
        backends = {}
        for name, protocol, attributes in (("closing", Named, {"name": b"bye"}), ("echo", Echo, {}),
                                           ("idle", Silent, {})):
            port = yield listen(protocol, **attributes)
            test.addCleanup(port.stopListening)
            backends[name] = f"127.0.0.1:{port_number(port)}"
        gone = yield listen(Protocol)
        backends["refused"] = f"127.0.0.1:{port_number(gone)}"
        yield gone.stopListening()
        backends["denied"] = backends["echo"]
        extra = {"idle": 'client_idle_timeout = "300ms"\n', "denied": '[servers.denied.access]\ndefault = "deny"\n'}
        servers = "".join(
            f'[servers.{name}]\nbind = "127.0.0.1:0"\n{extra.get(name, "") if name == "idle" else ""}'
            f'[servers.{name}.discovery]\nkind = "static"\nstatic_list = ["{backend}"]\n'
            f'{extra.get(name, "") if name == "denied" else ""}'
            for name, backend in backends.items()
        )
        with open(config, "w", encoding="utf-8") as f:
            f.write(f"""
[logging]
format = "{self.format}"
[defaults]
splice = {"true" if self.splice else "false"}
shutdown_grace = "1s"
{servers}
[servers.empty]
bind = "127.0.0.1:0"
[servers.empty.discovery]
kind = "static"
static_list = ["{backends['refused']}"]
[servers.empty.healthcheck]
kind = "ping"
interval = "1h"
initial_status = "unhealthy"
""")
        self.process = spawn_balancer(test, config, marker=b"empty: listening on")
        yield self.process.seen
        self.ports = {}
        for name in (*backends, "empty"):
            self.ports[name] = yield self.process.listening_port(name)

    @inlineCallbacks
    def logged(self, server: str, count: int = 1) -> Generator[Deferred[Any], Any, list[dict[str, Any]]]:
        """Fires with the access lines of C{server} once there are C{count}."""

        def mine() -> list[dict[str, Any]]:
            return [line for line in access_lines(self.process) if line["server"] == server]

        yield until(lambda: len(mine()) >= count, 20, f"{count} access lines of {server}")
        return mine()

    @inlineCallbacks
    def test_oneLinePerConnectionWithItsReason(self) -> Generator[Deferred[Any], Any, None]:
        test: Any = self
        yield self.start()
        answer = yield exchange(self.ports["closing"], half_close=False)
        test.assertEqual(answer, b"bye")
        echoed = yield exchange(self.ports["echo"], b"hello")
        test.assertEqual(echoed, b"hello")
        yield exchange(self.ports["echo"], b"again")
        yield exchange(self.ports["idle"], half_close=False)
        yield exchange(self.ports["refused"], half_close=False)
        yield exchange(self.ports["empty"], half_close=False)
        yield exchange(self.ports["denied"], b"x")
        expected = {
            "closing": ["backend closed"],
            "echo": ["client closed", "client closed"],
            "idle": ["client idle timeout"],
            "refused": ["backend refused or unreachable"],
            "empty": ["no backend"],
            "denied": ["denied"],
        }
        for server, reasons in expected.items():
            lines = yield self.logged(server, len(reasons))
            test.assertEqual([line["reason"] for line in lines], reasons, server)
        [closing] = yield self.logged("closing")
        test.assertEqual(str(closing["rx"]), "3")
        test.assertEqual(str(closing["tx"]), "0")
        test.assertTrue(closing["client"].startswith("127.0.0.1:"))
        test.assertEqual(closing["protocol"], "tcp")
        echo = yield self.logged("echo", 2)
        test.assertEqual([(str(line["tx"]), str(line["rx"])) for line in echo], [("5", "5"), ("5", "5")])
        [empty] = yield self.logged("empty")
        test.assertIn(empty["backend"], (None, "-"))
        [refused] = yield self.logged("refused")
        test.assertIn(refused.get("connect_seconds", refused.get("connect")), (None, "-"))
        yield self.process.stop()
        test.assertEqual(len(access_lines(self.process)), 7)


class EngineJsonTests(AccessLogProcess, TestCase):
    """On the relay engine (the default), in JSON."""

    splice = True
    format = "json"


class TwistedTextTests(AccessLogProcess, TestCase):
    """On Twisted's transports, as text."""

    splice = False
    format = "text"


def server_section(name: str, backend: int) -> str:
    """A C{[servers.NAME]} on a free port of 127.0.0.1 in front of the one backend at 127.0.0.1:C{backend}."""
    return (
        f'[servers.{name}]\nbind = "127.0.0.1:0"\n'
        f'[servers.{name}.discovery]\nkind = "static"\nstatic_list = ["127.0.0.1:{backend}"]'
    )


class WorkersTests(TestCase):
    """With C{[defaults] workers = 2}, the other worker's connections are in worker 0's access log too."""

    timeout = 60

    @inlineCallbacks
    def test_everyWorkersConnectionsLogged(self) -> Generator[Deferred[Any], Any, None]:
        directory = scratch_directory(self)
        config = os.path.join(directory, "balancer.toml")
        echo = yield listen(Echo)
        self.addCleanup(echo.stopListening)
        with open(config, "w", encoding="utf-8") as f:
            f.write(f"""
[logging]
format = "json"
[defaults]
workers = 2
shutdown_grace = "1s"
{server_section('echo', port_number(echo))}
""")
        process = spawn_balancer(self, config, marker=b"echo: listening on")
        port = yield process.listening_port("echo")
        yield process.wait_for(rb"worker 1 \(pid \d+\) serving")
        count = 40
        for i in range(count):
            answer = yield exchange(port, b"%02d" % i)
            self.assertEqual(answer, b"%02d" % i)
        yield until(lambda: len(access_lines(process)) >= count, 20, f"{count} access lines")
        lines = access_lines(process)
        self.assertEqual(len(lines), count)
        self.assertEqual({line["reason"] for line in lines}, {"client closed"})
        self.assertEqual(sorted(line["tx"] for line in lines), [2] * count)
        self.assertIn("worker 1", {line.get("system") for line in lines})


class AccessOutputTests(TestCase):
    """C{[logging] access_output}: the access log in a file of its own, reopened on SIGUSR1 (logrotate's way)."""

    timeout = 60

    @inlineCallbacks
    def test_ownFileReopenedOnUsr1(self) -> Generator[Deferred[Any], Any, None]:
        directory = scratch_directory(self)
        config = os.path.join(directory, "balancer.toml")
        access = os.path.join(directory, "access.log")
        echo = yield listen(Echo)
        self.addCleanup(echo.stopListening)
        with open(config, "w", encoding="utf-8") as f:
            f.write(f"""
[logging]
access_output = "{access}"
{server_section('echo', port_number(echo))}
""")
        process = spawn_balancer(self, config, marker=b"echo: listening on")
        port = yield process.listening_port("echo")

        yield exchange(port, b"one")
        yield until(lambda: len(file_lines(access)) == 1, 20, "the first access line in its file")
        os.rename(access, access + ".1")
        assert process.transport is not None and process.transport.pid is not None
        os.kill(process.transport.pid, signal.SIGUSR1)
        yield process.wait_for(rb"log file \S+access\.log reopened")
        yield exchange(port, b"two!")
        yield until(lambda: len(file_lines(access)) == 1, 20, "the second access line in the new file")
        self.assertIn("from_client=3 ", file_lines(access + ".1")[0])
        self.assertIn("from_client=4 ", file_lines(access)[0])
        self.assertEqual(access_lines(process), [])


class Joined(Protocol):
    """A backend that counts its connections (in its factory's C{joined} list) and never answers nor closes."""

    def connectionMade(self) -> None:
        self.factory.joined.append(self)


#: A whole text access line, as the access log's own writer and Twisted's observers write it.
WHOLE_TEXT_LINE = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[(?:balancer\.access#info|worker \d+)\] server=(?P<server>\w+)"
    r" client=127\.0\.0\.1:(?P<port>\d+) backend=127\.0\.0\.1:\d+ protocol=tcp connect=\d+\.\d{3}s"
    r' duration=\d+\.\d{3}s from_client=(?P<tx>\d+) to_client=(?P<rx>\d+) reason="(?P<reason>[^"]+)"'
)


class OwnWriterTests(TestCase):
    """
    The access log's own writer in a real balancer: one whole line per
    connection in its file for many connections at once, the lines of the
    last turn written at shutdown, a file that cannot be written leaving
    the data plane and the main log alone, and workers appending their
    lines to the file themselves.
    """

    timeout = 90

    def setUp(self) -> None:
        self.directory = scratch_directory(self)

    @inlineCallbacks
    def balancer(self, logging: str, *, workers: int = 1,
                 main: str | None = None) -> Generator[Deferred[Any], Any, tuple[WatchedProcess, int, int, list[Joined]]]:
        """
        A balancer with C{[logging]} C{logging}, its main log in the file
        C{main} if given; fires with it, the ports of its echo and silent
        servers and the silent backend's connections.
        """
        config = os.path.join(self.directory, "balancer.toml")
        echo = yield listen(Echo)
        self.addCleanup(echo.stopListening)
        joined: list[Joined] = []
        silent = yield listen(Joined, joined=joined)
        self.addCleanup(silent.stopListening)
        with open(config, "w", encoding="utf-8") as f:
            f.write(f"""
[logging]
{logging}
[defaults]
workers = {workers}
shutdown_grace = "1s"
{server_section('echo', port_number(echo))}
{server_section('silent', port_number(silent))}
""")
        process = spawn_balancer(self, config, marker=b"silent: listening on")
        if main is None:
            echo_port = yield process.listening_port("echo")
            silent_port = yield process.listening_port("silent")
            return process, echo_port, silent_port, joined

        process.seen.addErrback(lambda _: None)  # the marker is in the main log's file, not on stdout

        def found(pattern: bytes) -> re.Match[bytes] | None:
            return re.search(pattern, b"\n".join(line.encode() for line in file_lines(main)))

        ready = rb"worker 1 \(pid \d+\) serving"
        yield until(lambda: found(ready) is not None, 30, "worker 1 serving, in the main log")
        ports = [found(rb"\b%s: listening on 127\.0\.0\.1:(\d+)" % name) for name in (b"echo", b"silent")]
        return process, *[int(match.group(1)) for match in ports if match is not None], joined

    @inlineCallbacks
    def test_oneWholeLinePerConcurrentConnectionAndTheLastAtShutdown(self) -> Generator[Deferred[Any], Any, None]:
        access = os.path.join(self.directory, "access.log")
        process, echo, silent, joined = yield self.balancer(f'access_output = "{access}"')
        count = 40
        answers = yield gatherResults([exchange(echo, b"x" * (i + 1)) for i in range(count)])
        self.assertEqual(sorted(map(len, answers)), list(range(1, count + 1)))
        yield until(lambda: len(file_lines(access)) >= count, 20, f"{count} access lines")
        lines = file_lines(access)
        matches = [WHOLE_TEXT_LINE.fullmatch(line) for line in lines]
        self.assertNotIn(None, matches, lines)
        self.assertEqual(sorted(int(m["tx"]) for m in matches if m is not None), list(range(1, count + 1)))
        self.assertEqual({(m["server"], m["reason"], m["tx"] == m["rx"]) for m in matches if m is not None},
                         {("echo", "client closed", True)})
        self.assertEqual(len({m["port"] for m in matches if m is not None}), count)
        idle = [exchange(silent, half_close=False) for _ in range(10)]
        yield until(lambda: len(joined) == 10, 20, "10 connections to the silent backend")
        yield process.stop()
        yield gatherResults(idle)
        ended = [WHOLE_TEXT_LINE.fullmatch(line) for line in file_lines(access)[count:]]
        self.assertEqual([(m["server"], m["reason"]) for m in ended if m is not None], [("silent", "shutdown")] * 10)
        self.assertEqual(access_lines(process), [])

    @inlineCallbacks
    def test_aFullAccessFileLeavesTheDataPlaneAndTheMainLog(self) -> Generator[Deferred[Any], Any, None]:
        """C{access_output = "/dev/full"}: every connection relayed, one error in the main log, which writes on."""
        if not os.path.exists("/dev/full"):
            raise SkipTest("no /dev/full")  # Linux has it
        process, echo, _, _ = yield self.balancer('access_output = "/dev/full"')
        for i in range(5):
            answer = yield exchange(echo, b"%d" % i)
            self.assertEqual(answer, b"%d" % i)
        yield process.wait_for(rb"log /dev/full: writing failed \(\[Errno 28\] No space left on device\)")
        yield process.stop()
        output = process.output.decode()
        self.assertEqual(output.count("writing failed"), 1, output)
        self.assertNotIn("Traceback", output)
        self.assertIn("echo: stopped listening", output.split("writing failed")[1])

    @inlineCallbacks
    def test_workersAppendTheirLinesToTheFile(self) -> Generator[Deferred[Any], Any, None]:
        """
        With C{output} a file, worker 1 writes its own lines there: whole
        lines, one per connection; after logrotate's rename and SIGUSR1 (to
        worker 0 only) every worker's lines go to the new file.
        """
        main = os.path.join(self.directory, "balancer.log")
        process, echo, _, _ = yield self.balancer(f'output = "{main}"', workers=2, main=main)
        count = 60

        def access(path: str) -> list[str]:
            return [line for line in file_lines(path) if " server=echo " in line]

        @inlineCallbacks
        def connections_logged() -> Generator[Deferred[Any], Any, None]:
            """Make C{count} connections; their lines are in C{main}, from both workers."""
            before = len(access(main))
            for i in range(count):
                answer = yield exchange(echo, b"%02d" % i)
                self.assertEqual(answer, b"%02d" % i)
            yield until(lambda: len(access(main)) >= before + count, 20, f"{count} more access lines")
            lines = access(main)[before:]
            self.assertEqual(len(lines), count)
            self.assertTrue(all(WHOLE_TEXT_LINE.fullmatch(line) for line in lines), lines)
            self.assertIn(" [worker 1] ", "".join(lines))
            self.assertIn(" [balancer.access#info] ", "".join(lines))

        yield connections_logged()
        os.rename(main, main + ".1")
        assert process.transport is not None and process.transport.pid is not None
        os.kill(process.transport.pid, signal.SIGUSR1)
        yield until(lambda: any("reopened" in line for line in file_lines(main)), 20, "the log reopened")
        yield connections_logged()
        self.assertEqual(len(access(main + ".1")), count)
        self.assertEqual(len(access(main)), count)
        yield process.stop()
