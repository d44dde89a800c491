"""
Integration tests for L{balancer.discovery}: every kind against a real peer
on 127.0.0.1 port 0 (or a unix socket in the test's directory), and real
commands for exec.

The peers are the tests' own: twisted.web resources shaped like the
plaintext and JSON sources, the Docker Engine API and Consul's health API
(they check the query they get); a twisted.names DNS server for srv; small
sh scripts for exec.  TLS peers use a CA, server and client certificates
made for each test.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import stat
from typing import Any
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.ssl import Certificate, PrivateCertificate
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.names import dns, server
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseNeverReceived
from twisted.web.resource import Resource
from twisted.web.server import Site

from balancer.config.addresses import BackendSpec
from balancer.config.load import config_from_mapping
from balancer.config.schema import DiscoveryConfig
from balancer.discovery import DiscoveryError, DiscoveryRunner, make_discovery
from tests.support.fake_dns import Records
from tests.support.tracked import served
from tests.support.waiting import until


def discovery_config(**keys: Any) -> DiscoveryConfig:
    """A C{[servers.s.discovery]} table with C{keys}, parsed and checked like a configuration file."""
    config = config_from_mapping({"servers": {"s": {"bind": "127.0.0.1:0", "discovery": keys}}}, "test")
    return config.servers["s"].discovery


async def fetch(**keys: Any) -> list[BackendSpec]:
    """One fetch of the discovery C{keys} describe, on the real reactor."""
    result: list[BackendSpec] = await make_discovery(discovery_config(**keys), reactor).fetch()
    return result


def serve(test: TestCase, factory: Any, *, tls: Any = None, unix: str = "") -> int:
    """Listen with C{factory} on 127.0.0.1 port 0 (TLS with C{tls}) or on the socket C{unix}; the port number."""
    if unix:
        served(test, factory, lambda tracked: reactor.listenUNIX(unix, tracked))
        return 0
    if tls is not None:
        port = served(test, factory, lambda tracked: reactor.listenSSL(0, tracked, tls, interface="127.0.0.1"))
    else:
        port = served(test, factory, lambda tracked: reactor.listenTCP(0, tracked, interface="127.0.0.1"))
    return int(port.getHost().port)


class Answers(Resource):
    """
    A plaintext or JSON source: answers each GET with the next (code, body)
    of C{answers}, repeating the last one.
    """

    isLeaf = True

    def __init__(self, *answers: tuple[int, bytes]) -> None:
        super().__init__()
        self.answers = list(answers)
        self.served = 0

    def render_GET(self, request: Any) -> bytes:
        code, body = self.answers[min(self.served, len(self.answers) - 1)]
        self.served += 1
        request.setResponseCode(code)
        return body


class Recorder:
    """An C{on_backends} that records each list and can wait for the n-th."""

    def __init__(self) -> None:
        self.lists: list[list[BackendSpec]] = []
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def __call__(self, backends: list[BackendSpec]) -> None:
        self.lists.append(backends)
        for count, d in list(self._waiting):
            if len(self.lists) >= count:
                self._waiting.remove((count, d))
                d.callback(None)

    def wait(self, count: int) -> Deferred[None]:
        """Fires once C{count} lists have been delivered."""
        if len(self.lists) >= count:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append((count, d))
        return d


GOOD = b"127.0.0.1:9001\n127.0.0.1:9002 weight=2\n"
GOOD_SPECS = [BackendSpec("127.0.0.1", 9001), BackendSpec("127.0.0.1", 9002, weight=2)]
LATER = b"127.0.0.1:9003\n"
LATER_SPECS = [BackendSpec("127.0.0.1", 9003)]


class PlaintextTests(TestCase):
    """C{kind = "plaintext"} against an HTTP server."""

    timeout = 10

    async def test_fetch(self) -> None:
        """The lines the server sends are the backends."""
        port = serve(self, Site(Answers((200, GOOD))))
        self.assertEqual(await fetch(kind="plaintext", plaintext_endpoint=f"http://127.0.0.1:{port}/b"), GOOD_SPECS)

    async def test_anchoredPatternOverLines(self) -> None:
        """gobetween's per-line matching: an anchored pattern over several lines, a comment line skipped."""
        body = b"# web pool\nnode 127.0.0.1 port 9001\nnode 127.0.0.2 port 9002\n\nnode 127.0.0.3 port 9003\n"
        port = serve(self, Site(Answers((200, body))))
        backends = await fetch(
            kind="plaintext",
            plaintext_endpoint=f"http://127.0.0.1:{port}/b",
            plaintext_regex_pattern=r"^node (?P<host>[0-9.]+) port (?P<port>\d+)$",
        )
        self.assertEqual(backends, [BackendSpec(f"127.0.0.{n}", 9000 + n) for n in (1, 2, 3)])

    async def test_httpError(self) -> None:
        """A 404 fails the fetch."""
        port = serve(self, Site(Answers((404, b"no such list"))))
        with self.assertRaises(DiscoveryError) as caught:
            await fetch(kind="plaintext", plaintext_endpoint=f"http://127.0.0.1:{port}/b")
        self.assertIn("HTTP 404: no such list", str(caught.exception))

    async def test_connectionRefused(self) -> None:
        """A source that is not listening fails the fetch."""
        listening = reactor.listenTCP(0, Site(Answers((200, GOOD))), interface="127.0.0.1")
        port = listening.getHost().port
        await listening.stopListening()
        with self.assertRaises(ConnectionRefusedError):
            await fetch(kind="plaintext", plaintext_endpoint=f"http://127.0.0.1:{port}/b")


