"""
Packaging for balancer: the library packages, the twistd plugin, the
C{balancerctl} console script (L{balancer.ctl}), the
example configurations of C{etc/} (with the systemd unit) as
C{balancer/examples/} (a link to C{etc/} in the source tree), and the
optional C extension C{balancer_cdispatch}.

The dependency floors are the versions the test suite was run with.
"""

import platform
import sys

from setuptools import Extension, find_packages, setup

# The data plane's compiled loops (balancer/proxy/engine/cdispatch.c: the relay engine's dispatch
# and the UDP sessions' read round, see balancer.proxy.compiled): built where a C compiler and
# Python's headers are at hand, else left out (optional=True), and the same loops run in Python.
# Linux only (epoll), CPython only (the C API).
COMPILED = [
    Extension("balancer_cdispatch", ["balancer/proxy/engine/cdispatch.c"], optional=True)
] if sys.platform.startswith("linux") and platform.python_implementation() == "CPython" else []

setup(
    name="balancer",
    version="0.1.0",
    description="An L4 load balancer (TCP, TLS, UDP) on Twisted, configured like gobetween",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["balancer", "balancer.*", "admin", "admin.*"]) + ["twisted.plugins"],
    package_data={
        "twisted.plugins": ["balancer_plugin.py"],
        "balancer": ["examples/*.toml", "examples/*.service"],
        "admin": ["ui/*.html", "ui/*.js", "ui/*.css"],
    },
    install_requires=[
        "twisted[tls]>=26.10",
        "klein>=24.8",
        "treq>=26.7",
        "tomli-w>=1.2",
        "service-identity>=26.1",
        "pyopenssl>=26.4",
        "cryptography>=50.0",
        "attrs>=26.1",
        "bcrypt>=5.0",
        "werkzeug>=3.1",
        "prometheus-client>=0.26",
        "jsonpatch>=1.48",
        "jsonpointer>=3.12",
        "zope.interface>=8.7",
        "acme>=5.9",
        "josepy>=2.2",
        # balancerctl: click for its commands (nested commands, --help, completion), rich for tables and progress.
        "click>=8.5",
        "rich>=15.0",
    ],
    ext_modules=COMPILED,
    entry_points={"console_scripts": ["balancerctl = balancer.ctl.commands:main"]},
    extras_require={
        # mypy and mypy-zope: the type gate .ci/run runs; wheel: the packaging test
        # builds a wheel without fetching a build backend; playwright drives the
        # dashboard in the system's Chromium (it never downloads a browser).
        "test": [
            "openapi-spec-validator>=0.7",
            "schemathesis>=4.32",
            "hypothesis>=6.170",
            "mypy>=2.4",
            "mypy-zope>=1.0.17",
            "wheel>=0.45",
            "playwright>=1.65",
        ],
    },
)
