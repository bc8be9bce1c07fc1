"""The batches being timed: ways of putting N jobs on Q queues, each returning its wall time.

Each function flushes the database first (untimed), so every batch writes into the same empty
Redis. Jobs are ``noop(i)`` calls; no worker ever runs them.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from typing import Any

QUEUE_NAMES = tuple(f"bench-{index}" for index in range(10))


def noop(*args: Any) -> None:
    """The job function: only its import path and arguments matter here."""


class CountingConnectionMixin:
    """Counts ``send_packed_command`` calls: each one is a write to the socket that RQ or we
    wait on, i.e. one round trip (a pipeline's ``execute()`` is one, however long)."""

    sends = 0

    def send_packed_command(self, *args: Any, **kwargs: Any) -> Any:
        CountingConnectionMixin.sends += 1
        return super().send_packed_command(*args, **kwargs)  # type: ignore[misc]


PARSERS = ("python", "hiredis")


def hiredis_installed() -> bool:
    import redis.utils

    return bool(getattr(redis.utils, "HIREDIS_AVAILABLE", False))


def _pure_python_protocol() -> dict[str, Any]:
    """Connection options that keep redis-py's own Python parser and command packer where hiredis
    is installed (redis-py then uses it for both): what a default install of RQ runs."""
    if not hiredis_installed():
        return {}
    from redis._parsers import Encoder, _RESP2Parser
    from redis.connection import PythonRespSerializer

    encoder = Encoder(encoding="utf-8", encoding_errors="strict", decode_responses=False)  # type: ignore[no-untyped-call]
    encode = encoder.encode
    return {"parser_class": _RESP2Parser, "command_packer": PythonRespSerializer(6000, encode)}


def connect(url: str, counting: bool = False, parser: str = "python") -> Any:
    """A client on ``url`` with its connection already open (the handshake is never timed).
    ``parser``: "python" (redis-py's own, the default install) or "hiredis" (redis-py's C parser
    and packer, ``pip install redis[hiredis]``)."""
    import redis

    options: dict[str, Any] = {"socket_timeout": 300}  # the slowest batches outlast redis-py's 5 s default
    if parser == "python":
        options.update(_pure_python_protocol())
    elif not hiredis_installed():
        raise RuntimeError("hiredis is not installed")
    if counting:
        options["connection_class"] = type(
            "CountingConnection", (CountingConnectionMixin, redis.Connection), {}
        )
    client = redis.Redis(connection_pool=redis.ConnectionPool.from_url(url, **options))
    client.ping()
    return client


def queues(client: Any, count: int) -> list[Any]:
    from rq import Queue

    return [Queue(name, connection=client) for name in QUEUE_NAMES[:count]]


def one_enqueue_per_job(client: Any, jobs: int, queue_count: int) -> float:
    """(a) ``enqueue`` without a pipeline: RQ runs its own transactions, several round trips a job."""
    targets = queues(client, queue_count)
    client.flushdb()
    start = time.perf_counter()
    for index in range(jobs):
        targets[index % queue_count].enqueue(noop, index)
    return time.perf_counter() - start


def enqueue_many_per_queue(client: Any, jobs: int, queue_count: int) -> float:
    """(b) one ``enqueue_many`` per queue, each RQ's own pipeline."""
    from rq import Queue

    targets = queues(client, queue_count)
    client.flushdb()
    start = time.perf_counter()
    for offset, queue in enumerate(targets):
        queue.enqueue_many([Queue.prepare_data(noop, (index,)) for index in range(offset, jobs, queue_count)])
    return time.perf_counter() - start


def shared_pipeline(client: Any, jobs: int, queue_count: int) -> float:
    """(c)/(d) every job ``enqueue_call``-ed into one caller's pipeline, one ``execute()``."""
    targets = queues(client, queue_count)
    client.flushdb()
    start = time.perf_counter()
    pipe = client.pipeline()
    for index in range(jobs):
        targets[index % queue_count].enqueue_call(noop, args=(index,), pipeline=pipe)
    pipe.execute()
    return time.perf_counter() - start


# The job hash fields RQ writes empty for a job that has not run.
_EMPTY_FIELDS = dict.fromkeys(
    ("success_callback_name", "failure_callback_name", "stopped_callback_name", "started_at", "ended_at",
     "last_heartbeat", "worker_name", "group_id"),
    "",
)  # fmt: skip


def raw_pipeline(client: Any, jobs: int, queue_count: int) -> float:
    """(e) the floor: redis-py alone writing what RQ writes per job (the job hash with RQ's
    fields, RPUSH onto the queue, SADD to the set of queues), ids and timestamps included."""
    client.flushdb()
    names = QUEUE_NAMES[:queue_count]
    data = b"x" * 70  # about the size of RQ's compressed pickle of noop(i)
    start = time.perf_counter()
    pipe = client.pipeline()
    for index in range(jobs):
        name = names[index % queue_count]
        job_id = str(uuid.uuid4())
        stamp = datetime.now(timezone.utc).isoformat()
        fields = {**_EMPTY_FIELDS, "created_at": stamp, "data": data, "origin": name, "timeout": 180,
                  "description": f"noop({index})", "enqueued_at": stamp, "status": "queued"}  # fmt: skip
        pipe.hset(f"rq:job:{job_id}", mapping=fields)
        pipe.rpush(f"rq:queue:{name}", job_id)
        pipe.sadd("rq:queues", f"rq:queue:{name}")
    pipe.execute()
    return time.perf_counter() - start


def fresh_pipeline_per_enqueue(client: Any, jobs: int) -> tuple[float, float]:
    """One ``enqueue_call`` per fresh pipeline, executed at once: the only way the original
    ``setup_dependencies`` of a defective release (D1) can be driven through a caller's pipeline.
    Returns wall-clock and this process's CPU seconds (the guard adds CPU only; the CPU clock
    does not count time spent waiting for a core that other work on the machine holds)."""
    (queue,) = queues(client, 1)
    client.flushdb()
    start, start_cpu = time.perf_counter(), time.process_time()
    for index in range(jobs):
        pipe = client.pipeline()
        queue.enqueue_call(noop, args=(index,), pipeline=pipe)
        pipe.execute()
    return time.perf_counter() - start, time.process_time() - start_cpu


def enqueues_into_shared_pipeline(client: Any, jobs: int) -> tuple[float, float]:
    """Only the ``enqueue_call`` loop into one pipeline (no I/O); its ``execute()`` is not timed.
    Returns wall-clock and CPU seconds."""
    (queue,) = queues(client, 1)
    client.flushdb()
    pipe = client.pipeline()
    start, start_cpu = time.perf_counter(), time.process_time()
    for index in range(jobs):
        queue.enqueue_call(noop, args=(index,), pipeline=pipe)
    elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    pipe.execute()
    return elapsed, elapsed_cpu


def enqueue_dependency_pattern(pipe: Any, targets: list[Any], jobs: int) -> list[Any]:
    """Into ``pipe``: every other job depends on the one just before it, which is only buffered
    in the same pipeline, so it is DEFERRED; jobs rotate over ``targets``."""
    created: list[Any] = []
    previous = None
    for index in range(jobs):
        depends_on = previous if index % 2 else None
        previous = targets[index % len(targets)].enqueue_call(
            noop, args=(index,), depends_on=depends_on, pipeline=pipe
        )
        created.append(previous)
    return created


def dependent_enqueues(client: Any, jobs: int, queue_count: int) -> tuple[float, float]:
    """The dependency pattern, ``enqueue_call`` by ``enqueue_call``, in one caller's pipeline.
    Returns the seconds spent enqueueing (our dependency checks included) and in ``execute()``."""
    targets = queues(client, queue_count)
    client.flushdb()
    start = time.perf_counter()
    pipe = client.pipeline()
    enqueue_dependency_pattern(pipe, targets, jobs)
    enqueued = time.perf_counter()
    pipe.execute()
    return enqueued - start, time.perf_counter() - enqueued


def dependent_enqueue_many(client: Any, jobs: int) -> tuple[float, float]:
    """The same pattern as one ``enqueue_many`` on one queue into the caller's pipeline."""
    from rq import Queue

    (queue,) = queues(client, 1)
    client.flushdb()
    ids = [str(uuid.uuid4()) for _ in range(jobs)]
    start = time.perf_counter()
    pipe = client.pipeline()
    data = [
        Queue.prepare_data(
            noop, (index,), job_id=ids[index], depends_on=ids[index - 1] if index % 2 else None
        )
        for index in range(jobs)
    ]
    queue.enqueue_many(data, pipeline=pipe)
    enqueued = time.perf_counter()
    pipe.execute()
    return enqueued - start, time.perf_counter() - enqueued


def deferred_and_queued(client: Any, queue_count: int) -> tuple[int, int]:
    """How many jobs ended up DEFERRED and how many queued, over the benchmark's queues."""
    names = QUEUE_NAMES[:queue_count]
    deferred = sum(client.zcard(f"rq:deferred:{name}") for name in names)
    queued = sum(client.llen(f"rq:queue:{name}") for name in names)
    return deferred, queued
