"""
Packaging: C{python -m balancer} says how to start, the wheel carries the
example configurations, C{twistd balancer} without C{--config} says where
they are, and the systemd unit and Dockerfile hold what the README says.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import shutil
import sys
import tempfile
import zipfile
from typing import Any, Generator

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from balancer.starting import EXAMPLES
from tests.support.paths import ROOT
from tests.support.processes import run_twistd, source_env
from tests.support.tools import require_tool

#: What the wheel is built from (a copy: the build writes beside its sources).
SOURCES = ["setup.py", "README.md", "balancer", "admin", "twisted", "etc"]


class MainTests(TestCase):
    """C{python -m balancer}."""

    timeout = 60

    @inlineCallbacks
    def test_printsHowToStartAndExits0(self) -> None:
        out, err, code = yield getProcessOutputAndValue(sys.executable, ["-m", "balancer"], env=source_env(),
                                                        path=tempfile.gettempdir(), reactor=reactor)
        self.assertEqual((code, err), (0, b""))
        text = out.decode()
        self.assertIn("twistd -n balancer --config=FILE", text)
        self.assertIn("twistd balancer --check --config=FILE", text)
        self.assertIn(f"Example configurations: {EXAMPLES}\n", text)


class NoConfigTests(TestCase):
    """C{twistd balancer} without C{--config}."""

    timeout = 60

    @inlineCallbacks
    def test_namesTheExamplesAndExits1(self) -> None:
        out, err, code = yield run_twistd("-n", "balancer", cwd=tempfile.gettempdir())
        self.assertEqual(code, 1)
        self.assertEqual(err.decode().strip().splitlines(),
                         [f"balancer: no --config given; example configurations are in {EXAMPLES} "
                          f"(try: twistd -n balancer --config={EXAMPLES}/balancer.toml --demo)"])

    @inlineCallbacks
    def test_theNamedExampleIsValid(self) -> None:
        out, err, code = yield run_twistd("balancer", "--check", f"--config={EXAMPLES}/balancer.toml",
                                          cwd=tempfile.gettempdir())
        self.assertEqual(code, 0, err)

    def test_examplesAreTheSourceTreesEtc(self) -> None:
        self.assertEqual(sorted(os.listdir(EXAMPLES)), sorted(os.listdir(os.path.join(ROOT, "etc"))))


class WheelTests(TestCase):
    """A wheel built with C{pip wheel --no-deps} carries the examples, the plugin and the balancerctl script."""

    timeout = 300

    @inlineCallbacks
    def build(self, **environment: str) -> Generator[Deferred[Any], Any, tuple[str, set[str]]]:
        """
        Build a wheel of a copy of the sources, with C{environment} added to
        this process's; returns its path and the names it holds.
        """
        work = os.path.abspath(self.mktemp())
        source = os.path.join(work, "source")
        os.makedirs(source)
        for name in SOURCES:
            origin = os.path.join(ROOT, name)
            if os.path.isdir(origin):
                shutil.copytree(origin, os.path.join(source, name), symlinks=True,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(origin, source)
        # The environment's build backend when it has one; else pip builds one
        # from its configured indexes.
        isolation = ["--no-build-isolation"] if importlib.util.find_spec("wheel") else []
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "pip", "wheel", "--no-deps", "--quiet", *isolation, "-w", work, source],
            env=dict(os.environ, PIP_NO_INPUT="1", **environment), path=work, reactor=reactor)
        self.assertEqual(code, 0, err)
        [wheel] = [name for name in os.listdir(work) if name.endswith(".whl")]
        with zipfile.ZipFile(os.path.join(work, wheel)) as archive:
            return os.path.join(work, wheel), set(archive.namelist())

    @inlineCallbacks
    def test_wheelCarriesTheCompiledLoops(self) -> Generator[Deferred[Any], Any, None]:
        """Built where a C compiler is at hand, the wheel has the data plane's compiled loops (one extension)."""
        require_tool("cc", "gcc")
        _, names = yield self.build()
        self.assertEqual(len([n for n in names if n.startswith("balancer_cdispatch.") and n.endswith(".so")]), 1, names)

    @inlineCallbacks
    def test_wheelBuildsWithoutACompiler(self) -> Generator[Deferred[Any], Any, None]:
        """Without a C compiler (one that fails) the build goes on, without the extension: the Python loops run."""
        _, names = yield self.build(CC="false")
        self.assertEqual([n for n in names if n.startswith("balancer_cdispatch")], [])
        self.assertIn("balancer/proxy/engine/engine.py", names)

    @inlineCallbacks
    def test_wheelHoldsTheExampleConfigurations(self) -> Generator[Deferred[Any], Any, None]:
        path, names = yield self.build()
        wheel = os.path.basename(path)
        with zipfile.ZipFile(path) as archive:
            example = archive.read("balancer/examples/balancer.toml")
            entry_points = archive.read(f"{wheel.split('-')[0]}-{wheel.split('-')[1]}.dist-info/entry_points.txt")
            requires = [line for line in archive.read(f"{wheel.split('-')[0]}-{wheel.split('-')[1]}.dist-info/METADATA")
                        .decode().splitlines() if line.startswith("Requires-Dist:")]
        examples = {f"balancer/examples/{name}" for name in os.listdir(os.path.join(ROOT, "etc"))}
        self.assertEqual(examples - names, set())
        self.assertIn("twisted/plugins/balancer_plugin.py", names)
        self.assertIn("balancer/__main__.py", names)
        self.assertEqual({"admin/ui/index.html", "admin/ui/dashboard.js", "admin/ui/dashboard.css"} - names, set())
        with open(os.path.join(ROOT, "etc", "balancer.toml"), "rb") as f:
            self.assertEqual(example, f.read())
        self.assertTrue(any(line.startswith("Requires-Dist: cryptography>=") for line in requires), requires)
        self.assertIn("balancer/ctl/__main__.py", names)
        self.assertIn(b"balancerctl = balancer.ctl.commands:main", entry_points)
        for library in ("click", "rich"):
            self.assertTrue(any(line.startswith(f"Requires-Dist: {library}>=") for line in requires), requires)


