"""
How to start the balancer, for C{python -m balancer} and for C{twistd
balancer} without C{--config}: the commands, and where the example
configurations shipped with the package are (C{balancer/examples/}, which
is C{etc/} of the source tree).
"""

from __future__ import annotations

import os

from balancer import __version__

#: The directory of the example configurations (and the systemd unit).
EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples")


def how_to_start() -> str:
    """The lines C{python -m balancer} prints: the twistd commands and the examples' place."""
    example = os.path.join(EXAMPLES, "balancer.toml")
    return f"""\
balancer {__version__}: an L4 load balancer (TCP, TLS, UDP), run by twistd.

  twistd -n balancer --config=FILE             in the foreground (systemd, Docker)
  twistd --pidfile=PID --logfile=LOG balancer --config=FILE
                                               as a daemon
  twistd balancer --check --config=FILE        check a configuration and exit
  twistd -n balancer --config=FILE --demo      also start demo backends
  kill -USR1 PID                               reopen the log file (after logrotate)

Example configurations: {EXAMPLES}
Try: twistd -n balancer --config={example} --demo
"""


def no_config_given() -> str:
    """The line C{twistd balancer} prints when C{--config} is missing."""
    example = os.path.join(EXAMPLES, "balancer.toml")
    return (f"balancer: no --config given; example configurations are in {EXAMPLES} "
            f"(try: twistd -n balancer --config={example} --demo)")
