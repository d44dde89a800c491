"""
The data plane's optional compiled part (L{balancer.proxy.compiled}): which
build is used, and the argument checks of its functions.  What its loops do
is tested where the Python loops are, on both (C{tests/support/loops.py}).
"""

from __future__ import annotations

import os
import select
import socket
from typing import Any

from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from balancer.proxy import compiled
from balancer.proxy.engine import splice
from tests.support.loops import use_loop


class Unslotted:
    """A class with none of a relay socket's slots."""


class FindTests(SynchronousTestCase):
    """Which build of the extension the data plane uses."""

    def test_turnedOffByTheEnvironment(self) -> None:
        """C{BALANCER_COMPILED=0} makes the data plane run its Python loops, built or not."""
        self.patch(os, "environ", {**os.environ, "BALANCER_COMPILED": "0"})
        self.assertIsNone(compiled.find_compiled())

    def test_aBuildOfOtherSourcesIsNotUsed(self) -> None:
        """
        An extension built from other sources than this code (another
        interface number, or a relay socket without the slots it reads) is
        not used: the data plane runs its Python loops, and a warning says why.
        """
        use_loop(self, compiled_loop=True)
        import balancer_cdispatch

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.patch(compiled, "COMPILED_INTERFACE", balancer_cdispatch.INTERFACE + 1)
        self.assertIsNone(compiled.find_compiled())
        self.patch(compiled, "COMPILED_INTERFACE", balancer_cdispatch.INTERFACE)
        self.assertIs(compiled.find_compiled(), balancer_cdispatch)
        self.patch(splice, "SplicedTransport", Unslotted)
        self.assertIsNone(compiled.find_compiled())
        reasons = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(reasons), 2, reasons)
        self.assertIn(f"(interface {balancer_cdispatch.INTERFACE}, not {balancer_cdispatch.INTERFACE + 1})", reasons[0])
        self.assertIn("(Unslotted._peer is not a slot): the data plane runs its Python loops; reinstall the package",
                      reasons[1])


class BindingTests(SynchronousTestCase):
    """
    The extension reads the slots of one class, the relay socket's, bound
    once: Python code a dispatch calls cannot change the offsets it uses.
    """

    def setUp(self) -> None:
        use_loop(self, compiled_loop=True)
        found = compiled.find_compiled()
        assert found is not None
        self.module = found

    def test_anotherClassWithTheSlotsIsRefused(self) -> None:
        same_names = type("SameNames", (), {"__slots__": splice.SplicedTransport.__slots__})
        error = self.assertRaises(TypeError, self.module.check, same_names)
        self.assertEqual(str(error), "balancer_cdispatch reads the slots of SplicedTransport, not of SameNames")
        epoll = select.epoll()
        self.addCleanup(epoll.close)
        error = self.assertRaises(TypeError, self.module.dispatch, None, epoll.fileno(), {}, {}, {}, set(), same_names)
        self.assertEqual(str(error), "balancer_cdispatch reads the slots of SplicedTransport, not of SameNames")
        self.module.check(splice.SplicedTransport)

    def test_aBuildWithOtherSizesIsNotUsed(self) -> None:
        """The copy size and the reads per event of the build are the engine's, or the build is not used."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for name in ("COPY_SIZE", "READS_PER_EVENT"):
            value = getattr(splice, name)
            self.patch(splice, name, value * 2)
            self.assertIsNone(compiled.find_compiled())
            self.patch(splice, name, value)
            self.assertIs(compiled.find_compiled(), self.module)
        reasons = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(reasons), 2, reasons)
        self.assertIn(f"(COPY_SIZE {splice.COPY_SIZE}, not {splice.COPY_SIZE * 2})", reasons[0])
        self.assertIn(f"(READS_PER_EVENT {splice.READS_PER_EVENT}, not {splice.READS_PER_EVENT * 2})", reasons[1])


class ReadLinksArgumentTests(SynchronousTestCase):
    """C{read_links}' checks of what it is given (its caller is L{balancer.proxy.udp_links.LinkPoller})."""

    def setUp(self) -> None:
        use_loop(self, compiled_loop=True)
        found = compiled.find_compiled()
        assert found is not None
        self.read_links = found.read_links
        self.epoll = select.epoll()
        self.addCleanup(self.epoll.close)

    def test_wrongArgumentsAreTypeErrorsNamingThem(self) -> None:
        error = self.assertRaises(TypeError, self.read_links, self.epoll.fileno(), {})
        self.assertIn("takes 4 arguments", str(error))
        for arguments in ((self.epoll.fileno(), [], 1, print), (self.epoll.fileno(), {}, 0, print),
                          (self.epoll.fileno(), {}, 1, None), (-1, {}, 1, print)):
            error = self.assertRaises(TypeError, self.read_links, *arguments)
            self.assertEqual(
                str(error), "read_links() takes a descriptor, a dict, a positive number of events and a callable")

    def test_aLinkNotASocketAndSessionIsATypeError(self) -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        self.epoll.register(a.fileno(), select.EPOLLIN)
        b.send(b"x")
        error = self.assertRaises(TypeError, self.read_links, self.epoll.fileno(), {a.fileno(): [a, None]}, 1, print)
        self.assertEqual(str(error), "a link is not a (socket, session) tuple")

    def test_nothingReadyIsZero(self) -> None:
        self.assertEqual(self.read_links(self.epoll.fileno(), {}, 1, print), 0)
