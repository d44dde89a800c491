"""
Unit tests for L{balancer.discovery}: the registry, each kind's parsing (HTTP
kinds on L{StubTreq}), and L{DiscoveryRunner} on a L{task.Clock}.

Real peers (HTTP servers, a DNS server, commands) are in
L{tests.test_discovery_integration}.
"""

from __future__ import annotations

import json
import os
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer
from zope.interface.verify import verifyObject

from balancer.config.errors import ConfigError
from balancer.config.addresses import BackendSpec
from balancer.config.load import config_from_mapping, read_config_file
from balancer.config.schema import DISCOVERY_KINDS, DiscoveryConfig
from balancer.discovery import (
    KINDS,
    DiscoveryError,
    DiscoveryRunner,
    IDiscovery,
    fetch_timeout,
    make_discovery,
)
from balancer.discovery.base import make_backend
from balancer.discovery.consul import ConsulDiscovery
from balancer.discovery.docker import DockerDiscovery
from balancer.discovery.exec import parse_lines
from balancer.discovery.json_kind import JsonDiscovery, lookup
from balancer.discovery.plaintext import DEFAULT_PATTERN, PlaintextDiscovery, compile_pattern
from balancer.discovery.srv import additional_addresses, first_address, srv_backends, srv_targets
from tests.support.paths import ROOT

A = BackendSpec("10.0.0.1", 80)
B = BackendSpec("10.0.0.2", 81, weight=3)


def discovery_config(**keys: Any) -> DiscoveryConfig:
    """A C{[servers.s.discovery]} table with C{keys}, parsed and checked like a configuration file."""
    config = config_from_mapping({"servers": {"s": {"bind": "127.0.0.1:0", "discovery": keys}}}, "test")
    return config.servers["s"].discovery


EXAMPLES: dict[str, dict[str, Any]] = {
    "static": {"static_list": ["10.0.0.1:80"]},
    "exec": {"exec_command": ["/bin/true"]},
    "plaintext": {"plaintext_endpoint": "http://127.0.0.1:1/list"},
    "json": {"json_endpoint": "http://127.0.0.1:1/list"},
    "srv": {"srv_lookup_server": "127.0.0.1:53", "srv_lookup_pattern": "web.example."},
    "docker": {"docker_endpoint": "unix:///var/run/docker.sock", "docker_container_private_port": 80},
    "consul": {"consul_host": "127.0.0.1:8500", "consul_service_name": "web"},
    "lxd": {"lxd_server_address": "unix:", "lxd_container_port": 80},
}
"""The smallest valid discovery table of each kind."""


def example(kind: str, **more: Any) -> DiscoveryConfig:
    """The example table of C{kind} with C{more} keys."""
    return discovery_config(kind=kind, **{**EXAMPLES[kind], **more})


def fetched(test: SynchronousTestCase, d: Deferred[Any], stub: StubTreq | None = None) -> Any:
    """The result of C{d}, after letting C{stub} deliver its responses."""
    if stub is not None:
        stub.flush()
    return test.successResultOf(d)


def failed(test: SynchronousTestCase, d: Deferred[Any], stub: StubTreq | None = None) -> str:
    """The message of the L{DiscoveryError} that C{d} failed with."""
    if stub is not None:
        stub.flush()
    return str(test.failureResultOf(d, DiscoveryError).value)


class Page(Resource):
    """
    An HTTP resource answering every GET with C{body} and C{code}; it
    records each request's path, query arguments and headers.
    """

    isLeaf = True

    def __init__(self, body: bytes = b"", code: int = 200, pages: dict[bytes, bytes] | None = None) -> None:
        super().__init__()
        self.body = body
        self.code = code
        self.pages = pages or {}
        self.requests: list[Any] = []

    def render_GET(self, request: Any) -> bytes:
        self.requests.append(request)
        request.setResponseCode(self.code)
        return self.pages.get(request.path, self.body)


class Hanging(Resource):
    """An HTTP resource that never answers."""

    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        return NOT_DONE_YET