class FailpolicyTests(TestCase):
    """The runner's failpolicy with a real source that fails once (interval 50ms, real time)."""

    timeout = 10

    async def run_until(self, failpolicy: str, lists: int) -> tuple[DiscoveryRunner, Recorder]:
        """Serve good, 500, later; run the discovery until C{lists} lists were delivered."""
        port = serve(self, Site(Answers((200, GOOD), (500, b"down"), (200, LATER))))
        config = discovery_config(
            kind="plaintext", plaintext_endpoint=f"http://127.0.0.1:{port}/b", interval="50ms", failpolicy=failpolicy
        )
        recorder = Recorder()
        runner = DiscoveryRunner(config, reactor, recorder)
        runner.start()
        self.addCleanup(runner.stop)
        await recorder.wait(lists)
        return runner, recorder

    async def test_keeplast(self) -> None:
        """keeplast: the failed fetch delivers nothing; the last good list stayed until the next good one."""
        runner, recorder = await self.run_until("keeplast", 2)
        self.assertEqual(recorder.lists, [GOOD_SPECS, LATER_SPECS])
        self.assertEqual(runner.failures, 1)
        self.assertIn("HTTP 500: down", runner.last_error or "")

    async def test_setempty(self) -> None:
        """setempty: the failed fetch delivers an empty list."""
        runner, recorder = await self.run_until("setempty", 3)
        self.assertEqual(recorder.lists, [GOOD_SPECS, [], LATER_SPECS])
        self.assertEqual(runner.failures, 1)


class JsonTests(TestCase):
    """C{kind = "json"} against an HTTP server."""

    timeout = 10

    async def test_fetch(self) -> None:
        """Each element of the served array is a backend, read with the dotted paths."""
        document = [
            {"addr": {"ip": "127.0.0.1", "port": "9001"}},
            {"addr": {"ip": "127.0.0.1", "port": 9002}, "w": 2},
        ]
        port = serve(self, Site(Answers((200, json.dumps(document).encode()))))
        backends = await fetch(
            kind="json",
            json_endpoint=f"http://127.0.0.1:{port}/b",
            json_host_pattern="addr.ip",
            json_port_pattern="addr.port",
            json_weight_pattern="w",
        )
        self.assertEqual(backends, GOOD_SPECS)

    async def test_notJson(self) -> None:
        """A body that is not JSON fails the fetch."""
        port = serve(self, Site(Answers((200, b"127.0.0.1:9001"))))
        with self.assertRaises(DiscoveryError):
            await fetch(kind="json", json_endpoint=f"http://127.0.0.1:{port}/b")


