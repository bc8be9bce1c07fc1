"""``Group.enqueue_many(queue, job_datas, pipeline=pipe)`` (RQ 2.0 on) in a caller's transaction
(D9): the group's keys and its jobs are buffered like everything else, nothing reaches Redis
before the caller's ``execute()``, an aborted batch leaves no key, and ``pipeline=None`` is RQ's
own path. Each test checks the final state in Redis."""

from __future__ import annotations

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus

from tests.conftest import detected, job_keys
from tests.jobs import record
from tests.snapshot import snapshot

group_module = pytest.importorskip("rq.group", reason="rq.group arrived in RQ 2.0")
Group = group_module.Group


def job_data(label: str, **options: object) -> object:
    return Queue.prepare_data(record, args=(label,), job_id=label, **options)


def group_members(connection: redis.Redis, group: object) -> set[bytes]:
    return connection.smembers(f"rq:group:{group.name}")  # type: ignore[attr-defined]


def test_group_waits_for_the_callers_execute(connection: redis.Redis) -> None:
    default = Queue("default", connection=connection)
    group = Group(connection, name="batch")
    with connection.pipeline() as pipe:
        pipe.set("mine", 1)
        jobs = group.enqueue_many(default, [job_data("a"), job_data("b")], pipeline=pipe)
        pipe.incr("after")
        assert connection.keys("*") == []  # not even the caller's own first command
        pipe.execute()
    assert [job.id for job in jobs] == ["a", "b"]
    assert default.job_ids == ["a", "b"]
    assert group_members(connection, group) == {b"a", b"b"}
    assert connection.smembers("rq:groups") == {b"batch"}
    assert connection.get("mine") == b"1" and connection.get("after") == b"1"
    assert [job.id for job in Group.fetch("batch", connection).get_jobs()] in (["a", "b"], ["b", "a"])


def test_group_batch_aborted_by_watch_error_leaves_no_key(
    connection: redis.Redis, other_client: redis.Redis
) -> None:
    default = Queue("default", connection=connection)
    connection.set("balance", 10)
    with connection.pipeline() as pipe:
        pipe.watch("balance")
        pipe.multi()
        pipe.set("mine", 1)
        Group(connection, name="batch").enqueue_many(default, [job_data("a")], pipeline=pipe)
        other_client.set("balance", 0)
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert sorted(connection.keys("*")) == [b"balance"]


def test_group_batch_reset_before_execute_leaves_no_key(connection: redis.Redis) -> None:
    default = Queue("default", connection=connection)
    pipe = connection.pipeline()
    pipe.set("mine", 1)
    Group(connection, name="batch").enqueue_many(default, [job_data("a")], pipeline=pipe)
    pipe.reset()
    assert connection.keys("*") == []


def test_group_in_a_watching_pipeline_is_buffered_too(connection: redis.Redis) -> None:
    default = Queue("default", connection=connection)
    connection.set("balance", 10)
    with connection.pipeline() as pipe:
        pipe.watch("balance")
        Group(connection, name="batch").enqueue_many(default, [job_data("a")], pipeline=pipe)
        assert job_keys(connection) == [] and default.count == 0
        pipe.execute()
    assert default.job_ids == ["a"]
    assert connection.smembers("rq:group:batch") == {b"a"}


def test_groups_and_enqueues_across_queues_in_one_transaction_run_in_order(connection: redis.Redis) -> None:
    """A parent enqueued first in the pipeline, then a group on another queue whose second job
    depends on it: one EXEC, the dependent DEFERRED until a worker finishes the parent."""
    if "depends_on" not in Queue.prepare_data.__code__.co_varnames:
        pytest.skip("enqueue_many takes depends_on from RQ 1.15")
    high, low = Queue("high", connection=connection), Queue("low", connection=connection)
    with connection.pipeline() as pipe:
        high.enqueue_call(record, args=("parent",), job_id="parent", pipeline=pipe)
        Group(connection, name="batch").enqueue_many(
            low, [job_data("first"), job_data("child", depends_on="parent")], pipeline=pipe
        )
        assert connection.keys("*") == []
        pipe.execute()
    assert Job.fetch("child", connection=connection).get_status() == JobStatus.DEFERRED
    assert connection.smembers("rq:group:batch") == {b"first", b"child"}
    SimpleWorker([high, low], connection=connection).work(burst=True)
    assert connection.lrange("executed", 0, -1) == [b"parent", b"first", b"child"]


def test_callers_group_and_pipeline_are_left_as_they_were(connection: redis.Redis) -> None:
    default = Queue("default", connection=connection)
    group = Group(connection, name="batch")
    before = dict(vars(group))
    with connection.pipeline() as pipe:
        group.enqueue_many(default, [job_data("a")], pipeline=pipe)
        assert "execute" not in vars(pipe) and "_add_jobs" not in vars(group)
        assert vars(group) == before
        pipe.execute()
    group.enqueue_many(default, [job_data("b")])  # the same group, RQ's own path afterwards
    assert connection.smembers("rq:group:batch") == {b"a", b"b"}


def test_group_without_pipeline_is_rqs_own_path(connection: redis.Redis) -> None:
    """pipeline=None: the same final state with the guard as RQ's own method alone."""
    import rq_pipeline_fix

    outcomes = []
    for guarded in (True, False):
        connection.flushdb()
        (rq_pipeline_fix.apply if guarded else rq_pipeline_fix.revert)()
        jobs = Group(connection, name="batch").enqueue_many(
            Queue("default", connection=connection), [job_data("a"), job_data("b")]
        )
        outcomes.append(([job.id for job in jobs], snapshot(connection)))
    rq_pipeline_fix.apply()
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == ["a", "b"] and b"rq:group:batch" in outcomes[0][1]


@pytest.mark.usefixtures("unpatched")
def test_without_guard_group_runs_the_callers_execute_where_d9_was_detected(connection: redis.Redis) -> None:
    assert detected("D9"), "every RQ release with rq.group measured so far has D9"
    pipe = connection.pipeline()
    pipe.set("mine", 1)
    Group(connection, name="batch").enqueue_many(
        Queue("default", connection=connection), [job_data("a")], pipeline=pipe
    )
    pipe.reset()  # too late: RQ executed it
    assert connection.get("mine") == b"1" and connection.smembers("rq:group:batch") == {b"a"}
