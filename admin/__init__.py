"""
The admin REST API: one Klein application behind a C{twisted.cred} guard,
on the balancer's reactor (docs/DESIGN.md §7).

It sees and changes the balancer only through L{balancer.control.interface.IControl};
nothing under C{balancer/} imports this package except the twistd edge
(C{balancer.tap}).  The path of a request from socket to route is in
docs/architecture.md.
"""