def write_pem(path: str, *items: Any) -> str:
    """Write certificates and keys to C{path} as PEM; the path."""
    with open(path, "wb") as f:
        for item in items:
            if isinstance(item, x509.Certificate):
                f.write(item.public_bytes(serialization.Encoding.PEM))
            else:
                f.write(
                    item.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                )
    return path


class PKI:
    """
    A CA with a server certificate for 127.0.0.1 and a client certificate,
    as PEM files in C{directory}; C{server_options} requires clients to
    present a certificate of this CA.
    """

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = self._certificate("test CA", ca_key.public_key(), ca_key, None, is_ca=True)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert = self._certificate("127.0.0.1", server_key.public_key(), ca_key, ca, is_ca=False)
        client_key = ec.generate_private_key(ec.SECP256R1())
        client_cert = self._certificate("balancer", client_key.public_key(), ca_key, ca, is_ca=False)
        self.cacert_path = write_pem(os.path.join(directory, "ca.pem"), ca)
        self.cert_path = write_pem(os.path.join(directory, "cert.pem"), client_cert)
        self.key_path = write_pem(os.path.join(directory, "key.pem"), client_key)
        server_pem = open(write_pem(os.path.join(directory, "server.pem"), server_cert, server_key), "rb").read()
        ca_pem = open(self.cacert_path, "rb").read()
        self.server_options = PrivateCertificate.loadPEM(server_pem).options(Certificate.loadPEM(ca_pem))

    @staticmethod
    def _certificate(name: str, public_key: Any, signer: Any, issuer: x509.Certificate | None, is_ca: bool) -> Any:
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject if issuer is not None else subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        )
        if is_ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(name))])
                if name == "127.0.0.1"
                else x509.SubjectAlternativeName([x509.DNSName(name)]),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())


def container(ident: str, labels: dict[str, str], ports: list[dict[str, Any]], env: list[str]) -> dict[str, Any]:
    """A container as the Docker peer keeps it: its C{/containers/json} entry and its environment."""
    return {"Id": ident, "Names": [f"/{ident}"], "Labels": labels, "Ports": ports, "State": "running", "_env": env}


class DockerAPI(Resource):
    """
    The part of the Docker Engine API discovery uses: C{GET /containers/json}
    with Docker's C{filters} (label filters applied as Docker does: "key" or
    "key=value") and C{GET /containers/<id>/json} (the container's config).
    Anything else is a 404 with Docker's error shape.
    """

    isLeaf = True

    def __init__(self, containers: list[dict[str, Any]]) -> None:
        super().__init__()
        self.containers = containers
        self.paths: list[bytes] = []

    def render_GET(self, request: Any) -> bytes:
        self.paths.append(request.uri)
        request.setHeader(b"content-type", b"application/json")
        parts = unquote(request.path.decode()).strip("/").split("/")
        if parts == ["containers", "json"]:
            return json.dumps([self._entry(c) for c in self.containers if self._wanted(c, request)]).encode()
        if len(parts) == 3 and parts[0] == "containers" and parts[2] == "json":
            for c in self.containers:
                if c["Id"] == parts[1]:
                    return json.dumps({"Id": c["Id"], "Config": {"Env": c["_env"], "Labels": c["Labels"]}}).encode()
        request.setResponseCode(404)
        return json.dumps({"message": f"page not found: {request.path.decode()}"}).encode()

    @staticmethod
    def _entry(c: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in c.items() if not k.startswith("_")}

    @staticmethod
    def _wanted(c: dict[str, Any], request: Any) -> bool:
        filters = json.loads(request.args.get(b"filters", [b"{}"])[0])
        for label in filters.get("label", []):
            key, equals, value = label.partition("=")
            if key not in c["Labels"] or (equals and c["Labels"][key] != value):
                return False
        return True


