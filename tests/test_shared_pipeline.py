"""Jobs without dependencies sharing one caller pipeline: every row of the guard table in
DEFECTS.md and the scenario families around it, each checked by the final state in Redis."""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry

import rq_pipeline_fix
from tests.conftest import detected, job_keys
from tests.jobs import record


def queues(connection: redis.Redis, *names: str) -> list[Queue]:
    return [Queue(name, connection=connection) for name in names]


def statuses(connection: redis.Redis, jobs: list[Job]) -> list[JobStatus]:
    return [Job.fetch(job.id, connection=connection).get_status() for job in jobs]


def transactions_run(connection: redis.Redis) -> int:
    """How many EXEC commands the server has run since the last CONFIG RESETSTAT."""
    return int(connection.info("commandstats").get("cmdstat_exec", {}).get("calls", 0))


# --- the guard table: one test per pipeline state ----------------------------------------------


def test_fresh_pipeline_is_switched_to_multi_as_upstream_does(connection: redis.Redis) -> None:
    (default,) = queues(connection, "default")
    pipe = connection.pipeline()
    job = default.enqueue_call(record, args=("a",), pipeline=pipe)
    assert pipe.explicit_transaction
    assert job_keys(connection) == []
    pipe.execute()
    assert default.job_ids == [job.id]
    assert statuses(connection, [job]) == [JobStatus.QUEUED]


def test_watching_pipeline_buffers_rq_writes_until_execute(connection: redis.Redis) -> None:
    (default,) = queues(connection, "default")
    connection.set("balance", 10)
    with connection.pipeline() as pipe:
        pipe.watch("balance")
        assert int(pipe.get("balance")) == 10  # immediate mode: a real read
        first = default.enqueue_call(record, args=("a",), pipeline=pipe)
        second = default.enqueue_call(record, args=("b",), pipeline=pipe)
        pipe.set("balance", 9)
        assert job_keys(connection) == [] and default.count == 0
        pipe.execute()
    assert default.job_ids == [first.id, second.id]
    assert connection.get("balance") == b"9"


def test_watched_key_changed_concurrently_aborts_the_whole_batch(
    connection: redis.Redis, other_client: redis.Redis
) -> None:
    default, high = queues(connection, "default", "high")
    connection.set("balance", 10)
    with connection.pipeline() as pipe:
        pipe.watch("balance")
        default.enqueue_call(record, args=("a",), pipeline=pipe)
        high.enqueue_call(record, args=("b",), pipeline=pipe)
        other_client.set("balance", 0)
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert job_keys(connection) == []
    assert default.count == high.count == 0
    assert connection.get("balance") == b"0"


def test_pipeline_already_in_multi_takes_more_enqueues(connection: redis.Redis) -> None:
    default, high = queues(connection, "default", "high")
    pipe = connection.pipeline()
    pipe.multi()
    first = default.enqueue_call(record, args=("a",), pipeline=pipe)
    second = high.enqueue_call(record, args=("b",), pipeline=pipe)
    pipe.execute()
    assert default.job_ids == [first.id] and high.job_ids == [second.id]
    assert statuses(connection, [first, second]) == [JobStatus.QUEUED] * 2


def test_buffered_commands_in_transaction_pipeline_join_one_exec(connection: redis.Redis) -> None:
    (default,) = queues(connection, "default")
    pipe = connection.pipeline(transaction=True)
    pipe.incr("counter")
    job = default.enqueue_call(record, args=("a",), pipeline=pipe)
    pipe.incr("counter")
    assert connection.get("counter") is None and job_keys(connection) == []
    connection.config_resetstat()
    pipe.execute()
    assert transactions_run(connection) == 1
    assert connection.get("counter") == b"2"
    assert default.job_ids == [job.id]


def test_buffered_commands_in_non_transaction_pipeline_become_one_transaction(
    connection: redis.Redis,
) -> None:
    default, high = queues(connection, "default", "high")
    pipe = connection.pipeline(transaction=False)
    pipe.incr("counter")
    first = default.enqueue_call(record, args=("a",), pipeline=pipe)
    second = high.enqueue_call(record, args=("b",), pipeline=pipe)
    assert job_keys(connection) == []
    connection.config_resetstat()
    pipe.execute()
    assert transactions_run(connection) == 1  # as the fresh case: multi() makes it a transaction
    assert connection.get("counter") == b"1"
    assert default.job_ids == [first.id] and high.job_ids == [second.id]


