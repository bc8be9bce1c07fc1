"""Property: any sequence of operations sent through one shared pipeline leaves Redis exactly as
the same operations run one by one without a pipeline (each executed at once).

A sequence (drawn by hypothesis) mixes the caller's own commands (INCR, RPUSH on two keys),
enqueue / enqueue_call with and without dependencies (on jobs earlier in the sequence, and on
jobs already in Redis: finished, failed, queued), ``enqueue_many`` with and without
``depends_on``, and ``enqueue_at``, across three queues, with explicit job ids; the pipeline may
WATCH a key first (then it reads it in immediate mode and, if its first operation is a command,
calls ``multi()`` as a caller would) and may be ``transaction=False``. Both runs start from the
same database; the final databases are compared key by key (``tests.snapshot``): job hashes
(status, origin, dependencies, which fields), queue lists in order, deferred and scheduled
registries, dependents/dependencies sets, the caller's keys, and which keys expire.

What is the same by construction, and so not an allowance: a parent enqueued earlier in the
same batch is unfinished in both runs (buffered in one, queued or deferred in the other), so its
children are deferred in both; ``enqueue_at`` puts the job in the scheduled registry in both.

``Dependency(allow_failure=True)`` is drawn on every RQ that has it: on RQ < 3.0 a single
enqueue ignores it for a failed parent (fixed upstream in 3.0), and the guard gives the installed
release's answer in every pipeline state, so both runs agree there too.
"""

from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Union, cast

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rq import Queue, SimpleWorker

try:
    from rq.job import Dependency
except ImportError:  # RQ < 1.11: no allow_failure to draw
    Dependency = None  # type: ignore[assignment,misc]

import rq_pipeline_fix
from tests.jobs import fail, record
from tests.snapshot import snapshot

pytestmark = pytest.mark.reliability

QUEUES = ("qa", "qb", "qc")
COUNTERS = ("counter-0", "counter-1")  # INCR
LOGS = ("log-0", "log-1")  # RPUSH
IN_REDIS = ("pre-finished", "pre-failed", "pre-queued")  # parents already in Redis
NEVER = "never-enqueued"
WHEN = datetime(2100, 1, 1, tzinfo=timezone.utc)
DEFAULT_EXAMPLES = 25
STRESS_EXAMPLES = 1000


# --- the operations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    name: str  # "incr" or "rpush"
    key: str


@dataclass(frozen=True)
class Enqueue:
    job_id: str
    queue: str
    parents: tuple[str, ...] = ()
    allow_failure: bool = False
    at_front: bool = False
    call: bool = False  # enqueue_call rather than enqueue


@dataclass(frozen=True)
class EnqueueMany:
    queue: str
    jobs: tuple[tuple[str, tuple[str, ...]], ...]  # (job id, parents)


@dataclass(frozen=True)
class EnqueueAt:
    job_id: str
    queue: str


Operation = Union[Command, Enqueue, EnqueueMany, EnqueueAt]


@dataclass(frozen=True)
class Program:
    operations: tuple[Operation, ...]
    watch: bool = False
    transaction: bool = True
    notes: tuple[str, ...] = field(default=(), compare=False)


ENQUEUE_MANY_TAKES_DEPENDS_ON = "depends_on" in inspect.signature(Queue.prepare_data).parameters


def depends_on(parents: tuple[str, ...], allow_failure: bool) -> Any:
    if not parents:
        return None
    return Dependency(jobs=list(parents), allow_failure=True) if allow_failure else list(parents)


def run(client: redis.Redis, operation: Operation, pipe: Any) -> None:
    """One operation, through ``pipe`` (None: RQ's own pipelines, executed at once)."""
    if isinstance(operation, Command):
        target = client if pipe is None else pipe
        if operation.name == "incr":
            target.incr(operation.key)
        else:
            target.rpush(operation.key, "x")
        return
    queue = Queue(operation.queue, connection=client)
    if isinstance(operation, Enqueue):
        dependency = depends_on(operation.parents, operation.allow_failure)
        options = {"job_id": operation.job_id, "depends_on": dependency, "at_front": operation.at_front}
        if operation.call:
            queue.enqueue_call(record, args=(operation.job_id,), pipeline=pipe, **options)
        else:
            queue.enqueue(record, operation.job_id, pipeline=pipe, **options)
    elif isinstance(operation, EnqueueMany):
        datas = [
            Queue.prepare_data(
                record, args=(job_id,), job_id=job_id, **({"depends_on": list(parents)} if parents else {})
            )
            for job_id, parents in operation.jobs
        ]
        queue.enqueue_many(datas, pipeline=pipe)
    else:
        queue.enqueue_at(WHEN, record, operation.job_id, job_id=operation.job_id, pipeline=pipe)


def run_shared(client: redis.Redis, program: Program) -> None:
    pipe: Any = client.pipeline(transaction=program.transaction)
    try:
        first_is_command = bool(program.operations) and isinstance(program.operations[0], Command)
        if program.watch:
            pipe.watch(COUNTERS[0])
            pipe.get(COUNTERS[0])  # immediate mode: the caller reads what it WATCHes
            if first_is_command:
                pipe.multi()  # as a caller does before its own writes
        for operation in program.operations:
            run(client, operation, pipe)
        pipe.execute()
    finally:
        pipe.reset()


def run_one_by_one(client: redis.Redis, program: Program) -> None:
    for operation in program.operations:
        run(client, operation, None)


