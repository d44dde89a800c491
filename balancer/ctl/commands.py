"""
The commands of balancerctl (C{click}: nested commands as maxctrl has
them, C{--help} on each, usage errors with exit status 2, and shell
completion for free: C{eval "$(_BALANCERCTL_COMPLETE=bash_source balancerctl)"}).

Every command that changes an existing resource reads it first and sends
C{If-Match} with the C{ETag} it read (or the one given with C{--if-match},
from an earlier C{show}), so a change made meanwhile by someone else is
refused (412) instead of being overwritten.
"""

from __future__ import annotations

import re
from typing import Any, Callable, TypeVar
from urllib.parse import quote

import click

from balancer import __version__
from balancer.ctl import drain as draining
from balancer.ctl.client import ApiFailure, Client, CtlError, Response
from balancer.ctl.output import COLUMNS, Printer, collection_rows, resource_rows, text

#: The API balancerctl talks to unless told otherwise.
DEFAULT_URL = "http://127.0.0.1:8888"

#: The parameters C{alter server} changes.
ALTERABLE = ("weight", "priority", "max_connections")

#: Asks a PATCH or a creating POST for the document (RFC 7240) rather than 204.
REPRESENTATION = {"Prefer": "return=representation"}

F = TypeVar("F", bound=Callable[..., Any])


class Session:
    """
    What a command needs: the client (made, and the password asked for, on
    first use) and the printer.
    """

    def __init__(self, url: str, user: str | None, password: str | None, ca: str | None, insecure: bool,
                 client: Client | None = None) -> None:
        self.url, self.user, self.password, self.ca, self.insecure = url, user, password, ca, insecure
        self.format = "table"
        self._client = client

    @property
    def client(self) -> Client:
        """The API client; asks for the password if a user is given without one."""
        if self._client is None:
            if self.user is not None and self.password is None:
                self.password = click.prompt(f"Password for {self.user}", hide_input=True, err=True)
            self._client = Client(self.url, self.user, self.password, self.ca, self.insecure)
        return self._client

    @property
    def printer(self) -> Printer:
        """Prints in the format asked for."""
        return Printer(self.format)

    def get(self, path: str) -> Response:
        """C{GET path}."""
        return self.client.request("GET", path)

    def change(self, what: str, method: str, path: str, body: Any = None, tag: str | None = None,
               headers: dict[str, str] | None = None) -> Response:
        """
        A request that changes C{what} (named in messages), sent with
        C{If-Match: tag} when a tag is given.

        @raise CtlError: for 412, saying that someone changed it since it was read.
        """
        all_headers = dict(headers or {})
        if tag is not None:
            all_headers["If-Match"] = tag
        try:
            return self.client.request(method, path, body, all_headers)
        except ApiFailure as e:
            if e.status == 412:
                raise CtlError(f"{what} was changed since it was read (by someone else?), so nothing was done: "
                               f"{e.detail}. Read it again and retry.") from None
            raise


