"""balancer: an L4 load balancer (TCP, TLS, UDP) on Twisted, configured like gobetween."""

__version__ = "0.1.0"
