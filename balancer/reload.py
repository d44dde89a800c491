"""
C{SIGHUP}: load the configuration file again (what C{ExecReload=/bin/kill
-HUP $MAINPID} of a systemd unit does), through the control interface
(L{IControl.reload<balancer.control.interface.IControl.reload>}), which logs
what changed or every problem of a file that does not validate.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python.failure import Failure

from balancer.control.errors import ReloadRefused
from balancer.control.interface import IControl
from balancer.logs import OnSignal

log = Logger()


def reload_config(control: IControl) -> None:
    """Reload the configuration file; a file that does not validate is logged (by the reload) and changes nothing."""
    control.reload().addErrback(_refused).addErrback(_failed)


def _refused(failure: Failure) -> None:
    failure.trap(ReloadRefused)


def _failed(failure: Failure) -> None:
    log.failure("reload: failed", failure)


def on_hangup(control: IControl, reactor: Any) -> IService:
    """The service, named C{reload}, that reloads the configuration file on each C{SIGHUP} while it runs."""
    service = OnSignal(signal.SIGHUP, lambda: reload_config(control), reactor)
    service.setName("reload")
    return service