class RegistryTests(SynchronousTestCase):
    """L{KINDS}, L{make_discovery} and L{fetch_timeout}."""

    def test_names(self) -> None:
        """Every kind the configuration accepts is registered."""
        self.assertEqual(sorted(KINDS), sorted(DISCOVERY_KINDS))

    def test_eachKindProvidesIdiscovery(self) -> None:
        """make_discovery builds the registered class of each kind, providing IDiscovery."""
        for kind in EXAMPLES:
            discovery = make_discovery(example(kind), Clock())
            self.assertIsInstance(discovery, KINDS[kind])
            self.assertTrue(verifyObject(IDiscovery, discovery))

    def test_defaultTimeouts(self) -> None:
        """timeout = 0 means the kind's default: exec 3s, consul 2s, HTTP and DNS kinds 5s, static none."""
        expected = {"static": 0, "exec": 3, "plaintext": 5, "json": 5, "srv": 5, "docker": 5, "consul": 2, "lxd": 5}
        self.assertEqual({kind: fetch_timeout(example(kind)) for kind in EXAMPLES}, expected)

    def test_configuredTimeoutWins(self) -> None:
        """A configured timeout replaces the kind's default."""
        self.assertEqual(fetch_timeout(example("exec", timeout="250ms")), 0.25)


class ExampleConfigTests(SynchronousTestCase):
    """C{etc/discovery-<kind>.toml}: one example per kind, each loads and makes its discovery."""

    def test_examples(self) -> None:
        """Every registered kind has an example whose server uses that kind."""
        for kind in KINDS:
            config = read_config_file(os.path.join(ROOT, "etc", f"discovery-{kind}.toml"))
            discovery = config.servers["web"].discovery
            self.assertEqual(discovery.kind, kind)
            self.assertIsInstance(make_discovery(discovery, Clock()), KINDS[kind])


class MakeBackendTests(SynchronousTestCase):
    """L{make_backend} checks discovered values."""

    def test_defaults(self) -> None:
        """Weight and priority default to 1, sni to none; text numbers are accepted."""
        self.assertEqual(make_backend("h", "80", "", None), BackendSpec("h", 80))
        self.assertEqual(make_backend("h", 80, "3", 2.0, "s"), BackendSpec("h", 80, weight=3, priority=2, sni="s"))

    def test_bracketedIpv6(self) -> None:
        """An IPv6 host in brackets loses them."""
        self.assertEqual(make_backend("[::1]", 80).host, "::1")

    def test_badValues(self) -> None:
        """A missing or out-of-range port, a non-numeric weight, an empty host: each named."""
        for args, needle in [
            (("h", None), "port: missing"),
            (("h", 0), "port: expected"),
            (("h", 70000), "port: expected"),
            (("h", "http"), "port: expected"),
            (("h", 80, "heavy"), "weight: expected"),
            (("h", 80, True), "weight: expected"),
            (("", 80), "host: expected"),
            ((None, 80), "host: expected"),
        ]:
            error = self.assertRaises(DiscoveryError, make_backend, *args)
            self.assertIn(needle, str(error))


class StaticTests(SynchronousTestCase):
    """C{kind = "static"}."""

    def test_staticList(self) -> None:
        """The fetch gives the configured list."""
        config = discovery_config(kind="static", static_list=["10.0.0.1:80", "10.0.0.2:81 weight=3"])
        self.assertEqual(fetched(self, make_discovery(config, Clock()).fetch()), [A, B])


class ExecOutputTests(SynchronousTestCase):
    """L{parse_lines}: what an exec command prints (the command itself runs in the integration tests)."""

    def test_lines(self) -> None:
        """Each non-blank line is a static_list line."""
        output = b"10.0.0.1:80\n\n  \n10.0.0.2:81 weight=3\n"
        self.assertEqual(parse_lines(output), [A, B])

    def test_badLineFails(self) -> None:
        """A line that does not parse fails the whole output, naming the line."""
        error = self.assertRaises(DiscoveryError, parse_lines, b"10.0.0.1:80\nnot a backend\n")
        self.assertIn("line 2", str(error))


