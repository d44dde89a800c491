"""
Logging as C{[logging]} says: C{level}, C{output} (stdout, stderr or a file)
and C{format} (text or json), as a C{twisted.logger} observer.
"""

from __future__ import annotations

import sys
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

from balancer.config.schema import LoggingConfig

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
}


def open_output(output: str) -> IO[str]:
    """The stream C{output} names: C{stdout}, C{stderr}, or a file opened for appending."""
    if output == "stdout":
        return sys.stdout
    if output == "stderr":
        return sys.stderr
    return open(output, "a", encoding="utf-8", buffering=1)


def log_observer(config: LoggingConfig, stream: IO[str]) -> ILogObserver:
    """An observer writing events at C{config.level} or above to C{stream} in C{config.format}."""
    writer = jsonFileLogObserver(stream) if config.format == "json" else textFileLogObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[config.level])
    return FilteringLogObserver(writer, [predicate])
