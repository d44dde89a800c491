"""
The errors of the control interface (L{balancer.control.interface.IControl}):
what a query or a command can fail with that the caller may have caused.
The admin API maps each to an HTTP status in its error handlers.
"""

from __future__ import annotations


class UnknownServer(KeyError):
    """No server (C{[servers.<name>]}, a /v1 service) has that name; C{args[0]} is the name."""


class ServerExists(ValueError):
    """A server of that name already exists (the message says which)."""


class ListenerError(Exception):
    """
    A server's listener cannot be set up: its address cannot be bound, or its
    TLS files cannot be loaded.  The message is the data path's, naming the
    server, the address or file, and the reason.
    """


class DumpFormatError(ValueError):
    """A dump format other than toml or json was asked for."""


class UnknownBackend(KeyError):
    """No backend (/v1 server) has that id; C{args[0]} is the id."""


class UnknownSession(KeyError):
    """No live client session has that id; C{args[0]} is the id."""


class BackendInUse(ValueError):
    """The backend cannot be removed or changed that way while services use it; the message says why."""


class NotOverridable(ValueError):
    """
    The backend's parameters are not overridden but changed: it was created
    through the API (the message says so).
    """


class LinkError(ValueError):
    """A backend cannot be linked to (or unlinked from) a service; the message says why."""


class ReloadRefused(Exception):
    """
    The configuration file cannot be loaded again: nothing changed.

    @ivar lines: one per problem, each naming the file, the key path and
        what is wrong (as C{--check} prints them).
    """

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class ChangeConflict(Exception):
    """
    Another balancer of the cluster changed the resource after the state
    this change was based on (the API answers 412); nothing was changed.
    The message names the resources.
    """


class ClusterUnavailable(Exception):
    """
    The cluster's store (etcd) cannot take the change now (the API answers
    503); the message says why and whether the change may have been applied.
    """