DOCKER_CONTAINERS = [
    container(
        "aaa111",
        {"lb": "web", "sni": "a.example"},
        [
            {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 32768, "Type": "tcp"},
            {"IP": "::", "PrivatePort": 80, "PublicPort": 32768, "Type": "tcp"},
        ],
        ["PATH=/usr/bin"],
    ),
    container(
        "bbb222", {"lb": "web"}, [{"IP": "127.0.0.2", "PrivatePort": 80, "PublicPort": 32769, "Type": "tcp"}], []
    ),
    container(
        "ccc333",
        {"lb": "other"},
        [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 32770, "Type": "tcp"}],
        ["HOST_IP=10.0.0.9"],
    ),
]


class DockerTests(TestCase):
    """C{kind = "docker"} against a Docker-shaped HTTP server over TCP, TLS and a unix socket."""

    timeout = 10

    async def test_tcp(self) -> None:
        """Over tcp://: the labelled containers' published ports; every interface is the endpoint's host."""
        api = DockerAPI(DOCKER_CONTAINERS)
        port = serve(self, Site(api))
        backends = await fetch(
            kind="docker",
            docker_endpoint=f"tcp://127.0.0.1:{port}",
            docker_container_label="lb=web",
            docker_container_private_port=80,
        )
        self.assertEqual(
            backends, [BackendSpec("127.0.0.1", 32768, sni="a.example"), BackendSpec("127.0.0.2", 32769)]
        )
        self.assertEqual(len(api.paths), 1)

    async def test_hostEnvVar(self) -> None:
        """docker_container_host_env_var: the container's variable (read by inspecting it) is the host."""
        api = DockerAPI(DOCKER_CONTAINERS)
        port = serve(self, Site(api))
        backends = await fetch(
            kind="docker",
            docker_endpoint=f"http://127.0.0.1:{port}",
            docker_container_label="lb",
            docker_container_private_port=80,
            docker_container_host_env_var="HOST_IP",
        )
        self.assertEqual(
            backends,
            [
                BackendSpec("127.0.0.1", 32768, sni="a.example"),
                BackendSpec("127.0.0.2", 32769),
                BackendSpec("10.0.0.9", 32770),
            ],
        )
        self.assertIn(b"/containers/ccc333/json", api.paths)

    async def test_unixSocket(self) -> None:
        """Over unix://, the API on a unix socket; every interface is 127.0.0.1."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "docker.sock")
        serve(self, Site(DockerAPI(DOCKER_CONTAINERS)), unix=path)
        backends = await fetch(
            kind="docker",
            docker_endpoint=f"unix://{path}",
            docker_container_label="lb=other",
            docker_container_private_port=80,
        )
        self.assertEqual(backends, [BackendSpec("127.0.0.1", 32770)])

    async def test_tls(self) -> None:
        """
        docker_tls_*: HTTPS checked against the CA, presenting the client
        certificate the server requires (without it, the handshake fails).
        """
        pki = PKI(self.mktemp())
        port = serve(self, Site(DockerAPI(DOCKER_CONTAINERS)), tls=pki.server_options)
        keys = {
            "kind": "docker",
            "docker_endpoint": f"tcp://127.0.0.1:{port}",
            "docker_container_label": "lb=web",
            "docker_container_private_port": 80,
            "docker_tls_enabled": True,
            "docker_tls_cacert_path": pki.cacert_path,
        }
        backends = await fetch(**keys, docker_tls_cert_path=pki.cert_path, docker_tls_key_path=pki.key_path)
        self.assertEqual(len(backends), 2)
        with self.assertRaises(ResponseNeverReceived) as caught:
            await fetch(**keys)
        self.assertTrue(caught.exception.reasons[0].check(SSL.Error), caught.exception.reasons)

    async def test_tlsMissingFile(self) -> None:
        """A TLS file that cannot be read fails the fetch, naming the key."""
        with self.assertRaises(DiscoveryError) as caught:
            await fetch(
                kind="docker",
                docker_endpoint="tcp://127.0.0.1:1",
                docker_container_private_port=80,
                docker_tls_enabled=True,
                docker_tls_cacert_path=os.path.join(self.mktemp(), "missing.pem"),
            )
        self.assertIn("docker_tls_cacert_path", str(caught.exception))


def consul_entry(node: str, address: str, port: int, tags: list[str], status: str) -> dict[str, Any]:
    """One service instance as Consul's health endpoint lists it."""
    return {
        "Node": {"Node": node, "Address": "127.0.0.1", "Datacenter": "dc1"},
        "Service": {"ID": f"web-{node}", "Service": "web", "Address": address, "Port": port, "Tags": tags},
        "Checks": [{"Node": node, "CheckID": "serfHealth", "Status": "passing"}, {"Status": status}],
    }


