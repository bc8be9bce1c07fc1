"""Dependent jobs in a shared pipeline (D3, D4, D5): statuses, registries, dependents sets and
execution order by real workers, in every pipeline state."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import DeferredJobRegistry

from tests.conftest import job_keys
from tests.jobs import fail, record

REPO = Path(__file__).resolve().parents[1]

# enqueue_many takes depends_on from RQ 1.15 on; Dependency(allow_failure=...) from 1.11 on
needs_enqueue_many_dependencies = pytest.mark.skipif(
    "depends_on" not in inspect.signature(Queue.prepare_data).parameters,
    reason="this RQ's enqueue_many takes no depends_on",
)
try:
    from rq.job import Dependency
except ImportError:  # RQ < 1.11
    Dependency = None  # type: ignore[assignment,misc]


def queue(connection: redis.Redis, name: str = "default") -> Queue:
    return Queue(name, connection=connection)


def work(connection: redis.Redis, *queues: Queue) -> None:
    SimpleWorker(list(queues), connection=connection).work(burst=True)


def status_of(connection: redis.Redis, job: Job | str) -> JobStatus:
    job_id = job if isinstance(job, str) else job.id
    return Job.fetch(job_id, connection=connection).get_status()


def deferred_ids(q: Queue) -> list[str]:
    return DeferredJobRegistry(queue=q).get_job_ids()


def dependents_of(connection: redis.Redis, parent: Job) -> set[bytes]:
    return connection.smembers(Job.dependents_key_for(parent.id))


def executed(connection: redis.Redis) -> list[str]:
    return [label.decode() for label in connection.lrange("executed", 0, -1)]


def finished_parent(connection: redis.Redis, label: str = "parent") -> Job:
    q = queue(connection, "parents")
    parent = q.enqueue(record, label)
    work(connection, q)
    assert status_of(connection, parent) == JobStatus.FINISHED
    connection.delete("executed")
    return parent


def failed_parent(connection: redis.Redis) -> Job:
    q = queue(connection, "parents")
    parent = q.enqueue(fail, "parent")
    work(connection, q)
    assert status_of(connection, parent) == JobStatus.FAILED
    return parent


def pipeline_in_multi(connection: redis.Redis) -> Any:
    """A caller's pipeline after a first enqueue: from here on upstream RQ raises for dependents."""
    pipe = connection.pipeline()
    queue(connection, "other").enqueue_call(record, args=("first",), pipeline=pipe)
    assert pipe.explicit_transaction
    return pipe


# --- enqueue/enqueue_call with depends_on in every pipeline state ----------------------------


def test_child_of_parent_buffered_in_same_pipeline_is_deferred_then_runs_after_it(
    connection: redis.Redis,
) -> None:
    first, second = queue(connection, "first"), queue(connection, "second")
    with connection.pipeline() as pipe:
        parent = first.enqueue_call(record, args=("parent",), pipeline=pipe)
        child = second.enqueue_call(record, args=("child",), depends_on=parent, pipeline=pipe)
        assert job_keys(connection) == []
        pipe.execute()
    assert status_of(connection, parent) == JobStatus.QUEUED
    assert status_of(connection, child) == JobStatus.DEFERRED
    assert deferred_ids(second) == [child.id] and second.count == 0
    assert dependents_of(connection, parent) == {child.id.encode()}
    work(connection, first, second)
    assert executed(connection) == ["parent", "child"]
    assert status_of(connection, child) == JobStatus.FINISHED and deferred_ids(second) == []


def test_child_of_finished_parent_in_multi_pipeline_is_queued_at_once(connection: redis.Redis) -> None:
    parent = finished_parent(connection)
    q = queue(connection)
    pipe = pipeline_in_multi(connection)
    child = q.enqueue_call(record, args=("child",), depends_on=parent, pipeline=pipe)
    pipe.execute()
    assert q.job_ids == [child.id] and status_of(connection, child) == JobStatus.QUEUED
    assert deferred_ids(q) == []


def test_child_of_unfinished_parent_in_redis_is_deferred(connection: redis.Redis) -> None:
    parent = queue(connection, "parents").enqueue(record, "parent")  # queued, not run
    q = queue(connection)
    pipe = pipeline_in_multi(connection)
    child = q.enqueue_call(record, args=("child",), depends_on=parent, pipeline=pipe)
    pipe.execute()
    assert status_of(connection, child) == JobStatus.DEFERRED
    assert deferred_ids(q) == [child.id] and dependents_of(connection, parent) == {child.id.encode()}


