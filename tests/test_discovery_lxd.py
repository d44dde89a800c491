"""
C{kind = "lxd"}: against the fake LXD of L{tests.support.fake_lxd} on the
real reactor, over a unix socket and over HTTPS with client certificates
(generated, trusted by password, the server's certificate accepted and then
pinned); its configuration keys; its helpers and the fetch on L{StubTreq}.
"""

from __future__ import annotations

import os
import tomllib
from typing import Any

import attrs

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Factory
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from balancer.config.addresses import BackendSpec
from balancer.config.errors import ConfigError
from balancer.config.load import config_from_mapping, read_config_file
from balancer.config.schema import DiscoveryConfig
from balancer.discovery import DiscoveryError, make_discovery
from balancer.discovery.lxd import LxdDiscovery, container_address, lxd_request, unix_socket_path
from balancer.discovery.lxd_tls import LxdFiles, load_server_certificate
from tests.support.certs import self_signed
from tests.support.paths import ROOT, scratch_directory
from tests.support.fake_lxd import FakeContainer, FakeLXD, serve_https, serve_unix


async def fetch(**keys: Any) -> list[BackendSpec]:
    """One fetch of the C{kind = "lxd"} discovery C{keys} describe, on the real reactor."""
    config = config_from_mapping(
        {"servers": {"s": {"bind": "127.0.0.1:0", "discovery": {"kind": "lxd", **keys}}}}, "test"
    )
    result: list[BackendSpec] = await make_discovery(config.servers["s"].discovery, reactor).fetch()
    return result


def containers() -> list[FakeContainer]:
    """A running web container on eth0, one configured by keys, a stopped one, a database and one without an address."""
    v4v6 = [("inet", "127.0.0.21", "global"), ("inet6", "fe80::216:3eff:fe5a:1b2c", "link"), ("inet6", "::1", "global")]
    return [
        FakeContainer(
            "web1", config={"user.role": "web"}, network={"eth0": v4v6, "lo": [("inet", "127.0.0.1", "local")]}
        ),
        FakeContainer(
            "web2",
            config={
                "user.role": "web",
                "user.gobetween.port": "9090",
                "user.gobetween.interface": "eth1",
                "user.sni": "web2.example",
            },
            network={"eth0": [("inet", "127.0.0.98", "global")], "eth1": [("inet", "127.0.0.22", "global")]},
        ),
        FakeContainer("web3", status="Stopped", config={"user.role": "web"}),
        FakeContainer("db1", config={"user.role": "db"}, network={"eth0": [("inet", "127.0.0.31", "global")]}),
        FakeContainer("web4", config={"user.role": "web"}, network={"eth0": [("inet6", "fe80::1", "link")]}),
    ]


KEYS = {
    "lxd_container_port": 8080,
    "lxd_container_port_key": "user.gobetween.port",
    "lxd_container_interface_key": "user.gobetween.interface",
    "lxd_container_sni_key": "user.sni",
    "lxd_container_label_key": "user.role",
    "lxd_container_label_value": "web",
}
#: The keys of a first contact over HTTPS: make the client certificate, accept the server's, send the password.
FIRST_CONTACT = {
    "lxd_generate_client_certs": True,
    "lxd_accept_server_cert": True,
    "lxd_server_remote_password": "s3cret",
}
WEB = [BackendSpec("127.0.0.21", 8080), BackendSpec("127.0.0.22", 9090, sni="web2.example")]


