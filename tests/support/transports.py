"""The types of the transports that test protocols write to."""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport


class ITCPStream(ITCPTransport, IConsumer, IPushProducer):
    """
    What a Twisted TCP transport is to its protocol: an L{ITCPTransport}
    (half-close, abort) that is also a consumer and a push producer, so a
    protocol can pause its reading and join it to another transport.
    """