def test_dependent_job_first_then_others_in_one_pipeline(connection: redis.Redis) -> None:
    parent = queue(connection, "parents").enqueue(record, "parent")
    q, other = queue(connection), queue(connection, "other")
    with connection.pipeline() as pipe:
        child = q.enqueue_call(record, args=("child",), depends_on=parent, pipeline=pipe)  # RQ's own path
        later = other.enqueue_call(record, args=("later",), pipeline=pipe)
        pipe.execute()
    assert status_of(connection, child) == JobStatus.DEFERRED and other.job_ids == [later.id]


@pytest.mark.parametrize("transaction", [True, False])
def test_child_after_caller_command_in_buffered_pipeline(connection: redis.Redis, transaction: bool) -> None:
    parent = finished_parent(connection)
    unfinished = queue(connection, "parents").enqueue(record, "unfinished")
    q = queue(connection)
    with connection.pipeline(transaction=transaction) as pipe:
        pipe.incr("counter")
        ready = q.enqueue_call(record, args=("ready",), depends_on=parent, pipeline=pipe)
        waiting = q.enqueue_call(record, args=("waiting",), depends_on=unfinished, pipeline=pipe)
        assert connection.get("counter") is None and not connection.exists(ready.key)
        pipe.execute()
    assert connection.get("counter") == b"1"
    assert q.job_ids == [ready.id] and deferred_ids(q) == [waiting.id]


def test_several_parents_mixed_finished_and_unfinished(connection: redis.Redis) -> None:
    done = finished_parent(connection)
    pending = queue(connection, "parents").enqueue(record, "pending")
    q = queue(connection)
    pipe = pipeline_in_multi(connection)
    mixed = q.enqueue_call(record, args=("mixed",), depends_on=[done, pending], pipeline=pipe)
    all_done = q.enqueue_call(record, args=("all-done",), depends_on=[done, done.id], pipeline=pipe)
    pipe.execute()
    assert status_of(connection, mixed) == JobStatus.DEFERRED and q.job_ids == [all_done.id]
    assert dependents_of(connection, pending) == {mixed.id.encode()}


@pytest.mark.parametrize("allow_failure", [True, False])
@pytest.mark.skipif(Dependency is None, reason="this RQ has no Dependency(allow_failure=...)")
def test_failed_parent_gets_the_installed_rqs_answer(connection: redis.Redis, allow_failure: bool) -> None:
    """Without allow_failure the child waits. With it, the installed RQ's own answer: RQ < 3.0
    defers such a child on a single enqueue anyway (fixed upstream in 3.0), and so does the guard;
    the reference is RQ's own code on a fresh pipeline."""
    parent = failed_parent(connection)
    q = queue(connection)
    depends_on = Dependency(jobs=[parent], allow_failure=allow_failure)
    with connection.pipeline() as fresh:  # the guard leaves a fresh pipeline to RQ
        reference = queue(connection, "reference").enqueue_call(
            record, args=("reference",), depends_on=depends_on, pipeline=fresh
        )
        fresh.execute()
    expected = status_of(connection, reference)
    assert expected == JobStatus.DEFERRED or allow_failure
    pipe = pipeline_in_multi(connection)
    child = q.enqueue_call(record, args=("child",), depends_on=depends_on, pipeline=pipe)
    pipe.execute()
    assert status_of(connection, child) == expected
    assert (child.id in q.job_ids) is (expected == JobStatus.QUEUED)
    assert (child.id in deferred_ids(q)) is (expected == JobStatus.DEFERRED)


@pytest.mark.parametrize("how", ["enqueue", "enqueue_call", "enqueue_many", "job_save"])
def test_every_way_of_buffering_the_parent_counts_as_unfinished(connection: redis.Redis, how: str) -> None:
    q, children = queue(connection, "parents"), queue(connection, "children")
    with connection.pipeline() as pipe:
        parent: Job
        if how == "enqueue":
            parent = q.enqueue(record, "parent", pipeline=pipe)
        elif how == "enqueue_call":
            parent = q.enqueue_call(record, args=("parent",), pipeline=pipe)
        elif how == "enqueue_many":
            (parent,) = q.enqueue_many([Queue.prepare_data(record, args=("parent",))], pipeline=pipe)
        else:
            parent = Job.create(record, args=("parent",), connection=connection, origin=q.name)
            parent.save(pipeline=pipe)
        child = children.enqueue_call(record, args=("child",), depends_on=parent, pipeline=pipe)
        pipe.execute()
    assert status_of(connection, child) == JobStatus.DEFERRED
    assert deferred_ids(children) == [child.id] and dependents_of(connection, parent) == {child.id.encode()}