class Cli(click.Group):
    """The top-level group: turns every failure into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CtlError as e:
            raise click.ClickException(str(e)) from None
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as e:
            raise click.ClickException(f"unexpected failure: {e!r}") from None


#: Where C{--json}/C{--tsv} given before the command are kept until the session exists.
FORMAT = "balancerctl.format"


def _set_format(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[FORMAT] = param.name
        session = ctx.find_object(Session)
        if session is not None:
            session.format = param.name or "table"


def output_options(function: F) -> F:
    """C{--json} and C{--tsv}, on the group and on each command that prints resources."""
    function = click.option("--tsv", is_flag=True, expose_value=False, callback=_set_format,
                            help="Tab-separated values, without headings (for cut, awk).")(function)
    return click.option("--json", "json", is_flag=True, expose_value=False, callback=_set_format,
                        help="The documents as the API sent them.")(function)


def if_match_option(function: F) -> F:
    """C{--if-match TAG}: change only if the resource still has the ETag an earlier C{show} printed."""
    return click.option("--if-match", "if_match", metavar="ETAG",
                        help="Change only if the resource still has this ETag (from an earlier show); "
                             "by default the ETag of a read just before.")(function)


pass_session = click.make_pass_decorator(Session)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", default=DEFAULT_URL, show_default=True, envvar="BALANCER_URL",
              help="The admin API (env BALANCER_URL).")
@click.option("-u", "--user", envvar="BALANCER_USER", help="Login for the API (env BALANCER_USER).")
@click.option("-p", "--password", envvar="BALANCER_PASSWORD",
              help="Password (env BALANCER_PASSWORD; asked for when a user is given without one).")
@click.option("--ca", type=click.Path(dir_okay=False), help="PEM file of the certificates to trust for HTTPS.")
@click.option("--insecure", is_flag=True, help="Do not check the HTTPS certificate.")
@click.version_option(__version__, prog_name="balancerctl")
@output_options
@click.pass_context
def cli(ctx: click.Context, url: str, user: str | None, password: str | None, ca: str | None, insecure: bool) -> None:
    """balancerctl: list, inspect and change a running balancer through its admin API."""
    ctx.obj = Session(url, user, password, ca, insecure)
    ctx.obj.format = ctx.meta.get(FORMAT, "table")


def _path(*segments: str) -> str:
    return "/v1/" + "/".join(quote(s, safe=":") for s in segments)


def _collection(type_: str) -> str:
    return "/v1/users/inet" if type_ == "users" else _path(type_)


# list and show

@cli.group("list")
def list_() -> None:
    """List resources: services, servers, listeners, monitors, filters, sessions, users."""


def _lister(type_: str) -> None:
    @list_.command(type_, help=f"List the {type_}.")
    @output_options
    @pass_session
    def command(session: Session) -> None:
        response = session.get(_collection(type_))
        if session.format == "json":
            session.printer.raw(response.body)
            return
        session.printer.table(*collection_rows(type_, response.document()["data"]))


for _type in COLUMNS:
    _lister(_type)


@cli.group()
def show() -> None:
    """Show one resource: every attribute, its relationships and its ETag."""


def _shower(name: str, type_: str) -> None:
    @show.command(name, help=f"Show {name} NAME.")
    @click.argument("name")
    @output_options
    @pass_session
    def command(session: Session, name: str) -> None:
        path = f"/v1/users/inet/{quote(name, safe='')}" if type_ == "users" else _path(type_, name)
        response = session.get(path)
        if session.format == "json":
            session.printer.raw(response.body)
            return
        session.printer.table(["Key", "Value"], resource_rows(response.document()["data"], response.etag))


for _name, _type in (("service", "services"), ("server", "servers"), ("listener", "listeners"),
                     ("monitor", "monitors"), ("filter", "filters"), ("session", "sessions"), ("user", "users")):
    _shower(_name, _type)


def _process_shower(name: str, help: str) -> None:
    @show.command(name, help=help)
    @output_options
    @pass_session
    def command(session: Session) -> None:
        response = session.get(_path(name))
        if session.format == "json":
            session.printer.raw(response.body)
            return
        session.printer.table(["Key", "Value"], resource_rows(response.document()["data"], response.etag))


_process_shower("balancer", "Show the balancer process: version, pid, uptime, configuration revision.")
_process_shower("maxscale", "Show the process as MaxScale's tools see it (/v1/maxscale): version, uptime, parameters.")


@show.command("cluster")
@output_options
@pass_session
def show_cluster(session: Session) -> None:
    """Show the cluster ([cluster]): etcd, the revision applied, errors, and its members."""
    response = session.get(_path("cluster"))
    if session.format == "json":
        session.printer.raw(response.body)
        return
    data = response.document()["data"]
    members = data["attributes"].get("members", [])
    cluster = {**data, "attributes": {k: v for k, v in data["attributes"].items() if k != "members"}}
    session.printer.table(["Key", "Value"], resource_rows(cluster, response.etag))
    keys = ("instance", "address", "version", "started_at", "heartbeat", "applied_revision", "errors")
    session.printer.table([key.replace("_", " ").capitalize() for key in keys],
                          [[text(member.get(key)) for key in keys] for member in members])


# create, destroy, link, unlink

@cli.group()
def create() -> None:
    """Create a resource."""


@create.command("server")
@click.argument("name")
@click.argument("host")
@click.argument("port", type=click.IntRange(1, 65535))
@click.option("--services", "services", multiple=True, metavar="S[,S...]",
              help="Link it to these services (repeat, or comma-separated).")
@output_options
@pass_session
def create_server(session: Session, name: str, host: str, port: int, services: tuple[str, ...]) -> None:
    """Create server NAME at HOST:PORT (it serves once linked to services with static discovery)."""
    linked = [s for value in services for s in value.split(",") if s]
    data: dict[str, Any] = {"id": name, "type": "servers",
                            "attributes": {"parameters": {"address": host, "port": port}}}
    if linked:
        data["relationships"] = {"services": {"data": [{"id": s, "type": "services"} for s in linked]}}
    response = session.change(f'server "{name}"', "POST", "/v1/servers", {"data": data}, headers=REPRESENTATION)
    if session.format == "json":
        session.printer.raw(response.body)
    session.printer.message(f"Created server {name}")


@cli.group()
def destroy() -> None:
    """Destroy a resource."""


@destroy.command("server")
@click.argument("name")
@if_match_option
@pass_session
def destroy_server(session: Session, name: str, if_match: str | None) -> None:
    """Destroy server NAME (one created through the API)."""
    path = _path("servers", name)
    tag = if_match or session.get(path).etag
    session.change(f'server "{name}"', "DELETE", path, tag=tag)
    session.printer.message(f"Destroyed server {name}")


def _relink(session: Session, service: str, servers: tuple[str, ...], link: bool, if_match: str | None) -> None:
    path = _path("services", service, "relationships", "servers")
    read = session.get(path)
    current = [entry["id"] for entry in read.document()["data"]]
    if link:
        wanted = current + [s for s in dict.fromkeys(servers) if s not in current]
    else:
        missing = [s for s in servers if s not in current]
        if missing:
            raise CtlError(f'service "{service}" has no server {", ".join(missing)}')
        wanted = [s for s in current if s not in servers]
    body = {"data": [{"id": s, "type": "servers"} for s in wanted]}
    session.change(f'service "{service}"', "PATCH", path, body, tag=if_match or read.etag)
    verb = "Linked" if link else "Unlinked"
    session.printer.message(f"{verb} {', '.join(servers)} {'to' if link else 'from'} service {service}")


@cli.group()
def link() -> None:
    """Link servers to a service."""


@link.command("service")
@click.argument("service")
@click.argument("servers", nargs=-1, required=True)
@if_match_option
@pass_session
def link_service(session: Session, service: str, servers: tuple[str, ...], if_match: str | None) -> None:
    """Link SERVERS (created through the API) to SERVICE."""
    _relink(session, service, servers, True, if_match)


@cli.group()
def unlink() -> None:
    """Unlink servers from a service."""


@unlink.command("service")
@click.argument("service")
@click.argument("servers", nargs=-1, required=True)
@if_match_option
@pass_session
def unlink_service(session: Session, service: str, servers: tuple[str, ...], if_match: str | None) -> None:
    """Unlink SERVERS from SERVICE."""
    _relink(session, service, servers, False, if_match)


# set, clear, alter, drain

STATE = click.Choice(["maintenance", "drain"])


def _state(session: Session, id: str, action: str, state: str | None, if_match: str | None) -> None:
    path = _path("servers", id)
    tag = if_match or session.get(path).etag
    query = f"?state={state}" if state else ""
    session.change(f'server "{id}"', "PUT", f"{path}/{action}{query}", tag=tag)


@cli.group("set")
def set_() -> None:
    """Set an admin state."""


@set_.command("server")
@click.argument("id")
@click.argument("state", type=STATE)
@if_match_option
@pass_session
def set_server(session: Session, id: str, state: str, if_match: str | None) -> None:
    """Put server ID in maintenance (no new connections) or drain (keeps its connections, takes no new ones)."""
    _state(session, id, "set", state, if_match)
    session.printer.message(f"Server {id}: {state} set")


@cli.group()
def clear() -> None:
    """Clear an admin state."""


@clear.command("server")
@click.argument("id")
@click.argument("state", type=STATE, required=False)
@if_match_option
@pass_session
def clear_server(session: Session, id: str, state: str | None, if_match: str | None) -> None:
    """Clear server ID's maintenance or drain (either, if STATE is left out)."""
    _state(session, id, "clear", state, if_match)
    session.printer.message(f"Server {id}: {state or 'admin state'} cleared")


