"""
balancer: an L4 load balancer (TCP, TLS, UDP) on Twisted, configured like
gobetween.  Its layers, and the life of a connection and of an API change,
are described in docs/architecture.md.
"""

__version__ = "0.1.0"