class PlaintextTests(SynchronousTestCase):
    """C{kind = "plaintext"} on L{StubTreq}."""

    def discovery(self, page: Resource, **keys: Any) -> tuple[PlaintextDiscovery, StubTreq]:
        stub = StubTreq(page)
        return PlaintextDiscovery(example("plaintext", **keys), Clock(), http=stub), stub

    def test_defaultPattern(self) -> None:
        """Without a pattern, lines are gobetween's backend lines; CRLF and blank lines are fine."""
        page = Page(b"10.0.0.1:80\r\n\r\n10.0.0.2:81 weight=3\r\n10.0.0.3:82 weight=2 priority=4 sni=a.example\n")
        discovery, stub = self.discovery(page)
        self.assertEqual(
            fetched(self, discovery.fetch(), stub),
            [A, B, BackendSpec("10.0.0.3", 82, weight=2, priority=4, sni="a.example")],
        )
        self.assertEqual(page.requests[0].path, b"/list")

    def test_defaultPatternIsGobetweens(self) -> None:
        """The default pattern is gobetween's: options in order, single spaces, no max_connections."""
        pattern = compile_pattern("")
        self.assertEqual(pattern.pattern, DEFAULT_PATTERN)
        self.assertIsNotNone(pattern.search("h:1 weight=2 priority=3 sni=x"))
        for line in ("h:1 priority=1 weight=2", "h:1  weight=2", "h:1 max_connections=3"):
            self.assertIsNone(pattern.search(line), line)

    def test_customPattern(self) -> None:
        """A custom pattern's named groups give host, port, weight, priority and sni."""
        page = Page(b"server a.example port 8080 w 5\nserver b.example port 8081\n")
        pattern = r"^server (?P<host>\S+) port (?P<port>\d+)( w (?P<weight>\d+))?$"
        discovery, stub = self.discovery(page, plaintext_regex_pattern=pattern)
        self.assertEqual(
            fetched(self, discovery.fetch(), stub),
            [BackendSpec("a.example", 8080, weight=5), BackendSpec("b.example", 8081)],
        )

    def test_patternNeedsHostAndPort(self) -> None:
        """A pattern without a host or port group is a configuration error at load."""
        error = self.assertRaises(ConfigError, example, "plaintext", plaintext_regex_pattern=r"(?P<host>\S+)")
        self.assertIn("needs the named groups (?P<host>...) and (?P<port>...); missing port", error.render())

    def test_anchoredPatternPerLine(self) -> None:
        """
        The pattern is applied to each line on its own, so ^ and $ anchor the
        line: an anchored pattern finds every node line of a body with a
        comment among them.
        """
        page = Page(
            b"# nodes of the web pool\n"
            b"node 10.0.0.1 port 80\n"
            b"\n"
            b"node 10.0.0.2 port 81\r\n"
            b"  node 10.0.0.3 port 82  \n"
            b"node 10.0.0.4 port 83"
        )
        pattern = r"^node (?P<host>[0-9.]+) port (?P<port>\d+)$"
        discovery, stub = self.discovery(page, plaintext_regex_pattern=pattern)
        self.assertEqual(
            fetched(self, discovery.fetch(), stub),
            [BackendSpec(f"10.0.0.{n}", 79 + n) for n in range(1, 5)],
        )

    def test_unmatchedLineSkipped(self) -> None:
        """A line that does not match is skipped and logged at debug level, naming it; the others are backends."""
        discovery, stub = self.discovery(Page(b"10.0.0.1:80\nhello\n10.0.0.2:81 weight=3\n"))
        with capturedLogs() as events:
            self.assertEqual(fetched(self, discovery.fetch(), stub), [A, B])
        [event] = [e for e in events if "hello" in formatEvent(e)]
        self.assertEqual(event["log_level"], LogLevel.debug)
        self.assertEqual(
            formatEvent(event), 'plaintext line 2 skipped: it does not match plaintext_regex_pattern: "hello"'
        )

    def test_badValuesSkippedWithWarning(self) -> None:
        """A line that matches but is not a backend (port 0) is skipped with a warning."""
        discovery, stub = self.discovery(Page(b"10.0.0.9:0\n10.0.0.1:80\n"))
        with capturedLogs() as events:
            self.assertEqual(fetched(self, discovery.fetch(), stub), [A])
        [event] = [e for e in events if "10.0.0.9" in formatEvent(e)]
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertIn('plaintext line 1 skipped: "10.0.0.9:0": port:', formatEvent(event))

    def test_nothingMatchesIsEmpty(self) -> None:
        """A body where no line matches gives no backends (not an error), as in gobetween."""
        discovery, stub = self.discovery(Page(b"# empty pool\n"))
        self.assertEqual(fetched(self, discovery.fetch(), stub), [])

    def test_notUtf8Fails(self) -> None:
        """A body that is not UTF-8 fails the fetch."""
        discovery, stub = self.discovery(Page(b"\xff10.0.0.1:80\n"))
        self.assertIn("not UTF-8", failed(self, discovery.fetch(), stub))

    def test_httpErrorFails(self) -> None:
        """A status other than 2xx fails the fetch, with the status and the body's start."""
        discovery, stub = self.discovery(Page(b"overloaded", code=503))
        self.assertEqual(failed(self, discovery.fetch(), stub), "GET http://127.0.0.1:1/list: HTTP 503: overloaded")


