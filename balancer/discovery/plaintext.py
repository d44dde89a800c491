"""
C{kind = "plaintext"}: GET a text document; each line is a backend.

As gobetween does, the body is split on newlines and
C{plaintext_regex_pattern} is applied to each non-empty line (surrounding
whitespace removed) on its own, so C{^} and C{$} mean the line's start and
end (it is searched, as Go's C{FindStringSubmatch} does).  The named groups
C{host} and C{port} are required; C{weight}, C{priority} (default 1), C{sni}
and C{max_connections} (default 0, unlimited) are optional.  An empty
pattern means gobetween's L{DEFAULT_PATTERN}.

A line that does not match (a comment, a header) is skipped and logged at
debug level; a line that matches but whose values are not a backend (port
0, a weight that is not a number) is skipped with a warning.  An HTTP status
other than 2xx, or a body that is not UTF-8, fails the fetch.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from balancer.config.addresses import BackendSpec
from balancer.config.schema import DiscoveryConfig
from balancer.discovery.base import DiscoveryError, IDiscovery, make_backend
from balancer.discovery.http_client import HTTPGetter, get_body, http_client

DEFAULT_PATTERN = (
    r"^(?P<host>\S+):(?P<port>\d+)(\sweight=(?P<weight>\d+))?"
    r"(\spriority=(?P<priority>\d+))?(\ssni=(?P<sni>[^\s]+))?$"
)
"""gobetween's C{DEFAULT_BACKEND_PATTERN} (C{utils/parsers/backend.go})."""

_log = Logger()

_FIELDS = ("host", "port", "weight", "priority", "sni", "max_connections")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """
    C{pattern} (or L{DEFAULT_PATTERN} when empty), compiled with ASCII
    classes as in Go's RE2.

    @raise ValueError: when it lacks a C{host} or C{port} group.
    """
    compiled = re.compile(pattern or DEFAULT_PATTERN, re.ASCII)
    for group in ("host", "port"):
        if group not in compiled.groupindex:
            raise ValueError(f"plaintext_regex_pattern: needs a named group (?P<{group}>...), got {pattern!r}")
    return compiled


def parse_text(body: bytes, pattern: re.Pattern[str]) -> list[BackendSpec]:
    """
    The backends in C{body}: one per non-empty line that C{pattern} matches
    and whose values are a backend; other lines are logged and skipped.

    @raise DiscoveryError: when C{body} is not UTF-8.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DiscoveryError(f"the document is not UTF-8: {e}") from None
    backends = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line:
            continue
        match = pattern.search(line)
        if match is None:
            _log.debug(
                'plaintext line {number} skipped: it does not match plaintext_regex_pattern: "{line}"',
                number=number,
                line=line,
            )
            continue
        groups = match.groupdict()
        try:
            backends.append(make_backend(**{name: groups.get(name) for name in _FIELDS}))
        except DiscoveryError as e:
            _log.warn('plaintext line {number} skipped: "{line}": {error}', number=number, line=line, error=str(e))
    return backends


@implementer(IDiscovery)
class PlaintextDiscovery:
    """GETs C{plaintext_endpoint} and parses each line with C{plaintext_regex_pattern}."""

    DEFAULT_TIMEOUT = 5.0

    def __init__(self, config: DiscoveryConfig, reactor: Any, http: HTTPGetter | None = None) -> None:
        """
        @param http: the HTTP client; default: a new treq client on C{reactor}.
        @raise ValueError: when the pattern lacks a C{host} or C{port} group.
        """
        self._url = config.plaintext_endpoint
        self._pattern = compile_pattern(config.plaintext_regex_pattern)
        self._http = http if http is not None else http_client(reactor)

    def fetch(self) -> Deferred[list[BackendSpec]]:
        """GET the document and parse it."""
        return Deferred.fromCoroutine(self._fetch())

    async def _fetch(self) -> list[BackendSpec]:
        return parse_text(await get_body(self._http, self._url), self._pattern)
