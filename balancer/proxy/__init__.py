"""
The relays: TCP (L{balancer.proxy.tcp}), TLS (L{balancer.proxy.tls_relay}),
SNI routing (L{balancer.proxy.sni}) and UDP (L{balancer.proxy.udp}), which
know their listener only as L{balancer.proxy.listener.IListener} and the
network only through an L{balancer.proxy.datapath.IDataPath}: Twisted's
(L{balancer.proxy.twisted_path}) or the relay engine's
(L{balancer.proxy.engine}).  See docs/architecture.md.
"""
