"""
The controller's frozen views of the running servers (service, backend,
session), and its commands: each returns a Deferred carrying its errors,
and they run one after the other.
"""

from __future__ import annotations

import errno
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from balancer.backends import DRAIN
from balancer.config.addresses import BackendSpec
from balancer.config.dump import to_mapping
from balancer.config.load import parse_config
from balancer.control.controller import Controller
from balancer.control.errors import BackendInUse, ListenerError, UnknownBackend, UnknownServer, UnknownSession
from balancer.control.writers import IStateWriter
from balancer.root_service import BalancerService
from balancer.state import RuntimeChanges
from tests.support.sessions import Address, FakeRelay

CONFIG = b"""
[state]
path = "unused-state.toml"

[servers.web]
bind = "127.0.0.1:3000"
[servers.web.discovery]
kind = "static"
static_list = ["10.0.0.1:80 weight=3", "10.0.0.2:80"]
"""

NEW_BACKEND = {"address": "10.0.0.7", "port": 81}


def server(bind: str) -> dict[str, Any]:
    """A server definition listening on C{bind}."""
    return {"bind": bind, "discovery": {"kind": "static", "static_list": ["10.0.0.5:80"]}}


@implementer(IStateWriter)
class HeldWriter:
    """A writer whose writes end when the test says (all at once by default: C{hold} False)."""

    def __init__(self) -> None:
        self.hold = False
        self.written: list[RuntimeChanges] = []
        self.pending: list[Deferred[None]] = []

    def write(self, changes: RuntimeChanges) -> Deferred[None]:
        self.written.append(changes)
        if not self.hold:
            return succeed(None)
        self.pending.append(Deferred())
        return self.pending[-1]

    def flush(self) -> Deferred[None]:
        return succeed(None)


class Taken(MemoryReactorClock):
    """A memory reactor on which port 5 is taken."""

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if port == 5:
            raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, "Address already in use"))
        return super().listenTCP(port, factory, backlog, interface)


class ControlTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = Taken()
        self.reactor.advance(1000)
        config = parse_config(CONFIG, "x")
        self.balancer = BalancerService(config, self.reactor)
        self.balancer.privilegedStartService()
        self.balancer.startService()
        self.writer = HeldWriter()
        self.control = Controller(self.balancer, config, "x", self.reactor, writer=self.writer)


class ServiceViewTests(ControlTestCase):
    """service(), services(): a frozen copy of the server."""

    def test_theViewHoldsWhatAdminReads(self) -> None:
        view = self.control.service("web")
        server = self.balancer.server("web")
        self.assertEqual((view.name, view.config, view.definition), ("web", server.config, to_mapping(server.config)))
        self.assertEqual((view.running, view.address, view.port, view.sessions), (True, server.address, 3000, 0))
        self.assertEqual([(e.key, e.spec.weight, e.live, e.admin_state) for e in view.pool],
                         [("10.0.0.1:80", 3, True, "active"), ("10.0.0.2:80", 1, True, "active")])
        self.assertEqual(view.statistics["backends"][0]["stats"], view.pool[0].statistics)
        self.assertEqual([v.name for v in self.control.services()], ["web"])

    def test_theViewIsFrozenAndDoesNotFollowTheServer(self) -> None:
        view = self.control.service("web")
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, view, "running", False)
        self.balancer.server("web").counters.active_connections = 9
        self.assertEqual(view.statistics["active_connections"], 0)
        self.assertEqual(self.control.service("web").statistics["active_connections"], 9)

    def test_unknownServer(self) -> None:
        self.assertRaises(UnknownServer, self.control.service, "nope")


class BackendViewTests(ControlTestCase):
    """backends(), backend(): by /v1 id, created ones first."""

    def test_createdBackendClaimsItsAddressWhereLinked(self) -> None:
        self.successResultOf(self.control.create_backend("mine", NEW_BACKEND, []))
        self.assertEqual(list(self.control.backends()), ["mine", "10.0.0.1:80", "10.0.0.2:80"])
        self.assertEqual(self.control.backend("mine").entries, ())
        self.successResultOf(self.control.link_backends("web", ["mine"]))
        mine = self.control.backend("mine")
        self.assertEqual((mine.origin, mine.services, [e.key for e in mine.entries]), ("api", ["web"], ["10.0.0.7:81"]))
        self.assertNotIn("10.0.0.7:81", self.control.backends())

    def test_discoveredBackendParametersAndAdminState(self) -> None:
        self.successResultOf(self.control.set_backend_state("10.0.0.1:80", DRAIN))
        view = self.control.backend("10.0.0.1:80")
        self.assertEqual((view.origin, view.admin_state, view.serving), ("discovery", DRAIN, True))
        self.assertEqual(view.parameters, {"address": "10.0.0.1", "port": 80, "weight": 3, "priority": 1,
                                           "max_connections": 0})
        self.assertEqual(self.balancer.server("web").pool.get("10.0.0.1:80").admin_state, DRAIN)  # type: ignore[union-attr]

    def test_unknownBackend(self) -> None:
        self.assertRaises(UnknownBackend, self.control.backend, "nope")