def parse_setting(text: str) -> tuple[str, int | None]:
    """
    One C{KEY=N} of C{alter server} (C{KEY=null} clears an override).

    @raise click.BadParameter: for another key or value (a usage error).
    """
    match = re.fullmatch(r"([a-z_]+)=(\d+|null)", text)
    if match is None or match.group(1) not in ALTERABLE:
        raise click.BadParameter(f'"{text}": expected KEY=N (or KEY=null to clear an override), '
                                 f"KEY one of {', '.join(ALTERABLE)}", param_hint="SETTINGS")
    value = match.group(2)
    return match.group(1), None if value == "null" else int(value)


@cli.group()
def alter() -> None:
    """Change a resource's parameters."""


@alter.command("server")
@click.argument("id")
@click.argument("settings", nargs=-1, required=True)
@if_match_option
@output_options
@pass_session
def alter_server(session: Session, id: str, settings: tuple[str, ...], if_match: str | None) -> None:
    """
    Set server ID's weight=N, priority=N, max_connections=N (on a server
    from discovery: overrides; KEY=null clears one).
    """
    parameters = dict(parse_setting(s) for s in settings)
    path = _path("servers", id)
    tag = if_match or session.get(path).etag
    body = {"data": {"attributes": {"parameters": parameters}}}
    response = session.change(f'server "{id}"', "PATCH", path, body, tag=tag, headers=REPRESENTATION)
    if session.format == "json":
        session.printer.raw(response.body)
    session.printer.message(f"Server {id}: " + ", ".join(f"{k}={'null' if v is None else v}"
                                                           for k, v in parameters.items()))