class ConsulAPI(Resource):
    """
    Consul's C{GET /v1/health/service/<name>} as discovery uses it: checks
    the ACL token header and basic auth, applies C{passing}, C{tag} and
    C{dc} as Consul does, and answers Consul's errors otherwise.
    """

    isLeaf = True
    token = "s3cr3t"
    credentials = (b"lb", b"pw")

    def __init__(self, entries: dict[str, list[dict[str, Any]]]) -> None:
        super().__init__()
        self.entries = entries

    def render_GET(self, request: Any) -> bytes:
        if (request.getUser(), request.getPassword()) != self.credentials:
            request.setResponseCode(401)
            return b"Unauthorized"
        if request.getHeader(b"x-consul-token") != self.token.encode():
            request.setResponseCode(403)
            return b"ACL not found"
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        if args.get("dc", "dc1") != "dc1":
            request.setResponseCode(500)
            return f"No path to datacenter {args['dc']}".encode()
        prefix = b"/v1/health/service/"
        if not request.path.startswith(prefix):
            request.setResponseCode(404)
            return b""
        entries = self.entries.get(unquote(request.path[len(prefix) :].decode()), [])
        if "passing" in args:
            entries = [e for e in entries if all(c["Status"] == "passing" for c in e["Checks"])]
        if "tag" in args:
            entries = [e for e in entries if args["tag"] in e["Service"]["Tags"]]
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(entries).encode()


CONSUL_ENTRIES = {
    "web": [
        consul_entry("n1", "127.0.0.1", 9001, ["v1"], "passing"),
        consul_entry("n2", "", 9002, ["v1", "sni=web.example"], "passing"),
        consul_entry("n3", "127.0.0.3", 9003, ["v1"], "critical"),
        consul_entry("n4", "127.0.0.4", 9004, ["v2"], "passing"),
    ]
}


class ConsulTests(TestCase):
    """C{kind = "consul"} against a Consul-shaped HTTP server."""

    timeout = 10

    def keys(self, port: int, **more: Any) -> dict[str, Any]:
        return {
            "kind": "consul",
            "consul_host": f"127.0.0.1:{port}",
            "consul_service_name": "web",
            "consul_acl_token": ConsulAPI.token,
            "consul_auth_username": "lb",
            "consul_auth_password": "pw",
            **more,
        }

    async def test_passingTagDatacenter(self) -> None:
        """passing only, a tag and the datacenter select the instances; a node address stands in for an empty one."""
        port = serve(self, Site(ConsulAPI(CONSUL_ENTRIES)))
        backends = await fetch(
            **self.keys(port, consul_service_passing_only=True, consul_service_tag="v1", consul_datacenter="dc1")
        )
        self.assertEqual(backends, [BackendSpec("127.0.0.1", 9001), BackendSpec("127.0.0.1", 9002, sni="web.example")])

    async def test_allInstances(self) -> None:
        """Without passing_only or a tag, every instance (the sample's consul_service_datacenter key works too)."""
        port = serve(self, Site(ConsulAPI(CONSUL_ENTRIES)))
        backends = await fetch(**self.keys(port, consul_service_datacenter="dc1"))
        self.assertEqual([b.port for b in backends], [9001, 9002, 9003, 9004])

    async def test_refusals(self) -> None:
        """A wrong token, wrong credentials or an unknown datacenter fail the fetch with Consul's answer."""
        port = serve(self, Site(ConsulAPI(CONSUL_ENTRIES)))
        for more, needle in [
            ({"consul_acl_token": "wrong"}, "HTTP 403: ACL not found"),
            ({"consul_auth_password": "wrong"}, "HTTP 401"),
            ({"consul_datacenter": "dc9"}, "HTTP 500: No path to datacenter dc9"),
        ]:
            with self.assertRaises(DiscoveryError) as caught:
                await fetch(**self.keys(port, **more))
            self.assertIn(needle, str(caught.exception))

    async def test_tls(self) -> None:
        """consul_tls_*: HTTPS with the CA and the client certificate."""
        pki = PKI(self.mktemp())
        port = serve(self, Site(ConsulAPI(CONSUL_ENTRIES)), tls=pki.server_options)
        backends = await fetch(
            **self.keys(
                port,
                consul_tls_enabled=True,
                consul_tls_cacert_path=pki.cacert_path,
                consul_tls_cert_path=pki.cert_path,
                consul_tls_key_path=pki.key_path,
                consul_service_tag="v2",
            )
        )
        self.assertEqual(backends, [BackendSpec("127.0.0.4", 9004)])


