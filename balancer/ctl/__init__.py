"""
balancerctl: the balancer's command line, as C{maxctrl} is MaxScale's.  It
talks HTTP to the admin API only (C{/v1}, and the root C{/dump}); it imports
nothing of the data plane.
"""
