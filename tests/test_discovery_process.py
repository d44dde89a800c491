"""
Discovery in a real C{twistd -n balancer}, against real peers in this
process: clients connecting to the server reach the backends that plaintext
(an anchored pattern over lines with a comment), srv (targets resolved by
the DNS server) and lxd (the fake LXD, over a unix socket, and over HTTPS
with the fixture that uses every lxd_* key) discover.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.names import dns, server
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from tests.support.clients import Named, answers, serve
from tests.support.fake_dns import Records
from tests.support.fake_lxd import FakeContainer, FakeLXD, serve_https, serve_unix
from tests.support.paths import ROOT, scratch_directory
from tests.support.processes import spawn_balancer
from tests.support.waiting import polled

#: How many connections each check makes: enough to see both backends under round robin.
TRIES = 6
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "lxd", "every_key.toml")


class DiscoveryProcessTests(TestCase):
    """One balancer process per test, its server's backends discovered."""

    timeout = 60

    async def backends(self) -> tuple[int, int]:
        """Two named backends ("one", "two") on 127.0.0.1; their ports."""
        one = await serve(self, Named, name=b"one")
        two = await serve(self, Named, name=b"two")
        return one.getHost().port, two.getHost().port

    def write_config(self, discovery: str) -> str:
        """A configuration file with server "web" on port 0 and the discovery table C{discovery}; its path."""
        directory = scratch_directory(self)
        path = os.path.join(directory, "balancer.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write('[servers.web]\nbind = "127.0.0.1:0"\nbalance = "roundrobin"\n')
            f.write(f"[servers.web.discovery]\n{discovery}")
        return path

    async def reaches_both(self, config_path: str) -> None:
        """Start the balancer on C{config_path}; wait until its clients reach both backends and nothing else."""
        process = spawn_balancer(self, config_path, marker=b"web: listening on")
        port = await process.listening_port("web")

        def fetch() -> Deferred[Any]:
            return answers(port, TRIES)

        seen = await polled(fetch, lambda names: sorted(set(names)) == [b"one", b"two"], what="both backends")
        self.assertEqual(sorted(set(seen)), [b"one", b"two"])

    async def test_plaintextAnchoredPattern(self) -> None:
        """An anchored plaintext_regex_pattern over several lines, a comment among them."""
        one, two = await self.backends()
        body = f"# the web pool\nnode 127.0.0.1 port {one}\n\nnode 127.0.0.1 port {two}\n".encode()
        root = Resource()
        root.putChild(b"nodes", Data(body, "text/plain"))
        listening = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        await self.reaches_both(
            self.write_config(
                'kind = "plaintext"\n'
                f'plaintext_endpoint = "http://127.0.0.1:{listening.getHost().port}/nodes"\n'
                "plaintext_regex_pattern = '^node (?P<host>[0-9.]+) port (?P<port>\\d+)$'\n"
            )
        )

    async def test_srvTargetsResolved(self) -> None:
        """SRV targets resolved by the same DNS server (A records), one target without an address skipped."""
        one, two = await self.backends()
        zone = {
            "_web._tcp.example": [
                dns.Record_SRV(10, 50, one, b"a.example"),
                dns.Record_SRV(10, 50, two, b"b.example"),
                dns.Record_SRV(10, 50, two, b"nowhere.example"),
            ],
            "a.example": [dns.Record_A("127.0.0.1")],
            "b.example": [dns.Record_A("127.0.0.1")],
        }
        protocol = dns.DNSDatagramProtocol(server.DNSServerFactory(clients=[Records(zone)]))
        listening = reactor.listenUDP(0, protocol, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        await self.reaches_both(
            self.write_config(
                'kind = "srv"\n'
                f'srv_lookup_server = "127.0.0.1:{listening.getHost().port}"\n'
                'srv_lookup_pattern = "_web._tcp.example."\n'
            )
        )

    def lxd(self, one: int, two: int) -> FakeLXD:
        """The fake LXD: web1 and web2 (ports from their keys, web2's interface eth1), a database and a stopped web."""
        return FakeLXD(
            [
                FakeContainer(
                    "web1",
                    config={"user.role": "web", "user.gobetween.port": str(one)},
                    network={"eth0": [("inet", "127.0.0.1", "global")]},
                ),
                FakeContainer(
                    "web2",
                    config={"user.role": "web", "user.gobetween.port": str(two), "user.gobetween.interface": "eth1"},
                    network={"eth0": [("inet", "127.0.0.99", "global")], "eth1": [("inet", "127.0.0.1", "global")]},
                ),
                FakeContainer("db1", config={"user.role": "db"}, network={"eth0": [("inet", "127.0.0.1", "global")]}),
                FakeContainer("web3", status="Stopped", config={"user.role": "web"}),
            ],
            password="s3cret",
        )

    async def test_lxdUnixSocket(self) -> None:
        """lxd over a unix socket."""
        one, two = await self.backends()
        directory = tempfile.mkdtemp(prefix="lxd")  # a socket path must be short
        self.addCleanup(shutil.rmtree, directory)
        path = serve_unix(self, self.lxd(one, two), directory)
        await self.reaches_both(
            self.write_config(
                f'kind = "lxd"\nlxd_server_address = "unix:{path}"\n'
                'lxd_container_port_key = "user.gobetween.port"\n'
                'lxd_container_interface_key = "user.gobetween.interface"\n'
                'lxd_container_label_key = "user.role"\nlxd_container_label_value = "web"\n'
            )
        )

    async def test_lxdEveryKeyOverHttps(self) -> None:
        """
        The fixture with every lxd_* key, over HTTPS: the balancer makes its
        client certificate, accepts the server's, is trusted with the
        password and reaches the containers.
        """
        one, two = await self.backends()
        lxd = self.lxd(one, two)
        https = serve_https(self, lxd)
        directory = os.path.abspath(self.mktemp())
        with open(FIXTURE, encoding="utf-8") as f:
            text = f.read()
        text = text.replace('"https://127.0.0.1:8443"', f'"{https.url}"')
        text = text.replace('"/nonexistent/balancer-lxd-config"', f'"{directory}"')
        path = os.path.abspath(self.mktemp())
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        await self.reaches_both(path)
        self.assertEqual(len(lxd.trusted), 1)
        self.assertTrue(os.path.exists(os.path.join(directory, "servercerts", "fake.crt")))