class SystemdUnitTests(SynchronousTestCase):
    """etc/balancer.service: twistd in the foreground, reload by SIGHUP, a non-root user allowed low ports."""

    def setUp(self) -> None:
        self.unit = configparser.ConfigParser(interpolation=None, strict=False)
        self.unit.optionxform = str  # type: ignore[assignment,method-assign]
        self.unit.read(os.path.join(ROOT, "etc", "balancer.service"), encoding="utf-8")

    def test_hasItsKeys(self) -> None:
        service = self.unit["Service"]
        self.assertRegex(service["ExecStart"], r"/twistd -n --pidfile= balancer --config=\S+\.toml$")
        self.assertEqual(service["ExecReload"], "/bin/kill -HUP $MAINPID")
        self.assertNotIn(service["User"], ("", "root", "0"))
        self.assertEqual(service["AmbientCapabilities"], "CAP_NET_BIND_SERVICE")
        self.assertIn("--check", service["ExecStartPre"])
        self.assertEqual(self.unit["Install"]["WantedBy"], "multi-user.target")
        self.assertIn("Description", self.unit["Unit"])


class DockerfileTests(SynchronousTestCase):
    """The Dockerfile: a slim Python base, a non-root user, the example configuration, twistd in the foreground."""

    def test_hasItsInstructions(self) -> None:
        with open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
        instructions = {line.split()[0] for line in lines}
        self.assertTrue(any(line.startswith("FROM python:") and line.endswith("-slim") for line in lines))
        self.assertIn("USER balancer", lines)
        self.assertIn("COPY etc /src/etc", lines)
        self.assertIn('ENTRYPOINT ["twistd", "-n", "--pidfile=", "balancer", "--config=/etc/balancer/balancer.toml"]',
                      lines)
        self.assertLessEqual({"FROM", "RUN", "COPY", "USER", "ENTRYPOINT", "EXPOSE"}, instructions)
