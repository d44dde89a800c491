"""
Faults injected into a real C{twistd -n balancer} (a child process, with its
admin API on 127.0.0.1 port 0), on both data paths: L{EngineFaultTests} on
the relay engine (C{[defaults]} untouched), L{TwistedFaultTests} with
C{[defaults] splice = false}.

 - a backend process killed with SIGKILL mid-transfer: its clients see what
   its socket did, the counters come back, other clients go on;
 - 2,000 idle clients and C{client_idle_timeout}: each closed on time, new
   clients served meanwhile; RSS per idle connection printed;
 - out of descriptors (C{ulimit -n 256}, 400 clients): running relays go
   on, the listener does not busy-loop, service resumes;
 - 500 client resets per second (for 5 s here; C{bench/torture.py} runs
   longer): no log line per reset, C{active_connections} back to 0;
 - a client that stops reading while its backend sends (up to 256 MiB): the
   balancer's RSS stays within 5 MiB of where it started.

The figures are bounded to keep the module under about two minutes on two
cores; the issue's larger ones (20 s of resets, 1 GB) belong to
C{bench/torture.py}.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import sys
from typing import Any

import treq
from twisted.internet import error, reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.support.clients import Echo, exchange, serve
from tests.support.killable_backend import stream
from tests.support.paths import ROOT
from tests.support.peers import open_client
from tests.support.processes import WatchedProcess, source_env, twistd_path
from tests.support.waiting import polled, until

#: Clock ticks per second of /proc/<pid>/stat's CPU times.
TICKS = os.sysconf("SC_CLK_TCK")
BLOCK = 64 * 1024


def pause(seconds: float) -> Deferred[None]:
    """Fires after C{seconds}, letting the reactor run meanwhile."""
    return deferLater(reactor, seconds, lambda: None)


def proc_status(pid: int, key: str) -> int:
    """A number of kB from C{/proc/PID/status} (C{VmRSS}, ...), in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def descriptors(pid: int) -> int:
    """How many file descriptors the process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def pipe_count(pid: int) -> int:
    """How many of the process's descriptors are pipe ends."""
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{name}").startswith("pipe:")
        except FileNotFoundError:
            pass
    return count


def report(text: str) -> None:
    """A figure measured by a test, shown in the test run's output."""
    sys.__stdout__.write(f"\n    [{text}] ")
    sys.__stdout__.flush()


# The balancer process


class Balancer(WatchedProcess):
    """A C{twistd -n balancer} child; knows its API and server ports once it has logged them."""

    def __init__(self) -> None:
        super().__init__(b"api: listening on")
        self.ports: dict[str, int] = {}
        self.api = 0

    @property
    def pid(self) -> int:
        """The process id (the shell wrapper, if any, exec'd into twistd)."""
        return int(self.transport.pid)

    def lines(self) -> list[str]:
        """Every line logged so far."""
        return self.output.decode(errors="replace").splitlines()

    def stats(self, server: str) -> Deferred[dict[str, Any]]:
        """C{GET /servers/SERVER/stats} from the root API."""
        d = treq.get(f"http://127.0.0.1:{self.api}/servers/{server}/stats", persistent=False)
        return d.addCallback(treq.content).addCallback(json.loads)

    def settled(self, server: str, total: int | None = None, timeout: float = 10.0) -> Deferred[dict[str, Any]]:
        """
        Waits (up to C{timeout} s) for C{server} and all its backends to have no
        active connection, and for C{total_connections} to be C{total} if given;
        fires with the last statistics.
        """

        def quiet(stats: dict[str, Any]) -> bool:
            actives = [stats["active_connections"], *(b["stats"]["active_connections"] for b in stats["backends"])]
            totals = sum(b["stats"]["total_connections"] for b in stats["backends"])
            return not any(actives) and (total is None or totals == total)

        return polled(lambda: self.stats(server), quiet, timeout, f"{server} settled")


