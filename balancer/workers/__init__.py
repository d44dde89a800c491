"""
Worker processes (C{[defaults] workers = N}): the supervisor that worker 0
(the twistd process) runs (L{balancer.workers.supervisor}), and the main
of every other worker (L{balancer.workers.child}, run as
C{python -m balancer.workers.child INDEX}).
"""