def test_fresh_non_transaction_pipeline_becomes_a_transaction_as_upstream(connection: redis.Redis) -> None:
    default, high = queues(connection, "default", "high")
    pipe = connection.pipeline(transaction=False)
    default.enqueue_call(record, args=("a",), pipeline=pipe)
    high.enqueue_call(record, args=("b",), pipeline=pipe)
    connection.config_resetstat()
    pipe.execute()
    assert transactions_run(connection) == 1
    assert default.count == high.count == 1


def test_no_pipeline_goes_straight_to_rq(connection: redis.Redis) -> None:
    default, high = queues(connection, "default", "high")
    first = default.enqueue(record, "a")
    second = high.enqueue(record, "b")
    assert default.job_ids == [first.id] and high.job_ids == [second.id]
    assert statuses(connection, [first, second]) == [JobStatus.QUEUED] * 2


# --- scenario families ---------------------------------------------------------------------------


def test_seed_several_queues_one_pipeline_enqueue_call(connection: redis.Redis) -> None:
    """The code of upstream issue #2211, unchanged."""
    names = ["high", "default", "low"]
    with connection.pipeline() as pipe:
        jobs = [
            Queue(name, connection=connection).enqueue_call(record, args=(name,), pipeline=pipe)
            for name in names
        ]
        pipe.execute()
    for name, job in zip(names, jobs):
        assert Queue(name, connection=connection).job_ids == [job.id]
    assert statuses(connection, jobs) == [JobStatus.QUEUED] * 3


def test_same_queue_twice_keeps_enqueue_order(connection: redis.Redis) -> None:
    (default,) = queues(connection, "default")
    with connection.pipeline() as pipe:
        jobs = [default.enqueue_call(record, args=(label,), pipeline=pipe) for label in "abc"]
        pipe.execute()
    assert default.job_ids == [job.id for job in jobs]
    SimpleWorker([default], connection=connection).work(burst=True)
    assert connection.lrange("executed", 0, -1) == [b"a", b"b", b"c"]
    assert statuses(connection, jobs) == [JobStatus.FINISHED] * 3


def test_caller_commands_before_between_and_after_enqueues(connection: redis.Redis) -> None:
    default, high = queues(connection, "default", "high")
    with connection.pipeline() as pipe:
        pipe.rpush("log", "before")
        first = default.enqueue_call(record, args=("a",), pipeline=pipe)
        pipe.rpush("log", "between")
        second = high.enqueue_call(record, args=("b",), pipeline=pipe)
        pipe.rpush("log", "after")
        assert connection.exists("log") == 0 and job_keys(connection) == []
        pipe.execute()
    assert connection.lrange("log", 0, -1) == [b"before", b"between", b"after"]
    assert default.job_ids == [first.id] and high.job_ids == [second.id]


def test_enqueue_many_then_enqueue_in_one_pipeline(connection: redis.Redis) -> None:
    default, high = queues(connection, "default", "high")
    with connection.pipeline() as pipe:
        batch = default.enqueue_many(
            [Queue.prepare_data(record, args=(label,)) for label in ("a", "b")], pipeline=pipe
        )
        single = high.enqueue_call(record, args=("c",), pipeline=pipe)
        assert job_keys(connection) == []
        pipe.execute()
    assert default.job_ids == [job.id for job in batch]
    assert high.job_ids == [single.id]


def test_enqueue_then_enqueue_many_in_one_pipeline(connection: redis.Redis) -> None:
    default, high = queues(connection, "default", "high")
    with connection.pipeline() as pipe:
        single = high.enqueue_call(record, args=("a",), pipeline=pipe)
        batch = default.enqueue_many([Queue.prepare_data(record, args=("b",))], pipeline=pipe)
        after = high.enqueue_call(record, args=("c",), pipeline=pipe)
        pipe.execute()
    assert high.job_ids == [single.id, after.id]
    assert default.job_ids == [batch[0].id]


def test_enqueue_at_and_enqueue_in_mixed_with_enqueue(connection: redis.Redis) -> None:
    default, high = queues(connection, "default", "high")
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    with connection.pipeline() as pipe:
        scheduled = default.enqueue_at(later, record, "at", pipeline=pipe)
        now_job = high.enqueue_call(record, args=("now",), pipeline=pipe)
        delayed = high.enqueue_in(timedelta(minutes=5), record, "in", pipeline=pipe)
        another = default.enqueue_call(record, args=("now-2",), pipeline=pipe)
        assert job_keys(connection) == []
        pipe.execute()
    assert high.job_ids == [now_job.id] and default.job_ids == [another.id]
    assert set(ScheduledJobRegistry(queue=default).get_job_ids()) == {scheduled.id}
    assert set(ScheduledJobRegistry(queue=high).get_job_ids()) == {delayed.id}
    assert statuses(connection, [scheduled, delayed]) == [JobStatus.SCHEDULED] * 2