class UnixSocketTests(TestCase):
    """Over the local unix socket: no certificates, every client trusted."""

    timeout = 10

    async def test_containers(self) -> None:
        """
        Running containers with the label value; port, interface and sni from
        their configuration keys, else the configured ones; one without an
        address is left out with a warning.  No /1.0 or certificate request.
        """
        lxd = FakeLXD(containers())
        path = serve_unix(self, lxd)
        with capturedLogs() as events:
            backends = await fetch(lxd_server_address=f"unix:{path}", **KEYS)
        self.assertEqual(backends, WEB)
        self.assertEqual(
            lxd.requests,
            [
                ("GET", "/1.0/containers?recursion=1"),
                ("GET", "/1.0/containers/web1/state"),
                ("GET", "/1.0/containers/web2/state"),
                ("GET", "/1.0/containers/web4/state"),
            ],
        )
        warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(warnings, ["lxd container web4 skipped: no IPv4 address on eth0"])

    async def test_unixUrlForm(self) -> None:
        """unix://PATH names the socket too; without a label key every running container is kept."""
        lxd = FakeLXD(containers()[:2])
        path = serve_unix(self, lxd)
        backends = await fetch(lxd_server_address=f"unix://{path}", lxd_container_port=80)
        self.assertEqual(backends, [BackendSpec("127.0.0.21", 80), BackendSpec("127.0.0.98", 80)])

    async def test_labelKeyOnly(self) -> None:
        """A label key without a value keeps every container that has the key."""
        lxd = FakeLXD(containers())
        path = serve_unix(self, lxd)
        backends = await fetch(
            lxd_server_address=f"unix:{path}", lxd_container_port=80, lxd_container_label_key="user.role"
        )
        self.assertEqual(
            backends, [BackendSpec("127.0.0.21", 80), BackendSpec("127.0.0.98", 80), BackendSpec("127.0.0.31", 80)]
        )

    async def test_ipv6(self) -> None:
        """lxd_container_address_type = "IPv6": the first inet6 address that is not link-local."""
        lxd = FakeLXD(containers()[:1])
        path = serve_unix(self, lxd)
        backends = await fetch(
            lxd_server_address=f"unix:{path}", lxd_container_port=80, lxd_container_address_type="IPv6"
        )
        self.assertEqual(backends, [BackendSpec("::1", 80)])

    async def test_interface(self) -> None:
        """lxd_container_interface picks the interface whose address is taken."""
        lxd = FakeLXD(containers()[:1])
        path = serve_unix(self, lxd)
        backends = await fetch(lxd_server_address=f"unix:{path}", lxd_container_port=80, lxd_container_interface="lo")
        self.assertEqual(backends, [BackendSpec("127.0.0.1", 80)])

    async def test_portOnlyFromKey(self) -> None:
        """With only lxd_container_port_key, a container without that key is left out with a warning."""
        lxd = FakeLXD(containers()[:2])
        path = serve_unix(self, lxd)
        with capturedLogs() as events:
            backends = await fetch(lxd_server_address=f"unix:{path}", lxd_container_port_key="user.gobetween.port")
        self.assertEqual(backends, [BackendSpec("127.0.0.98", 9090)])
        warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        expected = "lxd container web1 skipped: no user.gobetween.port in its configuration and lxd_container_port is 0"
        self.assertEqual(warnings, [expected])

    async def test_badPortInKey(self) -> None:
        """A port key whose value is not a port leaves the container out with a warning."""
        network = {"eth0": [("inet", "127.0.0.5", "global")]}
        lxd = FakeLXD([FakeContainer("c", config={"user.port": "http"}, network=network)])
        path = serve_unix(self, lxd)
        with capturedLogs() as events:
            backends = await fetch(lxd_server_address=f"unix:{path}", lxd_container_port_key="user.port")
        self.assertEqual(backends, [])
        warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        expected = "lxd container c skipped: port: expected a whole number from 1 to 65535, got 'http'"
        self.assertEqual(warnings, [expected])

    async def test_noServer(self) -> None:
        """A socket nobody listens on fails the fetch."""
        with self.assertRaises(ConnectError):
            await fetch(lxd_server_address=f"unix:{self.mktemp()}.sock", lxd_container_port=80)


