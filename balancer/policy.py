"""
What a change made at runtime (through the admin API, or later from a
shared store) may do, whoever asks: the checks every such change of a
server's definition passes before anything is applied.  Configuration files
are not checked here: who writes them already runs commands as the balancer.

A runtime change may not start a command (discovery or health check of
kind C{exec}), nor make an C{lxd} discovery write files to a directory of
its choice (C{lxd_config_directory} with C{lxd_generate_client_certs} or
C{lxd_accept_server_cert}), unless C{[api] allow_exec = true}.
"""

from __future__ import annotations

import attrs

from balancer.config.schema import ApiConfig, ServerConfig


class ChangeRefused(Exception):
    """A runtime change the policy does not allow; the message says which key and how to allow it."""


@attrs.frozen
class ChangePolicy:
    """
    What runtime changes may do.

    @ivar allow_exec: whether they may set a discovery or a health check of kind C{exec}.
    """

    allow_exec: bool = False

    @classmethod
    def of(cls, api: ApiConfig) -> ChangePolicy:
        """The policy C{[api]} sets (C{allow_exec})."""
        return cls(allow_exec=api.allow_exec)


def check_server_change(name: str, new: ServerConfig, old: ServerConfig | None, policy: ChangePolicy) -> None:
    """
    Refuse a runtime change of server C{name} from C{old} (None for a new
    server) to C{new} that C{policy} does not allow.

    A discovery or health check of kind C{exec} is "set" when C{new} runs a
    command C{old} did not (another kind before, another C{exec_command}, or
    no server): a change that keeps the command a server already runs (from
    its file, say) and changes something else is allowed.

    @raise ChangeRefused: naming the server and the section.
    """
    if policy.allow_exec:
        return
    for section in ("discovery", "healthcheck"):
        part = getattr(new, section)
        before = getattr(old, section) if old is not None else None
        if part.kind != "exec":
            continue
        if before is None or (before.kind, before.exec_command) != (part.kind, part.exec_command):
            raise ChangeRefused(
                f'server "{name}": {section} kind "exec" runs a command on the balancer\'s host; '
                "changes at runtime may set it only with [api] allow_exec = true "
                "(a configuration file may always set it)"
            )
    directory = _written_directory(new)
    if directory is not None and directory != (_written_directory(old) if old is not None else None):
        raise ChangeRefused(
            f'server "{name}": discovery kind "lxd" writes certificates to lxd_config_directory '
            f'{repr(directory) if directory else "(~/.config/lxc)"} on the balancer\'s host; changes at runtime may '
            "set that only with [api] allow_exec = true "
            "(a configuration file may always set it)"
        )


def _written_directory(config: ServerConfig) -> str | None:
    """The directory an C{lxd} discovery of C{config} writes files to (its certificates), or None."""
    discovery = config.discovery
    if discovery.kind != "lxd" or not (discovery.lxd_generate_client_certs or discovery.lxd_accept_server_cert):
        return None
    return discovery.lxd_config_directory