class JsonTests(SynchronousTestCase):
    """C{kind = "json"} on L{StubTreq}."""

    def discovery(self, document: Any, **keys: Any) -> tuple[JsonDiscovery, StubTreq]:
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        stub = StubTreq(Page(body))
        return JsonDiscovery(example("json", **keys), Clock(), http=stub), stub

    def test_defaultPaths(self) -> None:
        """host, port, weight, priority, sni; the port may be a string; weight and priority default to 1."""
        discovery, stub = self.discovery(
            [
                {"host": "10.0.0.1", "port": 80},
                {"host": "10.0.0.2", "port": "81", "weight": 3, "priority": None},
                {"host": "10.0.0.3", "port": 82, "priority": 2, "sni": "c.example"},
            ]
        )
        self.assertEqual(
            fetched(self, discovery.fetch(), stub), [A, B, BackendSpec("10.0.0.3", 82, priority=2, sni="c.example")]
        )

    def test_dottedPaths(self) -> None:
        """The json_*_pattern keys are dotted paths; numbers index lists."""
        discovery, stub = self.discovery(
            [{"addr": {"ip": "10.0.0.2", "ports": [81]}, "meta": {"w": 3}}],
            json_host_pattern="addr.ip",
            json_port_pattern=".addr.ports.0",
            json_weight_pattern="meta.w",
        )
        self.assertEqual(fetched(self, discovery.fetch(), stub), [B])

    def test_lookupAbsent(self) -> None:
        """A path that leads nowhere is None."""
        document = {"a": [1, {"b": 2}]}
        self.assertEqual(lookup(document, "a.1.b"), 2)
        for path in ("a.2.b", "a.x", "c", "a.1.b.c"):
            self.assertIsNone(lookup(document, path), path)

    def test_missingPortFails(self) -> None:
        """An element without a port fails the fetch, naming the element."""
        discovery, stub = self.discovery([{"host": "10.0.0.1", "port": 80}, {"host": "10.0.0.2"}])
        self.assertIn("element 1: port: missing", failed(self, discovery.fetch(), stub))

    def test_notAnArrayFails(self) -> None:
        """A document that is not an array fails the fetch."""
        discovery, stub = self.discovery({"host": "10.0.0.1", "port": 80})
        self.assertIn("expected a JSON array", failed(self, discovery.fetch(), stub))

    def test_notJsonFails(self) -> None:
        """A document that is not JSON fails the fetch."""
        discovery, stub = self.discovery(b"<html>")
        self.assertIn("is not JSON", failed(self, discovery.fetch(), stub))


def container(ident: str, ports: list[dict[str, Any]], labels: dict[str, str] | None = None) -> dict[str, Any]:
    """One entry of Docker's C{GET /containers/json}."""
    return {"Id": ident, "Names": [f"/{ident}"], "Labels": labels or {}, "Ports": ports}


class DockerTests(SynchronousTestCase):
    """C{kind = "docker"} on L{StubTreq}."""

    def discovery(self, page: Page, **keys: Any) -> tuple[DockerDiscovery, StubTreq]:
        stub = StubTreq(page)
        return DockerDiscovery(example("docker", **keys), Clock(), http=stub), stub

    def test_publishedPorts(self) -> None:
        """
        Bindings of the private port that are published become backends; a
        binding on every interface takes the endpoint's host; IPv4 and IPv6
        bindings of one port make one backend; the sni label is the sni.
        """
        page = Page(
            json.dumps(
                [
                    container(
                        "a1",
                        [
                            {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 32768, "Type": "tcp"},
                            {"IP": "::", "PrivatePort": 80, "PublicPort": 32768, "Type": "tcp"},
                            {"PrivatePort": 443, "Type": "tcp"},
                        ],
                        {"sni": "a.example"},
                    ),
                    container("b2", [{"IP": "10.1.1.1", "PrivatePort": 80, "PublicPort": 32769, "Type": "tcp"}]),
                    container("c3", [{"PrivatePort": 80, "Type": "tcp"}]),
                    container("d4", [{"IP": "0.0.0.0", "PrivatePort": 8080, "PublicPort": 32770, "Type": "tcp"}]),
                ]
            ).encode()
        )
        discovery, stub = self.discovery(page, docker_endpoint="tcp://192.0.2.9:2375")
        self.assertEqual(
            fetched(self, discovery.fetch(), stub),
            [BackendSpec("192.0.2.9", 32768, sni="a.example"), BackendSpec("10.1.1.1", 32769)],
        )

    def test_labelFilter(self) -> None:
        """docker_container_label becomes Docker's label filter."""
        page = Page(b"[]")
        discovery, stub = self.discovery(page, docker_container_label="lb=web")
        self.assertEqual(fetched(self, discovery.fetch(), stub), [])
        request = page.requests[0]
        self.assertEqual(request.path, b"/containers/json")
        self.assertEqual(json.loads(request.args[b"filters"][0]), {"label": ["lb=web"]})

    def test_unixSocketEveryInterfaceIsLocalhost(self) -> None:
        """Over the unix socket, a binding on every interface is 127.0.0.1."""
        body = json.dumps([container("a1", [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 32768}])]).encode()
        discovery, stub = self.discovery(Page(body))
        self.assertEqual(fetched(self, discovery.fetch(), stub), [BackendSpec("127.0.0.1", 32768)])

    def test_hostEnvVar(self) -> None:
        """docker_container_host_env_var: the container's variable, read by inspecting it, is the host."""
        listing = [
            container("a1", [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 32768}]),
            container("b2", [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 32769}]),
        ]
        pages = {
            b"/containers/json": json.dumps(listing).encode(),
            b"/containers/a1/json": json.dumps({"Config": {"Env": ["PATH=/bin", "HOST_IP=10.9.9.9"]}}).encode(),
            b"/containers/b2/json": json.dumps({"Config": {"Env": ["PATH=/bin"]}}).encode(),
        }
        discovery, stub = self.discovery(
            Page(pages=pages), docker_endpoint="tcp://192.0.2.9:2375", docker_container_host_env_var="HOST_IP"
        )
        self.assertEqual(
            fetched(self, discovery.fetch(), stub),
            [BackendSpec("10.9.9.9", 32768), BackendSpec("192.0.2.9", 32769)],
        )

    def test_apiErrorFails(self) -> None:
        """A Docker API error fails the fetch, with its message."""
        discovery, stub = self.discovery(Page(b'{"message":"client version too old"}', code=400))
        self.assertIn("HTTP 400", failed(self, discovery.fetch(), stub))


