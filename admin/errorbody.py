"""
The API's error bodies, in the form of the API a request belongs to: a JSON
string at gobetween's root API (C{"no server named \\"web\\""}), a JSON:API
C{errors} document under C{/v1} (C{{"errors": [{"detail": "..."}]}}),
indented unless the query says C{pretty=false}, as every C{/v1} answer is.

Every error the API answers is rendered here: by a route's error handler, by
a resource in front of the routes (the UTF-8 check, the write policy, the
login gate), by a request that failed, and by the limits that refuse a
request before it is parsed (L{admin.answers}).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.http import parse_qs
from twisted.web.iweb import IRequest

from admin.v1 import documents, params

#: The Content-Type of every error body.
JSON = b"application/json"


def under_v1(target: bytes) -> bool:
    """Whether the request target or path C{target} is a C{/v1} resource (its errors are JSON:API documents)."""
    path = target.split(b"?", 1)[0]
    return path == b"/v1" or path.startswith(b"/v1/")


def error_body(detail: str, target: bytes = b"") -> bytes:
    """
    The body of an error saying C{detail}, for the request target C{target}
    (its path and query; C{b""} when not known, which is gobetween's form).
    """
    if not under_v1(target):
        return _string(detail)
    query = target.partition(b"?")[2]
    return errors_body([{"detail": detail}], params.parse_pretty(parse_qs(query, 1)))


def errors_body(errors: list[dict[str, Any]], pretty: bool) -> bytes:
    """
    A JSON:API C{errors} document of the error objects C{errors} (each with a
    C{detail}, maybe a C{source}).

    @param pretty: indented (and ending in a newline), else compact.
    """
    return documents.dumps({"errors": errors}, pretty)


def render_error(request: IRequest, code: int, detail: str) -> bytes:
    """
    Set C{code} and C{Content-Type: application/json} on C{request}, and
    return the body of an error saying C{detail} in the form of its API.
    """
    if under_v1(request.path):
        return render_errors(request, code, [{"detail": detail}])
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", JSON)
    return _string(detail)


def render_errors(request: IRequest, code: int, errors: list[dict[str, Any]]) -> bytes:
    """
    Set C{code} and C{Content-Type: application/json} on the C{/v1} request
    C{request}, and return the JSON:API document of C{errors}, pretty unless
    its query says C{pretty=false}.
    """
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", JSON)
    return errors_body(errors, params.parse_pretty(request.args))


def _string(detail: str) -> bytes:
    """gobetween's error body: the detail as a JSON string."""
    return json.dumps(detail).encode("utf-8")
