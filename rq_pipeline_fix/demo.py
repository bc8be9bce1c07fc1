"""``rq-pipeline-fix demo``: the scenario of RQ issue #2211, run for real, without and with the guard.

One pipeline takes a command of the caller's (which makes even the latest RQ fail, D2), one
``enqueue_call`` per queue (the issue's code; D1 on RQ < 2.3) and a job depending on a job
enqueued earlier in the same pipeline (D3). Every key the demo writes contains ``KEY_MARK``;
it deletes exactly those, before and after, so it is safe to point at a shared Redis.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, TextIO

import redis
from rq import Queue
from rq.job import Job

import rq_pipeline_fix

from .server import RedisServerNotFound, redact_url, remove_marked, running_redis_server

KEY_MARK = "rq-pipeline-fix-demo"
QUEUE_NAMES = ("high", "default", "low")
COUNTER = f"{KEY_MARK}:calls"

SCENARIO = """\
    with connection.pipeline() as pipe:
        pipe.incr(counter)                             # a command of the caller's first
        for name in ("high", "default", "low"):        # the code of RQ issue #2211
            Queue(name).enqueue_call(say, args=(name,), pipeline=pipe)
        Queue("low").enqueue_call(say, depends_on=high_job, pipeline=pipe)
        pipe.execute()"""


def say(text: str) -> str:
    """The demo's job function: importable, so a worker could run the jobs the demo leaves."""
    return text


@dataclass(frozen=True)
class Landed:
    queue: str
    job_id: str
    status: str
    waits_for: str


def queue_name(name: str) -> str:
    return f"{KEY_MARK}-{name}"


def job_id(label: str) -> str:
    return f"{KEY_MARK}-job-{label}"


JOB_IDS = [job_id(label) for label in (*QUEUE_NAMES, "child")]


def enqueue_scenario(connection: redis.Redis) -> None:
    """The scenario itself; raises whatever RQ raises."""
    queues = {name: Queue(queue_name(name), connection=connection) for name in QUEUE_NAMES}
    with connection.pipeline() as pipe:
        pipe.incr(COUNTER)
        jobs = [
            queues[name].enqueue_call(say, args=(name,), job_id=job_id(name), pipeline=pipe)
            for name in QUEUE_NAMES
        ]
        queues["low"].enqueue_call(
            say, args=("child",), depends_on=jobs[0], job_id=job_id("child"), pipeline=pipe
        )
        pipe.execute()


def landed(connection: redis.Redis) -> Iterator[Landed]:
    """The demo's jobs that are in Redis, queue by queue: queued ones, then deferred ones."""
    for name in QUEUE_NAMES:
        queue = Queue(queue_name(name), connection=connection)
        for identifier in [*queue.job_ids, *queue.deferred_job_registry.get_job_ids()]:
            job = Job.fetch(identifier, connection=connection)
            status = job.get_status()
            yield Landed(
                queue.name,
                identifier,
                str(getattr(status, "value", status)),
                ", ".join(job._dependency_ids),
            )


def nothing_landed(connection: redis.Redis) -> bool:
    return not any(connection.exists(Job.key_for(identifier)) for identifier in JOB_IDS) and not any(
        key for key in _demo_keys(connection)
    )


def _demo_keys(connection: redis.Redis) -> Iterator[Any]:
    return connection.scan_iter(match=f"*{KEY_MARK}*", count=1000)


def clean_up(connection: redis.Redis) -> None:
    """Delete every key the demo wrote, and its queues from RQ's set of queues; nothing else."""
    remove_marked(connection, KEY_MARK, Queue.redis_queues_keys)


def run(url: str | None = None, out: TextIO = sys.stdout) -> int:
    """Show the scenario failing without the guard and landing with it. 0: it did."""
    try:
        with running_redis_server(url) as redis_url:
            started_here = not (url or os.environ.get("REDIS_URL"))
            where = f"{redact_url(redis_url)} ({'started for this demo' if started_here else 'REDIS_URL'})"
            connection = redis.Redis.from_url(redis_url)
            try:
                clean_up(connection)
                return _show(connection, where, functools.partial(print, file=out))
            finally:
                clean_up(connection)
                connection.close()
    except RedisServerNotFound as exc:
        print(f"rq-pipeline-fix demo: {exc}", file=sys.stderr)
        return 1


def _show(connection: redis.Redis, where: str, echo: Callable[..., None]) -> int:
    status = rq_pipeline_fix.status()
    echo(f"rq {status.rq_version}, redis-py {status.redis_version}, Redis at {where}")
    echo("\nOne pipeline, several queues, a caller's command and a dependent job:")
    echo(SCENARIO)

    rq_pipeline_fix.revert()
    echo("\n1) guard off (RQ as installed):")
    error = _attempt(connection)
    echo(f"   failed: {error}" if error else "   it worked: this RQ has no defect in this scenario")
    if error and nothing_landed(connection):
        echo("   Redis after: no job, no queue entry, counter unset (nothing landed)")
    clean_up(connection)

    status = rq_pipeline_fix.apply()
    echo(f"\n2) guard on ({status.note}):")
    error = _attempt(connection)
    if error:
        echo(f"   failed: {error}")
        return 1
    rows = list(landed(connection))
    echo("   execute() succeeded, one transaction; in Redis now:")
    queue_width = max(len(row.queue) for row in rows) if rows else 0
    id_width = max(len(row.job_id) for row in rows) if rows else 0
    for row in rows:
        waits = f"  (until {row.waits_for} finishes)" if row.status == "deferred" else ""
        echo(f"     {row.queue.ljust(queue_width)}  {row.job_id.ljust(id_width)}  {row.status}{waits}")
    counter = connection.get(COUNTER)
    echo(f"     {COUNTER} = {int(counter) if counter is not None else 'unset'}")
    if len(rows) == len(JOB_IDS) and counter == b"1":
        echo("\nResult: fails without the guard, lands atomically with it.")
        return 0
    echo("\nResult: NOT as expected: the guarded run did not leave every job and the counter in Redis.")
    return 1


def _attempt(connection: redis.Redis) -> str | None:
    """The scenario's error, as the user would see it; None when it went through."""
    try:
        enqueue_scenario(connection)
    except Exception as exc:  # shown, whatever it is: that is the point of the demo
        return f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    return None
