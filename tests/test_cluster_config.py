"""C{[cluster]}: its keys, their defaults, and every bad value named."""

from __future__ import annotations

import os
import socket

from twisted.trial.unittest import TestCase

from balancer.config.errors import ConfigError
from balancer.config.load import check_resources, parse_config
from balancer.control.effective import load_effective
from balancer.config.secrets import CONFIG_SECRETS, REDACTED, redact
from tests.support.paths import scratch_directory


def load(section: str) -> object:
    return parse_config(f"[cluster]\n{section}\n".encode(), "test.toml").cluster


class ClusterConfigTests(TestCase):
    """Defaults, derived names, and problems."""

    def test_defaults(self) -> None:
        cluster: object = load('etcd_endpoints = ["http://127.0.0.1:2379"]')
        self.assertEqual(cluster.key_prefix(), "/balancer/default")  # type: ignore[attr-defined]
        self.assertEqual(cluster.instance_name(), socket.gethostname())  # type: ignore[attr-defined]
        self.assertEqual((cluster.etcd_timeout, cluster.lease_ttl), (2.0, 10.0))  # type: ignore[attr-defined]

    def test_namedClusterAndPrefix(self) -> None:
        cluster: object = load('etcd_endpoints = ["https://[::1]:2379/"]\ncluster_name = "edge"\ninstance = "lb-1"')
        self.assertEqual(cluster.key_prefix(), "/balancer/edge")  # type: ignore[attr-defined]
        self.assertEqual(cluster.instance_name(), "lb-1")  # type: ignore[attr-defined]
        self.assertEqual(load('etcd_endpoints = ["http://e:1"]\nprefix = "/lb/x"').key_prefix(),  # type: ignore[union-attr]
                         "/lb/x")

    def test_withoutTheSectionNothingChanges(self) -> None:
        self.assertIsNone(parse_config(b"", "test.toml").cluster)

    def test_everyProblemIsNamed(self) -> None:
        cases = [
            ("", "cluster.etcd_endpoints: required key is missing"),
            ("etcd_endpoints = []", "cluster.etcd_endpoints: expected at least one etcd client URL"),
            ('etcd_endpoints = ["127.0.0.1:2379"]', 'cluster.etcd_endpoints[0]: expected an etcd client URL'),
            ('etcd_endpoints = ["http://e:1"]\ncluster_name = "a b"', "cluster.cluster_name: expected a name of 1 to 64"),
            ('etcd_endpoints = ["http://e:1"]\nprefix = "no-slash"', "cluster.prefix: expected a key prefix"),
            ('etcd_endpoints = ["http://e:1"]\nprefix = "/trailing/"', "cluster.prefix: expected a key prefix"),
            ('etcd_endpoints = ["http://e:1"]\netcd_password = "x"', "cluster.etcd_password: set etcd_user too"),
            ('etcd_endpoints = ["http://e:1"]\netcd_cert = "c.pem"', "cluster.etcd_key: etcd_cert and etcd_key go"),
            ('etcd_endpoints = ["http://e:1"]\netcd_timeout = "0s"', "cluster.etcd_timeout: expected a duration over 0"),
            ('etcd_endpoints = ["http://e:1"]\nlease_ttl = "1s"', "cluster.lease_ttl: expected a duration from 2s"),
            ('etcd_endpoints = ["http://e:1"]\nttl = "1s"', "cluster.ttl: unknown key"),
        ]
        for section, expected in cases:
            with self.assertRaises(ConfigError, msg=section) as raised:
                load(section)
            self.assertTrue(any(expected in line for line in raised.exception.lines()),
                            (section, raised.exception.lines()))

    def test_tlsFilesAreCheckedWithTheOthers(self) -> None:
        config = parse_config(b'[cluster]\netcd_endpoints = ["https://e:1"]\netcd_ca = "/nonexistent/ca.pem"\n'
                              b'etcd_cert = "/nonexistent/c.pem"\netcd_key = "/nonexistent/k.pem"\n', "test.toml")
        with self.assertRaises(ConfigError) as raised:
            check_resources(config, "test.toml")
        lines = raised.exception.lines()
        self.assertEqual([line.split(":")[1].strip() for line in lines],
                         ["cluster.etcd_ca", "cluster.etcd_cert", "cluster.etcd_key"])
        self.assertTrue(all("/nonexistent/" in line for line in lines), lines)

    def test_aMembersStateCopyIsNotAppliedBeforeTheStart(self) -> None:
        directory = scratch_directory(self)
        state = os.path.join(directory, "state.toml")
        with open(state, "w") as f:
            f.write('[servers.tls]\nbind = "127.0.0.1:4000"\nprotocol = "tls"\n'
                    '[servers.tls.tls]\ncert_path = "/nonexistent/c.pem"\nkey_path = "/nonexistent/k.pem"\n'
                    '[servers.tls.discovery]\nkind = "static"\nstatic_list = ["127.0.0.1:9"]\n')
        member = parse_config(f'[state]\npath = "{state}"\n[cluster]\netcd_endpoints = ["http://e:1"]\n'.encode(),
                              "test.toml")
        loaded, changes = load_effective(member, "test.toml")
        self.assertEqual((loaded, list(changes.servers)), (member, ["tls"]))
        check_resources(loaded, "test.toml")
        alone = parse_config(f'[state]\npath = "{state}"\n'.encode(), "test.toml")
        with self.assertRaises(ConfigError):
            load_effective(alone, "test.toml")

    def test_thePasswordAndKeyAreSecrets(self) -> None:
        config = parse_config(b'[cluster]\netcd_endpoints = ["http://e:1"]\netcd_user = "u"\netcd_password = "p"\n'
                              b'etcd_cert = "c.pem"\netcd_key = "k.pem"\n', "test.toml")
        redacted = redact(config, CONFIG_SECRETS).cluster
        self.assertEqual((redacted.etcd_password, redacted.etcd_key, redacted.etcd_user), (REDACTED, REDACTED, "u"))
