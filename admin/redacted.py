"""
The balancer as a read-only (C{basic}) account sees it: the same
L{IControl}, with every secret (L{balancer.config.secrets}) shown as
C{"********"}.

The routes of such an account are given this control instead of the real
one, so whatever they build from server definitions or the configuration
(documents, C{ETag}s, C{filter} matches) never holds a secret: an C{ETag} or
a filter cannot be used to guess one.  The live services L{IControl.server}
hands out are not redacted: routes read only their state, statistics and
non-secret settings from them, and definitions through L{server_definition}.
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from balancer.config.schema import Config
from balancer.config.secrets import CONFIG_SECRETS, SERVER_SECRETS, redact
from balancer.control import IControl, dump_config


@implementer(IControl)
class RedactedControl:
    """L{IControl} with secrets redacted; everything not about definitions is the wrapped control's."""

    def __init__(self, control: IControl) -> None:
        self._control = control

    def __getattr__(self, name: str) -> Any:
        """Every other method of L{IControl}: the wrapped control's."""
        return getattr(self._control, name)

    def server_definition(self, name: str) -> dict[str, Any]:
        """The server's definition with its secrets redacted."""
        definition: dict[str, Any] = redact(self._control.server_definition(name), SERVER_SECRETS)
        return definition

    def effective_config(self) -> Config:
        """The configuration with every secret (servers' and C{[api]}'s) redacted."""
        config: Config = redact(self._control.effective_config(), CONFIG_SECRETS)
        return config

    def dump(self, format: str) -> str:
        """The redacted configuration as "toml" or "json" (the routes keep C{/dump} for admins in any case)."""
        return dump_config(self.effective_config(), format)
