"""
ACME certificates for the C{acme_hosts} of C{[servers.X.tls]}, per C{[acme]}.

 - L{balancer.acme.cache}: the certificates and the account key in
   C{cache_dir}, in the files gobetween (Go's C{autocert}) writes.
 - L{balancer.acme.certificates}: what the TLS listeners ask, by server
   name: the current certificate, or the TLS-ALPN-01 challenge one.
 - L{balancer.acme.ordering}: one order with the C{acme} library (blocking,
   run in a thread).
 - L{balancer.acme.http01}: the C{http_bind} listener answering HTTP-01.
 - L{balancer.acme.service}: when to order, renew and retry.
"""
