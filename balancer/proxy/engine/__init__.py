"""
The relay engine (docs/architecture.md): plain TCP relays whose sockets are
accepted, connected and spliced without Twisted's transports, on Linux.

L{engine<balancer.proxy.engine.engine>} is the edge-triggered epoll set
nested in the reactor; L{sockets<balancer.proxy.engine.sockets>} listens and
connects on it; L{splice<balancer.proxy.engine.splice>} moves a relay's
bytes from socket to socket in the kernel, through pipes from a
L{pipes<balancer.proxy.engine.pipes>} pool the engine owns;
L{deadlines<balancer.proxy.engine.deadlines>} times its connects out and
L{throttled<balancer.proxy.engine.throttled>} keeps its warnings of running
out of descriptors to one a minute.
"""
