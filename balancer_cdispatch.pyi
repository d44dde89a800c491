# The data plane's compiled loops (balancer/proxy/engine/cdispatch.c), an optional build: see balancer.proxy.compiled.
from typing import Any, Callable

INTERFACE: int
COPY_SIZE: int
READS_PER_EVENT: int

def dispatch(
    engine: Any, epoll_fd: int, readers: dict[int, Any], writers: dict[int, Any], unseen: dict[int, int],
    gone: set[int], plain_type: type, /,
) -> None: ...
def read_links(epoll_fd: int, links: dict[int, tuple[Any, Any]], max_events: int, failed: Callable[[Any], None], /) -> int: ...
def check(plain_type: type, /) -> None: ...
