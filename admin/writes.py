"""
Who may send a write (any method but GET, HEAD and OPTIONS), checked before
routing and before credentials, so that a refusal costs nothing:

 1. a write that carries a body must say it is JSON (C{Content-Type:
    application/json}, parameters allowed; under C{/v1} also the JSON Patch
    types): 415 otherwise.  A web page can send a cross-site form or a
    "simple" C{fetch} only as C{text/plain}, form or multipart data, so no
    page can make a visitor's browser send a write the API reads;
 2. a write whose C{Origin} header names another origin than the API's own
    (the scheme and C{Host} of the request) is refused (403) unless that
    origin is in C{[api] cors_origins};
 3. with no account configured, writes come only from this host's loopback
    addresses (127.0.0.0/8, ::1): 403 for others, saying how to add an account.

Refusals are JSON: a JSON string at the root API, a JSON:API error document
under C{/v1}.  Both rules 1 and 3 are stricter than gobetween, which reads
any body as JSON and takes writes from anyone when it has no account.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest

from admin.clients import client_host, is_local_client
from admin.errorbody import render_error, under_v1
from admin.origins import origin_set, own_origin, parse_origin, sent_origins
from balancer.config.schema import ApiConfig

log = Logger()

#: Methods that only read; every other method is a write.
READS = (b"GET", b"HEAD", b"OPTIONS")

#: The media types of a write's body at the root API.
JSON_TYPES = (b"application/json",)

#: The media types of a write's body under /v1 (its pipeline then takes the patch types for PATCH only).
V1_TYPES = (b"application/json", b"application/json-patch+json", b"application/json-patch")


class WritePolicy(Resource):
    """Wraps the API: refuses writes that break the rules above, renders everything else with the wrapped resource."""

    isLeaf = True

    def __init__(self, wrapped: IResource, api: ApiConfig) -> None:
        """
        @param wrapped: the API.
        @param api: C{[api]}: its accounts and C{cors_origins}.
        """
        super().__init__()
        self._wrapped = wrapped
        self._trusted = origin_set(api.cors_origins)
        self._open = api.basic_auth is None and not api.users

    def render(self, request: IRequest) -> Any:
        """A refusal for a write that breaks a rule; otherwise what the wrapped API answers."""
        if request.method not in READS:
            refusal = self.refusal(request)
            if refusal is not None:
                code, detail = refusal
                log.info("api: refused {method} {path} from {client} ({code}): {detail}",
                         method=request.method.decode("latin-1"), path=request.path.decode("latin-1"),
                         client=client_host(request), code=code, detail=detail)
                return render_error(request, code, detail)
        return getChildForRequest(self._wrapped, request).render(request)

    def refusal(self, request: IRequest) -> tuple[int, str] | None:
        """(code, detail) of the first rule write C{request} breaks, or None."""
        if _has_body(request):
            allowed = V1_TYPES if under_v1(request.path) else JSON_TYPES
            given = (request.getHeader(b"Content-Type") or b"").split(b";")[0].strip().lower()
            if given not in allowed:
                named = f'"{given.decode("latin-1")}"' if given else "none"
                return 415, (f"a request body must be JSON: Content-Type {' or '.join(a.decode() for a in allowed)} "
                             f"(with parameters if any), here {named}")
        own = own_origin(request)
        for origin in sent_origins(request):
            parsed = parse_origin(origin)
            if parsed is None or (parsed != own and parsed not in self._trusted):
                return 403, (f'a write sent by a web page of origin "{origin}" is refused: it is not this API\'s '
                             "origin (the scheme and Host of the request); trusted origins go in [api] cors_origins")
        if self._open and not is_local_client(request):
            return 403, (f"writes from {client_host(request)} need an account: no account is configured, so only "
                         "this host (127.0.0.1, ::1) may write. Add [api.basic_auth] (login, password) or "
                         "[[api.users]] to the configuration and restart the balancer")
        return None


def _has_body(request: IRequest) -> bool:
    """Whether the request came with a body of at least one byte."""
    content = request.content
    if content is None:
        return False
    position = content.tell()
    size = content.seek(0, os.SEEK_END)
    content.seek(position)
    return bool(size)
