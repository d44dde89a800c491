"""
Several balancers sharing their runtime changes through etcd (C{[cluster]}).

L{balancer.cluster.store} declares what the rest of the balancer needs of a
key-value store (L{IKeyValueStore}); L{balancer.cluster.etcd} implements it
over etcd's v3 JSON gateway.
"""
