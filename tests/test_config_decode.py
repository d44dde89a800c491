"""
Crafted configuration input (issue 14): L{balancer.config.decode} and the
loader and schema behind it.  Deep nesting, huge integers, NUL bytes and
absurd limits are one-line errors naming the file and the key, never a
traceback; and a property-based test mutates TOML and JSON configurations
(types, nesting, huge numbers, unicode) through the loader.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from balancer.config import ConfigError
from balancer.config.decode import MAX_DEPTH, DecodeError, json_depth, loads_json, loads_toml
from balancer.config.load import parse_config
from balancer.config.schema import Config
from tests.support.mutations import paths, replaced
from tests.support.paths import scratch_directory
from tests.support.processes import run_twistd

VALID = """
[defaults]
max_connections = 100

[servers.web]
bind = "127.0.0.1:3000"
max_connections = 10
client_idle_timeout = "30s"
  [servers.web.discovery]
  kind = "static"
  static_list = ["127.0.0.1:9001 weight=2", "127.0.0.1:9002"]
  [servers.web.healthcheck]
  kind = "exec"
  interval = "2s"
  exec_command = "/usr/bin/check"

[servers.dns]
bind = "127.0.0.1:5353"
protocol = "udp"
  [servers.dns.discovery]
  kind = "exec"
  exec_command = ["/usr/bin/find-dns", "--all"]
  [servers.dns.udp]
  max_responses = 1
