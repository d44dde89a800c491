"""
Conditional requests (RFC 9110 §13): C{ETag} is a strong tag of a
resource's configuration (statistics left out), C{Last-Modified} the time its
configuration last changed.  Preconditions are evaluated before anything
changes: 304 on reads, 412 on writes; with C{[api] require_conditional} a
PATCH, PUT or DELETE without C{If-Match} or C{If-Unmodified-Since} is 428.
"""

from __future__ import annotations

import hashlib
import json
from email.utils import formatdate, parsedate_to_datetime
from typing import Any

from twisted.web.iweb import IRequest

from admin.v1.errors import ApiError

#: Methods that only read.
SAFE = ("GET", "HEAD")

#: Methods that need a precondition under C{require_conditional}.
NEEDS_PRECONDITION = ("PATCH", "PUT", "DELETE")


def etag(view: Any, revision: int | None = None) -> str:
    """
    A strong entity tag of C{view} (a JSON value): quoted hex of its
    SHA-256; in a cluster, preceded by C{r<revision>-}, the store revision
    that last changed the resource, the same on every balancer (so a tag
    never comes back once the resource has changed, even to an earlier value).
    """
    digest = hashlib.sha256(json.dumps(view, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()
    if revision is not None:
        return f'"r{revision}-{digest[:24]}"'
    return f'"{digest[:32]}"'


def http_date(seconds: float) -> str:
    """Epoch C{seconds} as an HTTP-date (RFC 1123 form, GMT)."""
    return formatdate(int(seconds), usegmt=True)


def _parse_date(value: bytes) -> float | None:
    """An HTTP-date in epoch seconds, or None if it is not one (the header is then ignored)."""
    try:
        return parsedate_to_datetime(value.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _tags(value: bytes) -> list[str]:
    return [t.strip() for t in value.decode("latin-1").split(",") if t.strip()]


def _strong_match(header: bytes, current: str) -> bool:
    return any(t == "*" or t == current for t in _tags(header))


def _weak_match(header: bytes, current: str) -> bool:
    return any(t == "*" or t.removeprefix("W/") == current for t in _tags(header))


def require(request: IRequest, method: str, required: bool) -> None:
    """
    Under C{require_conditional}, refuse an unconditional PATCH, PUT or DELETE.

    @raise ApiError: 428.
    """
    if not required or method not in NEEDS_PRECONDITION:
        return
    if request.getHeader(b"If-Match") is None and request.getHeader(b"If-Unmodified-Since") is None:
        raise ApiError(428, f"{method} needs If-Match (an ETag from a GET) or If-Unmodified-Since")


def evaluate(request: IRequest, method: str, current_tag: str, modified: float) -> None:
    """
    Evaluate the preconditions against the resource's C{current_tag} and last modification.

    @raise ApiError: 304 (reads) or 412 (writes) when a precondition says so.
    """
    modified = int(modified)
    if_match = request.getHeader(b"If-Match")
    if if_match is not None:
        if not _strong_match(if_match, current_tag):
            raise ApiError(412, f"If-Match: the resource's ETag is now {current_tag}")
    else:
        since = request.getHeader(b"If-Unmodified-Since")
        date = _parse_date(since) if since is not None else None
        if date is not None and modified > date:
            raise ApiError(412, f"If-Unmodified-Since: the resource changed at {http_date(modified)}")
    if_none = request.getHeader(b"If-None-Match")
    if if_none is not None:
        if _weak_match(if_none, current_tag):
            if method in SAFE:
                raise ApiError(304, "not modified")
            raise ApiError(412, f"If-None-Match: the resource's ETag is {current_tag}")
    elif method in SAFE:
        since = request.getHeader(b"If-Modified-Since")
        date = _parse_date(since) if since is not None else None
        if date is not None and modified <= date:
            raise ApiError(304, "not modified")
