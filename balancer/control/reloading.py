"""
Reloading the configuration file (C{SIGHUP}, C{POST /v1/balancer/reload}):
what differs between the running servers and the file with the runtime
changes on top, the files servers read at start (certificates), and the
one line and the document that say what a reload did.

The control layer (L{balancer.control.controller}) reads and checks the
file, then applies what L{server_changes} finds the way the API applies
changes, one server at a time.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import attrs

from balancer.config.schema import LISTENER_KEYS, Config, ServerConfig

#: The sections a reload does not apply (the process runs with those it started with).
RESTART_SECTIONS = ("logging", "api", "metrics", "state", "acme", "cluster")
#: The C{[defaults]} keys that belong to the process, not to its servers.
PROCESS_DEFAULTS = ("workers", "splice", "shutdown_grace", "udp_max_sessions")

#: A file's identity and version: path, device, inode, size, modification time (None if it cannot be read).
FileVersion = tuple[str, "tuple[int, int, int, int] | None"]


@attrs.frozen
class ServerChanges:
    """What turns one set of servers into another, by name."""

    removed: list[str]
    updated: dict[str, ServerConfig]
    added: dict[str, ServerConfig]


def server_changes(old: Mapping[str, ServerConfig], new: Mapping[str, ServerConfig]) -> ServerChanges:
    """
    The servers of C{old} not in C{new}, those whose definition differs, and
    those only in C{new}, each in the order of the mapping they come from.
    """
    return ServerChanges(
        removed=[name for name in old if name not in new],
        updated={name: server for name, server in new.items() if name in old and old[name] != server},
        added={name: server for name, server in new.items() if name not in old},
    )


def listener_changes(old: ServerConfig, new: ServerConfig) -> list[str]:
    """The L{LISTENER_KEYS} whose value differs between C{old} and C{new}, in that order."""
    return [key for key in LISTENER_KEYS if getattr(old, key) != getattr(new, key)]


def named_files(config: ServerConfig) -> list[str]:
    """The files a server reads when it starts: C{[tls]} and C{[backends_tls]} certificates, keys and CA files."""
    paths: list[str | None] = []
    if config.tls is not None:
        paths += [config.tls.cert_path, config.tls.key_path]
    if config.backends_tls is not None:
        tls = config.backends_tls
        paths += [tls.root_ca_cert_path, tls.cert_path, tls.key_path]
    return [path for path in paths if path]


def file_versions(config: ServerConfig) -> tuple[FileVersion, ...]:
    """
    The version of each file C{config} names (L{named_files}): a changed
    file under the same path has another version.
    """
    versions: list[FileVersion] = []
    for path in named_files(config):
        try:
            st = os.stat(path)
        except OSError:
            versions.append((path, None))
            continue
        versions.append((path, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)))
    return tuple(versions)


def sections_needing_restart(running: Config, configured: Config) -> list[str]:
    """
    The sections (and C{[defaults]} keys) of C{configured} that differ from
    those the process runs with and that a reload does not apply.
    """
    changed = [f"[{name}]" for name in RESTART_SECTIONS if getattr(running, name) != getattr(configured, name)]
    changed += [
        f"[defaults] {key}" for key in PROCESS_DEFAULTS
        if getattr(running.defaults, key) != getattr(configured.defaults, key)
    ]
    return changed


@attrs.define
class ReloadReport:
    """
    What a reload did.

    @ivar added: servers added, in order.
    @ivar removed: servers removed.
    @ivar changed: servers changed, each with a note: C{None} for a change
        in place (live relays kept), else what happened to its listener.
    @ivar refused: servers whose change could not be applied, each with
        the reason (the server runs as before).
    @ivar restart: sections that changed in the file but apply at the next start.
    """

    added: list[str] = attrs.Factory(list)
    removed: list[str] = attrs.Factory(list)
    changed: dict[str, str | None] = attrs.Factory(dict)
    refused: dict[str, str] = attrs.Factory(dict)
    restart: list[str] = attrs.Factory(list)

    @property
    def applied(self) -> bool:
        """Whether any server changed."""
        return bool(self.added or self.removed or self.changed)

    def line(self, what: str = "reload") -> str:
        """
        The log line: C{reload: servers added a, b; removed c; changed d
        (new listener), e}, then what was refused and what waits for a
        restart; C{reload: no change} when nothing differs.

        @param what: what applied the changes, the line's first word.
        """
        parts = []
        if self.added:
            parts.append("added " + ", ".join(self.added))
        if self.removed:
            parts.append("removed " + ", ".join(self.removed))
        if self.changed:
            parts.append("changed " + ", ".join(
                name if note is None else f"{name} ({note})" for name, note in self.changed.items()
            ))
        text = f"{what}: " + ("servers " + "; ".join(parts) if parts else "no change")
        if self.refused:
            text += "; refused " + "; ".join(f"{name}: {reason}" for name, reason in self.refused.items())
        if self.restart:
            text += "; at the next start: " + ", ".join(self.restart)
        return text

    def document(self) -> dict[str, Any]:
        """The same as a JSON object (the C{meta} of the API's answer)."""
        return {
            "summary": self.line(),
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": [{"name": name, "listener": note} for name, note in self.changed.items()],
            "refused": [{"name": name, "detail": reason} for name, reason in self.refused.items()],
            "restart_needed": list(self.restart),
        }