def entry(service_address: str, port: int, node_address: str = "10.0.0.100", tags: list[str] | None = None) -> Any:
    """One entry of Consul's C{GET /v1/health/service/<name>}."""
    return {
        "Node": {"Node": "n1", "Address": node_address},
        "Service": {"ID": "web-1", "Service": "web", "Address": service_address, "Port": port, "Tags": tags or []},
        "Checks": [],
    }


class ConsulTests(SynchronousTestCase):
    """C{kind = "consul"} on L{StubTreq}."""

    def discovery(self, page: Page, **keys: Any) -> tuple[ConsulDiscovery, StubTreq]:
        stub = StubTreq(page)
        return ConsulDiscovery(example("consul", **keys), Clock(), http=stub), stub

    def test_entries(self) -> None:
        """Service address (the node's if empty) and port; the sni tag is the sni."""
        page = Page(json.dumps([entry("10.0.0.1", 80), entry("", 81, tags=["v1", "sni=b.example"])]).encode())
        discovery, stub = self.discovery(page)
        self.assertEqual(
            fetched(self, discovery.fetch(), stub), [A, BackendSpec("10.0.0.100", 81, sni="b.example")]
        )
        request = page.requests[0]
        self.assertEqual(request.path, b"/v1/health/service/web")
        self.assertEqual(request.args, {})
        self.assertIsNone(request.getHeader(b"x-consul-token"))
        self.assertIsNone(request.getHeader(b"authorization"))

    def test_query(self) -> None:
        """passing, tag, dc, the ACL token header and basic auth, when configured."""
        page = Page(b"[]")
        discovery, stub = self.discovery(
            page,
            consul_service_passing_only=True,
            consul_service_tag="v1",
            consul_service_datacenter="dc2",
            consul_acl_token="secret-token",
            consul_auth_username="lb",
            consul_auth_password="pw",
        )
        self.assertEqual(fetched(self, discovery.fetch(), stub), [])
        request = page.requests[0]
        self.assertEqual(request.args, {b"passing": [b"1"], b"tag": [b"v1"], b"dc": [b"dc2"]})
        self.assertEqual(request.getHeader(b"x-consul-token"), b"secret-token")
        self.assertEqual((request.getUser(), request.getPassword()), (b"lb", b"pw"))

    def test_errorFails(self) -> None:
        """Consul's refusal fails the fetch with its words."""
        discovery, stub = self.discovery(Page(b"ACL not found", code=403))
        self.assertIn("HTTP 403: ACL not found", failed(self, discovery.fetch(), stub))

    def test_entryWithoutPortFails(self) -> None:
        """An entry without a port fails the fetch."""
        body = json.dumps([{"Node": {"Address": "10.0.0.1"}, "Service": {"Address": ""}}]).encode()
        discovery, stub = self.discovery(Page(body))
        self.assertIn("entry 0: port: missing", failed(self, discovery.fetch(), stub))


