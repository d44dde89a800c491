"""
The balancer as a read-only (C{basic}) account sees it: the same
L{IControl}, with every secret (L{balancer.config.secrets}) shown as
C{"********"}.

The routes of such an account are given this control instead of the real
one, so whatever they build from server definitions or the configuration
(documents, C{ETag}s, C{filter} matches) never holds a secret: an C{ETag} or
a filter cannot be used to guess one.  Service views come with their
definition and configuration redacted too.
"""

from __future__ import annotations

from typing import Any

import attrs
from zope.interface import implementer

from balancer.config.schema import Config
from balancer.config.secrets import CONFIG_SECRETS, SERVER_SECRETS, redact
from balancer.control.dump import dump_config
from balancer.control.interface import IControl
from balancer.control.views import ServiceView


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

    def service(self, name: str) -> ServiceView:
        """The server's view with its definition and configuration redacted."""
        return _redacted(self._control.service(name))

    def services(self) -> list[ServiceView]:
        """Every server's view, redacted."""
        return [_redacted(view) for view in self._control.services()]

    def effective_config(self) -> Config:
        """The configuration with every secret (servers' and C{[api]}'s) redacted."""
        config: Config = redact(self._control.effective_config(), CONFIG_SECRETS)
        return config

    def dump(self, format: str) -> str:
        """The redacted configuration as "toml" or "json" (the routes keep C{/dump} for admins in any case)."""
        return dump_config(self.effective_config(), format)


def _redacted(view: ServiceView) -> ServiceView:
    """C{view} with the secrets of its definition and configuration redacted."""
    return attrs.evolve(view, config=redact(view.config, SERVER_SECRETS), definition=redact(view.definition, SERVER_SECRETS))