class HTTPSTests(TestCase):
    """Over HTTPS: the client certificate, the server's certificate, the trust password."""

    timeout = 20

    def setUp(self) -> None:
        self.lxd = FakeLXD(containers(), password="s3cret")
        self.server = serve_https(self, self.lxd)
        self.directory = os.path.abspath(self.mktemp())
        self.files = LxdFiles(self.directory, "fake")

    def keys(self, **more: Any) -> dict[str, Any]:
        return {
            "lxd_server_address": self.server.url,
            "lxd_server_remote_name": "fake",
            "lxd_config_directory": self.directory,
            **KEYS,
            **more,
        }

    async def test_firstContact(self) -> None:
        """
        A new client certificate is made, the server's certificate (not
        signed by a trusted CA) is accepted and saved, the password makes the
        server trust the client, and the containers are listed.
        """
        with capturedLogs() as events:
            backends = await fetch(**self.keys(**FIRST_CONTACT))
        self.assertEqual(backends, WEB)
        self.assertEqual(load_server_certificate(self.files), self.server.certificate)
        self.assertEqual(os.stat(self.files.client_key).st_mode & 0o777, 0o600)
        self.assertEqual(len(self.lxd.trusted), 1)
        self.assertIn(("POST", "/1.0/certificates"), self.lxd.requests)
        infos = [formatEvent(e) for e in events if e["log_level"] == LogLevel.info]
        accepted = f"lxd: accepted the certificate of {self.server.url} (SHA-256 "
        self.assertTrue(any(m.startswith(accepted) for m in infos), infos)

    async def test_laterFetchesReuseTrust(self) -> None:
        """Once trusted, a fetch needs no password and the saved certificate is kept."""
        await fetch(**self.keys(**FIRST_CONTACT))
        posts = self.lxd.requests.count(("POST", "/1.0/certificates"))
        self.assertEqual(await fetch(**self.keys()), WEB)
        self.assertEqual(self.lxd.requests.count(("POST", "/1.0/certificates")), posts)

    async def test_serverCertificateNotAccepted(self) -> None:
        """Without lxd_accept_server_cert, a server the system's roots do not trust is refused, saying what to do."""
        with self.assertRaises(DiscoveryError) as caught:
            await fetch(**self.keys(lxd_generate_client_certs=True, lxd_server_remote_password="s3cret"))
        message = str(caught.exception)
        self.assertIn(f"cannot use the LXD server at {self.server.url} with the system's trusted roots", message)
        self.assertIn("set lxd_accept_server_cert = true", message)
        self.assertIsNone(load_server_certificate(self.files))
        self.assertEqual(self.lxd.trusted, set())

    async def test_pinnedCertificateMismatch(self) -> None:
        """A saved certificate other than the server's: the handshake is refused, and the message says why."""
        os.makedirs(os.path.join(self.directory, "servercerts"))
        elsewhere = scratch_directory(self)
        other, _, _ = self_signed(elsewhere, "other")
        with open(other, "rb") as f, open(self.files.server_cert, "wb") as saved:
            saved.write(f.read())
        with self.assertRaises(DiscoveryError) as caught:
            await fetch(**self.keys(**FIRST_CONTACT))
        self.assertIn("presented another certificate than the one saved in", str(caught.exception))
        self.assertEqual(self.lxd.trusted, set())

    async def test_wrongPassword(self) -> None:
        """A wrong trust password fails the fetch with LXD's refusal."""
        with self.assertRaises(DiscoveryError) as caught:
            await fetch(**self.keys(**{**FIRST_CONTACT, "lxd_server_remote_password": "nope"}))
        self.assertEqual(
            str(caught.exception),
            "authenticating with lxd_server_remote_password failed:"
            " POST /1.0/certificates: LXD answered HTTP 403: not authorized",
        )

    async def test_untrustedWithoutPassword(self) -> None:
        """An untrusted client without a password: the fetch fails, naming the certificate and the remedies."""
        with self.assertRaises(DiscoveryError) as caught:
            await fetch(**self.keys(lxd_generate_client_certs=True, lxd_accept_server_cert=True))
        self.assertIn(f"does not trust the client certificate {self.files.client_cert}", str(caught.exception))

    async def test_serverNotListening(self) -> None:
        """Nothing listening: the connection error fails the fetch, and no certificate is saved."""
        listening = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        port = listening.getHost().port
        await listening.stopListening()
        with self.assertRaises(ConnectError):
            await fetch(**self.keys(lxd_server_address=f"https://127.0.0.1:{port}", **FIRST_CONTACT))
        self.assertIsNone(load_server_certificate(self.files))

    async def test_noClientCertificate(self) -> None:
        """No client certificate and lxd_generate_client_certs false: the fetch fails before connecting."""
        with self.assertRaises(DiscoveryError) as caught:
            await fetch(**self.keys(lxd_accept_server_cert=True, lxd_server_remote_password="s3cret"))
        self.assertIn(f"no LXD client certificate in {self.files.client_cert}", str(caught.exception))
        self.assertEqual(self.lxd.requests, [])


def lxd_config(**keys: Any) -> DiscoveryConfig:
    """A C{kind = "lxd"} table with C{keys}, parsed and checked like a configuration file."""
    config = config_from_mapping(
        {"servers": {"s": {"bind": "127.0.0.1:0", "discovery": {"kind": "lxd", **keys}}}}, "test"
    )
    return config.servers["s"].discovery


