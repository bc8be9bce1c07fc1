"""The guard and the dependency support on ``fakeredis.FakeRedis`` connections.

Many users test their RQ code on fakeredis, whose pipelines subclass redis-py's. Each test here
runs a scenario of DEFECTS.md on a fresh in-memory server and checks the final state: queues,
job statuses, the deferred registry, dependents sets and the order a SimpleWorker ran the jobs.
Skipped when fakeredis is not installed (the test extra installs it; tox.ini's fakeredis220
cells run it on an old fakeredis too).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import DeferredJobRegistry

from tests.conftest import job_keys
from tests.jobs import record

fakeredis = pytest.importorskip("fakeredis")


@pytest.fixture
def server() -> Any:
    return fakeredis.FakeServer()


@pytest.fixture
def fake(server: Any) -> Iterator[redis.Redis]:
    """A FakeRedis client on a server of its own, empty for each test."""
    client = fakeredis.FakeRedis(server=server)
    yield client
    client.close()


@pytest.fixture
def fake_other_client(server: Any) -> Iterator[redis.Redis]:
    """A second FakeRedis client on the same server: another process writing concurrently."""
    client = fakeredis.FakeRedis(server=server)
    yield client
    client.close()


def status_of(connection: redis.Redis, job: Job) -> JobStatus:
    return Job.fetch(job.id, connection=connection).get_status()


def executed(connection: redis.Redis) -> list[str]:
    return [label.decode() for label in connection.lrange("executed", 0, -1)]


def work(connection: redis.Redis, *queues: Queue) -> None:
    SimpleWorker(list(queues), connection=connection).work(burst=True)


def test_fakeredis_pipelines_are_redis_py_pipelines(fake: redis.Redis) -> None:
    assert isinstance(fake, redis.Redis)
    assert isinstance(fake.pipeline(), redis.client.Pipeline)


def test_jobs_for_three_queues_share_one_pipeline(fake: redis.Redis) -> None:
    queues = [Queue(name, connection=fake) for name in ("q1", "q2", "q3")]
    with fake.pipeline() as pipe:
        jobs = [q.enqueue_call(record, args=(q.name,), pipeline=pipe) for q in queues]
        assert job_keys(fake) == []  # all buffered until execute()
        pipe.execute()
    for q, job in zip(queues, jobs):
        assert q.job_ids == [job.id]
        assert status_of(fake, job) == JobStatus.QUEUED
    work(fake, *queues)
    assert executed(fake) == ["q1", "q2", "q3"]
    assert [status_of(fake, job) for job in jobs] == [JobStatus.FINISHED] * 3


@pytest.mark.parametrize("transaction", [True, False], ids=["transaction", "no-transaction"])
def test_caller_command_buffered_before_enqueue_joins_the_batch(fake: redis.Redis, transaction: bool) -> None:
    default = Queue("default", connection=fake)
    with fake.pipeline(transaction=transaction) as pipe:
        pipe.set("order:1", "paid")
        first = default.enqueue_call(record, args=("a",), pipeline=pipe)
        second = default.enqueue_call(record, args=("b",), pipeline=pipe)
        assert fake.get("order:1") is None and job_keys(fake) == []
        results = pipe.execute()
    assert results[0] is True
    assert fake.get("order:1") == b"paid"
    assert default.job_ids == [first.id, second.id]


def test_child_of_parent_buffered_in_same_pipeline_is_deferred_then_runs_after_it(fake: redis.Redis) -> None:
    parents, children = Queue("parents", connection=fake), Queue("children", connection=fake)
    with fake.pipeline() as pipe:
        pipe.set("batch", "started")
        parent = parents.enqueue_call(record, args=("parent",), pipeline=pipe)
        child = children.enqueue_call(record, args=("child",), depends_on=parent, pipeline=pipe)
        pipe.execute()
    assert fake.get("batch") == b"started"
    assert parents.job_ids == [parent.id]
    assert children.job_ids == []
    assert status_of(fake, child) == JobStatus.DEFERRED
    assert DeferredJobRegistry(queue=children).get_job_ids() == [child.id]
    assert fake.smembers(Job.dependents_key_for(parent.id)) == {child.id.encode()}

    work(fake, parents, children)
    assert executed(fake) == ["parent", "child"]
    assert status_of(fake, parent) == status_of(fake, child) == JobStatus.FINISHED
    assert DeferredJobRegistry(queue=children).get_job_ids() == []


def test_child_of_finished_parent_in_multi_pipeline_is_queued_at_once(fake: redis.Redis) -> None:
    parents, children = Queue("parents", connection=fake), Queue("children", connection=fake)
    parent = parents.enqueue(record, "parent")
    work(fake, parents)
    assert status_of(fake, parent) == JobStatus.FINISHED
    with fake.pipeline() as pipe:
        pipe.multi()
        other = children.enqueue_call(record, args=("other",), pipeline=pipe)
        child = children.enqueue_call(record, args=("child",), depends_on=parent, pipeline=pipe)
        pipe.execute()
    assert children.job_ids == [other.id, child.id]
    assert status_of(fake, child) == JobStatus.QUEUED
    assert DeferredJobRegistry(queue=children).get_job_ids() == []


def test_parent_finishing_before_execute_aborts_the_whole_batch(
    fake: redis.Redis, fake_other_client: redis.Redis
) -> None:
    parents, children = Queue("parents", connection=fake), Queue("children", connection=fake)
    parent = parents.enqueue(record, "parent")
    keys_before = job_keys(fake)
    with fake.pipeline() as pipe:
        pipe.multi()
        pipe.set("batch", "started")
        children.enqueue_call(record, args=("child",), depends_on=parent, pipeline=pipe)
        fake_other_client.hset(parent.key, "status", JobStatus.FINISHED.value)  # a worker finishes it
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert fake.get("batch") is None
    assert job_keys(fake) == keys_before
    assert children.count == 0
    assert DeferredJobRegistry(queue=children).get_job_ids() == []


def _enqueue_many_takes_dependencies() -> bool:
    prepare_data = getattr(Queue, "prepare_data", None)
    return prepare_data is not None and "depends_on" in inspect.signature(prepare_data).parameters


@pytest.mark.skipif(not _enqueue_many_takes_dependencies(), reason="this RQ's enqueue_many has no depends_on")
def test_enqueue_many_with_dependencies_keeps_the_callers_batch_whole(fake: redis.Redis) -> None:
    parents, children = Queue("parents", connection=fake), Queue("children", connection=fake)
    parent = parents.enqueue(record, "parent")
    with fake.pipeline() as pipe:
        pipe.set("batch", "started")
        jobs = children.enqueue_many(
            [
                Queue.prepare_data(record, args=("free",), job_id="free"),
                Queue.prepare_data(record, args=("child",), job_id="child", depends_on=parent.id),
            ],
            pipeline=pipe,
        )
        assert fake.get("batch") is None  # D5: nothing of the caller's batch ran yet
        assert fake.exists(Job.key_for("free"), Job.key_for("child")) == 0
        pipe.execute()
    assert fake.get("batch") == b"started"
    assert [job.id for job in jobs] == ["free", "child"]
    assert children.job_ids == ["free"]
    assert DeferredJobRegistry(queue=children).get_job_ids() == ["child"]

    work(fake, parents, children)
    assert executed(fake) == ["parent", "free", "child"]
    assert children.count == 0