ZONE = {
    "_web._tcp.example": [
        dns.Record_SRV(10, 60, 9001, b"a.example"),
        dns.Record_SRV(20, 40, 9002, b"b.example"),
    ],
    "a.example": [dns.Record_A("127.0.0.11")],
    "b.example": [dns.Record_A("127.0.0.12"), dns.Record_AAAA("::1")],
    "_mixed._tcp.example": [
        dns.Record_SRV(10, 60, 9001, b"a.example"),
        dns.Record_SRV(10, 60, 9003, b"a.example"),
        dns.Record_SRV(20, 40, 9004, b"v6.example"),
        dns.Record_SRV(30, 10, 9005, b"nowhere.example"),
        dns.Record_SRV(30, 10, 9006, b"named.example"),
    ],
    "v6.example": [dns.Record_AAAA("::1")],
    "named.example": [],
}
ZONE_SPECS = [
    BackendSpec("127.0.0.11", 9001, weight=60, priority=10, sni="a.example"),
    BackendSpec("127.0.0.12", 9002, weight=40, priority=20, sni="b.example"),
]
MIXED_SPECS = [
    BackendSpec("127.0.0.11", 9001, weight=60, priority=10, sni="a.example"),
    BackendSpec("127.0.0.11", 9003, weight=60, priority=10, sni="a.example"),
    BackendSpec("::1", 9004, weight=40, priority=20, sni="v6.example"),
]


class Truncating(DatagramProtocol):
    """A DNS server over UDP that answers every query "truncated: ask over TCP"."""

    def datagramReceived(self, data: bytes, address: Any) -> None:
        query = dns.Message()
        query.fromStr(data)
        answer = dns.Message(id=query.id, answer=1, trunc=1)
        answer.queries = query.queries
        self.transport.write(answer.toStr(), address)


class Silent(DatagramProtocol):
    """A UDP server that never answers."""