# --- drawing programs ---------------------------------------------------------------------------


@st.composite
def programs(draw: st.DrawFn) -> Program:
    operations: list[Operation] = []
    known: list[str] = list(IN_REDIS)
    counter = 0

    def new_id() -> str:
        nonlocal counter
        counter += 1
        return f"j{counter}"

    def parents(pool: list[str]) -> tuple[str, ...]:
        # Also a job never enqueued, and one enqueued later in the sequence: both are missing
        # from Redis when the child is checked, which RQ counts as met.
        later = [f"j{counter + step}" for step in (2, 3)]
        return tuple(draw(st.lists(st.sampled_from([*pool, NEVER, *later]), unique=True, max_size=2)))

    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        kind = draw(st.sampled_from(["command", "enqueue", "enqueue", "enqueue_many", "enqueue_at"]))
        queue = draw(st.sampled_from(QUEUES))
        if kind == "command":
            name = draw(st.sampled_from(["incr", "rpush"]))
            operations.append(Command(name, draw(st.sampled_from(COUNTERS if name == "incr" else LOGS))))
        elif kind == "enqueue":
            job_parents = parents(known)
            allow_failure = bool(job_parents) and Dependency is not None and draw(st.booleans())
            job_id = new_id()
            operations.append(
                Enqueue(job_id, queue, job_parents, allow_failure, draw(st.booleans()), draw(st.booleans()))
            )
            known.append(job_id)
        elif kind == "enqueue_many":
            jobs: list[tuple[str, tuple[str, ...]]] = []
            for _ in range(draw(st.integers(min_value=1, max_value=3))):
                job_id = new_id()
                # may name an earlier job of this same call; enqueue_many takes depends_on from RQ 1.15 on
                jobs.append((job_id, parents(known) if ENQUEUE_MANY_TAKES_DEPENDS_ON else ()))
                known.append(job_id)
            operations.append(EnqueueMany(queue, tuple(jobs)))
        else:
            job_id = new_id()
            operations.append(EnqueueAt(job_id, queue))
            known.append(job_id)
    return Program(tuple(operations), watch=draw(st.booleans()), transaction=draw(st.booleans()))


# --- the database both runs start from ----------------------------------------------------------


def seed_dump(client: redis.Redis) -> list[tuple[bytes, int, bytes]]:
    """Jobs already in Redis, made by a real worker once: finished, failed, queued; dumped so
    that every run starts from byte-identical state."""
    client.flushdb()
    pre = Queue("pre", connection=client)
    pre.enqueue_call(record, args=("pre-finished",), job_id="pre-finished")
    pre.enqueue_call(fail, args=("pre-failed",), job_id="pre-failed")
    SimpleWorker([pre], connection=client).work(burst=True)
    pre.enqueue_call(record, args=("pre-queued",), job_id="pre-queued")
    everything = cast("list[bytes]", client.keys("*"))
    keys = [key for key in everything if not key.startswith(b"rq:worker")]  # the worker's own
    dump = [(key, int(client.pttl(key)), client.dump(key)) for key in keys]
    client.flushdb()
    return [(key, ttl, value) for key, ttl, value in dump if value is not None]


def restore(client: redis.Redis, dump: list[tuple[bytes, int, bytes]]) -> None:
    client.flushdb()
    for key, ttl, value in dump:
        client.restore(key, max(ttl, 0), value)


def outcome(client: redis.Redis, dump: list[tuple[bytes, int, bytes]], program: Program, shared: bool) -> Any:
    restore(client, dump)
    (run_shared if shared else run_one_by_one)(client, program)
    return snapshot(client)


def features(program: Program) -> set[str]:
    """What a program exercises, for the summary line: that the draw covers what matters."""
    found = {"watch"} if program.watch else set()
    if not program.transaction:
        found.add("transaction=False")
    enqueued: set[str] = set()
    for operation in program.operations:
        if isinstance(operation, Command):
            found.add("caller command")
            continue
        if isinstance(operation, EnqueueAt):
            found.add("enqueue_at")
            enqueued.add(operation.job_id)
            continue
        jobs = (
            operation.jobs if isinstance(operation, EnqueueMany) else ((operation.job_id, operation.parents),)
        )
        for job_id, parents in jobs:
            if any(parent in enqueued for parent in parents):
                found.add("parent in the batch")
            if any(parent in IN_REDIS for parent in parents):
                found.add("parent in Redis")
            if parents and isinstance(operation, EnqueueMany):
                found.add("enqueue_many with depends_on")
            enqueued.add(job_id)
    return found


def test_shared_pipeline_matches_one_by_one(redis_url: str, stress: bool, record_property: Any) -> None:
    client = redis.Redis.from_url(redis_url)
    dump = seed_dump(client)
    examples = STRESS_EXAMPLES if stress else DEFAULT_EXAMPLES

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,  # nothing written into the repository
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,
    )
    @given(program=programs())
    def check(program: Program) -> None:
        assert rq_pipeline_fix.status().active
        seen.update(features(program) | {"examples"})
        one_by_one = outcome(client, dump, program, shared=False)
        shared = outcome(client, dump, program, shared=True)
        assert shared == one_by_one

    seen: Counter[str] = Counter()
    try:
        check()
    finally:
        client.flushdb()
        client.close()
    record_property("hypothesis", dict(seen))
    print("\nproperty:", ", ".join(f"{name}: {count}" for name, count in sorted(seen.items())))
