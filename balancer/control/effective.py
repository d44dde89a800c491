"""The configuration the balancer starts with: the configuration file, then the state file's changes on top."""

from __future__ import annotations

import re

from balancer.config.errors import ConfigError, Problem
from balancer.config.fields import NAME_PATTERN, NAME_RULE, join
from balancer.config.schema import Config
from balancer.control.catalogue import backend_parameters, parameters_of
from balancer.state import RuntimeChanges, StateFile


def load_effective(config: Config, source: str) -> tuple[Config, RuntimeChanges]:
    """
    The configuration file with the state file's changes applied on top (a
    cluster member: the file alone, and the changes).

    @raise ConfigError: the state file is unreadable or a recorded server no longer validates.
    """
    if config.state is None:
        return config, RuntimeChanges()
    state = StateFile(config.state.path)
    changes = state.load()
    problems = []
    for name, record in changes.backends.items():
        try:
            if not re.fullmatch(NAME_PATTERN, name):
                raise ConfigError(state.path, [Problem(join("backends", name), NAME_RULE)])
            checked = backend_parameters(name, parameters_of(record))
        except ConfigError as e:
            problems += e.problems
            continue
        services = record.get("services", [])
        if not all(isinstance(s, str) for s in services):
            problems.append(Problem(join(join("backends", name), "services"), "expected a list of service names"))
        changes.backends[name] = {**checked, "services": list(services)}
    if problems:
        raise ConfigError(state.path, problems)
    if config.cluster is not None:
        # The state file is a cluster member's copy of the shared state: the
        # servers it defines are applied once started, each refused alone
        # (balancer.cluster.startup), so they are not checked here.
        return config, changes
    return changes.apply(config, state.path), changes