class ConfigTests(SynchronousTestCase):
    """The lxd_* keys: gobetween's defaults, and a clear error for each bad value."""

    def problems(self, **keys: Any) -> list[str]:
        error = self.assertRaises(ConfigError, lxd_config, **keys)
        return error.lines()

    def test_defaults(self) -> None:
        """gobetween's defaults: remote "local", interface eth0, IPv4, no keys, nothing generated or accepted."""
        config = lxd_config(lxd_server_address="unix:", lxd_container_port=80)
        self.assertEqual(
            (
                config.lxd_server_remote_name,
                config.lxd_container_interface,
                config.lxd_container_address_type,
                config.lxd_config_directory,
                config.lxd_generate_client_certs,
                config.lxd_accept_server_cert,
            ),
            ("local", "eth0", "IPv4", "", False, False),
        )

    def test_everyKey(self) -> None:
        """Every lxd_* key of gobetween 0.8 is accepted."""
        config = lxd_config(
            lxd_server_address="https://lxd.example:8443",
            lxd_server_remote_name="lxd1",
            lxd_server_remote_password="secret",
            lxd_config_directory="~/.config/lxc",
            lxd_generate_client_certs=True,
            lxd_accept_server_cert=True,
            lxd_container_label_key="user.role",
            lxd_container_label_value="web",
            lxd_container_port=8080,
            lxd_container_port_key="user.gobetween.port",
            lxd_container_interface="eth1",
            lxd_container_interface_key="user.gobetween.interface",
            lxd_container_sni_key="user.sni",
            lxd_container_address_type="IPv6",
        )
        self.assertEqual(config.lxd_container_sni_key, "user.sni")

    def test_fixtureUsesEveryKey(self) -> None:
        """tests/fixtures/lxd/every_key.toml loads as it is and sets every lxd_* key of the schema."""
        path = os.path.join(ROOT, "tests", "fixtures", "lxd", "every_key.toml")
        discovery = read_config_file(path).servers["web"].discovery
        self.assertEqual(discovery.kind, "lxd")
        with open(path, "rb") as f:
            table = tomllib.load(f)["servers"]["web"]["discovery"]
        keys = {f.name for f in attrs.fields(DiscoveryConfig) if f.name.startswith("lxd_")}
        self.assertEqual(len(keys), 14)
        self.assertEqual(keys - set(table), set())

    def test_emptyMeansGobetweensDefault(self) -> None:
        """As in gobetween, "" remote name, interface and address type mean "local", eth0 and IPv4."""
        config = lxd_config(
            lxd_server_address="unix:",
            lxd_container_port=80,
            lxd_server_remote_name="",
            lxd_container_interface="",
            lxd_container_address_type="",
        )
        self.assertEqual(LxdDiscovery(config, Clock()).files.remote, "local")
        stub = StubTreq(FakeLXD(containers()[:1]))
        d = LxdDiscovery(config, Clock(), http=stub).fetch()
        stub.flush()
        self.assertEqual(self.successResultOf(d), [BackendSpec("127.0.0.21", 80)])

    def test_addressRequired(self) -> None:
        """lxd_server_address is required."""
        self.assertEqual(
            self.problems(lxd_container_port=80),
            ['test: servers.s.discovery.lxd_server_address: required when kind = "lxd"'],
        )

    def test_badAddress(self) -> None:
        """An address that is neither unix: nor an https:// origin is refused, naming the forms."""
        for address in ("http://lxd:8443", "tcp://lxd:8443", "https://lxd:8443/1.0", "/var/lib/lxd/unix.socket"):
            [line] = self.problems(lxd_server_address=address, lxd_container_port=80)
            self.assertIn('lxd_server_address: expected "unix:", "unix:PATH" or "https://HOST:PORT"', line)

    def test_portRequired(self) -> None:
        """Without lxd_container_port or lxd_container_port_key, no container has a port."""
        [line] = self.problems(lxd_server_address="unix:")
        self.assertIn("lxd_container_port: required when kind = \"lxd\", unless lxd_container_port_key", line)

    def test_portRange(self) -> None:
        """lxd_container_port is a port."""
        [line] = self.problems(lxd_server_address="unix:", lxd_container_port=70000)
        self.assertIn("lxd_container_port: expected an integer from 0 to 65535, got 70000", line)

    def test_labelValueNeedsKey(self) -> None:
        """A label value without its key is refused (gobetween ignores it silently)."""
        [line] = self.problems(lxd_server_address="unix:", lxd_container_port=80, lxd_container_label_value="web")
        self.assertIn("lxd_container_label_value: needs lxd_container_label_key", line)

    def test_badValues(self) -> None:
        """Each key's wrong type or form is named."""
        cases = {
            "lxd_server_remote_name": ("../x", "expected a remote name"),
            "lxd_server_remote_password": (1, "expected a string"),
            "lxd_config_directory": (False, "expected a string"),
            "lxd_generate_client_certs": ("yes", "expected true or false"),
            "lxd_accept_server_cert": (1, "expected true or false"),
            "lxd_container_label_key": ("user role", "expected an LXD configuration key"),
            "lxd_container_port_key": ("a b", "expected an LXD configuration key"),
            "lxd_container_interface": ("eth 0", "expected an interface name"),
            "lxd_container_interface_key": (3, "expected a string"),
            "lxd_container_sni_key": ("x y", "expected an LXD configuration key"),
            "lxd_container_address_type": ("ipv4", 'expected one of "IPv4", "IPv6", ""'),
        }
        for key, (value, expected) in cases.items():
            lines = self.problems(lxd_server_address="unix:", lxd_container_port=80, **{key: value})
            self.assertEqual(len(lines), 1, lines)
            self.assertIn(f"servers.s.discovery.{key}: {expected}", lines[0])

    def test_keysOfAnotherKind(self) -> None:
        """lxd_* keys in a table of another kind are refused."""
        error = self.assertRaises(
            ConfigError,
            config_from_mapping,
            {
                "servers": {
                    "s": {
                        "bind": ":1",
                        "discovery": {"kind": "static", "static_list": ["a:1"], "lxd_container_sni_key": "x"},
                    }
                }
            },
            "test",
        )
        self.assertIn('lxd_container_sni_key: belongs to discovery kind "lxd", but kind = "static"', error.render())