def srv_answer(*records: tuple[int, int, int, str], rcode: int = dns.OK) -> dns.Message:
    """A DNS answer with SRV records (priority, weight, port, target) for C{web.example.}."""
    message = dns.Message(answer=1, rCode=rcode)
    message.answers = [
        dns.RRHeader(b"web.example", dns.SRV, payload=dns.Record_SRV(priority, weight, port, target))
        for priority, weight, port, target in records
    ]
    message.answers.append(dns.RRHeader(b"web.example", dns.TXT, payload=dns.Record_TXT(b"ignored")))
    return message


ADDRESSES = {"a.example": "10.0.0.1", "b.example": "2001:db8::2"}


def round_trip(message: dns.Message) -> dns.Message:
    """C{message} as a client reads it off the wire."""
    read = dns.Message()
    read.fromStr(message.toStr())
    return read


class SrvAnswerTests(SynchronousTestCase):
    """L{srv_backends} and the address helpers (queries run in the integration tests)."""

    def test_records(self) -> None:
        """The target's address as host, the target (without the dot) as sni, SRV port, weight and priority."""
        answer = srv_answer((10, 60, 8080, "a.example."), (20, 0, 8081, "B.example"))
        self.assertEqual(
            srv_backends(answer, ADDRESSES),
            [
                BackendSpec("10.0.0.1", 8080, weight=60, priority=10, sni="a.example"),
                BackendSpec("2001:db8::2", 8081, weight=0, priority=20, sni="b.example"),
            ],
        )

    def test_targets(self) -> None:
        """srv_targets: each target once, lower case, no final dot; "." left out."""
        answer = round_trip(srv_answer((1, 1, 80, "a.example."), (1, 1, 81, "A.Example"), (0, 0, 0, "")))
        self.assertEqual(srv_targets(answer), ["a.example"])

    def test_targetWithoutAddressSkipped(self) -> None:
        """A target with no address is left out, with a warning naming it."""
        answer = srv_answer((10, 60, 8080, "a.example."), (20, 0, 8081, "c.example"))
        with capturedLogs() as events:
            backends = srv_backends(answer, ADDRESSES)
        self.assertEqual(backends, [BackendSpec("10.0.0.1", 8080, weight=60, priority=10, sni="a.example")])
        [event] = [e for e in events if "c.example" in formatEvent(e)]
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(formatEvent(event), "srv target c.example has no A or AAAA record: skipped")

    def test_additionalAddresses(self) -> None:
        """The additional section's A record of each name, else its AAAA record."""
        answer = srv_answer((1, 1, 80, "a.example"))
        answer.additional = [
            dns.RRHeader(b"a.example", dns.AAAA, payload=dns.Record_AAAA("2001:db8::1")),
            dns.RRHeader(b"A.example", dns.A, payload=dns.Record_A("10.0.0.1")),
            dns.RRHeader(b"b.example", dns.AAAA, payload=dns.Record_AAAA("2001:db8::2")),
            dns.RRHeader(b"b.example", dns.TXT, payload=dns.Record_TXT(b"ignored")),
        ]
        self.assertEqual(additional_addresses(round_trip(answer)), ADDRESSES)

    def test_firstAddress(self) -> None:
        """first_address: the first A or AAAA answer (after a CNAME); "" when none or NXDOMAIN."""
        answer = dns.Message(answer=1)
        answer.answers = [
            dns.RRHeader(b"a.example", dns.CNAME, payload=dns.Record_CNAME(b"b.example")),
            dns.RRHeader(b"b.example", dns.A, payload=dns.Record_A("10.0.0.2")),
        ]
        self.assertEqual(first_address(round_trip(answer), "A a.example"), "10.0.0.2")
        self.assertEqual(first_address(dns.Message(answer=1), "A a.example"), "")
        self.assertEqual(first_address(dns.Message(answer=1, rCode=dns.ENAME), "A a.example"), "")
        error = self.assertRaises(DiscoveryError, first_address, dns.Message(rCode=dns.EREFUSED), "A a.example")
        self.assertEqual(str(error), "the DNS server answered REFUSED for A a.example")

    def test_noServiceTarget(self) -> None:
        """A target of "." (no service) is left out."""
        self.assertEqual(srv_backends(srv_answer((0, 0, 0, "")), ADDRESSES), [])

    def test_nxdomainIsEmpty(self) -> None:
        """A name that does not exist has no backends."""
        self.assertEqual(srv_backends(srv_answer(rcode=dns.ENAME), ADDRESSES), [])
        self.assertEqual(srv_targets(srv_answer(rcode=dns.ENAME)), [])

    def test_serverFailureFails(self) -> None:
        """SERVFAIL fails the fetch."""
        error = self.assertRaises(DiscoveryError, srv_targets, srv_answer(rcode=dns.ESERVER))
        self.assertIn("SERVFAIL", str(error))
        self.assertRaises(DiscoveryError, srv_backends, srv_answer(rcode=dns.ESERVER), ADDRESSES)

    def test_portZeroFails(self) -> None:
        """A record that is not a backend (port 0 with a real target) fails the fetch."""
        self.assertRaises(DiscoveryError, srv_backends, srv_answer((0, 0, 0, "a.example.")), ADDRESSES)