@pytest.mark.parametrize("first", ["enqueue_many", "enqueue_at", "enqueue_in"])
def test_watch_then_batch_or_schedule_first_stays_buffered_and_aborts_on_concurrent_write(
    connection: redis.Redis, other_client: redis.Redis, first: str
) -> None:
    """enqueue_many and enqueue_at write without setup_dependencies' MULTI (D6, D7)."""
    default, high = queues(connection, "default", "high")
    connection.set("balance", 10)
    with connection.pipeline() as pipe:
        pipe.watch("balance")
        if first == "enqueue_many":
            default.enqueue_many([Queue.prepare_data(record, args=("a",))], pipeline=pipe)
        elif first == "enqueue_at":
            default.enqueue_at(datetime.now(timezone.utc) + timedelta(hours=1), record, "a", pipeline=pipe)
        else:
            default.enqueue_in(timedelta(hours=1), record, "a", pipeline=pipe)
        high.enqueue_call(record, args=("b",), pipeline=pipe)
        assert job_keys(connection) == [] and default.count == high.count == 0
        other_client.set("balance", 0)
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert job_keys(connection) == [] and connection.keys("rq:*") == []


def test_watch_then_enqueue_many_lands_with_execute(connection: redis.Redis) -> None:
    (default,) = queues(connection, "default")
    connection.set("balance", 10)
    with connection.pipeline() as pipe:
        pipe.watch("balance")
        jobs = default.enqueue_many([Queue.prepare_data(record, args=(x,)) for x in "ab"], pipeline=pipe)
        pipe.decr("balance")
        assert job_keys(connection) == []
        pipe.execute()
    assert default.job_ids == [job.id for job in jobs] and connection.get("balance") == b"9"


def test_aborted_batch_leaves_no_scheduled_entry_behind(connection: redis.Redis) -> None:
    default, high = queues(connection, "default", "high")
    with pytest.raises(RuntimeError), connection.pipeline() as pipe:
        high.enqueue_call(record, args=("now",), pipeline=pipe)
        default.enqueue_in(timedelta(minutes=5), record, "later", pipeline=pipe)
        raise RuntimeError("the caller gives up before execute()")
    assert ScheduledJobRegistry(queue=default).get_job_ids() == []
    assert connection.keys("*") == []


def test_explicit_base_class_call_of_schedule_from_a_subclass_stays_in_the_pipeline(
    connection: redis.Redis,
) -> None:
    class AuditedRegistry(ScheduledJobRegistry):  # a subclass that calls RQ's method by its class
        def schedule(self, job: Job, when: datetime, pipeline: object = None) -> object:
            connection.incr("audited")
            return ScheduledJobRegistry.schedule(self, job, when, pipeline=pipeline)

    (default,) = queues(connection, "default")
    job = default.create_job(record, args=("later",))
    registry = AuditedRegistry(queue=default)
    with connection.pipeline() as pipe:
        pipe.multi()
        registry.schedule(job, datetime.now(timezone.utc) + timedelta(minutes=5), pipeline=pipe)
        before_execute = registry.get_job_ids()
        pipe.execute()
    assert (before_execute, registry.get_job_ids(), connection.get("audited")) == ([], [job.id], b"1")


def test_redis_transaction_retries_and_enqueues_exactly_once(
    connection: redis.Redis, other_client: redis.Redis
) -> None:
    default, high = queues(connection, "default", "high")
    connection.set("stock", 5)
    attempts = []

    def enqueue_batch(pipe: redis.client.Pipeline) -> None:
        attempts.append(int(pipe.get("stock")))
        default.enqueue_call(record, args=("a",), pipeline=pipe)
        high.enqueue_call(record, args=("b",), pipeline=pipe)
        pipe.decr("stock")
        if len(attempts) == 1:
            other_client.set("stock", 3)  # a concurrent writer: the first attempt must abort

    connection.transaction(enqueue_batch, "stock")
    assert attempts == [5, 3]
    assert connection.get("stock") == b"2"
    assert default.count == high.count == 1
    assert len(job_keys(connection)) == 2


def test_exception_mid_batch_writes_nothing(connection: redis.Redis) -> None:
    default, high = queues(connection, "default", "high")
    with pytest.raises(ValueError), connection.pipeline() as pipe:
        pipe.set("marker", 1)
        default.enqueue_call(record, args=("a",), pipeline=pipe)
        high.enqueue_call(record, args=("b",), pipeline=pipe)
        raise ValueError("the caller gives up before execute()")
    assert connection.keys("*") == []


