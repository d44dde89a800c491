"""
The relay engine's two dispatch loops: the compiled one
(L{balancer.proxy.engine.engine.compiled_dispatch}, where it is built) and
the same loop in Python.  A test that must hold on each picks one before it
makes an engine (a balancer makes its engine when it starts).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from balancer.proxy.engine import engine
from tests.support.tools import unavailable


def use_loop(case: SynchronousTestCase, compiled: bool) -> None:
    """
    Engines made during C{case} run the compiled loop if C{compiled}, else
    the Python loop.  Where the compiled loop is not built, a test that
    asks for it skips (fails with C{CI=true}).
    """
    if not compiled:
        case.patch(engine, "compiled_dispatch", None)
        return
    found = engine.find_compiled_dispatch()
    if found is None:
        unavailable(
            "needs balancer_cdispatch, the compiled dispatch loop (pip install . builds it where a C compiler "
            "and Python's headers are at hand), or BALANCER_COMPILED=0 turned it off"
        )
    case.patch(engine, "compiled_dispatch", found)
