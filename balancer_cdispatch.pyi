# The compiled dispatch loop of the relay engine (balancer/proxy/engine/cdispatch.c), an optional build.
from typing import Any

INTERFACE: int

def dispatch(
    engine: Any, epoll_fd: int, readers: dict[int, Any], writers: dict[int, Any], unseen: dict[int, int],
    gone: set[int], plain_type: type, /,
) -> None: ...
def check(plain_type: type, /) -> None: ...