"""


def problems_of(test: SynchronousTestCase, data: bytes, *, as_json: bool = False) -> list[str]:
    """The error lines loading C{data} gives (it must not load)."""
    with test.assertRaises(ConfigError) as caught:
        parse_config(data, "f.json" if as_json else "f.toml", as_json=as_json)
    return caught.exception.lines()


class DecodeTests(SynchronousTestCase):
    """The bounds of L{balancer.config.decode}."""

    def test_jsonDepthIsMeasuredOutsideStrings(self) -> None:
        self.assertEqual(json_depth('[1, [2, {"a": [3]}], "[[[[["]'), 4)
        self.assertEqual(json_depth('"\\"[[["'), 0)
        self.assertEqual(json_depth("17"), 0)

    def test_deepJsonIsRefusedBeforeDecoding(self) -> None:
        for text in ("[" * 1000 + "]" * 1000, '{"a":' * 1000 + "1" + "}" * 1000, "[" * 100_000):
            with self.assertRaises(DecodeError) as caught:
                loads_json(text)
            self.assertEqual(str(caught.exception), f"nested more than {MAX_DEPTH} levels deep")
        self.assertEqual(loads_json("[" * MAX_DEPTH + "1" + "]" * MAX_DEPTH), _nested(MAX_DEPTH))

    def test_jsonNumbersConstantsAndSurrogates(self) -> None:
        for text, needle in (
            ("1" * 5000, "more than 32 digits"),
            ("[NaN]", "NaN is not a JSON number"),
            ("-Infinity", "-Infinity is not a JSON number"),
            ('"\\ud800"', "lone surrogate"),
            ('{"\\udfff": 1}', "lone surrogate"),
        ):
            with self.assertRaises(DecodeError) as caught:
                loads_json(text)
            self.assertIn(needle, str(caught.exception))
        self.assertEqual(loads_json('"\\ud83d\\ude00"'), "\U0001f600")
        self.assertEqual(loads_json("1" * 32), int("1" * 32))

    def test_unterminatedEscapesTakeLinearTime(self) -> None:
        """
        C{"\\"\\"\\"...}: a string pattern that could fail after scanning
        would retry from every quote (quadratic: minutes for 1 MiB).
        """
        text = '"' + '\\"' * (1 << 19)
        started = time.perf_counter()
        with self.assertRaises(DecodeError):
            loads_json(text)
        print(f"\n1 MiB unterminated string of escaped quotes refused in {time.perf_counter() - started:.3f} s")
        self.assertEqual(json_depth("[" + text), 1)

    def test_tomlDepthAndNumbers(self) -> None:
        for text, needle in (
            ("a = " + "[" * 1000 + "]" * 1000, "nested more than 64 levels deep"),
            ("a = " + "{b = " * 1000 + "1" + "}" * 1000, "nested more than 64 levels deep"),
            ("a." * 100 + "b = 1", "nested more than 64 levels deep"),
            ("a = " + "1" * 5000, "a number cannot be read"),
            ("a = " + "1" * 40, "more than 32 digits"),
        ):
            with self.assertRaises(DecodeError) as caught:
                loads_toml(text)
            self.assertIn(needle, str(caught.exception))


class LoaderTests(SynchronousTestCase):
    """What issue 14 found in the loader, each now one line naming the file and the key."""

    def test_deepTomlAndJsonAreOneLine(self) -> None:
        deep_toml = ("[servers.web]\nbind = " + "[" * 1000 + "]" * 1000).encode()
        self.assertEqual(problems_of(self, deep_toml), ["f.toml: invalid TOML: nested more than 64 levels deep"])
        deep_json = ('{"servers": ' + "[" * 1000 + "]" * 1000 + "}").encode()
        self.assertEqual(problems_of(self, deep_json, as_json=True),
                         ["f.json: invalid JSON: nested more than 64 levels deep"])

    def test_hugeIntegersAreOneLine(self) -> None:
        [line] = problems_of(self, b"[defaults]\nmax_connections = " + b"9" * 5000)
        self.assertTrue(line.startswith("f.toml: invalid TOML: a number cannot be read"), line)
        [line] = problems_of(self, b'{"defaults": {"max_connections": ' + b"9" * 5000 + b"}}", as_json=True)
        self.assertTrue(line.startswith("f.json: invalid JSON: a number has more than 32 digits"), line)

    def test_limitsHaveFixedMaxima(self) -> None:
        self.assertEqual(
            problems_of(self, b"[defaults]\nmax_connections = 1000000000000000000000000000000\nudp_max_sessions = 1000001\n"
                              b'backend_idle_timeout = "9000h"'),
            ["f.toml: defaults.max_connections: expected an integer from 0 to 1000000, got a number of more than 20 digits",
             "f.toml: defaults.udp_max_sessions: expected an integer from 0 to 1000000, got 1000001",
             'f.toml: defaults.backend_idle_timeout: expected a duration of at most 8760h (365 days), got "9000h"'],
        )
        self.assertEqual(parse_config(b"[defaults]\nmax_connections = 1000000", "f").defaults.max_connections, 1_000_000)
        self.assertEqual(parse_config(b"", "f").defaults.udp_max_sessions, 10_000)

    def test_backendLineNumbersAreBounded(self) -> None:
        server = '[servers.web]\nbind = ":80"\n[servers.web.discovery]\nkind = "static"\nstatic_list = ["{}"]'
        for line in ("a:1 weight=" + "9" * 5000, "a:1 max_connections=1000001", "a:1 priority=1000000001"):
            [problem] = problems_of(self, server.replace("{}", line).encode())
            self.assertTrue(problem.startswith("f.toml: servers.web.discovery.static_list[0]: expected"), problem)

    def test_nulIsRefusedWhereItWouldReachACommandOrPath(self) -> None:
        config = tomllib.loads(VALID)
        config["servers"]["web"]["healthcheck"]["exec_command"] = "/bin/check\x00 --now"
        config["servers"]["dns"]["discovery"]["exec_command"] = ["/bin/find", "a\x00b"]
        config["state"] = {"path": "/var/lib/state\x00.toml"}
        config["servers"]["web"]["discovery"]["static_list"] = ["127.0.0.1\x00:9001"]
        lines = problems_of(self, json.dumps(config).encode(), as_json=True)
        self.assertEqual(
            [line.split(": ")[1] for line in lines],
            ["servers.web.discovery.static_list[0]", "servers.web.healthcheck.exec_command",
             "servers.dns.discovery.exec_command[1]", "state.path"],
        )
        self.assertIn('must not contain a NUL character (\\u0000), got string "/bin/check\\u0000 --now"', lines[1])

    def test_probePayloadsMayHoldNul(self) -> None:
        config = tomllib.loads(VALID)
        config["servers"]["web"]["healthcheck"] = {
            "kind": "probe", "interval": "1s", "probe_send": "\x00\x01", "probe_recv": "\x00"}
        loaded = parse_config(json.dumps(config).encode(), "f.json", as_json=True)
        self.assertEqual(loaded.servers["web"].healthcheck.probe_send, "\x00\x01")


class CheckCommandTests(TestCase):
    """C{twistd balancer --check} on crafted files: status 1 and one line on stderr, no traceback."""

    @inlineCallbacks
    def test_craftedFilesAreOneLineWithoutTraceback(self):  # type: ignore[no-untyped-def]
        directory = scratch_directory(self)
        files = {
            "deep.toml": "[servers.web]\nbind = " + "[" * 1000 + "]" * 1000,
            "deep.json": '{"servers": {"web": ' + "{" * 1000 + "}" * 1000 + "}}",
            "huge.toml": "[defaults]\nmax_connections = " + "9" * 5000,
            "huge.json": '{"defaults": {"max_connections": ' + "9" * 5000 + "}}",
        }
        for name, text in files.items():
            path = os.path.join(directory, name)
            with open(path, "w") as f:
                f.write(text)
            out, err, code = yield run_twistd("balancer", "--check", f"--config={path}", cwd=directory)
            self.assertEqual(code, 1, (name, out, err))
            lines = err.decode().splitlines()
            self.assertEqual(len(lines), 1, (name, err))
            self.assertTrue(lines[0].startswith(f"{path}: invalid "), lines)
            self.assertNotIn(b"Traceback", out + err)


# Property-based: mutated configurations through the loader.

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**40), max_value=10**40), st.floats(allow_nan=False),
    st.text(max_size=20), st.sampled_from(["", "\x00", "0", "2s", "9" * 40 + "h", ":0", "127.0.0.1:1", "udp", "exec",
                                           "static", "probe", "é\u202e", "\U0001f600", "a:1 weight=" + "9" * 40]),
)
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)




def _nested(depth: int) -> Any:
    """C{[[...[1]...]]}, C{depth} lists deep."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@st.composite
