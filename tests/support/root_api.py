"""
The root API (gobetween's) under test without a network: a running balancer
on a L{ListeningReactor}, its whole API resource behind C{StubTreq}, and a
configuration of two servers to run it on.
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from admin.stack import api_resource
from balancer.config.load import parse_config
from balancer.config.schema import Config
from balancer.control.controller import Controller
from balancer.control.effective import load_effective
from balancer.root_service import BalancerService
from tests.support.reactors import ListeningReactor

#: Servers "web" (two static backends) and "db" (one, with an SNI name) and
#: the API; C{{api}} takes more C{[api]} lines, C{{extra}} more sections.
CONFIG = """
[api]
enabled = true
bind = "127.0.0.1:0"
{api}

[servers.web]
bind = "127.0.0.1:3000"
balance = "roundrobin"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:9001 weight=2", "127.0.0.1:9002"]

[servers.db]
bind = "127.0.0.1:3001"
[servers.db.discovery]
kind = "static"
static_list = ["127.0.0.1:5432 sni=db.example"]
{extra}
"""

#: The definition of a server created through C{POST /servers/<name>}.
NEW_SERVER = {"bind": "127.0.0.1:4000", "balance": "leastconn",
              "discovery": {"kind": "static", "static_list": ["127.0.0.1:9100"]}}


class Api:
    """A running balancer on a memory reactor, and a C{StubTreq} on its API."""

    def __init__(self, config: Config, reactor: ListeningReactor,
                 config_path: str = "/etc/balancer/balancer.toml") -> None:
        self.reactor = reactor
        effective, changes = load_effective(config, config_path)
        self.balancer = BalancerService(effective, reactor)
        self.balancer.privilegedStartService()
        self.balancer.startService()
        self.control = Controller(self.balancer, effective, config_path, reactor, configured=config, changes=changes)
        # StubTreq sets treq's functions (request, content, ...) on itself at run time.
        self.stub: Any = StubTreq(api_resource(self.control, config.api))

    def call(self, test: SynchronousTestCase, method: str, path: str, **kwargs: Any) -> tuple[Any, bytes]:
        """Make a request and fire it through; returns (response, body)."""
        requested = self.stub.request(method, "http://api.localhost" + path, **kwargs)
        self.stub.flush()
        response = test.successResultOf(requested)
        body = test.successResultOf(self.stub.content(response))
        return response, body


def make_api(test: SynchronousTestCase, *, api: str = "", extra: str = "", taken: tuple[int, ...] = ()) -> Api:
    """An L{Api} on L{CONFIG} with C{api} lines added to C{[api]} and C{extra} sections."""
    return Api(parse_config(CONFIG.format(api=api, extra=extra).encode(), "test.toml"), ListeningReactor(taken))
