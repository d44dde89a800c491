"""Loading and validating configuration files: every class of mistake is reported with its key path."""

from __future__ import annotations

import glob
import os

from twisted.trial.unittest import SynchronousTestCase

from balancer.config import ConfigError, read_config_file
from balancer.config.addresses import BackendSpec, HostPort
from balancer.config.load import check_resources, parse_config, server_from_mapping
from tests.support.certs import make_certificates
from tests.support.paths import ROOT, fixture


class BadConfigTests(SynchronousTestCase):
    """Each bad file under tests/fixtures/bad gives exactly the expected lines."""

    def assertProblems(self, name: str, *expected: str) -> None:
        path = fixture("bad", name)
        with self.assertRaises(ConfigError) as caught:
            read_config_file(path)
        self.assertEqual(caught.exception.lines(), [f"{path}: {line}" for line in expected])

    def test_unknownSection(self) -> None:
        self.assertProblems(
            "unknown_section.toml",
            "loging: unknown key; expected one of: acme, api, cluster, defaults, logging, metrics, overrides, profiler, servers, "
            "state",
        )

    def test_unknownServerKey(self) -> None:
        self.assertProblems(
            "unknown_server_key.toml",
            "servers.web.balanse: unknown key; expected one of: access, backend_connection_timeout, "
            "backend_idle_timeout, backends_tls, balance, bind, client_idle_timeout, discovery, healthcheck, "
            "max_connections, protocol, proxy_protocol, sni, tls, udp",
        )

    def test_wrongType(self) -> None:
        self.assertProblems(
            "wrong_type.toml", 'servers.web.max_connections: expected an integer, got string "100"'
        )

    def test_portOutOfRange(self) -> None:
        self.assertProblems(
            "port_out_of_range.toml",
            'servers.web.bind: expected a port from 0 to 65535 in "host:port", got "127.0.0.1:70000"',
        )

    def test_backendPortZero(self) -> None:
        self.assertProblems(
            "backend_port_zero.toml",
            'servers.web.discovery.static_list[0]: expected a port from 1 to 65535 in "host:port", got "127.0.0.1:0"',
        )

    def test_unparsableDuration(self) -> None:
        self.assertProblems(
            "bad_duration.toml",
            'defaults.client_idle_timeout: expected a duration like "2s", "500ms" or "1m30s" '
            '(units ns, us, ms, s, m, h), got "10 minutes"',
        )

    def test_durationWithoutUnit(self) -> None:
        """gobetween silently turns "50" into 0; we say what is wrong."""
        self.assertProblems(
            "unitless_duration.toml",
            'servers.udp.client_idle_timeout: expected a duration like "2s", "500ms" or "1m30s" '
            '(units ns, us, ms, s, m, h), got "50"',
        )

    def test_unknownBalance(self) -> None:
        self.assertProblems(
            "unknown_balance.toml",
            'servers.web.balance: expected one of "weight", "roundrobin", "leastconn", "leastbandwidth", '
            '"iphash", "iphash1", got string "random"',
        )

    def test_unknownProtocol(self) -> None:
        self.assertProblems(
            "unknown_protocol.toml",
            'servers.web.protocol: expected one of "tcp", "tls", "udp", got string "sctp"',
        )

    def test_unknownDiscoveryKind(self) -> None:
        self.assertProblems(
            "unknown_discovery_kind.toml",
            'servers.web.discovery.kind: expected one of "static", "exec", "plaintext", "json", "srv", '
            '"docker", "consul", "lxd", got string "zookeeper"',
        )

    def test_unknownHealthcheckKind(self) -> None:
        self.assertProblems(
            "unknown_healthcheck_kind.toml",
            'servers.web.healthcheck.kind: expected one of "ping", "probe", "exec", "none", got string "http"',
        )

    def test_badStaticLine(self) -> None:
        self.assertProblems(
            "bad_static_line.toml",
            'servers.web.discovery.static_list[1]: expected "host:port [weight=N] [priority=N] '
            '[max_connections=N] [sni=NAME]" (options in that order), got "127.0.0.1:8001 priority=2 weight=3"',
        )

    def test_duplicateBind(self) -> None:
        """localhost and 127.0.0.1 are the same address."""
        self.assertProblems(
            "duplicate_bind.toml",
            'servers.two.bind: "127.0.0.1:3000" (tcp) is already bound by server "one"',
        )

    def test_missingBind(self) -> None:
        self.assertProblems("missing_bind.toml", "servers.web.bind: required key is missing")

    def test_missingDiscovery(self) -> None:
        self.assertProblems("missing_discovery.toml", "servers.web.discovery: required key is missing")

    def test_missingStaticList(self) -> None:
        self.assertProblems(
            "missing_static_list.toml", 'servers.web.discovery.static_list: required when kind = "static"'
        )

    def test_keyOfAnotherDiscoveryKind(self) -> None:
        self.assertProblems(
            "foreign_discovery_key.toml",
            'servers.web.discovery.consul_host: belongs to discovery kind "consul", but kind = "static"',
        )

    def test_tlsWithoutSection(self) -> None:
        self.assertProblems(
            "tls_without_section.toml",
            'servers.web.tls: required when protocol = "tls" (cert_path and key_path)',
        )

    def test_badAccessRule(self) -> None:
        self.assertProblems(
            "bad_access_rule.toml",
            'servers.web.access.rules[1]: expected "allow <ip or cidr>" or "deny <ip or cidr>", '
            'got "permit 10.0.0.0/8"',
        )

    def test_healthcheckWithoutInterval(self) -> None:
        self.assertProblems(
            "healthcheck_without_interval.toml",
            'servers.web.healthcheck.interval: required (a duration above 0) when kind = "ping"',
        )

    def test_badRegexp(self) -> None:
        self.assertProblems(
            "bad_regexp.toml",
            'servers.web.discovery.plaintext_regex_pattern: expected a regular expression, '
            'got string "(?P<host>[0-9.]+": missing ), unterminated subpattern at position 0',
        )

    def test_negativeLimit(self) -> None:
        self.assertProblems(
            "negative_limit.toml", "defaults.max_connections: expected an integer from 0 to 1000000, got -1"
        )

    def test_invalidToml(self) -> None:
        self.assertProblems(
            "invalid_toml.toml", "invalid TOML: Illegal character '\\n' (at line 2, column 23)"
        )

    def test_badApiUser(self) -> None:
        self.assertProblems(
            "bad_api_user.toml", 'api.users[0].account: expected one of "admin", "basic", got string "root"'
        )

    def test_transparentUdpRefused(self) -> None:
        self.assertProblems(
            "udp_transparent.toml",
            "servers.dns.udp.transparent: transparent UDP proxying is not supported; remove it or set it to false",
        )

    def test_threeErrorsAllReported(self) -> None:
        self.assertProblems(
            "three_errors.toml",
            'servers.web.bind: expected a port from 0 to 65535 in "host:port", got "127.0.0.1:99999"',
            'servers.web.balance: expected one of "weight", "roundrobin", "leastconn", "leastbandwidth", '
            '"iphash", "iphash1", got string "fastest"',
            'servers.web.discovery.static_list[0]: expected "host:port" (IPv6 as "[::1]:port"), got "not-a-backend"',
        )

    def test_everyBadFixtureHasATest(self) -> None:
        """No file in tests/fixtures/bad goes unchecked."""
        names = {os.path.basename(p) for p in glob.glob(fixture("bad", "*.toml"))}
        source = open(__file__, encoding="utf-8").read()
        self.assertEqual({n for n in names if f'"{n}"' not in source}, set())
        self.assertGreaterEqual(len(names), 15)