class HelperTests(SynchronousTestCase):
    """L{unix_socket_path}, L{container_address} and L{lxd_request}."""

    def test_unixSocketPath(self) -> None:
        """unix:PATH and unix://PATH name the socket; unix: alone is LXD's default, as its client finds it."""
        self.assertEqual(unix_socket_path("unix:/run/lxd.sock", {}), "/run/lxd.sock")
        self.assertEqual(unix_socket_path("unix:///var/lib/lxd/unix.socket", {}), "/var/lib/lxd/unix.socket")
        self.assertEqual(unix_socket_path("unix:", {"LXD_SOCKET": "/s", "LXD_DIR": "/d"}), "/s")
        self.assertEqual(unix_socket_path("unix://", {"LXD_DIR": "/d"}), "/d/unix.socket")
        self.assertIn(
            unix_socket_path("unix:", {}), ("/var/lib/lxd/unix.socket", "/var/snap/lxd/common/lxd/unix.socket")
        )

    def test_containerAddress(self) -> None:
        """The first address of the family on the interface, link-local passed over."""
        state = containers()[0].state()
        self.assertEqual(container_address(state, "eth0", "inet"), "127.0.0.21")
        self.assertEqual(container_address(state, "eth0", "inet6"), "::1")
        self.assertEqual(container_address(state, "eth9", "inet"), "")
        self.assertEqual(container_address({"network": None}, "eth0", "inet"), "")
        self.assertEqual(container_address([], "eth0", "inet"), "")

    def test_errorDocument(self) -> None:
        """LXD's error document gives the message; a non-JSON 2xx answer and a non-JSON error are named too."""
        stub = StubTreq(FakeLXD([]))
        d = Deferred.fromCoroutine(lxd_request(stub, "GET", "http://lxd/1.0/nothing"))
        stub.flush()
        self.assertEqual(
            str(self.failureResultOf(d, DiscoveryError).value), "GET /1.0/nothing: LXD answered HTTP 404: not found"
        )


class StubTests(SynchronousTestCase):
    """L{LxdDiscovery} on L{StubTreq} serving the fake LXD (the unix-socket path)."""

    def test_fetch(self) -> None:
        """The same backends as over a real socket."""
        stub = StubTreq(FakeLXD(containers()))
        discovery = LxdDiscovery(lxd_config(lxd_server_address="unix:", **KEYS), Clock(), http=stub)
        d = discovery.fetch()
        stub.flush()
        self.assertEqual(self.successResultOf(d), WEB)

    def test_notAList(self) -> None:
        """A listing whose metadata is not a list fails the fetch."""

        class Odd(FakeLXD):
            def render_GET(self, request: Any) -> bytes:
                return b'{"type": "sync", "metadata": {"web1": {}}}'

        stub = StubTreq(Odd([]))
        discovery = LxdDiscovery(lxd_config(lxd_server_address="unix:", lxd_container_port=80), Clock(), http=stub)
        d = discovery.fetch()
        stub.flush()
        self.assertEqual(
            str(self.failureResultOf(d, DiscoveryError).value),
            "GET /1.0/containers?recursion=1: expected a list of containers",
        )