def config_text(servers: dict[str, tuple[str, ...]], splice: bool, server_options: str = "") -> str:
    """A configuration with the API and one server per entry of C{servers} (its backends' host:port)."""
    parts = [
        '[api]\nenabled = true\nbind = "127.0.0.1:0"\n',
        f'[defaults]\nsplice = {"true" if splice else "false"}\nshutdown_grace = "1s"\n',
    ]
    for name, backends in servers.items():
        parts.append(
            f'[servers.{name}]\nbind = "127.0.0.1:0"\nbalance = "roundrobin"\n{server_options}\n'
            f'[servers.{name}.discovery]\nkind = "static"\nstatic_list = {json.dumps(list(backends))}\n'
        )
    return "\n".join(parts)


@inlineCallbacks
def start_balancer(test: TestCase, servers: dict[str, tuple[str, ...]], splice: bool, *, server_options: str = "",
                   descriptor_limit: int | None = None) -> Any:
    """
    Start C{twistd -n balancer} with L{config_text}; fires with the L{Balancer}
    once the API and every server listen.  Stopped (SIGTERM, then SIGKILL)
    after the test.

    @param descriptor_limit: run it under C{ulimit -n} of this.
    """
    path = os.path.abspath(test.mktemp() + ".toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(config_text(servers, splice, server_options))
    argv = [twistd_path(), "-n", "--pidfile=", "balancer", "--config", path]
    if descriptor_limit is not None:
        argv = ["/bin/sh", "-c", f'ulimit -n {descriptor_limit} && exec "$0" "$@"', *argv]
    process = Balancer()
    reactor.spawnProcess(process, argv[0], argv, env=source_env(), path=ROOT)
    test.addCleanup(stop_process, process)
    yield process.seen
    yield until(lambda: all(f"{name}: listening on".encode() in process.output for name in servers), 10,
                "every server listening", step=0.02)
    text = process.output.decode()
    process.api = int(re.search(r"api: listening on 127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
    for name in servers:
        process.ports[name] = int(re.search(rf"{name}: listening on 127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore
    return process


def access_lines(lines: list[str]) -> list[str]:
    """The access log's lines among C{lines} (L{balancer.accesslog})."""
    return [line for line in lines if "[balancer.access#info]" in line]


def stop_process(process: WatchedProcess) -> Deferred[Any]:
    """SIGTERM a process we started; SIGKILL it if it is still there 10 s later."""
    if process.ended.called or process.transport.pid is None:
        return succeed(None)
    pid = process.transport.pid
    os.kill(pid, signal.SIGTERM)
    kill = reactor.callLater(10, lambda: process.transport.pid and os.kill(pid, signal.SIGKILL))
    return process.ended.addBoth(lambda result: kill.active() and kill.cancel())


# Peers in this process


@implementer(IHalfCloseableProtocol)
class Client(Protocol):
    """
    A client that records what it receives and how its connection ended:
    C{"end"} (an end of stream), C{"reset"} (the connection was reset or
    broken) at L{ended_at}; L{closed} fires then.  Reading can be paused.
    """

    def __init__(self, paused: bool = False) -> None:
        self.paused = paused
        self.data = bytearray()
        self.how: str | None = None
        self.connected_at = 0.0
        self.ended_at = 0.0
        self.closed: Deferred[None] = Deferred()
        self._waiting: tuple[int, Deferred[bytes]] | None = None

    def connectionMade(self) -> None:
        self.connected_at = reactor.seconds()
        if self.paused:
            self.transport.pauseProducing()

    def expect(self, size: int) -> Deferred[bytes]:
        """Fires with the first C{size} bytes received (then forgotten)."""
        waiting: Deferred[bytes] = Deferred()
        self._waiting = (size, waiting)
        self._check()
        return waiting

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self._check()

    def _check(self) -> None:
        if self._waiting is not None and len(self.data) >= self._waiting[0]:
            size, waiting = self._waiting
            self._waiting = None
            taken = bytes(self.data[:size])
            del self.data[:size]
            waiting.callback(taken)

    def readConnectionLost(self) -> None:
        self._end("end")
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._end("end" if reason is None or reason.check(error.ConnectionDone) else "reset")
        if not self.closed.called:
            self.closed.callback(None)

    def _end(self, how: str) -> None:
        if self.how is None:
            self.how, self.ended_at = how, reactor.seconds()

    def reset(self) -> None:
        """Close with a reset (SO_LINGER 0)."""
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abortConnection()


class CountedEcho(Echo):
    """An L{Echo} that counts its factory's open connections (C{factory.open}) and all of them (C{factory.total})."""

    def connectionMade(self) -> None:
        self.factory.open += 1
        self.factory.total += 1

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open -= 1


class StallingEcho(CountedEcho):
    """
    Echoes the first bytes it receives, then stops reading (until resumed),
    listed in C{factory.stalled}; only while C{factory.stall} is true.
    """

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.factory.stall and self not in self.factory.stalled:
            self.transport.pauseProducing()
            self.factory.stalled.append(self)


@implementer(IPushProducer)
class Flood(Protocol):
    """
    Sends C{factory.blocks} in turn as fast as the transport takes them, up
    to C{factory.size} bytes (counted in C{factory.sent}), then closes.
    """

    def connectionMade(self) -> None:
        self.paused = False
        self.factory.sent = 0
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        factory = self.factory
        while not self.paused and factory.sent < factory.size and self.transport.connected:
            self.transport.write(factory.blocks[(factory.sent // BLOCK) % len(factory.blocks)])
            factory.sent += BLOCK
        if factory.sent >= factory.size and self.transport.connected:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True

    def connectionLost(self, reason: Any = None) -> None:
        self.paused = True


class Backend(ProcessProtocol):
    """The killable backend process (L{tests.support.killable_backend}); knows its port and last status line."""

    def __init__(self) -> None:
        self.output = b""
        self.port: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output += data
        match = re.search(rb"port (\d+)\n", self.output)
        if match and not self.port.called:
            self.port.callback(int(match.group(1)))

    def status(self) -> str:
        """The last status line."""
        found = re.findall(rb"status (.*)\n", self.output)
        return found[-1].decode() if found else ""

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


# The tests


class FaultTests:
    """The fault tests; subclasses say which data path the balancer relays on."""

    splice = True
    timeout = 60

    # A backend killed mid-transfer

    @inlineCallbacks
    def test_backendKilledClientsSeeItsFinOrResetOthersGoOn(self) -> None:
        """
        A backend process sends 1 MiB to each of two clients that do not read
        yet, then is killed with SIGKILL.  It had read nothing from the second
        client, so its kernel resets that connection: that client gets a
        reset (never a plain end of stream, which would make a truncated
        transfer look complete).  It had nothing unread from the first, so its
        kernel sends a FIN after every byte: that client gets all 1 MiB and
        then the end of stream.  Both within 2 s of the kill.  Clients of
        another server, mid-conversation, go on; the counters come back to 0.

        Failed before the engine's fix: on the engine path the first client
        got no end of stream; on the Twisted path the second got a plain FIN.
        """
        size = 1 << 20
        backend = Backend()
        command = [sys.executable, "-m", "tests.support.killable_backend", str(size)]
        reactor.spawnProcess(backend, sys.executable, command, env=source_env(), path=ROOT)
        self.addCleanup(lambda: backend.ended if backend.ended.called else self._kill(backend))
        backend_port = yield backend.port
        echo = yield self.echo_backend()
        balancer = yield start_balancer(
            self, {"doomed": (f"127.0.0.1:{backend_port}",), "steady": (f"127.0.0.1:{echo}",)}, self.splice
        )
        talkers = [Client() for _ in range(4)]
        for talker in talkers:
            yield open_client(balancer.ports["steady"], talker)
            talker.transport.write(b"before")
            self.assertEqual((yield talker.expect(6)), b"before")
        finished, unread = Client(paused=True), Client(paused=True)
        yield open_client(balancer.ports["doomed"], finished)
        yield open_client(balancer.ports["doomed"], unread)
        unread.transport.write(b"u" * 1000)
        yield until(lambda: backend.status() == "connections=2 sent=2 unread=1000", 10,
                    "the backend sending 1 MiB to both clients and holding 1000 unread bytes", step=0.02)
        os.kill(backend.transport.pid, signal.SIGKILL)
        yield backend.ended
        killed = reactor.seconds()
        finished.transport.resumeProducing()
        unread.transport.resumeProducing()
        yield gatherResults([finished.closed, unread.closed])
        expected = stream(size)
        self.assertEqual((finished.how, len(finished.data)), ("end", size))
        self.assertEqual(bytes(finished.data), expected)
        self.assertEqual(unread.how, "reset")
        self.assertEqual(bytes(unread.data), expected[: len(unread.data)])
        self.assertLess(max(finished.ended_at, unread.ended_at) - killed, 2.0)
        for talker in talkers:
            talker.transport.write(b"after")
            self.assertEqual((yield talker.expect(5)), b"after")
            talker.transport.loseWriteConnection()
        yield gatherResults([t.closed for t in talkers])
        self.assertEqual({t.how for t in talkers}, {"end"})
        yield balancer.settled("doomed", total=2)
        yield balancer.settled("steady", total=4)

    def _kill(self, backend: Backend) -> Deferred[None]:
        os.kill(backend.transport.pid, signal.SIGKILL)
        return backend.ended

    def listen_echo(self, protocol: type[Protocol], **attributes: Any) -> Deferred[Any]:
        """
        A backend on 127.0.0.1 port 0 in this process, with a backlog for
        thousands of clients; fires with its listening port (closed after the
        test); C{attributes} are set on its factory, as are C{open} and
        C{total}.
        """
        factory = Factory.forProtocol(protocol)
        for key, value in dict(attributes, open=0, total=0).items():
            setattr(factory, key, value)
        listening = TCP4ServerEndpoint(reactor, 0, backlog=4096, interface="127.0.0.1").listen(factory)
        return listening.addCallback(lambda port: self.addCleanup(port.stopListening) or port)

    def echo_backend(self) -> Deferred[int]:
        """A L{CountedEcho} backend; fires with its port; its factory in C{self.echo}."""

        def started(port: Any) -> int:
            self.echo = port.factory
            return int(port.getHost().port)

        return self.listen_echo(CountedEcho).addCallback(started)

    # Idle clients

    @inlineCallbacks
    def test_2000IdleClientsEachClosedOnTimeNewOnesServed(self) -> None:
        """
        2,000 clients connect and send nothing, with C{client_idle_timeout =
        "4s"}: each is closed between 4 and 6 s after it connected; while they
        are held, new clients are served; the RSS each idle relay costs the
        balancer is printed.

        The lower bound is this process's (stamped before connecting, the
        close seen after it came); the upper bound is the balancer's own
        account, its access lines' C{duration}: this process, on a loaded
        machine, may see 2,000 closes late (the test failed so under a full
        C{-j2} run while the balancer closed each on time).
        """
        timeout, count = 4.0, 2000
        echo = yield self.echo_backend()
        balancer = yield start_balancer(self, {"web": (f"127.0.0.1:{echo}",)}, self.splice,
                                        server_options='client_idle_timeout = "4s"')
        port = balancer.ports["web"]
        self.assertEqual((yield exchange(port, b"warm up")), b"warm up")
        before = proc_status(balancer.pid, "VmRSS")
        idle = [Client() for _ in range(count)]
        attempted_at: list[float] = []
        for start in range(0, count, 200):
            # Stamped before connecting: the balancer's idle timer cannot have started earlier, while this
            # process may see connectionMade late under load (so a lifetime from it can look short).
            attempted_at.extend([reactor.seconds()] * len(idle[start: start + 200]))
            yield gatherResults([open_client(port, client) for client in idle[start: start + 200]])
        yield until(lambda: self.echo.open == count, timeout, "every idle client relayed to the backend", step=0.02)
        held = proc_status(balancer.pid, "VmRSS")
        served = yield gatherResults([exchange(port, b"served %d" % i) for i in range(20)])
        self.assertEqual(served, [b"served %d" % i for i in range(20)])
        self.assertFalse(any(c.closed.called for c in idle), "an idle client was closed before new ones were served")
        yield gatherResults([c.closed for c in idle])
        report(f"{'engine' if self.splice else 'twisted'}: {(held - before) / count:,.0f} bytes RSS per idle relay "
               f"({count} clients, VmRSS {before >> 10} -> {held >> 10} KiB)")
        lived = sorted(c.ended_at - attempted for c, attempted in zip(idle, attempted_at))
        self.assertGreaterEqual(lived[0], timeout - 0.05)

        def idle_lines() -> list[str]:
            return [line for line in access_lines(balancer.lines()) if 'reason="client idle timeout"' in line]

        yield until(lambda: len(idle_lines()) >= count, 10, "an access line for each idle client")
        durations = sorted(float(re.search(r" duration=([0-9.]+)s ", line).group(1)) for line in idle_lines())  # type: ignore[union-attr]
        self.assertEqual(len(durations), count)
        self.assertGreaterEqual(durations[0], timeout - 0.05)
        self.assertLessEqual(durations[-1], timeout + 2.0)
        yield balancer.settled("web", total=count + 21)

    test_2000IdleClientsEachClosedOnTimeNewOnesServed.timeout = 90  # type: ignore[attr-defined]

    # Out of descriptors

    @inlineCallbacks
    def test_outOfDescriptorsRelaysGoOnNoBusyLoopServiceResumes(self) -> None:
        """
        Under C{ulimit -n 256}, 20 relays exchange a line with their
        backends, which then stop reading; 400 more clients arrive and hold:
        the process reaches its limit.  Each of the 20 clients then sends
        1 MiB, which stalls in the balancer (so the engine needs a pipe per
        relay that it cannot get); the backends read again and echo it: every
        byte comes back, no traceback or critical line is logged, and over the
        3 s the process uses under 1 s of CPU (no busy loop on the waiting
        clients).  Once the 400 leave, a new client is served within 5 s.
        """
        listening = yield self.listen_echo(StallingEcho, stalled=[], stall=True)
        listening.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        factory = listening.factory
        balancer = yield start_balancer(self, {"web": (f"127.0.0.1:{listening.getHost().port}",)}, self.splice,
                                        descriptor_limit=256)
        port = balancer.ports["web"]
        running = [Client() for _ in range(20)]
        whole = stream(1 << 20)
        payloads = [whole[i:] + whole[:i] for i in range(len(running))]
        for i, client in enumerate(running):
            yield open_client(port, client)
            client.transport.write(b"ping %02d" % i)
            self.assertEqual((yield client.expect(7)), b"ping %02d" % i)
        yield until(lambda: len(factory.stalled) == len(running), 5, "every backend stalled", step=0.02)
        holders = [Client() for _ in range(400)]
        for holder in holders:
            open_client(port, holder).addErrback(lambda f: None)
        yield until(lambda: descriptors(balancer.pid) >= 250, 15, "the balancer at its descriptor limit", step=0.02)
        yield pause(0.5)
        before = cpu_seconds(balancer.pid)
        window = pause(3.0)
        for client, payload in zip(running, payloads):
            client.transport.write(payload)
        yield pause(0.5)
        factory.stall = False
        for stalled in factory.stalled:
            stalled.transport.resumeProducing()
        echoed = yield gatherResults([client.expect(len(payload)) for client, payload in zip(running, payloads)])
        self.assertEqual(echoed, payloads)
        yield window
        used = cpu_seconds(balancer.pid) - before
        report(f"{'engine' if self.splice else 'twisted'}: {used:.2f} s CPU in 3 s at the descriptor limit, "
               f"{descriptors(balancer.pid)} descriptors; {sum(h.closed.called for h in holders)} of "
               f"{len(holders)} new clients closed")
        self.assertLess(used, 1.0)
        for holder in holders:
            if holder.transport is not None:
                holder.transport.abortConnection()
        started = reactor.seconds()
        self.assertEqual((yield exchange(port, b"served again")), b"served again")
        self.assertLess(reactor.seconds() - started, 5.0)
        for client in running:
            client.transport.loseWriteConnection()
        yield gatherResults([c.closed for c in running])
        self.assertEqual([line for line in balancer.lines() if re.search(r"Traceback|#critical\]", line)], [])

    # Client resets

    @inlineCallbacks
    def test_500ClientResetsPerSecondNoLogLinePerResetCountersBack(self) -> None:
        """
        For 5 s, 500 clients a second reset their connection (SO_LINGER 0):
        a third at once, a third after sending 1 KiB, a third after getting
        its echo.  Besides its access log (one line per client, each a
        client reset), the balancer logs fewer than 25 lines over the whole
        run (none per reset), no traceback, and its counters come back to 0
        with every client counted.
        """
        rate, seconds = 500, 5.0
        echo = yield self.echo_backend()
        balancer = yield start_balancer(self, {"web": (f"127.0.0.1:{echo}",)}, self.splice)
        port = balancer.ports["web"]
        logged = len(balancer.lines())
        clients: list[Deferred[None]] = []
        begun = reactor.seconds()

        def launch() -> None:
            due = min(int((reactor.seconds() - begun) * rate), int(rate * seconds))
            while len(clients) < due:
                clients.append(self.reset_client(port, len(clients) % 3))
            if len(clients) >= rate * seconds:
                loop.stop()

        loop = LoopingCall(launch)
        yield loop.start(0.01)
        yield gatherResults(clients)
        elapsed = reactor.seconds() - begun
        stats = yield balancer.settled("web", total=len(clients))
        yield until(lambda: len(access_lines(balancer.lines()[logged:])) >= len(clients), 10, "an access line each")
        access = access_lines(balancer.lines()[logged:])
        self.assertEqual((len(access), {line.rpartition(" reason=")[2] for line in access}),
                         (len(clients), {'"client reset"'}))
        new = [line for line in balancer.lines()[logged:] if line not in access]
        report(f"{'engine' if self.splice else 'twisted'}: {len(clients)} resets in {elapsed:.1f} s, "
               f"{len(new)} log lines besides the access log")
        self.assertLess(len(new), 25, "\n".join(new[:50]))
        self.assertFalse([line for line in new if "Traceback" in line])
        self.assertEqual(stats["active_connections"], 0)

    @inlineCallbacks
    def reset_client(self, port: int, phase: int) -> Any:
        """A client that resets at once (C{phase} 0), after sending (1), or after its echo (2)."""
        client = Client()
        yield open_client(port, client)
        if phase:
            client.transport.write(b"r" * 1024)
        if phase == 2:
            yield client.expect(1024)
        client.reset()
        yield client.closed

    # A client that stops reading

    @inlineCallbacks
    def test_clientStopsReadingBackendFloodsRssStaysWithin5MiB(self) -> None:
        """
        A client stops reading while its backend tries to send 256 MiB: the
        backend is soon blocked (its transport paused), and the balancer's RSS,
        sampled while stalled, stays within 5 MiB of where it was before.  The
        client then reads 32 MiB more, every byte in order.
        """
        blocks = [stream(BLOCK * 16)[i * BLOCK: (i + 1) * BLOCK] for i in range(16)]
        listening = yield serve(self, Flood, blocks=blocks, size=8 << 20, sent=0)
        balancer = yield start_balancer(self, {"web": (f"127.0.0.1:{listening.getHost().port}",)}, self.splice)
        port, factory = balancer.ports["web"], listening.factory
        warm = Client()
        yield open_client(port, warm)
        yield warm.closed
        self.assertEqual((warm.how, bytes(warm.data)), ("end", b"".join(blocks) * 8))
        before = proc_status(balancer.pid, "VmRSS")
        factory.size = 256 << 20
        client = Client(paused=True)
        yield open_client(port, client)
        samples: list[int] = []
        history: list[int] = []

        def blocked() -> bool:
            samples.append(proc_status(balancer.pid, "VmRSS"))
            history.append(factory.sent)
            return len(history) > 10 and factory.sent > 0 and history[-10] == factory.sent

        yield until(blocked, 10, "the backend blocked by the stalled client", step=0.05)
        for _ in range(20):
            yield pause(0.05)
            samples.append(proc_status(balancer.pid, "VmRSS"))
        report(f"{'engine' if self.splice else 'twisted'}: backend blocked after {factory.sent >> 10} KiB; "
               f"VmRSS {before >> 10} KiB before, at most {max(samples) >> 10} KiB stalled")
        self.assertLess(factory.sent, factory.size)
        self.assertLessEqual(max(samples) - before, 5 << 20)
        client.transport.resumeProducing()
        got = yield client.expect(32 << 20)
        self.assertEqual(got, b"".join(blocks) * 32)
        client.reset()
        yield client.closed
        yield balancer.settled("web", total=2)


class EngineFaultTests(FaultTests, TestCase):
    """The faults on the relay engine (C{[defaults]} untouched)."""

    splice = True


class TwistedFaultTests(FaultTests, TestCase):
    """The faults on Twisted's transports (C{[defaults] splice = false})."""

    splice = False