@cli.group()
def drain() -> None:
    """Drain a server: no new connections, and wait for those left."""


@drain.command("server")
@click.argument("id")
@click.option("--wait", is_flag=True, help="Wait until no connection is left, showing how many are.")
@click.option("--timeout", default="60s", show_default=True, metavar="DURATION",
              help="How long --wait waits (e.g. 90s, 2m, 500ms).")
@if_match_option
@pass_session
def drain_server(session: Session, id: str, wait: bool, timeout: str, if_match: str | None) -> None:
    """Set server ID to drain; with --wait, exit 0 once its connections are gone (1 on timeout)."""
    seconds = draining.parse_duration(timeout)
    _state(session, id, "set", "drain", if_match)
    if not wait:
        session.printer.message(f"Server {id}: drain set")
        return
    left = draining.wait(lambda: _connections(session, id), seconds, f"Draining {id}")
    if left:
        raise CtlError(f"server {id} still has {left} connection{'s' if left != 1 else ''} after {timeout}")
    session.printer.message(f"Server {id}: drained, no connection left")


def _connections(session: Session, id: str) -> int:
    document = session.get(_path("servers", id)).document()
    return int(document["data"]["attributes"]["statistics"]["connections"])


# kill, reload, dump

@cli.group()
def kill() -> None:
    """Close live sessions."""


@kill.command("session")
@click.argument("id")
@pass_session
def kill_session(session: Session, id: str) -> None:
    """Close session ID (both of its connections)."""
    path = _path("sessions", id)
    session.change(f"session {id}", "DELETE", path, tag=session.get(path).etag)
    session.printer.message(f"Killed session {id}")


@kill.command("sessions")
@click.option("--server", "server", required=True, help="The server whose sessions to close.")
@if_match_option
@pass_session
def kill_sessions(session: Session, server: str, if_match: str | None) -> None:
    """Close every session of a server, in every worker process."""
    path = _path("servers", server)
    tag = if_match or session.get(path).etag
    session.change(f'server "{server}"', "DELETE", f"{path}/sessions", tag=tag)
    session.printer.message(f"Killed the sessions of server {server}")


@cli.command()
@output_options
@pass_session
def reload(session: Session) -> None:
    """Load the configuration file again (as SIGHUP does) and say what changed."""
    response = session.change("the balancer", "POST", "/v1/balancer/reload")
    if session.format == "json":
        session.printer.raw(response.body)
        return
    meta = response.document().get("meta", {})
    session.printer.message(str(meta.get("summary", "reloaded")))


@cli.command()
@click.option("--format", "format_", type=click.Choice(["toml", "json"]), default="toml", show_default=True,
              help="TOML, as the configuration file, or JSON.")
@pass_session
def dump(session: Session, format_: str) -> None:
    """Print the effective configuration (admin accounts)."""
    session.printer.raw(session.get(f"/dump?format={format_}").body)


def main() -> None:
    """The C{balancerctl} console script."""
    cli(prog_name="balancerctl")

