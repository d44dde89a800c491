"""
The Klein applications: routes only.  Each route parses, calls the balancer
through L{IControl}, and renders with L{admin.gobetween}; the domain's errors
become HTTP codes in one place, the C{handle_errors} methods.

L{PublicApp} is the front door: C{/ping} for anyone, everything else handed
to the guarded resource (L{admin.auth.guard}), which gives each account its
own L{AdminApp}.
"""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from admin import dashboard, gobetween
from admin.auth import Account, require_admin
from admin.errorbody import render_error, under_v1
from admin.errors import BadRequest, Forbidden
from admin.jsonbody import BodyError
from admin.v1.api import V1App
from balancer.config.errors import ConfigError
from balancer.control.errors import (
    ChangeConflict, ClusterUnavailable, DumpFormatError, ListenerError, ServerExists, UnknownServer)
from balancer.control.interface import IControl
from balancer.policy import ChangeRefused

log = Logger()


class PublicApp:
    """The routes anyone may call, in front of the guarded API."""

    app = Klein()

    def __init__(self, guarded: IResource) -> None:
        """@param guarded: the API behind its login (see L{admin.auth.guard})."""
        self._guarded = guarded

    @app.route("/ping", methods=["GET"])
    def ping(self, request: IRequest) -> bytes:
        """gobetween's public health check: C{"OK"}."""
        return gobetween.json_response(request, "OK")

    @app.route("/", branch=True)
    def guarded(self, request: IRequest) -> IResource:
        """Every other path, through the guard."""
        return self._guarded

    @app.handle_errors(HTTPException)
    def unroutable(self, request: IRequest, failure: Failure) -> bytes:
        """A path no route takes (one with a control character): 404 as JSON, a JSON:API error under /v1."""
        error: Any = failure.value
        detail = "no resource at this path" if under_v1(request.path) else str(error.name).lower()
        return render_error(request, error.code, detail)


