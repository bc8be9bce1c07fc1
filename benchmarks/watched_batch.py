"""The guard's cost per batch on the WATCHed dependent path, without the machine's noise: the
instructions of one whole batch (a caller's command, an enqueue, then children of parents that are
already in Redis, so the guard WATCHes and reads them on the pipeline's connection, then the
caller's ``execute()``), counted by callgrind and averaged over many batches. Only the client
process is counted (user space: redis-py, RQ, the guard), not the server.

    python -m benchmarks.watched_batch [BATCHES CHILDREN]     # default 200 10; under a minute

Not part of ``python -m benchmarks``; it starts its own throwaway redis-server.
Child: ``python -m benchmarks.watched_batch --child URL BATCHES CHILDREN``.
"""

from __future__ import annotations

import sys
from typing import Any

from . import callgrind

WARM_UP = 20


def count(url: str, batches: int, children: int) -> int:
    """Instructions of ``batches`` batches, counted in a child under callgrind."""
    return callgrind.count_in_child("benchmarks.watched_batch", url, str(batches), str(children))


def _child(url: str, batches: int, children: int) -> None:
    import functools

    import rq_pipeline_fix  # before rq, as at a user's start-up

    from .workload import connect, noop, queues

    client = connect(url)
    client.flushdb()
    first, second = queues(client, 2)
    parents = [first.enqueue(noop, job_id=f"parent-{index}") for index in range(2)]  # queued, never run
    assert rq_pipeline_fix.status().active, rq_pipeline_fix.status().note

    def batch(_: Any, number: int) -> None:
        with client.pipeline() as pipe:
            pipe.incr("batches")
            first.enqueue_call(noop, pipeline=pipe)  # the pipeline is in MULTI from here
            for index in range(children):  # the guard WATCHes and reads both parents once
                second.enqueue_call(noop, depends_on=parents[index % 2], pipeline=pipe)
            pipe.execute()

    for number in range(WARM_UP):
        batch(None, number)
    functools.reduce(batch, range(batches), None)  # the only code callgrind counts
    client.flushdb()


def main(argv: list[str]) -> None:
    batches, children = (int(value) for value in argv) if argv else (200, 10)
    with callgrind.throwaway_redis() as url:
        per_batch = count(url, batches, children) / batches
    print(f"{per_batch:,.0f} instructions per batch ({children} dependent jobs on 2 parents in Redis)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main(sys.argv[1:])
