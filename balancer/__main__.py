"""C{python -m balancer}: say how to start the balancer (it runs under twistd) and exit 0."""

from balancer.starting import how_to_start

print(how_to_start(), end="")