def mutated_configs(draw: Any) -> Any:
    """L{VALID} with a few values (or keys' values) replaced by anything, or wrapped very deep."""
    config = tomllib.loads(VALID)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths(config, depth=8)))
        new = draw(st.one_of(_VALUES, st.integers(1, 2000).map(_nested)))
        config = replaced(config, path, new)
    return config


def _as_toml(config: Any) -> bytes | None:
    """C{config} as TOML text, if TOML can express it (no None, a table at the top)."""
    if not isinstance(config, dict):
        return None
    try:
        return tomli_w.dumps(config).encode("utf-8")
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError):
        return None


class MutatedConfigTests(SynchronousTestCase):
    """A configuration or a list of one-line errors, never another exception."""

    def assertConfigOrErrors(self, data: bytes, as_json: bool) -> None:
        try:
            loaded = parse_config(data, "f.json" if as_json else "f.toml", as_json=as_json)
        except ConfigError as e:
            self.assertTrue(e.problems)
            for line in e.lines():
                self.assertNotIn("\n", line)
                self.assertLess(len(line), 2000, line)
        else:
            self.assertIsInstance(loaded, Config)

    def test_addressesWithControlCharactersAreErrorsOfOneLine(self) -> None:
        """Found by the property below: a bind or backend line holding a newline was quoted raw."""
        for bind, backend in (("\n", "127.0.0.1:1"), ("127.0.0.1:1", "a\nb:1"), ("127.0.0.1:1", "\u001b[2J:1")):
            config = {"servers": {"s": {"bind": bind, "discovery": {"kind": "static", "static_list": [backend]}}}}
            self.assertConfigOrErrors(json.dumps(config).encode(), True)
            with self.assertRaises(ConfigError) as caught:
                parse_config(json.dumps(config).encode(), "f.json", as_json=True)
            self.assertIn("\\u00", str(caught.exception))

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(mutated_configs())
    def test_mutatedJsonAndToml(self, config: Any) -> None:
        try:
            text = json.dumps(config)
        except RecursionError:
            return
        self.assertConfigOrErrors(text.encode("utf-8", "surrogatepass"), True)
        toml = _as_toml(config)
        if toml is not None:
            self.assertConfigOrErrors(toml, False)

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=300), st.integers(0, len(VALID)))
    def test_bytesSplicedIntoAValidFile(self, noise: bytes, at: int) -> None:
        data = VALID.encode()
        mutated = data[:at] + noise + data[at:]
        self.assertConfigOrErrors(mutated, False)
        self.assertConfigOrErrors(json.dumps(tomllib.loads(VALID)).encode()[: at // 2] + noise, True)
