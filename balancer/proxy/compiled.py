"""
The data plane's optional compiled part: the extension C{balancer_cdispatch},
built from C{balancer/proxy/engine/cdispatch.c} when the package is
installed with a C compiler and Python's headers at hand.  It holds the
relay engine's dispatch loop (L{balancer.proxy.engine.engine}) and the
read loop of UDP sessions' sockets (L{balancer.proxy.udp_links}); where it
is missing, both run the same loops in Python.
"""

from __future__ import annotations

import os
from types import ModuleType

from twisted.logger import Logger

from balancer.proxy.engine import splice

log = Logger()

#: The interface of C{balancer_cdispatch} this code expects (its C{INTERFACE}).
COMPILED_INTERFACE = 3


def find_compiled() -> ModuleType | None:
    """
    The extension, or C{None}: not built, turned off with
    C{BALANCER_COMPILED=0} in the environment, or built from other sources
    than this code's (another interface, another copy size or number of
    reads per event than the engine's, or a relay socket without the slots
    it reads: a warning says so).
    """
    if os.environ.get("BALANCER_COMPILED", "1") == "0":
        return None
    try:
        import balancer_cdispatch
    except ImportError:
        return None
    try:
        if balancer_cdispatch.INTERFACE != COMPILED_INTERFACE:
            raise TypeError(f"interface {balancer_cdispatch.INTERFACE}, not {COMPILED_INTERFACE}")
        for name in ("COPY_SIZE", "READS_PER_EVENT"):
            if getattr(balancer_cdispatch, name) != getattr(splice, name):
                raise TypeError(f"{name} {getattr(balancer_cdispatch, name)}, not {getattr(splice, name)}")
        balancer_cdispatch.check(splice.SplicedTransport)
    except (AttributeError, TypeError) as error:
        log.warn(
            "{module} does not fit this code ({error}): the data plane runs its Python loops; reinstall the package",
            module=balancer_cdispatch.__file__, error=str(error),
        )
        return None
    return balancer_cdispatch


#: The extension the data plane uses, or C{None}.
compiled = find_compiled()