class AdminApp:
    """
    The API as one account sees it: gobetween's root routes (docs/DESIGN.md §7.1).

    A C{basic} account may only read; writes and C{/dump} raise L{Forbidden}.
    The /v1 API mounts here as a branch route returning its own resource
    for the same C{control} and C{account}, so it sits behind the same guard.
    """

    app = Klein()

    def __init__(self, control: IControl, account: Account) -> None:
        self.control = control
        self.account = account

    @app.route("/", methods=["GET"])
    def info(self, request: IRequest) -> bytes:
        """C{GET /}: pid, start time, time, uptime, version, configuration."""
        return gobetween.json_response(request, gobetween.system_info(self.control))

    @app.route("/dump", methods=["GET"])
    def dump(self, request: IRequest) -> bytes:
        """C{GET /dump?format=toml|json}: the effective configuration (admin accounts only)."""
        require_admin(self.account, "dumping the configuration")
        format = request.args.get(b"format", [b"toml"])[0].decode("utf-8", "replace")
        content_type, body = gobetween.dump(self.control, format)
        request.setHeader(b"Content-Type", content_type)
        return body

    @app.route("/servers", methods=["GET"])
    def servers(self, request: IRequest) -> bytes:
        """C{GET /servers}: every server's definition by name."""
        return gobetween.json_response(request, gobetween.servers(self.control))

    @app.route("/servers/<name>", methods=["GET"])
    def server(self, request: IRequest, name: str) -> bytes:
        """C{GET /servers/<name>}: one server's definition."""
        return gobetween.json_response(request, self.control.server_definition(name))

    @app.route("/servers/<name>", methods=["POST"])
    async def create(self, request: IRequest, name: str) -> bytes:
        """C{POST /servers/<name>}: create and start a server; answers with its definition."""
        require_admin(self.account, "creating a server")
        definition = await self.control.add_server(name, gobetween.server_body(request.content))
        return gobetween.json_response(request, definition)

    @app.route("/servers/<name>", methods=["DELETE"])
    async def delete(self, request: IRequest, name: str) -> bytes:
        """C{DELETE /servers/<name>}: stop a server and close its relays; answers C{null}."""
        require_admin(self.account, "deleting a server")
        await self.control.remove_server(name)
        return gobetween.json_response(request, None)

    @app.route("/v1")
    @app.route("/v1/", branch=True)
    def v1(self, request: IRequest) -> IResource:
        """C{/v1/...}: the MaxScale-style resource API (L{admin.v1.api}) for the same control and account."""
        return V1App(self.control, self.account).app.resource()

    @app.route("/ui", methods=["GET"])
    def dashboard_moved(self, request: IRequest) -> bytes:
        """C{GET /ui}: to C{/ui/}, where the page's relative links work."""
        request.setResponseCode(301)
        request.setHeader(b"Location", b"ui/")
        return b""

    @app.route("/ui/", methods=["GET"])
    def dashboard_page(self, request: IRequest) -> bytes:
        """C{GET /ui/}: the dashboard (L{admin.dashboard})."""
        return dashboard.serve(request, "index.html", self.account)

    @app.route("/ui/<name>", methods=["GET"])
    def dashboard_asset(self, request: IRequest, name: str) -> bytes:
        """C{GET /ui/<name>}: the dashboard's script and style."""
        return dashboard.serve(request, name, self.account)

    @app.route("/servers/<name>/stats", methods=["GET"])
    def stats(self, request: IRequest, name: str) -> bytes:
        """C{GET /servers/<name>/stats}: gobetween's statistics document."""
        return gobetween.json_response(request, gobetween.server_stats(self.control, name))

    # Errors, most specific first: the first handler whose types match is used.

    @app.handle_errors(ConfigError)
    def invalid(self, request: IRequest, failure: Failure) -> bytes:
        """A definition that does not validate: 409 with every problem, one per line."""
        error = failure.value
        assert isinstance(error, ConfigError)
        return render_error(request, 409, "\n".join(error.lines()))

    @app.handle_errors(ServerExists, ListenerError)
    def conflict(self, request: IRequest, failure: Failure) -> bytes:
        """A name already taken, or an address that cannot be bound: 409."""
        return render_error(request, 409, str(failure.value))

    @app.handle_errors(ChangeConflict)
    def lost_race(self, request: IRequest, failure: Failure) -> bytes:
        """Another balancer of the cluster changed the server first: 412, nothing changed."""
        return render_error(request, 412, str(failure.value))

    @app.handle_errors(ClusterUnavailable)
    def cluster_unavailable(self, request: IRequest, failure: Failure) -> bytes:
        """The cluster's etcd cannot take the change: 503 with C{Retry-After}."""
        request.setHeader(b"Retry-After", b"5")
        return render_error(request, 503, str(failure.value))

    @app.handle_errors(dashboard.UnknownAsset)
    def unknown_asset(self, request: IRequest, failure: Failure) -> bytes:
        """No dashboard file of that name: 404."""
        error = failure.value
        assert isinstance(error, dashboard.UnknownAsset)
        return render_error(request, 404, f'no dashboard file named "{error.args[0]}"')

    @app.handle_errors(UnknownServer)
    def unknown(self, request: IRequest, failure: Failure) -> bytes:
        """No server of that name: 404."""
        error = failure.value
        assert isinstance(error, UnknownServer)
        return render_error(request, 404, f'no server named "{error.args[0]}"')

    @app.handle_errors(BadRequest, DumpFormatError)
    def bad_request(self, request: IRequest, failure: Failure) -> bytes:
        """A body or a query parameter that cannot be used: 400."""
        return render_error(request, 400, str(failure.value))

    @app.handle_errors(BodyError)
    def bad_body(self, request: IRequest, failure: Failure) -> bytes:
        """A body that is not JSON within the API's bounds (400), or too long (413)."""
        error = failure.value
        assert isinstance(error, BodyError)
        return render_error(request, error.code, str(error))

    @app.handle_errors(Forbidden, ChangeRefused)
    def forbidden(self, request: IRequest, failure: Failure) -> bytes:
        """The account may not do this, or no account may (an exec without C{[api] allow_exec}): 403."""
        return render_error(request, 403, str(failure.value))

    @app.handle_errors(HTTPException)
    def http_error(self, request: IRequest, failure: Failure) -> bytes:
        """No such route (404), or not with this method (405, with C{Allow})."""
        error: Any = failure.value
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            request.setHeader(b"Allow", ", ".join(error.valid_methods).encode("ascii"))
        return render_error(request, error.code, str(error.name).lower())

    @app.handle_errors(Exception)
    def failed(self, request: IRequest, failure: Failure) -> bytes:
        """Anything else is a real failure: logged, and 500 without a traceback."""
        log.failure("api: {method} {path} failed", failure, method=request.method, path=request.path)
        return render_error(request, 500, "internal error")
