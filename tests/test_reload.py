"""
Reloading the configuration file, on fakes: what differs and how a reload
says so (L{balancer.control.reloading}), the control layer's reload
(L{Controller.reload}), the SIGHUP hook (L{balancer.reload}) and
C{POST /v1/balancer/reload}.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from admin.v1.openapi import document
from balancer.config.addresses import HostPort
from balancer.config.load import parse_config
from balancer.control.errors import ReloadRefused
from balancer.control.reloading import (
    ReloadReport, file_versions, listener_changes, sections_needing_restart, server_changes)
from balancer.reload import reload_config
from tests.support.reactors import ListeningReactor
from tests.support.relays import server_config
from tests.support.root_api import CONFIG, NEW_SERVER
from tests.support.v1_api import ACCOUNTS, V1, assert_errors


def config_text(extra: str = "", api: str = "") -> str:
    """L{CONFIG}, the root API's test configuration, with C{extra} sections."""
    return CONFIG.format(api=api, extra=extra)


SERVER = """
[servers.{name}]
bind = "127.0.0.1:{port}"
{options}
[servers.{name}.discovery]
kind = "static"
static_list = ["127.0.0.1:9500"]
"""


class DifferenceTests(SynchronousTestCase):
    """What a reload finds to do."""

    def test_serversRemovedChangedAndAddedInTheirOrder(self) -> None:
        a, b = server_config(), server_config(balance="leastconn")
        changes = server_changes({"x": a, "y": a, "z": a}, {"z": a, "y": b, "new": a, "other": a})
        self.assertEqual((changes.removed, list(changes.updated), list(changes.added)), (["x"], ["y"], ["new", "other"]))

    def test_listenerChangesNameTheListenerKeys(self) -> None:
        plain = server_config()
        moved = attrs.evolve(plain, bind=HostPort("127.0.0.1", 4000), balance="leastconn")
        self.assertEqual(listener_changes(plain, moved), ["bind"])
        self.assertEqual(listener_changes(plain, attrs.evolve(plain, balance="leastconn")), [])
        self.assertEqual(listener_changes(plain, attrs.evolve(plain, protocol="udp")), ["protocol"])

    def test_aRewrittenFileHasAnotherVersion(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        cert = os.path.join(directory, "c.pem")
        with open(cert, "w") as f:
            f.write("one")
        tls = parse_config(f"""
[servers.s]
bind = "127.0.0.1:0"
protocol = "tls"
[servers.s.tls]
cert_path = "{cert}"
key_path = "{directory}/missing.key"
[servers.s.discovery]
kind = "static"
static_list = ["127.0.0.1:1"]
""".encode(), "t.toml").servers["s"]
        before = file_versions(tls)
        self.assertEqual([path for path, _ in before], [cert, f"{directory}/missing.key"])
        self.assertIsNone(before[1][1])
        self.assertEqual(file_versions(tls), before)
        with open(cert, "w") as f:
            f.write("two, longer")
        self.assertNotEqual(file_versions(tls), before)
        self.assertEqual(file_versions(server_config()), ())

    def test_sectionsAReloadDoesNotApply(self) -> None:
        running = parse_config(config_text().encode(), "a")
        changed = parse_config(config_text(api='cors_origins = ["https://x.test"]', extra="[defaults]\nworkers = 2\n").encode(), "b")
        self.assertEqual(sections_needing_restart(running, changed), ["[api]", "[defaults] workers"])
        self.assertEqual(sections_needing_restart(running, running), [])


class ReportTests(SynchronousTestCase):
    """The one log line, and the document, of a reload."""

    def test_noChange(self) -> None:
        self.assertEqual(ReloadReport().line(), "reload: no change")
        self.assertFalse(ReloadReport().applied)

    def test_everything(self) -> None:
        report = ReloadReport(added=["a", "b"], removed=["c"],
                              changed={"d": "listener rebound to 127.0.0.1:4000", "e": None},
                              refused={"f": "cannot listen"}, restart=["[api]"])
        self.assertEqual(report.line(), "reload: servers added a, b; removed c; changed d (listener rebound to "
                                        "127.0.0.1:4000), e; refused f: cannot listen; at the next start: [api]")
        document = report.document()
        self.assertEqual(document["changed"], [{"name": "d", "listener": "listener rebound to 127.0.0.1:4000"},
                                               {"name": "e", "listener": None}])
        self.assertEqual(document["refused"], [{"name": "f", "detail": "cannot listen"}])
        self.assertEqual(document["summary"], report.line())


class ControllerReloadTests(SynchronousTestCase):
    """L{Controller.reload} on a memory reactor: the file's difference applied, the runtime changes kept."""

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "balancer.toml")
        self.write(config_text())
        self.reactor = ListeningReactor(taken=(3999,))
        self.api = V1(parse_config(config_text().encode(), self.path), self.reactor, self.path)
        self.control = self.api.control
        self.announced: list[None] = []
        self.control.subscribe(lambda: self.announced.append(None))

    def write(self, text: str) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(text)

    def servers(self) -> dict[str, Any]:
        return {view.name: view for view in self.control.services()}

    def test_goodFileApplied(self) -> None:
        web = self.api.balancer.server("web")
        revision = self.control.revision
        text = config_text().replace('balance = "roundrobin"', 'balance = "leastconn"')
        db = text.index("[servers.db]")
        self.write(text[:db] + SERVER.format(name="new", port=3005, options=""))
        report = self.successResultOf(self.control.reload())
        self.assertEqual(report.line(), "reload: servers added new; removed db; changed web")
        self.assertIs(self.api.balancer.server("web"), web, "changed in place")
        self.assertEqual(web.config.balance, "leastconn")
        self.assertEqual(list(self.servers()), ["web", "new"])
        self.assertEqual(self.reactor.listening(), [3000, 3005])
        self.assertEqual(self.control.revision, revision + 1)
        self.assertEqual(len(self.announced), 1)

    def test_unchangedFileIsNoChange(self) -> None:
        report = self.successResultOf(self.control.reload())
        self.assertEqual(report.line(), "reload: no change")
        self.assertEqual(self.reactor.listening(), [3000, 3001])

    def test_badFileChangesNothingAndNamesEveryProblem(self) -> None:
        self.write(config_text(extra=SERVER.format(name="bad", port=70000, options='balance = "fastest"')))
        failure = self.failureResultOf(self.control.reload(), ReloadRefused)
        lines = failure.value.lines
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(all(line.startswith(os.path.abspath(self.path)) for line in lines), lines)
        self.assertIn("servers.bad.bind", " ".join(lines))
        self.assertIn("servers.bad.balance", " ".join(lines))
        self.assertEqual(list(self.servers()), ["web", "db"])
        self.assertEqual(self.announced, [])

    def test_refusedWhileStopping(self) -> None:
        self.successResultOf(self.api.balancer.stopService())
        failure = self.failureResultOf(self.control.reload(), ReloadRefused)
        self.assertEqual(failure.value.lines, ["the balancer is stopping: nothing changed"])

    def test_missingFileIsRefused(self) -> None:
        os.unlink(self.path)
        failure = self.failureResultOf(self.control.reload(), ReloadRefused)
        self.assertIn("cannot read the configuration file", failure.value.lines[0])

    def test_runtimeChangesStayOnTop(self) -> None:
        self.successResultOf(self.control.remove_server("db"))
        self.successResultOf(self.control.add_server("posted", NEW_SERVER))
        self.successResultOf(self.control.update_server("web", {**self.control.server_definition("web"),
                                                                "balance": "iphash"}))
        self.write(config_text().replace('balance = "roundrobin"', 'balance = "leastconn"'))
        report = self.successResultOf(self.control.reload())
        self.assertEqual(report.line(), "reload: no change")
        self.assertEqual(list(self.servers()), ["web", "posted"])
        self.assertEqual(self.servers()["web"].config.balance, "iphash")

    def test_aChangeThatCannotBindIsRefusedTheOthersApply(self) -> None:
        self.write(config_text(extra=SERVER.format(name="late", port=3999, options="")
                               + SERVER.format(name="fine", port=3998, options="")))
        report = self.successResultOf(self.control.reload())
        self.assertEqual(report.added, ["fine"])
        self.assertIn("late", report.refused)
        self.assertIn("3999", report.refused["late"])
        self.assertEqual(list(self.servers()), ["web", "db", "fine"])

    def test_rebindReported(self) -> None:
        self.write(config_text().replace("127.0.0.1:3001", "127.0.0.1:3011"))
        report = self.successResultOf(self.control.reload())
        self.assertEqual(report.line(), "reload: servers changed db (listener rebound to 127.0.0.1:3011)")
        self.assertEqual(self.reactor.listening(), [3000, 3011])

    def test_fileOverridesFollowTheFile(self) -> None:
        self.write(config_text(extra='[overrides."127.0.0.1:9002"]\nweight = 7\n'))
        self.successResultOf(self.control.reload())
        self.assertEqual(self.control.backend("127.0.0.1:9002").parameters["weight"], 7)


