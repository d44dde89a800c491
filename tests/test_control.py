"""The control interface: changes apply, persist to the state file, and roll back when they cannot persist."""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from balancer.config.errors import ConfigError
from balancer.config.load import parse_config
from balancer.control import Controller
from balancer.service import BalancerService, UnknownServer
from balancer.state import StateFile

CONFIG = """
[state]
path = "{state}"
[servers.web]
bind = "127.0.0.1:0"
balance = "roundrobin"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:9001"]
"""


class UpdateServerTests(SynchronousTestCase):
    """update_server: validated, applied in place, persisted."""

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.state = os.path.join(directory, "state.toml")
        config = parse_config(CONFIG.format(state=self.state).encode(), "x")
        self.balancer = BalancerService(config, MemoryReactorClock())
        self.balancer.privilegedStartService()
        self.balancer.startService()
        self.control = Controller(self.balancer, config, "x", MemoryReactorClock())

    def definition(self, **changes: object) -> dict[str, object]:
        base: dict[str, object] = {
            "bind": "127.0.0.1:0",
            "balance": "roundrobin",
            "discovery": {"kind": "static", "static_list": ["127.0.0.1:9001", "127.0.0.1:9002"]},
        }
        base.update(changes)
        return base

    def test_appliedAndPersisted(self) -> None:
        revision = self.control.revision
        result = self.successResultOf(self.control.update_server("web", self.definition(balance="leastconn")))
        self.assertEqual(result["balance"], "leastconn")
        self.assertEqual([b.key for b in self.balancer.server("web").pool], ["127.0.0.1:9001", "127.0.0.1:9002"])
        self.assertEqual(StateFile(self.state).load().servers["web"]["balance"], "leastconn")
        self.assertEqual(self.control.revision, revision + 1)

    def test_invalidChangesNothing(self) -> None:
        failure = self.failureResultOf(self.control.update_server("web", self.definition(balance="fastest")), ConfigError)
        self.assertIn("servers.web.balance", failure.value.render())
        self.assertEqual(self.balancer.server("web").config.balance, "roundrobin")
        self.assertFalse(os.path.exists(self.state))

    def test_unknownServer(self) -> None:
        self.failureResultOf(self.control.update_server("nope", self.definition()), UnknownServer)

    def test_unwritableStateRollsBack(self) -> None:
        os.makedirs(self.state)  # a directory where the file should go: the rename fails
        self.failureResultOf(self.control.update_server("web", self.definition(balance="leastconn")), OSError)
        self.assertEqual(self.balancer.server("web").config.balance, "roundrobin")
        self.assertEqual([b.key for b in self.balancer.server("web").pool], ["127.0.0.1:9001"])
