"""C{python -m balancer.ctl}: the same as the C{balancerctl} script."""

from balancer.ctl.commands import main

main()