class ApiReloadTests(SynchronousTestCase):
    """C{POST /v1/balancer/reload}."""

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "balancer.toml")
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(config_text(extra=SERVER.format(name="added", port=3005, options="")))
        self.api = V1(parse_config(config_text().encode(), self.path), ListeningReactor(), self.path)

    def test_200WithWhatChanged(self) -> None:
        response, body = self.api.json(self, "POST", "/v1/balancer/reload")
        self.assertEqual(response.code, 200, body)
        self.assertEqual(body["links"], {"self": "/v1/balancer/reload"})
        self.assertEqual(body["meta"]["summary"], "reload: servers added added")
        self.assertEqual(body["meta"]["added"], ["added"])

    def test_422OneErrorPerProblem(self) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(config_text(extra=SERVER.format(name="bad", port=70000, options='colour = "red"')))
        response, body = self.api.json(self, "POST", "/v1/balancer/reload")
        errors = assert_errors(self, response, body, 422, "servers.bad.bind")
        self.assertEqual(len(errors), 2)

    def test_describedInTheOpenApiDocument(self) -> None:
        operation = document()["paths"]["/v1/balancer/reload"]["post"]
        self.assertEqual(sorted(code for code in operation["responses"] if code.startswith("2")), ["200"])
        self.assertIn("422", operation["responses"])

    def test_onlyPost(self) -> None:
        response, body = self.api.json(self, "GET", "/v1/balancer/reload")
        assert_errors(self, response, body, 405)

    def test_basicAccountMayNotReload(self) -> None:
        config = parse_config(config_text(api=ACCOUNTS).encode(), self.path)
        api = V1(config, ListeningReactor(), self.path)
        response, body = api.json(self, "POST", "/v1/balancer/reload",
                                  headers={"Authorization": "Basic dmlld2VyOnZpZXdlci1zZWNyZXQ="})
        assert_errors(self, response, body, 403)


class SignalTests(SynchronousTestCase):
    """What SIGHUP runs."""

    def test_refusedFileIsLoggedByTheReloadAlone(self) -> None:
        control: Any = type("Control", (), {"reload": lambda self: fail(ReloadRefused(["f: bad"]))})()
        reload_config(control)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_anotherFailureIsLogged(self) -> None:
        control: Any = type("Control", (), {"reload": lambda self: fail(ZeroDivisionError())})()
        reload_config(control)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_success(self) -> None:
        done: Deferred[ReloadReport] = succeed(ReloadReport())
        control: Any = type("Control", (), {"reload": lambda self: done})()
        reload_config(control)
        self.assertEqual(self.flushLoggedErrors(), [])
