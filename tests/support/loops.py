"""
The data plane's two kinds of loops: the compiled ones (the extension of
L{balancer.proxy.compiled}, where it is built: the relay engine's dispatch
and the UDP sessions' read loop) and the same loops in Python.  A test
that must hold on each picks one before it makes an engine or a UDP proxy
(a balancer makes them when it starts).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from balancer.proxy import compiled, udp_links
from balancer.proxy.engine import engine
from tests.support.tools import unavailable


def use_loop(case: SynchronousTestCase, compiled_loop: bool) -> None:
    """
    Engines and UDP proxies made during C{case} run the compiled loops if
    C{compiled_loop}, else the Python loops.  Where the compiled loops are
    not built, a test that asks for them skips (fails with C{CI=true}).
    """
    if not compiled_loop:
        case.patch(engine, "compiled_dispatch", None)
        case.patch(udp_links, "compiled_read_links", None)
        return
    found = compiled.find_compiled()
    if found is None:
        unavailable(
            "needs balancer_cdispatch, the compiled loops (pip install . builds them where a C compiler "
            "and Python's headers are at hand), or BALANCER_COMPILED=0 turned them off"
        )
    case.patch(engine, "compiled_dispatch", found.dispatch)
    case.patch(udp_links, "compiled_read_links", found.read_links)
