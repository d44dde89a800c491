"""
The control layer: the one seam between the admin APIs and the running
balancer (docs/architecture.md).

 - L{balancer.control.interface}: L{IControl}, the queries and commands;
 - L{balancer.control.errors}: what they fail with;
 - L{balancer.control.views}: the frozen views queries answer with;
 - L{balancer.control.controller}: L{Controller}, the implementation;
 - L{balancer.control.running}: the only module that touches the running servers;
 - L{balancer.control.index}: the /v1 backend index built from the views;
 - L{balancer.control.catalogue}: the backends created through /v1 and their links;
 - L{balancer.control.changelog}: the runtime changes, their revision and times of change;
 - L{balancer.control.writers}: how those reach C{[state] path}, off the reactor thread;
 - L{balancer.control.sums}: statistics summed over the worker processes;
 - L{balancer.control.process}: the process facts of C{GET /};
 - L{balancer.control.effective}: the configuration at start (file, then state);
 - L{balancer.control.dump}: C{GET /dump}'s TOML and JSON.
"""
