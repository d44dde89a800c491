"""
The root API (gobetween's REST API documentation): what each route reads from
L{IControl} and how it is written out.

Routes live in L{admin.app}; here are the documents they answer with, in
gobetween's exact field names and types, and the parsing of request bodies.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import IO, Any

from twisted.web.iweb import IRequest

from admin.errors import BadRequest
from admin.jsonbody import read_json
from balancer.control.interface import IControl

#: The fields of gobetween's statistics document of a server, in its order.
SERVER_FIELDS = ("active_connections", "rx_total", "tx_total", "rx_second", "tx_second", "backends")

#: The fields of one backend in C{GET /servers/<name>/stats}, as gobetween documents them.
BACKEND_FIELDS = ("host", "port", "priority", "weight", "stats")

_DUMP_TYPES = {"toml": b"application/toml; charset=utf-8", "json": b"application/json"}


def json_response(request: IRequest, value: Any) -> bytes:
    """Set C{Content-Type: application/json}; the body is C{value} as indented JSON (errors: L{admin.errorbody})."""
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(value, indent=4).encode("utf-8")


def system_info(control: IControl) -> dict[str, Any]:
    """
    C{GET /}: the process.

    C{startTime} and C{time} are RFC 3339 in UTC; C{uptime} is written as Go
    writes a C{time.Duration} (C{"1h2m3.5s"}), to the microsecond.
    """
    info = control.info()
    return {
        "configuration": {"kind": "file", "path": info.config_path},
        "pid": info.pid,
        "startTime": rfc3339(info.started_at),
        "time": rfc3339(info.time),
        "uptime": go_duration(info.time - info.started_at),
        "version": info.version,
    }


def dump(control: IControl, format: str) -> tuple[bytes, bytes]:
    """
    C{GET /dump?format=}: the effective configuration; returns (content type, body).

    @raise balancer.control.errors.DumpFormatError: for a format other than toml or json.
    """
    text = control.dump(format)
    return _DUMP_TYPES[format], text.encode("utf-8")


def servers(control: IControl) -> dict[str, Any]:
    """C{GET /servers}: every server's definition by name, as in C{[servers]}."""
    return {name: control.server_definition(name) for name in control.server_names()}


def server_stats(control: IControl, name: str) -> dict[str, Any]:
    """
    C{GET /servers/<name>/stats}: gobetween's statistics document, exactly
    its documented fields (further counters belong to /v1 and /metrics),
    summed over the worker processes.

    @raise balancer.control.errors.UnknownServer: if there is no such server.
    """
    stats = control.service(name).statistics
    backends = [{key: backend[key] for key in BACKEND_FIELDS} for backend in stats["backends"]]
    return {**{key: stats[key] for key in SERVER_FIELDS}, "backends": backends}


def server_body(content: IO[bytes]) -> dict[str, Any]:
    """
    The JSON object of a C{POST /servers/<name>} body.

    @raise admin.jsonbody.BodyError: if the body is not JSON within the bounds of
        L{admin.jsonbody} (400), or too long (413).
    @raise BadRequest: if the body is not a JSON object.
    """
    body = read_json(content)
    if not isinstance(body, dict):
        raise BadRequest(f"expected a JSON object (a server definition), got {type(body).__name__}")
    return body


def rfc3339(seconds: float) -> str:
    """Epoch C{seconds} as an RFC 3339 UTC timestamp, fraction without trailing zeros (as Go writes it)."""
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def go_duration(seconds: float) -> str:
    """
    C{seconds} as Go's C{time.Duration.String()} writes it, to the microsecond:
    C{"0s"}, C{"250µs"}, C{"1.5ms"}, C{"3.5s"}, C{"2m0s"}, C{"1h2m3.5s"}.
    """
    micros = round(seconds * 1_000_000)
    sign = "-" if micros < 0 else ""
    micros = abs(micros)
    if micros == 0:
        return "0s"
    if micros < 1000:
        return f"{sign}{micros}µs"
    if micros < 1_000_000:
        return f"{sign}{_decimal(micros, 1000)}ms"
    hours, rest = divmod(micros, 3600 * 1_000_000)
    minutes, rest = divmod(rest, 60 * 1_000_000)
    secs = f"{_decimal(rest, 1_000_000)}s"
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}"
    if minutes:
        return f"{sign}{minutes}m{secs}"
    return sign + secs


def _decimal(value: int, unit: int) -> str:
    """C{value / unit} in decimal, without trailing zeros."""
    whole, fraction = divmod(value, unit)
    digits = str(fraction).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)
