"""The twistd plugin: C{twistd -n balancer --config=etc/balancer.toml}."""

from twisted.application.service import ServiceMaker

balancer = ServiceMaker(
    "balancer",
    "balancer.tap",
    "An L4 load balancer for TCP, TLS and UDP, configured like gobetween",
    "balancer",
)
