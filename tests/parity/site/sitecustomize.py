"""Every Python a parity run starts (it is on their PYTHONPATH): RQ's tests start workers and the
``rq`` command in child interpreters, which connect with ``Redis()``; point them at the run's
server too (see redis_port.py). Outside a parity run (no RQ_PARITY_REDIS_PORT) it does nothing."""

import os
import sys

if os.environ.get("RQ_PARITY_REDIS_PORT"):
    try:
        from redis_port import redirect_upstream_port_to

        redirect_upstream_port_to(int(os.environ["RQ_PARITY_REDIS_PORT"]))
    except Exception as error:  # say so: a child on port 6379 would fail in a confusing way
        print(f"parity sitecustomize: {error!r}", file=sys.stderr)
