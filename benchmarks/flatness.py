"""Item 4 without the machine's noise: instructions per job of the dependency pattern (every other
job depends on the one just before it, all in one shared pipeline) at two batch sizes, counted
by callgrind. Flat means the larger batch costs the same per job; timed runs on a shared machine
can only say that within their spread. Garbage collection is on: its share grows with the heap,
and that belongs in the answer. Only the enqueues are counted (the pipeline is reset, never
executed), so this is our dependency handling plus RQ's, not redis-py's ``execute()``.

    python -m benchmarks.flatness [SMALL LARGE]     # default 1000 8000; 2-3 minutes

Not part of ``python -m benchmarks`` (it would double item 4's time); it starts its own
throwaway redis-server. Child: ``python -m benchmarks.flatness --child URL JOBS``.
"""

from __future__ import annotations

import sys
from typing import Any

from . import callgrind

WARM_UP = 200


def count(url: str, jobs: int) -> int:
    """Instructions of one batch of ``jobs`` enqueues, counted in a child under callgrind."""
    return callgrind.count_in_child("benchmarks.flatness", url, str(jobs))


def _child(url: str, jobs: int) -> None:
    import functools

    import rq_pipeline_fix  # before rq, as at a user's start-up

    from .workload import connect, enqueue_dependency_pattern, queues

    client = connect(url)
    targets = queues(client, 10)
    assert rq_pipeline_fix.status().active, rq_pipeline_fix.status().note

    def batch(_: Any, size: int) -> None:
        pipe = client.pipeline()
        enqueue_dependency_pattern(pipe, targets, size)
        pipe.reset()

    batch(None, WARM_UP)
    functools.reduce(batch, [jobs], None)  # the only code callgrind counts
    client.flushdb()


def main(argv: list[str]) -> None:
    small, large = (int(value) for value in argv) if argv else (1000, 8000)
    with callgrind.throwaway_redis() as url:
        per_job = {size: count(url, size) / size for size in (small, large)}
    for size, instructions in per_job.items():
        print(f"{size:>7} jobs: {instructions:,.0f} instructions per job")
    print(f"largest / smallest: {per_job[large] / per_job[small]:.3f}x")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2], int(sys.argv[3]))
    else:
        main(sys.argv[1:])
