"""The balancer process as C{GET /} and C{/v1/balancer} show it: pid, version, times, configuration."""

from __future__ import annotations

import os

from twisted.internet.interfaces import IReactorTime

from balancer import __version__
from balancer.control.views import ProcessInfo


class Process:
    """
    This process: its start time on the balancer's clock and its configuration file.

    @ivar started_at: when the control layer was made (the balancer's start), in epoch seconds.
    """

    def __init__(self, clock: IReactorTime, config_path: str) -> None:
        self._clock = clock
        self._config_path = config_path
        self.started_at = clock.seconds()

    def info(self, revision: int) -> ProcessInfo:
        """The process now, at configuration revision C{revision}."""
        return ProcessInfo(
            pid=os.getpid(),
            version=__version__,
            started_at=self.started_at,
            time=self._clock.seconds(),
            config_path=os.path.abspath(self._config_path),
            revision=revision,
        )
