"""
balancerctl's parts without a balancer: durations, C{alter} settings,
rows of tables, the API's error details, the client's options, the message
of a 412, and that it imports nothing of the data plane.
"""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
from typing import Any, Iterator

import click
from rich.console import Console
from twisted.trial.unittest import SynchronousTestCase

from balancer.ctl.client import ApiFailure, Client, CtlError, Response, error_detail
from balancer.ctl.commands import Session, parse_setting
from balancer.ctl.drain import POLL, parse_duration, wait
from balancer.ctl.output import collection_rows, flatten, resource_rows
from tests.support.processes import source_env

SERVER = {"id": "127.0.0.1:9001", "type": "servers",
          "attributes": {"state": "Running", "origin": "discovery", "overrides": {},
                         "parameters": {"address": "127.0.0.1", "port": 9001, "weight": 2},
                         "statistics": {"connections": 3}},
          "relationships": {"services": {"data": [{"id": "web", "type": "services"}, {"id": "db", "type": "services"}]}}}


class DurationTests(SynchronousTestCase):
    """C{--timeout} values."""

    def test_units(self) -> None:
        self.assertEqual([parse_duration(t) for t in ("60s", "2m", "500ms", "1h", "1.5", " 3s ")],
                         [60.0, 120.0, 0.5, 3600.0, 1.5, 3.0])

    def test_badIsAUsageError(self) -> None:
        for text in ("soon", "-1s", "5d", ""):
            with self.assertRaises(click.BadParameter) as caught:
                parse_duration(text)
            self.assertIn("expected a duration", str(caught.exception))


class AssignmentTests(SynchronousTestCase):
    """C{alter server ID KEY=N}."""

    def test_valuesAndNull(self) -> None:
        self.assertEqual(parse_setting("weight=5"), ("weight", 5))
        self.assertEqual(parse_setting("max_connections=0"), ("max_connections", 0))
        self.assertEqual(parse_setting("priority=null"), ("priority", None))

    def test_badIsAUsageError(self) -> None:
        for text in ("weight", "weight=-1", "address=1", "weight=x", "=3"):
            with self.assertRaises(click.BadParameter) as caught:
                parse_setting(text)
            self.assertIn("weight, priority, max_connections", str(caught.exception))


class OutputTests(SynchronousTestCase):
    """Rows of C{list} and C{show}."""

    def test_collectionRows(self) -> None:
        headings, rows = collection_rows("servers", [SERVER])
        self.assertEqual(headings, ["Server", "Address", "Port", "State", "Services", "Connections", "Weight", "Origin"])
        self.assertEqual(rows, [["127.0.0.1:9001", "127.0.0.1", "9001", "Running", "web, db", "3", "2", "discovery"]])

    def test_missingValuesAreEmpty(self) -> None:
        _, rows = collection_rows("servers", [{"id": "x", "type": "servers"}])
        self.assertEqual(rows, [["x", "", "", "", "", "", "", ""]])

    def test_resourceRowsFlattenAndEndWithTheETag(self) -> None:
        rows = resource_rows(SERVER, '"tag"')
        self.assertEqual(rows[0:2], [["id", "127.0.0.1:9001"], ["type", "servers"]])
        self.assertIn(["parameters.weight", "2"], rows)
        self.assertIn(["overrides", ""], rows)
        self.assertIn(["relationships.services", "web, db"], rows)
        self.assertEqual(rows[-1], ["etag", '"tag"'])

    def test_flatten(self) -> None:
        self.assertEqual(flatten({"a": {"b": [1, 2], "c": None, "d": True, "e": [{"f": "g"}]}}),
                         [("a.b", "1, 2"), ("a.c", ""), ("a.d", "true"), ("a.e", '{"f": "g"}')])