class SrvTests(TestCase):
    """C{kind = "srv"} against a twisted.names DNS server in this process."""

    timeout = 10

    def dns_server(self, udp: Any = None, tcp: bool = False, same_port: bool = False, additional: bool = False) -> int:
        """
        Start a DNS server of L{ZONE} (kept in C{self.zone}): over TCP if
        C{tcp}; over UDP with C{udp} (a protocol, or "zone" for the zone's
        server), on the TCP port's number if C{same_port}; with the targets'
        addresses in SRV answers if C{additional}.  The port number.
        """
        self.zone = Records(ZONE, additional=additional)
        factory = server.DNSServerFactory(clients=[self.zone])
        port = 0
        if tcp:
            port = serve(self, factory)
        if udp is not None:
            protocol = dns.DNSDatagramProtocol(factory) if udp == "zone" else udp
            listening = reactor.listenUDP(port if same_port else 0, protocol, interface="127.0.0.1")
            self.addCleanup(listening.stopListening)
            port = listening.getHost().port
        return port

    def keys(self, port: int, protocol: str, name: str = "_web._tcp.example.") -> dict[str, Any]:
        return {
            "kind": "srv",
            "srv_lookup_server": f"127.0.0.1:{port}",
            "srv_lookup_pattern": name,
            "srv_dns_protocol": protocol,
        }

    async def test_udp(self) -> None:
        """Over UDP: each SRV record is a backend."""
        port = self.dns_server(udp="zone")
        self.assertEqual(await fetch(**self.keys(port, "udp")), ZONE_SPECS)

    async def test_addressesFromAdditionalSection(self) -> None:
        """Targets' addresses in the SRV answer's additional section are used: no A or AAAA question is asked."""
        port = self.dns_server(udp="zone", additional=True)
        self.assertEqual(await fetch(**self.keys(port, "udp")), ZONE_SPECS)
        self.assertEqual(self.zone.asked, [("_web._tcp.example", dns.SRV)])

    async def test_addressesAskedAThenAAAA(self) -> None:
        """
        Without additional records the same server is asked for each
        target's A records, then its AAAA records; a target with neither
        is skipped with a warning; a target used twice is asked once.
        """
        port = self.dns_server(udp="zone")
        with capturedLogs() as events:
            backends = await fetch(**self.keys(port, "udp", "_mixed._tcp.example."))
        self.assertEqual(backends, MIXED_SPECS)
        self.assertEqual(
            self.zone.asked,
            [
                ("_mixed._tcp.example", dns.SRV),
                ("a.example", dns.A),
                ("v6.example", dns.A),
                ("v6.example", dns.AAAA),
                ("nowhere.example", dns.A),
                ("nowhere.example", dns.AAAA),
                ("named.example", dns.A),
                ("named.example", dns.AAAA),
            ],
        )
        warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        self.assertIn("srv target nowhere.example has no A or AAAA record: skipped", warnings)
        self.assertIn("srv target named.example has no A or AAAA record: skipped", warnings)

    async def test_failedALookupTriesAAAA(self) -> None:
        """An error answer to a target's A question is logged, and its AAAA records are asked for."""
        factory = server.DNSServerFactory(clients=[Records(ZONE, failing=frozenset({("v6.example", dns.A)}))])
        listening = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        with capturedLogs() as events:
            backends = await fetch(**self.keys(listening.getHost().port, "udp", "_mixed._tcp.example."))
        self.assertEqual(backends, MIXED_SPECS)
        warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
        self.assertIn("srv: looking up A v6.example failed: the DNS server answered SERVFAIL for A v6.example", warnings)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)  # twisted.names logs the zone's failure

    async def test_addressesOverTcp(self) -> None:
        """With srv_dns_protocol = "tcp" the address questions go over TCP too."""
        port = self.dns_server(tcp=True)
        self.assertEqual(await fetch(**self.keys(port, "tcp", "_mixed._tcp.example.")), MIXED_SPECS)

    async def test_serverByName(self) -> None:
        """srv_lookup_server may name its host; it is resolved before a UDP query."""
        port = self.dns_server(udp="zone")
        keys = {**self.keys(port, "udp"), "srv_lookup_server": f"localhost:{port}"}
        self.assertEqual(await fetch(**keys), ZONE_SPECS)

    async def test_tcp(self) -> None:
        """Over TCP, to a server that listens only on TCP."""
        port = self.dns_server(tcp=True)
        self.assertEqual(await fetch(**self.keys(port, "tcp")), ZONE_SPECS)

    async def test_protocolIsHonoured(self) -> None:
        """udp to a TCP-only server and tcp to a UDP-only server are both refused."""
        tcp_only = self.dns_server(tcp=True)
        with self.assertRaises(DiscoveryError) as caught:
            await fetch(**self.keys(tcp_only, "udp"))
        self.assertIn("refused", str(caught.exception))
        udp_only = self.dns_server(udp="zone")
        with self.assertRaises(ConnectionRefusedError):
            await fetch(**self.keys(udp_only, "tcp"))

    async def test_nxdomain(self) -> None:
        """A name the server does not know gives no backends."""
        port = self.dns_server(udp="zone")
        self.assertEqual(await fetch(**self.keys(port, "udp", "_db._tcp.example.")), [])

    async def test_truncatedUdpRetriesOverTcp(self) -> None:
        """A truncated UDP answer is asked again over TCP at the same address."""
        port = self.dns_server(udp=Truncating(), tcp=True, same_port=True)
        self.assertEqual(await fetch(**self.keys(port, "udp")), ZONE_SPECS)

    async def test_timeoutClosesTheQuery(self) -> None:
        """A server that never answers: the runner's timeout fails the fetch, and the query's port is closed."""
        port = self.dns_server(udp=Silent())
        config = discovery_config(**self.keys(port, "udp"), timeout="200ms", failpolicy="setempty")
        recorder = Recorder()
        runner = DiscoveryRunner(config, reactor, recorder)
        runner.start()
        self.addCleanup(runner.stop)
        await recorder.wait(1)
        self.assertEqual((recorder.lists, runner.last_error), ([[]], "no answer within 0.2s (timeout)"))