class MissingFileTests(SynchronousTestCase):
    """A file that cannot be read is one clear line."""

    def test_missingFile(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            read_config_file("/nonexistent/balancer.toml")
        self.assertEqual(
            caught.exception.lines(),
            ["/nonexistent/balancer.toml: cannot read the configuration file: No such file or directory"],
        )

    def test_directory(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            read_config_file(fixture("bad"))
        self.assertEqual(len(caught.exception.lines()), 1)
        self.assertIn("cannot read the configuration file: Is a directory", caught.exception.lines()[0])

    def test_notUtf8(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse_config(b"[logging]\nlevel = \"\xff\"\n", "x.toml")
        self.assertEqual(caught.exception.lines(), ["x.toml: not UTF-8 text (byte 19)"])


class GoodConfigTests(SynchronousTestCase):
    """Valid files load into the schema, with gobetween's defaults."""

    def test_exampleConfig(self) -> None:
        config = read_config_file(os.path.join(ROOT, "etc", "balancer.toml"))
        sample = config.servers["sample"]
        self.assertEqual(sample.bind, HostPort("127.0.0.1", 3000))
        self.assertEqual(sample.balance, "roundrobin")
        self.assertEqual(
            [b.key for b in sample.discovery.static_list], ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
        )
        self.assertEqual(sample.backend_connection_timeout, 2.0)

    def test_gobetweenDefaults(self) -> None:
        config = parse_config(
            b'[servers.a]\nbind = ":3000"\n[servers.a.discovery]\nkind = "static"\nstatic_list = ["h:1"]\n', "x"
        )
        server = config.servers["a"]
        self.assertEqual((server.protocol, server.balance), ("tcp", "weight"))
        self.assertEqual(server.discovery.failpolicy, "keeplast")
        self.assertEqual((server.healthcheck.fails, server.healthcheck.passes), (1, 1))
        self.assertFalse(config.api.enabled)
        self.assertEqual(server.discovery.static_list, (BackendSpec("h", 1),))

    def test_defaultsApplyToServersThatDoNotSetThem(self) -> None:
        config = parse_config(
            b'[defaults]\nmax_connections = 5\nclient_idle_timeout = "1m"\n'
            b'[servers.a]\nbind = ":3000"\nmax_connections = 7\n'
            b'[servers.a.discovery]\nkind = "static"\nstatic_list = ["h:1"]\n',
            "x",
        )
        server = config.servers["a"]
        self.assertEqual((server.max_connections, server.client_idle_timeout), (7, 60.0))

    def test_staticLineOptions(self) -> None:
        config = parse_config(
            b'[servers.a]\nbind = ":3000"\n[servers.a.discovery]\nkind = "static"\n'
            b'static_list = ["[::1]:8000 weight=3 priority=2 max_connections=9 sni=example.com"]\n',
            "x",
        )
        self.assertEqual(
            config.servers["a"].discovery.static_list,
            (BackendSpec("::1", 8000, weight=3, priority=2, max_connections=9, sni="example.com"),),
        )

    def test_jsonConfig(self) -> None:
        """The same schema in JSON (gobetween's from-file -f json)."""
        config = read_config_file(fixture("example.json"))
        self.assertEqual(config.servers["web"].balance, "leastconn")
        self.assertEqual(config.servers["web"].healthcheck.interval, 2.0)

    def test_consulDatacenterAliases(self) -> None:
        for key in (b"consul_datacenter", b"consul_service_datacenter"):
            config = parse_config(
                b'[servers.a]\nbind = ":3000"\n[servers.a.discovery]\nkind = "consul"\n'
                b'consul_host = "localhost:8500"\nconsul_service_name = "web"\n' + key + b' = "dc2"\n',
                "x",
            )
            self.assertEqual(config.servers["a"].discovery.consul_datacenter, "dc2")

    def test_aliasAndKeyTogether(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse_config(
                b'[servers.a]\nbind = ":3000"\n[servers.a.discovery]\nkind = "consul"\n'
                b'consul_host = "localhost:8500"\nconsul_service_name = "web"\n'
                b'consul_datacenter = "dc1"\nconsul_service_datacenter = "dc2"\n',
                "x",
            )
        self.assertEqual(
            caught.exception.lines(),
            [
                "x: servers.a.discovery.consul_service_datacenter: set twice, "
                "as 'consul_datacenter' and as 'consul_service_datacenter'"
            ],
        )

    def test_timeoutLongerThanTheIntervalIsAccepted(self) -> None:
        """gobetween (and HAProxy's C{timeout check} beside C{inter}) accept a check timeout over the interval."""
        kinds = (b'kind = "exec"\nexec_command = "/bin/true"\n', b'kind = "probe"\nprobe_send = "x"\nprobe_recv = "y"\n')
        for kind in kinds:
            text = (
                b'[servers.a]\nbind = ":3000"\n[servers.a.discovery]\nkind = "static"\nstatic_list = ["h:1"]\n'
                b'[servers.a.healthcheck]\n' + kind + b'interval = "500ms"\ntimeout = "2s"\n'
            )
            healthcheck = parse_config(text, "x").servers["a"].healthcheck
            self.assertEqual((healthcheck.interval, healthcheck.check_timeout), (0.5, 2.0))

    def test_oldTimeoutNames(self) -> None:
        """The early wiki's ping_timeout_duration is the timeout when timeout is not set."""
        base = (
            b'[servers.a]\nbind = ":3000"\n[servers.a.discovery]\nkind = "static"\nstatic_list = ["h:1"]\n'
            b'[servers.a.healthcheck]\nkind = "ping"\ninterval = "2s"\nping_timeout_duration = "500ms"\n'
        )
        self.assertEqual(parse_config(base, "x").servers["a"].healthcheck.check_timeout, 0.5)
        with_timeout = parse_config(base + b'timeout = "1s"\n', "x")
        self.assertEqual(with_timeout.servers["a"].healthcheck.check_timeout, 1.0)


class GobetweenExamplesTests(SynchronousTestCase):
    """Every example configuration of gobetween's documentation loads unchanged."""

    def test_allExamplesLoad(self) -> None:
        paths = sorted(glob.glob(fixture("gobetween", "*.toml")))
        self.assertGreaterEqual(len(paths), 10)
        failures = {}
        for path in paths:
            try:
                read_config_file(path)
            except ConfigError as e:
                failures[os.path.basename(path)] = e.lines()
        self.assertEqual(failures, {})

    def test_sampleHasEveryDiscoveryKind(self) -> None:
        config = read_config_file(fixture("gobetween", "sample_gobetween.toml"))
        self.assertTrue(config.servers)


class ServerFromApiBodyTests(SynchronousTestCase):
    """A server definition from the API is validated against the running configuration."""

    def setUp(self) -> None:
        self.config = read_config_file(os.path.join(ROOT, "etc", "balancer.toml"))

    def test_valid(self) -> None:
        server = server_from_mapping(
            "new",
            {"bind": "127.0.0.1:3001", "discovery": {"kind": "static", "static_list": ["127.0.0.1:9001"]}},
            "request body",
            self.config,
        )
        self.assertEqual(server.backend_connection_timeout, 2.0)

    def test_bindTaken(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            server_from_mapping(
                "new",
                {"bind": "localhost:3000", "discovery": {"kind": "static", "static_list": ["127.0.0.1:9001"]}},
                "request body",
                self.config,
            )
        self.assertEqual(
            caught.exception.lines(),
            ['request body: servers.new.bind: "localhost:3000" (tcp) is already bound by server "sample"'],
        )

    def test_notAnObject(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            server_from_mapping("new", ["bind"], "request body", self.config)
        self.assertEqual(caught.exception.lines(), ["request body: servers.new: expected a table, got array"])


class CheckResourcesTests(SynchronousTestCase):
    """The files a configuration names are checked in a step of their own, not by reading it."""

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.certs = make_certificates(directory)

    def tls_server(self, cert_path: str, key_path: str) -> dict[str, object]:
        return {
            "bind": "127.0.0.1:3443",
            "protocol": "tls",
            "tls": {"cert_path": cert_path, "key_path": key_path},
            "discovery": {"kind": "static", "static_list": ["127.0.0.1:9001"]},
        }

    def test_placeholderPathsLoadButFailTheCheckWithTheirKeyPath(self) -> None:
        path = fixture("gobetween", "wiki_protocols_tls_2016.toml")
        config = read_config_file(path)
        with self.assertRaises(ConfigError) as caught:
            check_resources(config, path)
        self.assertEqual(
            caught.exception.lines(),
            [
                f'{path}: servers.default.tls.cert_path: cannot read "/path/to/file.crt": No such file or directory',
                f'{path}: servers.default.tls.key_path: cannot read "/path/to/file.key": No such file or directory',
            ],
        )

    def test_goodFilesPass(self) -> None:
        config = read_config_file(os.path.join(ROOT, "etc", "balancer.toml"))
        server = server_from_mapping(
            "secure", self.tls_server(self.certs.server.cert_path, self.certs.server.key_path), "request body", config
        )
        self.assertEqual(server.protocol, "tls")
        check_resources(config, "etc/balancer.toml")

    def test_apiBodyWithAKeyOfAnotherCertificate(self) -> None:
        config = read_config_file(os.path.join(ROOT, "etc", "balancer.toml"))
        with self.assertRaises(ConfigError) as caught:
            server_from_mapping(
                "secure", self.tls_server(self.certs.server.cert_path, self.certs.client.key_path), "request body", config
            )
        [line] = caught.exception.lines()
        self.assertTrue(line.startswith("request body: servers.secure.tls.key_path: "), line)
        self.assertIn(self.certs.client.key_path, line)

    ACME_SERVER = (
        b'[servers.web]\nbind = ":3443"\nprotocol = "tls"\n[servers.web.tls]\nacme_hosts = ["example.com"]\n'
        b'[servers.web.discovery]\nkind = "static"\nstatic_list = ["127.0.0.1:9001"]\n'
    )

    def test_acmeHostsWithoutAcmeSectionAreRefused(self) -> None:
        config = parse_config(self.ACME_SERVER, "x.toml")
        with self.assertRaises(ConfigError) as caught:
            check_resources(config, "x.toml")
        self.assertEqual(
            caught.exception.lines(),
            [
                "x.toml: servers.web.tls.acme_hosts: needs an [acme] section "
                "(or give cert_path and key_path instead)"
            ],
        )

    def test_acmeHostsWithAcmeSection(self) -> None:
        config = parse_config(b'[acme]\ncache_dir = "/var/cache/acme"\n' + self.ACME_SERVER, "x.toml")
        check_resources(config, "x.toml")
        assert config.acme is not None
        self.assertEqual(
            (config.acme.challenge, config.acme.directory_url, config.acme.directory_ca_cert_path),
            ("http", "https://acme-v02.api.letsencrypt.org/directory", None),
        )

    def test_acmeHostsMustBeDnsNames(self) -> None:
        config = parse_config(
            b'[acme]\n' + self.ACME_SERVER.replace(b'["example.com"]', b'["*.example.com", "10.0.0.1", "localhost", "A.b-c.example"]'),
            "x.toml",
        )
        with self.assertRaises(ConfigError) as caught:
            check_resources(config, "x.toml")
        lines = caught.exception.lines()
        self.assertEqual([line.split(": ")[1] for line in lines], [f"servers.web.tls.acme_hosts[{i}]" for i in range(3)])
        self.assertIn('got "*.example.com" (no wildcard', lines[0])

    def test_acmeDirectoryUrlMustBeAUrl(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse_config(b'[acme]\ndirectory_url = "acme.example"\n', "x.toml")
        self.assertEqual(len(caught.exception.lines()), 1)
        self.assertIn("acme.directory_url", caught.exception.lines()[0])


class ApiLimitsTests(SynchronousTestCase):
    """C{[api] header_timeout} and C{[api] max_connections}: defaults, values, bounds."""

    def test_defaults(self) -> None:
        api = parse_config(b"", "x.toml").api
        self.assertEqual((api.header_timeout, api.max_connections), (10.0, 256))

    def test_values(self) -> None:
        api = parse_config(b'[api]\nheader_timeout = "2500ms"\nmax_connections = 1000000\n', "x.toml").api
        self.assertEqual((api.header_timeout, api.max_connections), (2.5, 1_000_000))

    def test_outOfBounds(self) -> None:
        for text, line in (
            (b'header_timeout = "0"', "x.toml: api.header_timeout: expected a duration over 0 "
                                      "(the request head always has a deadline), got 0"),
            (b'header_timeout = 10', 'x.toml: api.header_timeout: expected a duration string like "2s" or "500ms", '
                                     "got integer 10"),
            (b"max_connections = 0", "x.toml: api.max_connections: expected an integer from 1 to 1000000, got 0"),
            (b"max_connections = 1000001",
             "x.toml: api.max_connections: expected an integer from 1 to 1000000, got 1000001"),
        ):
            with self.subTest(text=text), self.assertRaises(ConfigError) as caught:
                parse_config(b"[api]\n" + text + b"\n", "x.toml")
            self.assertEqual(caught.exception.lines(), [line])
