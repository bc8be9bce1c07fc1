"""The producers of the concurrency test, runnable in a thread or as a process of their own
(``python -m tests.workload URL PRODUCER BATCHES CHAIN SEED`` prints its counts as JSON).

A producer enqueues ``BATCHES`` batches, one after the other, each one ``Redis.transaction(fn)``
through one shared pipeline: a chain of ``CHAIN`` jobs across random queues (see
``Plan.parents``), hanging off a job of the producer's previous batch, which workers are
running meanwhile. That parent may finish between the guard's check and EXEC: the batch then
aborts with WatchError and ``transaction()`` runs it again.
The batches take three shapes, so that every pipeline state the guard knows is crossed:

- ``command-first``: the caller's own INCR buffered first (D2, D3);
- ``watching``: ``transaction()`` WATCHes the producer's counter, which the batch reads in
  immediate mode before its first enqueue (RQ's own dependency path), then the guard's;
- ``enqueue-many``: the first job by ``enqueue_call``, the rest of the chain by one
  ``enqueue_many`` with ``depends_on`` (D4, D5) into one queue.

Every job is ``tests.jobs.record(job_id)``: the list ``executed`` says what ran, in what order.
"""

from __future__ import annotations

import functools
import inspect
import json
import random
import sys
import time
from dataclasses import dataclass
from typing import Any

import rq_pipeline_fix  # noqa: F401  (the guard, before rq is imported)

QUEUES = ("conc-a", "conc-b", "conc-c")
SHAPES = ("command-first", "watching", "enqueue-many")
MAX_PAUSE = 0.05  # seconds between a batch's last enqueue and its EXEC
PACE = 2.0  # seconds a producer waits at most for the workers to reach its previous batch


@dataclass(frozen=True)
class Plan:
    """What one producer enqueues: enough for the test to know every job id and dependency."""

    producer: str
    batches: int
    chain: int

    def job_id(self, batch: int, position: int) -> str:
        return f"{self.producer}-b{batch}-j{position}"

    def job_ids(self) -> list[str]:
        return [self.job_id(b, k) for b in range(self.batches) for k in range(self.chain)]

    def parents(self, batch: int, position: int) -> list[str]:
        """Each job depends on the one before it in its chain; a chain's first job on the first
        job of the previous batch, which workers are likely running while this batch is built;
        a chain's last job on that one too (two parents: one in the batch, one in Redis)."""
        earlier = [self.job_id(batch - 1, 0)] if batch > 0 else []
        if position == 0:
            return earlier
        before = [self.job_id(batch, position - 1)]
        return before + earlier if position == self.chain - 1 else before

    def edges(self) -> list[tuple[str, str]]:
        """(child, parent) for every dependency."""
        return [
            (self.job_id(b, k), parent)
            for b in range(self.batches)
            for k in range(self.chain)
            for parent in self.parents(b, k)
        ]


def produce(client: Any, plan: Plan, seed: int) -> dict[str, int]:
    """Enqueue the plan's batches; returns how many batches, jobs and attempts it took."""
    from rq import Queue

    rng = random.Random(seed)
    attempts: list[int] = []
    shapes = usable_shapes()
    for batch in range(plan.batches):
        if batch > 0:
            keep_pace(client, plan.job_id(batch - 1, 0))
        shape = shapes[batch % len(shapes)]
        queues = [Queue(rng.choice(QUEUES), connection=client) for _ in range(plan.chain)]
        pause = rng.uniform(0, MAX_PAUSE)
        watches = (counter_key(plan),) if shape == "watching" else ()
        attempt = functools.partial(enqueue_batch, plan, batch, shape, queues, pause, attempts)
        client.transaction(attempt, *watches)
    return {"batches": plan.batches, "jobs": plan.batches * plan.chain, "attempts": len(attempts)}


def keep_pace(client: Any, parent: str) -> None:
    """Wait (up to PACE seconds) until workers have picked up the previous batch's first job, the
    parent this batch's first job depends on: the batch is then built while that parent runs,
    and the race with its end happens often, however far the workers lag behind."""
    from rq.job import Job

    deadline = time.monotonic() + PACE
    while time.monotonic() < deadline:
        status = client.hget(Job.key_for(parent), "status")
        if status in (b"started", b"finished", b"failed"):
            return
        time.sleep(0.002)


def counter_key(plan: Plan) -> str:
    return f"{plan.producer}:batches"


def usable_shapes() -> tuple[str, ...]:
    """enqueue_many takes depends_on from RQ 1.15 on: before, its shape is left out."""
    from rq import Queue

    return SHAPES if "depends_on" in inspect.signature(Queue.prepare_data).parameters else SHAPES[:2]


def enqueue_batch(
    plan: Plan, batch: int, shape: str, queues: list[Any], pause: float, attempts: list[int], pipe: Any
) -> None:
    """One attempt at one batch, through ``pipe``; ``transaction()`` executes it."""
    from rq import Queue

    from tests.jobs import record

    attempts.append(batch)
    ids = [plan.job_id(batch, k) for k in range(plan.chain)]

    def enqueue(k: int) -> None:
        parents = plan.parents(batch, k) or None
        queues[k].enqueue_call(record, args=(ids[k],), job_id=ids[k], depends_on=parents, pipeline=pipe)

    if shape == "command-first":
        pipe.incr(counter_key(plan))
        for k in range(plan.chain):
            enqueue(k)
    elif shape == "watching":
        pipe.get(counter_key(plan))  # immediate mode: the caller reads what it WATCHes
        for k in range(plan.chain):
            enqueue(k)
        pipe.incr(counter_key(plan))  # buffered: the first enqueue switched the pipeline to MULTI
    else:
        enqueue(0)
        parents: list[list[Any]] = [list(plan.parents(batch, k)) for k in range(plan.chain)]
        rest = [
            Queue.prepare_data(record, args=(ids[k],), job_id=ids[k], depends_on=parents[k])
            for k in range(1, plan.chain)
        ]
        queues[-1].enqueue_many(rest, pipeline=pipe)
        pipe.incr(counter_key(plan))
    # The caller does other work before EXEC: the window in which a worker finishes the parent
    # the guard found unfinished, so that the race (WatchError, retry) happens, not only in theory.
    time.sleep(pause)


def main(argv: list[str]) -> int:
    import redis

    url, producer, batches, chain, seed = argv
    client = redis.Redis.from_url(url)
    counts = produce(client, Plan(producer, int(batches), int(chain)), int(seed))
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def enqueue_chain_after_a_command(queue_names: list[str]) -> int:
    """A job for a real worker: says which process runs it (a work horse is a fork of the worker),
    then enqueues through one shared pipeline, after a command of its own, a chain across
    ``queue_names`` (each job depending on the one before: the guard's dependency path)."""
    import os

    from rq import Queue, get_current_job

    from tests.jobs import record

    job = get_current_job()
    assert job is not None
    connection = job.connection
    connection.hset("work-horse", mapping={"pid": os.getpid(), "ppid": os.getppid()})
    with connection.pipeline() as pipe:
        pipe.incr("chains")
        previous = None
        for name in queue_names:
            label = f"chain-{name}"
            queue = Queue(name, connection=connection)
            previous = queue.enqueue_call(
                record, args=(label,), job_id=label, depends_on=previous, pipeline=pipe
            )
        pipe.execute()
    return len(queue_names)