class SessionViewTests(ControlTestCase):
    """sessions(), session(): a relay's client, backend (by /v1 id), bytes and start."""

    def setUp(self) -> None:
        super().setUp()
        server = self.balancer.server("web")
        backend = server.pool.get("10.0.0.2:80")
        gone = attrs.evolve(backend, spec=BackendSpec("10.0.0.2", 80))  # type: ignore[misc]
        self.relays = [FakeRelay(7, Address("192.0.2.1", 4000), backend, rx=5, tx=6, started_at=990.0),
                       FakeRelay(8, Address("192.0.2.2", 4001), None),
                       FakeRelay(9, Address("192.0.2.3", 4002), gone)]
        for relay in self.relays:
            server.relays[relay.id] = relay  # type: ignore[assignment]

    def test_sessionViews(self) -> None:
        [first, second, third] = self.control.sessions()
        self.assertEqual((first.id, first.service, first.client_host, first.client_port, first.backend, first.server,
                          first.rx, first.tx, first.started_at),
                         (7, "web", "192.0.2.1", 4000, "10.0.0.2:80", "10.0.0.2:80", 5, 6, 990.0))
        self.assertEqual((second.backend, second.server), (None, None))
        self.assertEqual((third.backend, third.server), ("10.0.0.2:80", None), "a backend no longer in the pool")
        self.assertEqual(self.control.session(8), second)
        self.assertEqual(self.control.service("web").sessions, 3)

    def test_closeSession(self) -> None:
        self.successResultOf(self.control.close_session(7))
        self.assertTrue(self.relays[0].closed)
        self.failureResultOf(self.control.close_session(70), UnknownSession)
        self.assertRaises(UnknownSession, self.control.session, 70)


class CommandTests(ControlTestCase):
    """Commands: errors in the Deferred, the data path's bind failure as ListenerError, one at a time."""

    def test_errorsFailTheDeferredInsteadOfRaising(self) -> None:
        self.failureResultOf(self.control.remove_backend("nope"), UnknownBackend)
        self.failureResultOf(self.control.link_backends("nope", []), UnknownServer)
        self.failureResultOf(self.control.link_backends("web", ["nope"]), UnknownBackend)
        self.failureResultOf(self.control.set_backend_state("nope", DRAIN), UnknownBackend)
        self.failureResultOf(self.control.update_backend("nope", NEW_BACKEND, None), UnknownBackend)
        self.failureResultOf(self.control.remove_server("nope"), UnknownServer)
        self.successResultOf(self.control.create_backend("mine", NEW_BACKEND, ["web"]))
        self.failureResultOf(self.control.remove_backend("mine"), BackendInUse)

    def test_bindFailureIsAListenerErrorWithTheSameMessage(self) -> None:
        failure = self.failureResultOf(self.control.add_server("other", server("127.0.0.1:5")), ListenerError)
        self.assertEqual(str(failure.value), f'server "other": cannot listen on 127.0.0.1:5: [Errno {errno.EADDRINUSE}] Address already in use')
        self.assertEqual(self.control.server_names(), ["web"])
        definition = {**self.control.server_definition("web"), "bind": "127.0.0.1:5"}
        self.failureResultOf(self.control.update_server("web", definition), ListenerError)
        self.assertEqual(self.control.service("web").port, 3000)

    def test_aCommandWaitsForTheOneBeforeItAndBuildsOnIt(self) -> None:
        self.writer.hold = True
        first = self.control.create_backend("one", NEW_BACKEND, [])
        second = self.control.create_backend("two", {"address": "10.0.0.8", "port": 81}, [])
        self.assertEqual(len(self.writer.written), 1)
        self.assertEqual(self.control.revision, 1)
        self.writer.pending[0].callback(None)
        self.successResultOf(first)
        self.assertNoResult(second)
        self.assertEqual(sorted(self.writer.written[1].backends), ["one", "two"])
        self.writer.pending[1].callback(None)
        self.successResultOf(second)
        self.assertEqual((self.control.revision, list(self.control.backends())[:2]), (3, ["one", "two"]))

    def test_theStateOfAFailedWriteIsRolledBack(self) -> None:
        self.writer.hold = True
        added = self.control.add_server("other", server("127.0.0.1:3001"))
        self.assertEqual(self.control.server_names(), ["web", "other"])
        self.writer.pending[0].errback(OSError(28, "No space left on device"))
        self.failureResultOf(added, OSError)
        self.assertEqual(self.control.server_names(), ["web"])