def test_unpicklable_job_mid_batch_writes_nothing(connection: redis.Redis) -> None:
    default, high = queues(connection, "default", "high")
    # the error's type and text vary with the Python version: what matters is that nothing landed
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)), connection.pipeline() as pipe:
        default.enqueue_call(record, args=("a",), pipeline=pipe)
        high.enqueue_call(record, args=(lambda: None,), pipeline=pipe)  # cannot be pickled
        pipe.execute()
    assert connection.keys("*") == []


def test_queue_subclass_without_override_is_guarded(connection: redis.Redis) -> None:
    class AuditedQueue(Queue):
        pass

    first, second = (
        AuditedQueue("default", connection=connection),
        AuditedQueue("high", connection=connection),
    )
    with connection.pipeline() as pipe:
        a = first.enqueue_call(record, args=("a",), pipeline=pipe)
        pipe.set("between", 1)
        b = second.enqueue_call(record, args=("b",), pipeline=pipe)
        pipe.execute()
    assert first.job_ids == [a.id] and second.job_ids == [b.id]


def test_cross_queue_batch_runs_in_enqueue_order_on_a_worker(connection: redis.Redis) -> None:
    default, high = queues(connection, "default", "high")
    with connection.pipeline() as pipe:
        pipe.incr("batches")
        jobs = [
            queue.enqueue_call(record, args=(label,), pipeline=pipe)
            for queue, label in [(high, "h1"), (default, "d1"), (high, "h2")]
        ]
        pipe.execute()
    SimpleWorker([high, default], connection=connection).work(burst=True)
    assert connection.lrange("executed", 0, -1) == [b"h1", b"h2", b"d1"]  # queue priority, then FIFO
    assert statuses(connection, jobs) == [JobStatus.FINISHED] * 3


# --- what the installed RQ does without the guard (the defects are real here) -------------------


@pytest.mark.usefixtures("unpatched")
def test_without_guard_second_enqueue_fails_where_d1_was_detected(connection: redis.Redis) -> None:
    default, high = queues(connection, "default", "high")
    pipe = connection.pipeline()
    default.enqueue_call(record, args=("a",), pipeline=pipe)
    if detected("D1"):
        with pytest.raises(redis.RedisError, match="nested calls to MULTI"):
            high.enqueue_call(record, args=("b",), pipeline=pipe)
    else:
        high.enqueue_call(record, args=("b",), pipeline=pipe)
        pipe.execute()
        assert default.count == high.count == 1


@pytest.mark.usefixtures("unpatched")
def test_without_guard_enqueue_after_buffered_command_fails(connection: redis.Redis) -> None:
    assert detected("D2"), "every RQ release measured so far has D2"
    (default,) = queues(connection, "default")
    pipe = connection.pipeline()
    pipe.set("marker", 1)
    with pytest.raises(redis.RedisError, match="without an initial WATCH"):
        default.enqueue_call(record, args=("a",), pipeline=pipe)
    pipe.reset()
    assert connection.keys("*") == []


@pytest.mark.usefixtures("unpatched")
def test_without_guard_enqueue_many_writes_through_watching_pipeline_at_once(connection: redis.Redis) -> None:
    assert detected("D6"), "every RQ release measured so far has D6"
    (default,) = queues(connection, "default")
    with connection.pipeline() as pipe:
        pipe.watch("balance")
        (job,) = default.enqueue_many([Queue.prepare_data(record, args=("a",))], pipeline=pipe)
        assert job_keys(connection) == [f"rq:job:{job.id}".encode()]  # before any execute()
        pipe.reset()


@pytest.mark.usefixtures("unpatched")
def test_without_guard_scheduled_entry_lands_before_execute_where_d8_was_detected(
    connection: redis.Redis,
) -> None:
    (default,) = queues(connection, "default")
    with connection.pipeline() as pipe:
        pipe.multi()
        job = default.enqueue_in(timedelta(minutes=5), record, "later", pipeline=pipe)
        landed = ScheduledJobRegistry(queue=default).get_job_ids()
        pipe.reset()
    assert landed == ([job.id] if detected("D8") else [])


def test_status_reports_what_was_patched() -> None:
    report = rq_pipeline_fix.status()
    assert report.active
    for defect in report.defects:
        assert defect.patched == bool(defect.detected), defect
    assert report.unpatched == ()