class ClientTests(SynchronousTestCase):
    """The HTTP client's options and the API's errors."""

    def testerror_detailsOfAnErrorDocumentJoined(self) -> None:
        body = b'{"errors": [{"detail": "one"}, {"detail": "two", "source": {"pointer": "/data"}}]}'
        self.assertEqual(error_detail(422, body, "application/json"), "one; two")

    def test_otherBodies(self) -> None:
        self.assertEqual(error_detail(404, b'"no such server"', "application/json"), "no such server")
        self.assertEqual(error_detail(502, b"bad gateway", "text/plain"), "bad gateway")
        self.assertEqual(error_detail(500, b"", ""), "HTTP 500")
        self.assertEqual(error_detail(400, b"{nope", "application/json"), "{nope")

    def test_anAnswerThatIsNotJsonIsNamed(self) -> None:
        with self.assertRaises(CtlError) as caught:
            Response(200, {}, b"<html>").document()
        self.assertIn("the answer is not JSON (is --url the balancer's API?): b'<html>'", str(caught.exception))
        self.assertIsNone(Response(204, {}, b"").document())

    def test_urlMustBeHttp(self) -> None:
        for url in ("ftp://x", "127.0.0.1:8888", "http://"):
            with self.assertRaises(CtlError) as caught:
                Client(url)
            self.assertIn("--url must be an http:// or https:// URL", str(caught.exception))

    def test_caThatCannotBeReadIsNamed(self) -> None:
        with self.assertRaises(CtlError) as caught:
            Client("https://127.0.0.1:8888", ca="/nonexistent/ca.pem")
        self.assertIn('--ca "/nonexistent/ca.pem"', str(caught.exception))

    def test_insecureTurnsVerificationOff(self) -> None:
        client = Client("https://127.0.0.1:8888", insecure=True)
        assert client.context is not None
        self.assertFalse(client.context.check_hostname)

    def test_basicAuthorization(self) -> None:
        self.assertEqual(Client("http://h:1", "admin", "pw").authorization, "Basic YWRtaW46cHc=")
        self.assertIsNone(Client("http://h:1").authorization)


class _Refusing:
    """A client whose every request fails with C{failure}; records the headers sent."""

    def __init__(self, failure: ApiFailure) -> None:
        self.failure = failure
        self.headers: list[dict[str, str]] = []

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Response:
        self.headers.append(dict(headers or {}))
        raise self.failure


class StaleReadTests(SynchronousTestCase):
    """A change refused with 412 says that the resource changed since it was read."""

    def session(self, failure: ApiFailure) -> tuple[Session, _Refusing]:
        client = _Refusing(failure)
        session = Session("http://127.0.0.1:1", None, None, None, False, client)  # type: ignore[arg-type]
        return session, client

    def test_412IsExplained(self) -> None:
        session, client = self.session(ApiFailure(412, 'If-Match: the resource\'s ETag is now "b"'))
        with self.assertRaises(CtlError) as caught:
            session.change('server "x"', "PATCH", "/v1/servers/x", {}, tag='"a"')
        self.assertEqual(client.headers, [{"If-Match": '"a"'}])
        message = str(caught.exception)
        self.assertIn('server "x" was changed since it was read', message)
        self.assertIn('the resource\'s ETag is now "b"', message)
        self.assertIn("nothing was done", message)

    def test_otherFailuresPassThrough(self) -> None:
        session, _ = self.session(ApiFailure(409, "taken"))
        with self.assertRaises(ApiFailure):
            session.change('server "x"', "POST", "/v1/servers", {})


class WaitTests(SynchronousTestCase):
    """The drain's wait, on a sequence of counts and a fake clock."""

    def setUp(self) -> None:
        self.now = 0.0
        self.shown = io.StringIO()
        self.console = Console(file=self.shown, width=100)

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def wait(self, counts: Iterator[int], timeout: float) -> int:
        return wait(lambda: next(counts), timeout, "Draining x", console=self.console, clock=lambda: self.now,
                    sleep=self.sleep)

    def test_endsWhenNoneIsLeft(self) -> None:
        self.assertEqual(self.wait(iter([2, 3, 1, 0]), 30), 0)
        self.assertAlmostEqual(self.now, 3 * POLL)
        self.assertIn("Draining x", self.shown.getvalue())
        self.assertIn("0 left", self.shown.getvalue())

    def test_givesUpAfterTheTimeout(self) -> None:
        self.assertEqual(self.wait(itertools.repeat(4), 1.0), 4)
        self.assertAlmostEqual(self.now, 1.0)
        self.assertIn("4 left", self.shown.getvalue())


class ImportTests(SynchronousTestCase):
    """balancerctl is a client of the API only."""

    def test_importsNothingOfTheBalancerButItsVersion(self) -> None:
        code = ("import sys, balancer.ctl.commands; "
                "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('balancer', 'admin', 'twisted'))))")
        loaded = subprocess.run([sys.executable, "-c", code], env=source_env(), capture_output=True, text=True,
                                timeout=60, check=True).stdout.split()
        self.assertEqual(sorted(loaded), ["balancer", "balancer.ctl", "balancer.ctl.client", "balancer.ctl.commands",
                                          "balancer.ctl.drain", "balancer.ctl.output"])