def script(test: TestCase, body: str) -> str:
    """An executable sh script with C{body}, in the test's directory; its path."""
    directory = test.mktemp()
    os.makedirs(directory)
    path = os.path.join(directory, "discover.sh")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return os.path.abspath(path)


def running(pid: int) -> bool:
    """Whether process C{pid} exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class ExecTests(TestCase):
    """C{kind = "exec"} with real commands."""

    timeout = 10

    async def test_output(self) -> None:
        """Each line printed is a backend; arguments reach the program as given, without a shell."""
        path = script(self, 'echo 127.0.0.1:9001\necho\nprintf "%s\\n" "$1"\n')
        backends = await fetch(kind="exec", exec_command=[path, "127.0.0.1:9002 weight=2"])
        self.assertEqual(backends, GOOD_SPECS)

    async def test_programOnPath(self) -> None:
        """A program name without a slash is found on PATH."""
        backends = await fetch(kind="exec", exec_command=["printf", "127.0.0.1:9003\\n"])
        self.assertEqual(backends, LATER_SPECS)

    async def test_missingProgram(self) -> None:
        """A program that is not on PATH fails the fetch."""
        with self.assertRaises(DiscoveryError) as caught:
            await fetch(kind="exec", exec_command=["no-such-discovery-program"])
        self.assertIn("not an executable on PATH", str(caught.exception))

    async def test_exitCode(self) -> None:
        """A non-zero exit fails the fetch, with the code and the start of stderr."""
        path = script(self, "echo 127.0.0.1:9001\necho 'registry unreachable' >&2\nexit 3\n")
        with self.assertRaises(DiscoveryError) as caught:
            await fetch(kind="exec", exec_command=[path])
        self.assertEqual(str(caught.exception), f"{path} exited with code 3: registry unreachable")

    async def test_badLine(self) -> None:
        """A line that is not a backend fails the fetch."""
        path = script(self, "echo 127.0.0.1:9001\necho 'Warning: cache stale'\n")
        with self.assertRaises(DiscoveryError) as caught:
            await fetch(kind="exec", exec_command=[path])
        self.assertIn("line 2", str(caught.exception))

    async def test_timeoutKills(self) -> None:
        """A command that outlives the timeout fails the fetch and is killed."""
        directory = self.mktemp()
        os.makedirs(directory)
        pid_file = os.path.abspath(os.path.join(directory, "pid"))
        path = script(self, f'echo $$ > "{pid_file}"\nexec sleep 30\n')
        config = discovery_config(kind="exec", exec_command=[path], timeout="300ms", failpolicy="setempty")
        recorder = Recorder()
        runner = DiscoveryRunner(config, reactor, recorder)
        runner.start()
        self.addCleanup(runner.stop)
        await recorder.wait(1)
        self.assertEqual((recorder.lists, runner.last_error), ([[]], "no answer within 0.3s (timeout)"))
        with open(pid_file) as f:
            pid = int(f.read())
        await until(lambda: not running(pid), 5, f"pid {pid} gone", step=0.01)
        self.assertFalse(running(pid), f"pid {pid} still runs")

