"""A queue with ``is_async=False`` given a caller's pipeline (D11): RQ runs the job at the call,
through the queue's connection, after buffering the job's QUEUED state in the caller's pipeline,
whose ``execute()`` then writes it over the outcome. The job cannot wait for the caller's EXEC
(it has run); with the guard, the outcome is what stays. Each test checks the final state."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import pytest
import redis
from packaging.version import Version
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus

import rq_pipeline_fix
from tests.conftest import detected
from tests.jobs import fail, record
from tests.snapshot import snapshot

RQ_VERSION = Version(rq_pipeline_fix.status().rq_version or "0")
# RQ 1.12 keeps no return value for a job a sync queue runs, with or without a pipeline.
RESULT_KEPT = RQ_VERSION.release[:2] != (1, 12)

Enqueue = Callable[[Queue, Any], Any]
ENQUEUES: dict[str, Enqueue] = {
    "enqueue": lambda q, pipe: q.enqueue(record, "s", job_id="s", pipeline=pipe),
    "enqueue_call": lambda q, pipe: q.enqueue_call(record, args=("s",), job_id="s", pipeline=pipe),
    "enqueue_job": lambda q, pipe: q.enqueue_job(
        q.create_job(record, args=("s",), job_id="s"), pipeline=pipe
    ),
    "enqueue_many": lambda q, pipe: q.enqueue_many(
        [Queue.prepare_data(record, ("s",), job_id="s")], pipeline=pipe
    ),
}
if "unique" in inspect.signature(Queue.enqueue_job).parameters:  # RQ 2.8 on
    ENQUEUES["enqueue unique"] = lambda q, pipe: q.enqueue(
        record, "s", job_id="s", unique=True, pipeline=pipe
    )

PIPELINES: dict[str, Callable[[redis.Redis], Any]] = {
    "fresh": lambda connection: connection.pipeline(),
    "multi": lambda connection: _with(connection.pipeline(), "multi"),
    "holding-a-command": lambda connection: _with(connection.pipeline(), "set", "mine", 1),
    "plain": lambda connection: connection.pipeline(transaction=False),
}


def _with(pipe: Any, command: str, *args: Any) -> Any:
    getattr(pipe, command)(*args)
    return pipe


def sync_queue(connection: redis.Redis) -> Queue:
    return Queue("sync", connection=connection, is_async=False)


@pytest.mark.parametrize("kind", PIPELINES)
@pytest.mark.parametrize("how", ENQUEUES)
def test_job_run_at_the_call_stays_finished_after_the_callers_execute(
    connection: redis.Redis, how: str, kind: str
) -> None:
    queue = sync_queue(connection)
    pipe = PIPELINES[kind](connection)
    ENQUEUES[how](queue, pipe)
    assert connection.lrange("executed", 0, -1) == [b"s"]  # it ran at the call, as is_async=False says
    pipe.incr("after")
    pipe.execute()
    job = Job.fetch("s", connection=connection)
    value = job.return_value() if callable(job.return_value) else job.return_value  # a property before 1.12
    assert job.get_status() == JobStatus.FINISHED and value == ("s" if RESULT_KEPT else None)
    assert connection.get("after") == b"1"
    assert 0 < connection.ttl(job.key) <= job.get_result_ttl(500)  # RQ's result TTL, not made persistent


@pytest.mark.parametrize("how", ENQUEUES)
def test_final_state_is_the_one_without_a_pipeline(connection: redis.Redis, how: str) -> None:
    if how == "enqueue_many":
        pytest.skip("RQ's own enqueue_many on a sync queue ends QUEUED even without pipeline=")
    ENQUEUES[how](sync_queue(connection), None)
    alone = snapshot(connection)
    connection.flushdb()
    with connection.pipeline() as pipe:
        ENQUEUES[how](sync_queue(connection), pipe)
        pipe.execute()
    assert snapshot(connection) == alone


def test_failing_job_stays_failed_after_the_callers_execute(connection: redis.Redis) -> None:
    if RQ_VERSION.release < (1, 13):
        pytest.skip("before RQ 1.13 a sync job's exception leaves the enqueue call")
    queue = sync_queue(connection)
    with connection.pipeline() as pipe:
        queue.enqueue_call(fail, args=("f",), job_id="f", pipeline=pipe)
        pipe.execute()
    assert Job.fetch("f", connection=connection).get_status() == JobStatus.FAILED
    assert queue.failed_job_registry.get_job_ids() == ["f"]


def test_aborted_batch_keeps_the_job_that_ran(connection: redis.Redis, other_client: redis.Redis) -> None:
    connection.set("balance", 10)
    with connection.pipeline() as pipe:
        pipe.watch("balance")
        sync_queue(connection).enqueue_call(record, args=("s",), job_id="s", pipeline=pipe)
        pipe.set("mine", 1)
        other_client.set("balance", 0)
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert connection.get("mine") is None
    assert Job.fetch("s", connection=connection).get_status() == JobStatus.FINISHED


def test_async_queue_in_the_same_batch_still_waits_for_execute(connection: redis.Redis) -> None:
    with connection.pipeline() as pipe:
        sync_queue(connection).enqueue_call(record, args=("s",), job_id="s", pipeline=pipe)
        Queue("default", connection=connection).enqueue_call(record, args=("a",), job_id="a", pipeline=pipe)
        assert Queue("default", connection=connection).count == 0
        pipe.execute()
    assert Queue("default", connection=connection).job_ids == ["a"]
    assert Job.fetch("s", connection=connection).get_status() == JobStatus.FINISHED


@pytest.mark.usefixtures("unpatched")
def test_without_guard_the_callers_execute_writes_the_job_back_as_queued_where_d11_was_detected(
    connection: redis.Redis,
) -> None:
    assert detected("D11"), "every RQ release measured so far has D11"
    with connection.pipeline() as pipe:
        sync_queue(connection).enqueue_call(record, args=("s",), job_id="s", pipeline=pipe)
        pipe.execute()
    assert connection.lrange("executed", 0, -1) == [b"s"]
    assert Job.fetch("s", connection=connection).get_status() == JobStatus.QUEUED


def test_outcome_is_kept_byte_for_byte_on_a_decoding_client(connection: redis.Redis, redis_url: str) -> None:
    """The job hash holds binary fields (the pickled call): putting it back must not decode it."""
    decoding = redis.Redis.from_url(redis_url, decode_responses=True)
    with decoding.pipeline() as pipe:
        sync_queue(decoding).enqueue_call(record, args=("s",), job_id="s", pipeline=pipe)
        pipe.execute()
    decoding.close()
    job = Job.fetch("s", connection=connection)  # RQ itself reads jobs with a non-decoding client
    assert job.get_status() == JobStatus.FINISHED and job.args == ("s",)


def test_children_of_a_job_run_at_the_call_are_queued_and_run(connection: redis.Redis) -> None:
    """The batch leaves the parent as its run left it (finished), not as RQ's stale QUEUED write."""
    default = Queue("default", connection=connection)
    with connection.pipeline() as pipe:
        sync_queue(connection).enqueue_call(record, args=("p",), job_id="p", pipeline=pipe)
        default.enqueue_call(record, args=("c1",), job_id="c1", depends_on="p", pipeline=pipe)
        sync_queue(connection).enqueue_call(record, args=("c2",), job_id="c2", depends_on="p", pipeline=pipe)
        pipe.execute()
    SimpleWorker([default], connection=connection).work(burst=True)
    statuses = {job_id: Job.fetch(job_id, connection=connection).get_status() for job_id in ("p", "c1", "c2")}
    assert statuses == dict.fromkeys(("p", "c1", "c2"), JobStatus.FINISHED)
    assert connection.lrange("executed", 0, -1) == [b"p", b"c2", b"c1"]