@implementer(IDiscovery)
class Scripted:
    """An L{IDiscovery} whose fetches return prepared Deferreds, recording cancellations."""

    def __init__(self) -> None:
        self.pending: list[Deferred[list[BackendSpec]]] = []
        self.cancelled = 0

    def fetch(self) -> Deferred[list[BackendSpec]]:
        d: Deferred[list[BackendSpec]] = Deferred(self._cancel)
        self.pending.append(d)
        return d

    def _cancel(self, d: Deferred[Any]) -> None:
        self.cancelled += 1

    @property
    def fetches(self) -> int:
        return len(self.pending)

    def answer(self, result: list[BackendSpec] | Exception) -> None:
        """Complete the latest fetch."""
        if isinstance(result, Exception):
            self.pending[-1].errback(result)
        else:
            self.pending[-1].callback(result)


class RunnerTests(SynchronousTestCase):
    """L{DiscoveryRunner} on a L{Clock}."""

    def runner(self, discovery: IDiscovery, **keys: Any) -> tuple[DiscoveryRunner, Clock, list[list[BackendSpec]]]:
        """A runner of a plaintext config with C{keys}, on a clock, recording what it delivers."""
        clock = Clock()
        delivered: list[list[BackendSpec]] = []
        runner = DiscoveryRunner(example("plaintext", **keys), clock, delivered.append, discovery)
        return runner, clock, delivered

    def test_interval(self) -> None:
        """The first fetch is at once; the next comes interval after the previous one ended."""
        source = Scripted()
        runner, clock, delivered = self.runner(source, interval="10s")
        runner.start()
        self.assertEqual(source.fetches, 1)
        clock.advance(3)
        source.answer([A])
        self.assertEqual(delivered, [[A]])
        clock.advance(9.9)
        self.assertEqual(source.fetches, 1)
        clock.advance(0.1)
        self.assertEqual(source.fetches, 2)
        source.answer([A, B])
        self.assertEqual(delivered, [[A], [A, B]])
        self.assertEqual((runner.fetches, runner.failures, runner.last_error), (2, 0, None))

    def test_lastSuccessIsWhenTheLatestGoodFetchEnded(self) -> None:
        """last_success: None before a good fetch, then its end on the clock; a failure keeps it."""
        source = Scripted()
        runner, clock, _ = self.runner(source, interval="10s", failpolicy="keeplast")
        runner.start()
        clock.advance(3)
        self.assertIsNone(runner.last_success)
        source.answer([A])
        self.assertEqual(runner.last_success, 3.0)
        clock.advance(12)
        source.answer([A])
        self.assertEqual(runner.last_success, 15.0)
        clock.advance(10)
        source.answer(DiscoveryError("GET x: HTTP 500"))
        self.assertEqual((runner.last_success, runner.failures), (15.0, 1))

    def test_noOverlap(self) -> None:
        """While a fetch is running, no other starts, however long it takes within the timeout."""
        source = Scripted()
        runner, clock, delivered = self.runner(source, interval="1s", timeout="1m")
        runner.start()
        clock.pump([1] * 30)
        self.assertEqual(source.fetches, 1)

    def test_intervalZeroFetchesOnce(self) -> None:
        """interval 0: one good fetch and no more."""
        source = Scripted()
        runner, clock, delivered = self.runner(source)
        runner.start()
        source.answer([A])
        clock.pump([60] * 10)
        self.assertEqual((source.fetches, delivered), (1, [[A]]))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_staticFetchesOnce(self) -> None:
        """static is fetched once, whatever the interval."""
        clock = Clock()
        delivered: list[list[BackendSpec]] = []
        config = discovery_config(kind="static", static_list=["10.0.0.1:80"], interval="1s")
        DiscoveryRunner(config, clock, delivered.append).start()
        clock.pump([1] * 10)
        self.assertEqual(delivered, [[A]])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_keeplast(self) -> None:
        """keeplast: a failed fetch delivers nothing (the last good list stays), and is counted."""
        source = Scripted()
        runner, clock, delivered = self.runner(source, interval="10s", failpolicy="keeplast")
        runner.start()
        source.answer([A])
        clock.advance(10)
        source.answer(DiscoveryError("GET x: HTTP 500"))
        self.assertEqual(delivered, [[A]])
        self.assertEqual((runner.fetches, runner.failures, runner.last_error), (2, 1, "GET x: HTTP 500"))
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_setempty(self) -> None:
        """setempty: a failed fetch delivers an empty list."""
        source = Scripted()
        runner, clock, delivered = self.runner(source, interval="10s", failpolicy="setempty")
        runner.start()
        source.answer([A])
        clock.advance(10)
        source.answer(ConnectionRefusedError("refused"))
        self.assertEqual(delivered, [[A], []])
        self.assertEqual(runner.last_error, "ConnectionRefusedError: refused")

    def test_retryAfterFailure(self) -> None:
        """
        After a failure the next try is 2s later, or interval later if
        shorter; at interval 0 a success ends the retries.
        """
        for interval, wait in [("0", 2.0), ("1m", 2.0), ("500ms", 0.5)]:
            source = Scripted()
            runner, clock, delivered = self.runner(source, interval=interval)
            runner.start()
            source.answer(DiscoveryError("down"))
            clock.advance(wait - 0.01)
            self.assertEqual(source.fetches, 1, interval)
            clock.advance(0.01)
            self.assertEqual(source.fetches, 2, interval)
        source.answer([A])
        self.assertEqual(delivered, [[A]])

    def test_timeout(self) -> None:
        """A fetch that takes longer than timeout is cancelled and fails (setempty empties)."""
        source = Scripted()
        runner, clock, delivered = self.runner(source, timeout="3s", failpolicy="setempty")
        runner.start()
        clock.advance(2.9)
        self.assertEqual((source.cancelled, delivered), (0, []))
        clock.advance(0.1)
        self.assertEqual((source.cancelled, delivered), (1, [[]]))
        self.assertEqual((runner.failures, runner.last_error), (1, "no answer within 3s (timeout)"))

    def test_defaultTimeout(self) -> None:
        """With timeout 0 the kind's default bounds the fetch (plaintext: 5s)."""
        source = Scripted()
        runner, clock, delivered = self.runner(source)
        runner.start()
        clock.advance(4.9)
        self.assertEqual(runner.failures, 0)
        clock.advance(0.1)
        self.assertEqual((source.cancelled, runner.failures), (1, 1))

    def test_timeoutCancelsHttp(self) -> None:
        """The timeout also ends a real plaintext fetch whose server never answers."""
        clock = Clock()
        stub = StubTreq(Hanging())
        delivered: list[list[BackendSpec]] = []
        config = example("plaintext", timeout="1s", failpolicy="setempty")
        runner = DiscoveryRunner(config, clock, delivered.append, PlaintextDiscovery(config, clock, http=stub))
        runner.start()
        stub.flush()
        clock.advance(1)
        self.assertEqual((delivered, runner.last_error), ([[]], "no answer within 1s (timeout)"))

    def test_synchronousExceptionIsAFailure(self) -> None:
        """A discovery that raises instead of failing its Deferred counts as a failed fetch."""

        @implementer(IDiscovery)
        class Raising:
            def fetch(self) -> Deferred[list[BackendSpec]]:
                raise DiscoveryError("broken")

        runner, clock, delivered = self.runner(Raising(), failpolicy="setempty")
        runner.start()
        self.assertEqual((delivered, runner.failures, runner.last_error), ([[]], 1, "broken"))

    def test_stop(self) -> None:
        """stop cancels the running fetch and the next one; nothing is delivered after."""
        source = Scripted()
        runner, clock, delivered = self.runner(source, interval="10s", failpolicy="setempty")
        runner.start()
        runner.stop()
        self.assertEqual((source.cancelled, delivered, runner.failures), (1, [], 0))
        runner.start()
        source.answer([A])
        runner.stop()
        clock.pump([10] * 5)
        self.assertEqual((source.fetches, delivered), (2, [[A]]))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_onBackendsErrorIsLogged(self) -> None:
        """An exception in on_backends is logged and the fetching goes on."""
        clock = Clock()
        source = Scripted()

        def explode(backends: list[BackendSpec]) -> None:
            raise RuntimeError("pool broke")

        runner = DiscoveryRunner(example("plaintext", interval="1s"), clock, explode, source)
        runner.start()
        source.answer([A])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        clock.advance(1)
        self.assertEqual(source.fetches, 2)

    def test_defaultDiscovery(self) -> None:
        """Without a discovery the runner makes the configured kind's."""
        delivered: list[list[BackendSpec]] = []
        config = discovery_config(kind="static", static_list=["10.0.0.1:80"])
        DiscoveryRunner(config, Clock(), delivered.append).start()
        self.assertEqual(delivered, [[A]])

