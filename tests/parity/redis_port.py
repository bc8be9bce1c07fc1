"""Send redis-py's connections to localhost:6379 to the parity run's server instead.

RQ's tests connect to localhost:6379: with ``Redis()``, and with URLs such as
``redis://127.0.0.1:6379/4`` that they also hand to ``rq`` commands and workers in child
processes. The parity run never touches a server on 6379 (another one may be there): every
redis-py ``Connection`` made for a loopback host on port 6379 gets the run's port instead. Pools
and clients keep saying 6379, as upstream's tests expect; only the socket goes elsewhere.
"""

from __future__ import annotations

import functools
from typing import Any

UPSTREAM_PORT = 6379
LOOPBACK = ("localhost", "127.0.0.1", "::1")


def redirect_upstream_port_to(port: int) -> None:
    """Make every redis-py Connection to a loopback host on 6379 connect to ``port``."""
    import redis
    import redis.connection

    connection_class = redis.connection.Connection
    original: Any = connection_class.__init__
    if getattr(original, "parity_redirect_to", None) is not None:
        return  # already done (sitecustomize, then the pytest plugin)

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if str(getattr(self, "host", "")) in LOOPBACK and int(getattr(self, "port", 0)) == UPSTREAM_PORT:
            self.port = port

    __init__.parity_redirect_to = port  # type: ignore[attr-defined]
    connection_class.__init__ = __init__  # type: ignore[method-assign]
    made: Any = redis.Redis().connection_pool.make_connection()
    actual = made.port
    if actual != port:
        raise RuntimeError(f"parity: Redis() still connects to port {actual}, not {port}")
