"""
ACME in a real twistd balancer without a CA to reach: the fixture with
every C{[acme]} and C{lxd_*} key starts, refuses handshakes for its
C{acme_hosts} (logging that once) and retries with backoff; C{challenge =
"dns"} stops the start with a clear message.
"""

from __future__ import annotations

import os
import ssl

from twisted.trial.unittest import TestCase

from balancer.config import read_config_file
from balancer.config.schema import AcmeConfig
from tests.support.paths import ROOT, scratch_directory
from tests.support.pebble import served_certificate
from tests.support.ports import refusing_port
from tests.support.processes import spawn_balancer

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "acme", "every_key.toml")


class AcmeProcessTests(TestCase):
    """One balancer process per test, its CA unreachable."""

    timeout = 60

    def fixture(self, **replaced: str) -> str:
        """The fixture with C{key = "value"} lines replaced by C{replaced}, written to a new file; its path."""
        directory = scratch_directory(self)
        lines = []
        with open(FIXTURE, encoding="utf-8") as f:
            for line in f:
                key = line.split("=")[0].strip()
                lines.append(f'{key} = "{replaced[key]}"\n' if key in replaced else line)
        path = os.path.join(directory, "balancer.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(lines)
        return path

    def unreachable(self, **more: str) -> str:
        directory = os.path.abspath(self.mktemp())
        return self.fixture(
            cache_dir=os.path.join(directory, "cache"),
            directory_url=f"http://127.0.0.1:{refusing_port(self)}/directory",
            lxd_server_address=f"https://127.0.0.1:{refusing_port(self)}",
            lxd_config_directory=os.path.join(directory, "lxd"),
            **more,
        )

    def test_fixtureSetsEveryAcmeKey(self) -> None:
        config = read_config_file(FIXTURE)
        assert config.acme is not None
        default = AcmeConfig()
        for field in ("http_bind", "cache_dir", "directory_url", "directory_ca_cert_path"):
            self.assertNotEqual(getattr(config.acme, field), getattr(default, field), field)
        self.assertEqual(config.servers["secure"].tls.acme_hosts, ("secure.acme.test", "www.acme.test"))  # type: ignore[union-attr]

    async def test_startsWithoutItsCaAndRefusesUntilIssued(self) -> None:
        process = spawn_balancer(self, self.unreachable(directory_ca_cert_path=FIXTURE), marker=b"secure: listening on")
        port = await process.listening_port("secure")
        await process.listening_port("web")
        await process.listening_port("acme")
        for _ in range(2):
            with self.assertRaises(ssl.SSLError):
                await served_certificate(port, "secure.acme.test")
        await process.wait_for(rb"no certificate for secure\.acme\.test: .*; next attempt in 2 s")
        await process.wait_for(rb"no certificate for secure\.acme\.test: .*; next attempt in 4 s")
        told = process.output.count(b"acme: no certificate for secure.acme.test yet; refusing TLS handshakes for it")
        self.assertEqual(told, 1)

    async def test_dnsChallengeStopsTheStart(self) -> None:
        process = spawn_balancer(self, self.unreachable(challenge="dns"), marker=b"secure: listening on")
        process.seen.addErrback(lambda _: None)
        code, _ = await process.ended
        self.assertEqual(code, 1)
        self.assertIn(
            b'server "secure": tls.acme_hosts: the [acme] challenge "dns" is not supported', process.output
        )