def test_three_step_chain_across_three_queues_runs_in_order(connection: redis.Redis) -> None:
    io, cpu, out = queue(connection, "io"), queue(connection, "cpu"), queue(connection, "out")
    with connection.pipeline() as pipe:
        pipe.incr("workflows")
        fetch = io.enqueue_call(record, args=("fetch",), pipeline=pipe)
        process = cpu.enqueue_call(record, args=("process",), depends_on=fetch, pipeline=pipe)
        notify = out.enqueue_call(record, args=("notify",), depends_on=process, pipeline=pipe)
        pipe.execute()
    assert [status_of(connection, j) for j in (fetch, process, notify)] == [
        JobStatus.QUEUED,
        JobStatus.DEFERRED,
        JobStatus.DEFERRED,
    ]
    work(connection, out, cpu, io)  # the worker's queue order would run `notify` first if it could
    assert executed(connection) == ["fetch", "process", "notify"]
    assert all(status_of(connection, j) == JobStatus.FINISHED for j in (fetch, process, notify))
    assert deferred_ids(cpu) == deferred_ids(out) == []


def test_chain_run_by_rq_worker_burst_subprocess(connection: redis.Redis, redis_url: str) -> None:
    io, cpu, out = queue(connection, "io"), queue(connection, "cpu"), queue(connection, "out")
    with connection.pipeline() as pipe:
        io.enqueue_call(record, args=("warm-up",), pipeline=pipe)
        fetch = io.enqueue_call(record, args=("fetch",), pipeline=pipe)
        process = cpu.enqueue_call(record, args=("process",), depends_on=fetch, pipeline=pipe)
        out.enqueue_call(record, args=("notify",), depends_on=[fetch, process], pipeline=pipe)
        pipe.execute()
    rq_cli = Path(sys.executable).with_name("rq")
    result = subprocess.run(
        [str(rq_cli), "worker", "--burst", "--url", redis_url, "out", "cpu", "io"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert executed(connection) == ["warm-up", "fetch", "process", "notify"]
    assert deferred_ids(cpu) == deferred_ids(out) == [] and io.count == cpu.count == out.count == 0


def watch_calls(connection: redis.Redis) -> int:
    return int(connection.info("commandstats").get("cmdstat_watch", {}).get("calls", 0))


def test_parents_buffered_in_the_batch_cost_no_round_trip(connection: redis.Redis) -> None:
    """Their status is never read (they are unfinished whatever Redis holds), so nothing is WATCHed."""
    q = queue(connection)
    pipe = pipeline_in_multi(connection)
    previous = q.enqueue_call(record, args=("0",), pipeline=pipe)
    connection.config_resetstat()
    for label in "123":
        previous = q.enqueue_call(record, args=(label,), depends_on=previous, pipeline=pipe)
    assert watch_calls(connection) == 0
    pipe.execute()
    assert len(deferred_ids(q)) == 3
    work(connection, q, queue(connection, "other"))
    assert executed(connection) == ["0", "1", "2", "3", "first"]  # default before other, chain in order


def test_a_parent_in_redis_is_watched_and_read_once_per_transaction(connection: redis.Redis) -> None:
    parent = finished_parent(connection)
    q = queue(connection)
    pipe = pipeline_in_multi(connection)
    connection.config_resetstat()
    children = [q.enqueue_call(record, args=(str(i),), depends_on=parent, pipeline=pipe) for i in range(3)]
    assert watch_calls(connection) == 1
    pipe.execute()
    assert q.job_ids == [child.id for child in children]
    with connection.pipeline() as again:  # a new transaction on the same pipeline WATCHes anew
        again.multi()
        q.enqueue_call(record, args=("again",), depends_on=parent, pipeline=again)
        assert watch_calls(connection) == 2
        again.execute()


# --- the race: a parent finishing between the check and the caller's EXEC --------------------


@pytest.mark.parametrize("delete", ["Job.delete", "DEL", "UNLINK"])
def test_a_parent_deleted_in_the_batch_is_ignored_as_rq_ignores_a_missing_one(
    connection: redis.Redis, delete: str
) -> None:
    default = queue(connection)
    parent = default.enqueue_call(record, args=("parent",), job_id="parent")  # unfinished in Redis
    with connection.pipeline() as pipe:
        pipe.set("mine", 1)
        if delete == "Job.delete":
            Job.fetch("parent", connection=connection).delete(pipeline=pipe)
        else:
            pipe.execute_command(delete, parent.key)
        default.enqueue_call(record, args=("child",), job_id="child", depends_on="parent", pipeline=pipe)
        pipe.execute()
    assert not connection.exists(parent.key)
    work(connection, default)
    assert status_of(connection, "child") == JobStatus.FINISHED
    assert "child" in executed(connection) and "parent" not in executed(connection)


def test_a_parent_deleted_then_saved_again_in_the_batch_is_judged_by_the_new_status(
    connection: redis.Redis,
) -> None:
    default = queue(connection)
    finished = finished_parent(connection)
    with connection.pipeline() as pipe:
        finished.delete(pipeline=pipe)
        default.enqueue_call(record, args=("again",), job_id=finished.id, pipeline=pipe)  # queued anew
        default.enqueue_call(record, args=("child",), job_id="child", depends_on=finished.id, pipeline=pipe)
        pipe.execute()
    assert status_of(connection, "child") == JobStatus.DEFERRED
    work(connection, default)
    assert executed(connection)[-2:] == ["again", "child"]


def test_parent_finishing_before_execute_aborts_whole_batch(connection: redis.Redis) -> None:
    parents = queue(connection, "parents")
    parent = parents.enqueue(record, "parent")
    q = queue(connection)
    pipe = pipeline_in_multi(connection)
    pipe.incr("counter")
    child = q.enqueue_call(record, args=("child",), depends_on=parent, pipeline=pipe)
    work(connection, parents)  # a worker runs the parent now: the child must not stay deferred
    after_worker = set(connection.keys("*"))
    with pytest.raises(redis.WatchError):
        pipe.execute()
    assert set(connection.keys("*")) == after_worker  # the batch wrote nothing at all
    assert not connection.exists(child.key) and connection.get("counter") is None
    assert status_of(connection, parent) == JobStatus.FINISHED


def test_redis_transaction_retries_the_race_and_queues_the_child_once(connection: redis.Redis) -> None:
    parents = queue(connection, "parents")
    parent = parents.enqueue(record, "parent")
    q, other = queue(connection), queue(connection, "other")
    attempts: list[Job] = []

    def batch(pipe: Any) -> None:
        other.enqueue_call(record, args=("sibling",), pipeline=pipe)
        attempts.append(q.enqueue_call(record, args=("child",), depends_on=parent, pipeline=pipe))
        if len(attempts) == 1:
            work(connection, parents)  # the parent finishes between the check and EXEC

    connection.transaction(batch)
    assert len(attempts) == 2
    assert attempts[0].get_status(refresh=False) == JobStatus.DEFERRED  # what the aborted try had decided
    child = attempts[1]
    assert q.job_ids == [child.id] and status_of(connection, child) == JobStatus.QUEUED
    assert deferred_ids(q) == [] and other.count == 1
    assert not connection.exists(attempts[0].key)


def test_exception_mid_batch_with_dependents_writes_nothing(connection: redis.Redis) -> None:
    parent = queue(connection, "parents").enqueue(record, "parent")
    before = set(connection.keys("*"))
    q = queue(connection)
    with pytest.raises(RuntimeError), connection.pipeline() as pipe:
        first = q.enqueue_call(record, args=("a",), pipeline=pipe)
        q.enqueue_call(record, args=("b",), depends_on=first, pipeline=pipe)
        q.enqueue_call(record, args=("c",), depends_on=parent, pipeline=pipe)
        raise RuntimeError("the caller gives up")
    assert set(connection.keys("*")) == before


def test_watched_connection_goes_back_to_the_pool_unwatched(
    connection: redis.Redis, other_client: redis.Redis, redis_url: str
) -> None:
    parent = queue(connection, "parents").enqueue(record, "parent")
    client = redis.Redis(
        connection_pool=redis.ConnectionPool.from_url(redis_url, max_connections=2)
    )  # RQ may read on the side
    pipe = pipeline_in_multi(client)
    queue(client).enqueue_call(record, args=("child",), depends_on=parent, pipeline=pipe)
    pipe.reset()  # the caller abandons the batch
    other_client.hset(parent.key, "status", "finished")  # would abort a transaction still watching
    with client.pipeline() as later:
        later.multi()
        later.set("later", 1)
        assert later.execute() == [True]
    assert connection.get("later") == b"1"


# --- enqueue_many with depends_on (D4, D5) ----------------------------------------------------


@needs_enqueue_many_dependencies
def test_enqueue_many_with_dependencies_into_multi_pipeline_matches_rq_without_pipeline(
    connection: redis.Redis,
) -> None:
    done = finished_parent(connection)
    pending = queue(connection, "parents").enqueue(record, "pending")

    def batch(prefix: str) -> list[Any]:
        return [
            Queue.prepare_data(record, args=("ready",), depends_on=done, job_id=f"{prefix}-ready"),
            Queue.prepare_data(record, args=("waiting",), depends_on=pending, job_id=f"{prefix}-waiting"),
        ]

    reference, q = queue(connection, "reference"), queue(connection)
    reference.enqueue_many(batch("ref"))  # RQ's own path: no caller pipeline
    pipe = pipeline_in_multi(connection)
    q.enqueue_many(batch("ours"), pipeline=pipe)
    pipe.execute()
    assert q.job_ids == ["ours-ready"] and reference.job_ids == ["ref-ready"]
    assert status_of(connection, "ours-ready") == JobStatus.QUEUED
    assert status_of(connection, "ours-waiting") == JobStatus.DEFERRED
    assert deferred_ids(q) == [i.replace("ref-", "ours-") for i in deferred_ids(reference)]
    assert "ours-waiting" in deferred_ids(q)
    assert dependents_of(connection, pending) == {b"ref-waiting", b"ours-waiting"}


@needs_enqueue_many_dependencies
def test_enqueue_many_with_dependencies_does_not_execute_the_callers_pipeline(
    connection: redis.Redis,
) -> None:
    parent = finished_parent(connection)
    before = set(connection.keys("*"))
    q = queue(connection)
    with connection.pipeline() as pipe:
        pipe.incr("counter")
        q.enqueue_many(
            [
                Queue.prepare_data(record, args=(label,), depends_on=parent, job_id=label)
                for label in ("a", "b")
            ],
            pipeline=pipe,
        )
        pipe.incr("counter")
        assert set(connection.keys("*")) == before  # nothing of the batch reached Redis yet
        pipe.execute()
    assert connection.get("counter") == b"2"
    assert sorted(q.job_ids) == ["a", "b"]


@needs_enqueue_many_dependencies
def test_enqueue_many_chain_inside_one_batch_runs_in_order(connection: redis.Redis) -> None:
    q = queue(connection)
    with connection.pipeline() as pipe:
        q.enqueue_call(record, args=("before",), pipeline=pipe)
        q.enqueue_many(
            [
                Queue.prepare_data(record, args=("one",), job_id="one"),
                Queue.prepare_data(record, args=("two",), job_id="two", depends_on="one"),
                Queue.prepare_data(record, args=("three",), job_id="three", depends_on="two"),
            ],
            pipeline=pipe,
        )
        pipe.execute()
    assert status_of(connection, "two") == status_of(connection, "three") == JobStatus.DEFERRED
    work(connection, q)
    assert executed(connection) == ["before", "one", "two", "three"]


@needs_enqueue_many_dependencies
def test_enqueue_many_parent_finishing_before_execute_aborts(connection: redis.Redis) -> None:
    parents = queue(connection, "parents")
    parent = parents.enqueue(record, "parent")
    q = queue(connection)
    pipe = pipeline_in_multi(connection)
    q.enqueue_many(
        [Queue.prepare_data(record, args=("child",), depends_on=parent, job_id="child")], pipeline=pipe
    )
    work(connection, parents)
    with pytest.raises(redis.WatchError):
        pipe.execute()
    assert not connection.exists(Job.key_for("child")) and q.count == 0


# --- without the guard, the defects are real on this RQ -------------------------------------


@pytest.mark.usefixtures("unpatched")
@pytest.mark.parametrize(
    "enqueue",
    [
        lambda q, parent, pipe: q.enqueue_call(record, depends_on=parent, pipeline=pipe),
        pytest.param(
            lambda q, parent, pipe: q.enqueue_many(
                [Queue.prepare_data(record, depends_on=parent)], pipeline=pipe
            ),
            marks=needs_enqueue_many_dependencies,
        ),
    ],
    ids=["D3-enqueue_call", "D4-enqueue_many"],
)
def test_without_guard_dependents_fail_in_multi_pipeline(
    connection: redis.Redis, enqueue: Callable[[Queue, Job, Any], Any]
) -> None:
    parent = queue(connection, "parents").enqueue(record, "parent")
    pipe = connection.pipeline()
    pipe.multi()
    with pytest.raises(redis.RedisError, match="WATCH after a MULTI"):
        enqueue(queue(connection), parent, pipe)


@needs_enqueue_many_dependencies
@pytest.mark.usefixtures("unpatched")
def test_without_guard_enqueue_many_splits_the_callers_batch(connection: redis.Redis) -> None:
    parent = finished_parent(connection)
    with connection.pipeline() as pipe:
        pipe.incr("counter")
        queue(connection).enqueue_many(
            [Queue.prepare_data(record, depends_on=parent, job_id="c")], pipeline=pipe
        )
        assert connection.get("counter") == b"1"  # D5: already in Redis before the caller's execute()
