"""
The /v1 routes (Klein) and the pipeline every request goes through:

 1. 503 while shutting down, 414 for a URI over 8 KiB, 431 for headers over
    8 KiB (one) or 16 KiB (all), 406 for an C{Accept} without JSON;
 2. C{Allow} (and C{Accept-Patch}) set; C{X-HTTP-Method-Override} applied
    (on POST and PUT); 405 for a method the resource does not support;
 3. 403 for a C{basic} account writing; 428 under C{require_conditional};
 4. the body: 411 without a length, 415 not JSON, 400 not a document;
 5. 404 for an unknown resource; preconditions (304, 412) against its
    current C{ETag} and C{Last-Modified}, before any change;
 6. 423 if an operation on the resource is in progress, else the change,
    through L{IControl}; the answer with fresh validators: 204 for a PATCH
    or a creating POST, as MaxScale answers, unless C{Prefer:
    return=representation} asks for the document (L{admin.v1.prefer}).

Collections answer with a trailing slash too (C{/v1/services/}), and
C{/v1/maxscale} is the process in MaxScale's shape, as MaxScale's tools expect.

Routes only parse and dispatch; resource modules build the documents and
call the control interface; errors become JSON:API error documents in the
C{handle_errors} methods.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.datastructures import MIMEAccept
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect
from werkzeug.http import parse_accept_header

from admin.auth import Account, require_admin
from admin.errorbody import render_errors
from admin.errors import Forbidden
from admin.v1 import conditional, documents, locks, openapi, params, prefer
from admin.v1.balancer import Balancer
from admin.v1.cluster import Cluster
from admin.v1.errors import MAX_HEADER, MAX_HEADERS, MAX_URI, ApiError, bad_request, unprocessable
from admin.v1.filters import Filters
from admin.v1.kind import Kind
from admin.v1.listeners import Listeners
from admin.v1.maxscale import MaxScale
from admin.v1.monitors import Monitors
from admin.v1.patch import apply_patch
from admin.v1.servers import Servers, parse_state
from admin.v1.services import Services
from admin.v1.sessions import Sessions
from admin.v1.users import Users
from balancer import __version__
from balancer.config.errors import ConfigError
from balancer.control.errors import (
    BackendInUse, ChangeConflict, ClusterUnavailable, LinkError, ListenerError, ReloadRefused, ServerExists, UnknownBackend, UnknownServer,
    UnknownSession)
from balancer.control.interface import IControl
from balancer.policy import ChangeRefused

log = Logger()

#: Media types a PATCH body may have (the seed's C{application/json-patch} is an alias).
JSON_PATCH = (b"application/json-patch+json", b"application/json-patch")
ACCEPT_PATCH = b"application/json, application/json-patch+json"

#: Methods X-HTTP-Method-Override may name.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

#: Collections served at C{/v1/<type>}.
KINDS = (Services, Servers, Listeners, Monitors, Filters, Sessions)


class V1App:
    """The /v1 API as one account sees it (mounted on L{admin.app.AdminApp})."""

    app = Klein()

    def __init__(self, control: IControl, account: Account) -> None:
        self.control = control
        self.account = account
        self.kinds: dict[str, Kind] = {cls.type: cls(control) for cls in KINDS}
        self.users = Users(control)
        self.balancer = Balancer(control)
        self.maxscale = MaxScale(control)
        self.cluster = Cluster(control)

    # Routes

    @app.route("/")
    def root(self, request: IRequest) -> bytes:
        """C{/v1/}: 200 with links to every collection."""
        self._begin(request, ("GET", "HEAD"))
        links = {"self": documents.path("")}
        links.update({t: documents.path(t) for t in self.kinds})
        links.update(users=documents.path("users", "inet"), balancer=documents.path("balancer"),
                     maxscale=documents.path("maxscale"), cluster=documents.path("cluster"),
                     openapi=documents.path("openapi.json"))
        return self._render(request, 200, {"links": links, "meta": {"version": __version__}})

    @app.route("/openapi.json")
    def openapi(self, request: IRequest) -> bytes:
        """C{/v1/openapi.json}: the OpenAPI 3.1 description of the root API and /v1."""
        self._begin(request, ("GET", "HEAD"))
        document = openapi.document()
        tag = conditional.etag(document)
        self._validators(request, tag, self.control.info().started_at)
        conditional.evaluate(request, "GET", tag, self.control.info().started_at)
        return self._render(request, 200, document)

    @app.route("/balancer")
    @app.route("/balancer/")
    def balancer_info(self, request: IRequest) -> bytes:
        """C{/v1/balancer}: the process."""
        method = self._begin(request, self.balancer.member_methods)
        return self._read_member(request, method, self.balancer, "balancer")

    @app.route("/maxscale")
    @app.route("/maxscale/")
    def maxscale_info(self, request: IRequest) -> bytes:
        """C{/v1/maxscale}: the process in MaxScale's shape (an alias of C{/v1/balancer})."""
        method = self._begin(request, self.maxscale.member_methods)
        return self._read_member(request, method, self.maxscale, "maxscale")

    @app.route("/cluster")
    @app.route("/cluster/")
    def cluster_info(self, request: IRequest) -> bytes:
        """C{/v1/cluster}: the cluster and its members (404 without C{[cluster]})."""
        method = self._begin(request, self.cluster.member_methods)
        return self._read_member(request, method, self.cluster, "")

    @app.route("/balancer/reload")
    async def reload(self, request: IRequest) -> bytes:
        """C{POST /v1/balancer/reload}: load the configuration file again; 200 with what changed in C{meta}."""
        self._begin(request, ("POST",))
        return self._render(request, 200, await self.balancer.reload())

    @app.route("/users")
    @app.route("/users/")
    @app.route("/users/inet")
    @app.route("/users/inet/")
    async def users_collection(self, request: IRequest) -> bytes:
        """C{/v1/users} and C{/v1/users/inet}: the API's accounts."""
        return await self._collection(request, self.users)

    @app.route("/users/inet/<id>")
    async def user(self, request: IRequest, id: str) -> bytes:
        """C{/v1/users/inet/<name>}: one account."""
        return await self._member(request, self.users, id)

    @app.route("/users/<id>")
    def moved_user(self, request: IRequest, id: str) -> bytes:
        """C{/v1/users/<name>}: moved permanently to C{/v1/users/inet/<name>} (308, C{Location})."""
        self._begin(request, self.users.member_methods)
        location = self.users.member_path(id)
        request.setHeader(b"Location", location.encode("utf-8"))
        return self._render(request, 308, {"links": {"self": location}, "meta": {"detail": f"moved to {location}"}})

    @app.route("/<type_>")
    @app.route("/<type_>/")
    async def collection(self, request: IRequest, type_: str) -> bytes:
        """C{/v1/<type>} (or C{/v1/<type>/}, as MaxScale's tools ask): a collection (GET), or a new member (POST)."""
        return await self._collection(request, self._kind(type_))

    @app.route("/<type_>/<id>")
    async def member(self, request: IRequest, type_: str, id: str) -> bytes:
        """C{/v1/<type>/<id>}: one resource (GET, PATCH, DELETE)."""
        return await self._member(request, self._kind(type_), id)

    @app.route("/<type_>/<id>/relationships/<name>")
    async def relationship(self, request: IRequest, type_: str, id: str, name: str) -> bytes:
        """C{/v1/<type>/<id>/relationships/<name>}: one relationship (GET; PATCH where writable)."""
        kind = self._kind(type_)
        methods = ("GET", "HEAD", "PATCH") if name in kind.writable else ("GET", "HEAD")
        method = self._begin(request, methods)
        body = self._body(request, method) if method == "PATCH" else None
        current = kind.get(id)
        related = current.get("relationships", {})
        if name not in related:
            raise ApiError(404, f'{kind.type} "{id}" has no relationship "{name}"')
        document = {"links": related[name]["links"], "data": related[name]["data"]}
        tag = kind.tag(current)
        self._validators(request, tag, kind.changed_at(id))
        conditional.evaluate(request, method, tag, kind.changed_at(id))
        if method in conditional.SAFE:
            return self._render(request, 200, document)
        value, is_patch = body  # type: ignore[misc]
        if is_patch:
            value = apply_patch(value, document)
        ids = documents.linkage(value, name)
        with locks.hold(self.control, kind.lock_key(id)):
            await kind.relate(id, name, ids)
        return self._no_content(request)

    @app.route("/servers/<id>/set")
    async def set_state(self, request: IRequest, id: str) -> bytes:
        """C{PUT /v1/servers/<id>/set?state=maintenance|drain}."""
        return await self._admin_state(request, id, set_it=True)

    @app.route("/servers/<id>/clear")
    async def clear_state(self, request: IRequest, id: str) -> bytes:
        """C{PUT /v1/servers/<id>/clear[?state=maintenance|drain]}."""
        return await self._admin_state(request, id, set_it=False)

    @app.route("/servers/<id>/sessions")
    async def server_sessions(self, request: IRequest, id: str) -> bytes:
        """C{DELETE /v1/servers/<id>/sessions}: close every session of a server, in every worker process (204)."""
        servers = self._action_on(request, "servers", id, "DELETE")
        with locks.hold(self.control, servers.lock_key(id)):
            await self.control.close_backend_sessions(id)
        return self._no_content(request)

    # The pipeline

    def _kind(self, type_: str) -> Kind:
        if type_ not in self.kinds:
            raise ApiError(404, f'no resource type "{type_}" in /v1')
        return self.kinds[type_]

    def _begin(self, request: IRequest, methods: tuple[str, ...]) -> str:
        """Steps 1 to 3: checks that need no resource; returns the method to apply."""
        if self.control.shutting_down():
            raise ApiError(503, "the balancer is shutting down", headers={b"Retry-After": b"10"})
        if len(request.uri) > MAX_URI:
            raise ApiError(414, f"the URI is over {MAX_URI} bytes")
        sizes = [len(k) + len(v) + 2 for k, vs in request.requestHeaders.getAllRawHeaders() for v in vs]
        if any(s > MAX_HEADER for s in sizes) or sum(sizes) > MAX_HEADERS:
            raise ApiError(431, f"a header line is over {MAX_HEADER} bytes, or all of them over {MAX_HEADERS}")
        accept = request.getHeader(b"Accept")
        if accept:
            accepted = parse_accept_header(accept.decode("latin-1"), MIMEAccept)
            if accepted and accepted.best_match(["application/json"]) is None:
                raise ApiError(406, "answers are application/json, which the Accept header excludes")
        request.setHeader(b"Allow", ", ".join(methods).encode("ascii"))
        if "PATCH" in methods:
            request.setHeader(b"Accept-Patch", ACCEPT_PATCH)
        method = request.method.decode("ascii", "replace")
        override = request.getHeader(b"X-HTTP-Method-Override")
        if override is not None:
            wanted = override.decode("latin-1").strip()
            if method not in ("POST", "PUT"):
                raise bad_request(f"X-HTTP-Method-Override is only read on POST and PUT, not on {method}")
            if wanted not in METHODS:
                raise bad_request(f'X-HTTP-Method-Override must be an uppercase HTTP method, got "{wanted}"')
            method = wanted
        if method not in methods:
            raise ApiError(405, f"{method} is not allowed here; allowed: {', '.join(methods)}")
        if method not in conditional.SAFE:
            require_admin(self.account, f"{method} on /v1")
        conditional.require(request, method, self.control.effective_config().api.require_conditional)
        return method

    def _body(self, request: IRequest, method: str) -> tuple[Any, bool]:
        """Step 4: the JSON body, and whether it is a JSON Patch."""
        length = request.getHeader(b"Content-Length")
        chunked = b"chunked" in (request.getHeader(b"Transfer-Encoding") or b"").lower()
        if length is None and not chunked:
            raise ApiError(411, f"{method} needs a body, with Content-Length")
        media = (request.getHeader(b"Content-Type") or b"").split(b";")[0].strip().lower()
        allowed = (b"application/json", *JSON_PATCH) if method == "PATCH" else (b"application/json",)
        if media not in allowed:
            given = media.decode("latin-1") or "none"
            raise ApiError(415, f"{method} takes {', '.join(a.decode() for a in allowed)}; Content-Type is {given}")
        return documents.parse_json(request.content), media in JSON_PATCH

    async def _collection(self, request: IRequest, kind: Kind) -> bytes:
        method = self._begin(request, kind.collection_methods)
        query = params.parse(request.args)
        body = self._body(request, method) if method == "POST" else None
        members = kind.members()
        tag = conditional.etag([kind.view(m) for m in members])
        modified = kind.collection_changed_at()
        self._validators(request, tag, modified)
        conditional.evaluate(request, method, tag, modified)
        if method in conditional.SAFE:
            return self._render(request, 200, params.collection(kind.collection_path(), members, query), query)
        value, _ = body  # type: ignore[misc]
        data = documents.resource_data(value, kind.type)
        new_id = data.get("id")
        with locks.hold(self.control, kind.lock_key(str(new_id))):
            created = await kind.create(data)
        resource = kind.get(created)
        location = kind.member_path(created)
        request.setHeader(b"Location", location.encode("utf-8"))
        self._validators(request, kind.tag(resource), kind.changed_at(created))
        return self._changed(request, 201, documents.top(location, params.sparse(resource, query)), query)

    async def _member(self, request: IRequest, kind: Kind, id: str) -> bytes:
        method = self._begin(request, kind.member_methods)
        if method in conditional.SAFE:
            return self._read_member(request, method, kind, id)
        query = params.parse(request.args)
        body = self._body(request, method) if method == "PATCH" else None
        current = kind.get(id)
        tag = kind.tag(current)
        self._validators(request, tag, kind.changed_at(id))
        conditional.evaluate(request, method, tag, kind.changed_at(id))
        with locks.hold(self.control, kind.lock_key(id)):
            if method == "DELETE":
                await kind.delete(id)
                return self._no_content(request)
            value, is_patch = body  # type: ignore[misc]
            if is_patch:
                data = _patched_data(kind, value, current)
            else:
                data = documents.resource_data(value, kind.type, id)
            await kind.update(id, data, current)
        updated = kind.get(id)
        self._validators(request, kind.tag(updated), kind.changed_at(id))
        return self._changed(request, 200, documents.top(kind.member_path(id), params.sparse(updated, query)), query)

    def _read_member(self, request: IRequest, method: str, kind: Kind, id: str) -> bytes:
        query = params.parse(request.args)
        current = kind.get(id)
        tag = kind.tag(current)
        self._validators(request, tag, kind.changed_at(id))
        conditional.evaluate(request, method, tag, kind.changed_at(id))
        return self._render(request, 200, documents.top(kind.member_path(id), params.sparse(current, query)), query)

    async def _admin_state(self, request: IRequest, id: str, set_it: bool) -> bytes:
        servers = self._action_on(request, "servers", id, "PUT")
        state = parse_state(request.args, required=set_it)
        with locks.hold(self.control, servers.lock_key(id)):
            if set_it:
                await self.control.set_backend_state(id, state)
            elif state is None or self.control.backend(id).admin_state == state:
                await self.control.set_backend_state(id, None)
        return self._no_content(request)

    def _action_on(self, request: IRequest, type_: str, id: str, method: str) -> Kind:
        """
        The pipeline of an action on one resource (set/clear a state, close
        its sessions): the checks of L{_begin}, the resource's validators,
        its preconditions; returns its kind.
        """
        kind = self.kinds[type_]
        self._begin(request, (method,))
        tag = kind.tag(kind.get(id))
        self._validators(request, tag, kind.changed_at(id))
        conditional.evaluate(request, method, tag, kind.changed_at(id))
        return kind

    def _validators(self, request: IRequest, tag: str, modified: float) -> None:
        request.setHeader(b"ETag", tag.encode("ascii"))
        request.setHeader(b"Last-Modified", conditional.http_date(modified).encode("ascii"))

    def _render(self, request: IRequest, code: int, document: Any, query: params.Query | None = None) -> bytes:
        pretty = query.pretty if query is not None else params.parse_pretty(request.args)
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", documents.JSON)
        return documents.dumps(document, pretty)

    def _changed(self, request: IRequest, code: int, document: Any, query: params.Query) -> bytes:
        """
        The answer to a change that has a document: 204 without it, as
        MaxScale answers; C{code} with it under C{Prefer: return=representation}.
        """
        if prefer.wants_representation(request):
            request.setHeader(b"Preference-Applied", prefer.REPRESENTATION.encode("ascii"))
            return self._render(request, code, document, query)
        return self._no_content(request)

    def _no_content(self, request: IRequest) -> bytes:
        request.setResponseCode(204)
        return b""

    # Errors, most specific first

    @app.handle_errors(ApiError)
    def api_error(self, request: IRequest, failure: Failure) -> bytes:
        """An error the pipeline or a resource raised: its code and error document (304: no body)."""
        error = failure.value
        assert isinstance(error, ApiError)
        for name, value in error.headers.items():
            request.setHeader(name, value)
        request.setResponseCode(error.code)
        if error.code == 304:
            return b""
        return render_errors(request, error.code, error.errors)

    @app.handle_errors(Forbidden, ChangeRefused)
    def forbidden(self, request: IRequest, failure: Failure) -> bytes:
        """A C{basic} account writing, or an exec without C{[api] allow_exec}: 403."""
        return render_errors(request, 403, [{"detail": str(failure.value)}])

    @app.handle_errors(UnknownServer, UnknownBackend, UnknownSession)
    def unknown(self, request: IRequest, failure: Failure) -> bytes:
        """A resource named in the request does not exist: 404."""
        error = failure.value
        assert isinstance(error, KeyError)
        return render_errors(request, 404, [{"detail": f'no resource with id "{error.args[0]}"'}])

    @app.handle_errors(ServerExists, ListenerError, LinkError, BackendInUse)
    def conflict(self, request: IRequest, failure: Failure) -> bytes:
        """Name taken, address not bindable, link not possible, resource in use: 409."""
        return render_errors(request, 409, [{"detail": str(failure.value)}])

    @app.handle_errors(ChangeConflict)
    def lost_race(self, request: IRequest, failure: Failure) -> bytes:
        """Another balancer of the cluster changed the resource first: 412, nothing changed."""
        return render_errors(request, 412, [{"detail": str(failure.value)}])

    @app.handle_errors(ClusterUnavailable)
    def cluster_unavailable(self, request: IRequest, failure: Failure) -> bytes:
        """The cluster's etcd cannot take the change: 503 with C{Retry-After}."""
        request.setHeader(b"Retry-After", b"5")
        return render_errors(request, 503, [{"detail": str(failure.value)}])

    @app.handle_errors(ReloadRefused)
    def reload_refused(self, request: IRequest, failure: Failure) -> bytes:
        """The configuration file does not validate: 422, one error per problem (nothing changed)."""
        error = failure.value
        assert isinstance(error, ReloadRefused)
        return render_errors(request, 422, [{"detail": line} for line in error.lines])

    @app.handle_errors(ConfigError)
    def invalid(self, request: IRequest, failure: Failure) -> bytes:
        """Bad values the resource did not point at more precisely: 422, one error per problem."""
        error = failure.value
        assert isinstance(error, ConfigError)
        return render_errors(request, 422, [{"detail": line, "source": {"pointer": "/data"}} for line in error.lines()])

    @app.handle_errors(RequestRedirect)
    def moved(self, request: IRequest, failure: Failure) -> bytes:
        """A path that lives with a trailing slash (C{/v1}): 308 with a relative C{Location}."""
        redirect = failure.value
        assert isinstance(redirect, RequestRedirect)
        target = urlsplit(redirect.new_url)
        location = target.path + (f"?{target.query}" if target.query else "")
        request.setHeader(b"Location", location.encode("utf-8"))
        return self._render(request, 308, {"links": {"self": location}, "meta": {"detail": f"moved to {location}"}})

    @app.handle_errors(HTTPException)
    def no_route(self, request: IRequest, failure: Failure) -> bytes:
        """No such path under /v1: 404."""
        error = failure.value
        assert isinstance(error, HTTPException) and error.code is not None
        return render_errors(request, error.code, [{"detail": f"no resource at {request.uri.decode('utf-8', 'replace')}"}])

    @app.handle_errors(Exception)
    def failed(self, request: IRequest, failure: Failure) -> bytes:
        """Anything else is a real failure: logged, and 500 without a traceback."""
        log.failure("api: {method} {path} failed", failure, method=request.method, path=request.path)
        return render_errors(request, 500, [{"detail": "internal error (logged)"}])


def _patched_data(kind: Kind, operations: Any, current: dict[str, Any]) -> dict[str, Any]:
    """
    The resource object a JSON Patch makes of C{current} (as C{{"data": ...}}).

    @raise ApiError: 422 listing every read-only member the patch changes.
    """
    patched = apply_patch(operations, {"data": current})
    data = documents.resource_data(patched, kind.type, current["id"])
    readonly = [f"/data/{k}" for k in ("links",) if data.get(k) != current.get(k)]
    before, after = current.get("attributes", {}), data.get("attributes", {})
    readonly += [f"/data/attributes/{documents.escape(k)}" for k in sorted(set(before) | set(after))
                 if k != "parameters" and before.get(k) != after.get(k)]
    before, after = current.get("relationships", {}), data.get("relationships", {})
    readonly += [f"/data/relationships/{documents.escape(k)}" for k in sorted(set(before) | set(after))
                 if k not in kind.writable and before.get(k) != after.get(k)]
    if readonly:
        raise unprocessable([(p, "read-only: only parameters and writable relationships change") for p in readonly])
    return data
