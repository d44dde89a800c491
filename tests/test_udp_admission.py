"""
UDP admission in a real C{twistd} (issue 14): many source ports against a
UDP server's C{max_connections}, and against C{[defaults] udp_max_sessions}
on one without it.  Sessions stop at the limit, the rest is counted in
C{over_limit}, and the process's descriptors stay bounded.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import DatagramProtocol

from tests.support.api_process import ApiProcessTestCase
from tests.support.processes import spawn_balancer
from tests.support.waiting import polled

CONFIG = """
[api]
enabled = true
bind = "127.0.0.1:0"

[defaults]
udp_max_sessions = 60

[servers.limited]
bind = "127.0.0.1:0"
protocol = "udp"
max_connections = 100
client_idle_timeout = "5m"
  [servers.limited.discovery]
  kind = "static"
  static_list = ["127.0.0.1:{backend}"]

[servers.default]
bind = "127.0.0.1:0"
protocol = "udp"
client_idle_timeout = "5m"
  [servers.default.discovery]
  kind = "static"
  static_list = ["127.0.0.1:{backend}"]
"""


class Echo(DatagramProtocol):
    """A UDP backend that sends every datagram back."""

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.transport.write(datagram, addr)


class Client(DatagramProtocol):
    """One source port: counts the answers it gets."""

    answers = 0

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.answers += 1


def descriptors(pid: int) -> int:
    """How many descriptors process C{pid} has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class UdpAdmissionTests(ApiProcessTestCase):
    """Source ports over the limit, against a real process."""

    @inlineCallbacks
    def start_udp(self) -> Any:
        backend = reactor.listenUDP(0, Echo(), interface="127.0.0.1")
        self.addCleanup(backend.stopListening)
        path = os.path.join(self.directory, "udp.toml")
        with open(path, "w") as f:
            f.write(CONFIG.replace("{backend}", str(backend.getHost().port)))
        process = spawn_balancer(self, path)
        match = yield process.wait_for(rb"api: listening on 127\.0\.0\.1:(\d+)")
        ports = {}
        for name in ("limited", "default"):
            found = yield process.wait_for(name.encode() + rb": listening on 127\.0\.0\.1:(\d+) \(udp\)")
            ports[name] = int(found.group(1))
        return process, int(match.group(1)), ports

    @inlineCallbacks
    def flood(self, api: int, server: str, port: int, sources: int) -> Any:
        """Send one datagram from each of C{sources} new source ports; fires with the service's statistics once all are counted."""
        clients = [Client() for _ in range(sources)]
        listening = [reactor.listenUDP(0, c, interface="127.0.0.1") for c in clients]
        for p in listening:
            self.addCleanup(p.stopListening)
        for i, c in enumerate(clients):  # in batches: a burst of hundreds overflows the balancer's receive buffer
            c.transport.write(b"hello", ("127.0.0.1", port))
            if i % 25 == 24:
                yield task.deferLater(reactor, 0.01, lambda: None)

        def counted(answer: Any) -> bool:
            statistics = answer[1]["data"]["attributes"]["statistics"]
            return bool(statistics["total_connections"] + statistics["over_limit"] >= sources
                        and sum(c.answers for c in clients) >= statistics["total_connections"])

        _, body = yield polled(lambda: self.call(api, "GET", f"/v1/services/{server}"), counted, 20,
                               f"every source port's datagram to {server} counted")
        return body["data"]["attributes"]["statistics"], sum(1 for c in clients if c.answers)

    @inlineCallbacks
    def test_maxConnectionsAndUdpMaxSessionsBoundSessions(self) -> Any:
        process, api, ports = yield self.start_udp()
        before = descriptors(process.transport.pid)
        statistics, answered = yield self.flood(api, "limited", ports["limited"], 300)
        print(f"\nlimited: 300 source ports, max_connections 100: {statistics}, {answered} clients answered")
        self.assertEqual((statistics["connections"], statistics["total_connections"], statistics["over_limit"]),
                         (100, 100, 200))
        self.assertEqual(answered, 100)
        statistics, answered = yield self.flood(api, "default", ports["default"], 150)
        print(f"default: 150 source ports, udp_max_sessions 60: {statistics}, {answered} clients answered")
        self.assertEqual((statistics["connections"], statistics["over_limit"], answered), (60, 90, 60))
        after = descriptors(process.transport.pid)
        print(f"descriptors of the balancer: {before} before, {after} after 450 source ports")
        self.assertLessEqual(after - before, 160 + 10)
        response, body = yield self.call(api, "GET", "/ping")
        self.assertEqual((response.code, body), (200, "OK"))
