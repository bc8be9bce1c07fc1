"""``unique=True`` (RQ 2.8 on) with a caller's pipeline (D10): the contract of DEFECTS.md. The
job's key is WATCHed on the connection that runs the caller's EXEC and its existence read in the
same round trip; an existing job raises DuplicateJobError at the call and the caller's other
commands survive; otherwise the job is buffered; a job someone creates before EXEC aborts the
batch with WatchError, and ``Redis.transaction(fn)``'s retry ends in DuplicateJobError. Each test
checks the final state in Redis."""

from __future__ import annotations

import inspect
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest
import redis
from packaging.version import Version
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry

import rq_pipeline_fix
from tests.conftest import detected, job_keys
from tests.jobs import record
from tests.snapshot import snapshot
from tests.test_faults import client_of, proxy, server  # noqa: F401  (fixtures)

if "unique" not in inspect.signature(Queue.enqueue_job).parameters:
    pytest.skip("unique= arrived in RQ 2.8", allow_module_level=True)

from rq.exceptions import DuplicateJobError  # RQ 2.8 on

WHEN = datetime(2100, 1, 1, tzinfo=timezone.utc)
RQ_VERSION = Version(rq_pipeline_fix.status().rq_version or "0")

Enqueue = Callable[[Queue, Any], Job]

# Every way to ask for a unique job. enqueue_at/enqueue_in take unique= from RQ 3.0 (2.8-2.12
# parse it and drop it: RQ's own behaviour, with or without a pipeline).
ENQUEUES: dict[str, Enqueue] = {
    "enqueue": lambda q, pipe: q.enqueue(record, "u", job_id="u", unique=True, pipeline=pipe),
    "enqueue_call": lambda q, pipe: q.enqueue_call(
        record, args=("u",), job_id="u", unique=True, pipeline=pipe
    ),
    "enqueue_job": lambda q, pipe: q.enqueue_job(
        q.create_job(record, args=("u",), job_id="u"), pipeline=pipe, unique=True
    ),
    "schedule_job": lambda q, pipe: q.schedule_job(
        q.create_job(record, args=("u",), job_id="u"), WHEN, pipeline=pipe, unique=True
    ),
}
if RQ_VERSION.major >= 3:
    ENQUEUES["enqueue_at"] = lambda q, pipe: q.enqueue_at(
        WHEN, record, "u", job_id="u", unique=True, pipeline=pipe
    )
    ENQUEUES["enqueue_in"] = lambda q, pipe: q.enqueue_in(
        timedelta(days=1), record, "u", job_id="u", unique=True, pipeline=pipe
    )
SCHEDULED = {"schedule_job", "enqueue_at", "enqueue_in"}


def landed(connection: redis.Redis, how: str) -> list[str]:
    """Where the unique job is: its queue, or the scheduled registry."""
    queue = Queue("default", connection=connection)
    return ScheduledJobRegistry(queue=queue).get_job_ids() if how in SCHEDULED else queue.job_ids


@pytest.mark.parametrize("how", ENQUEUES)
def test_unique_job_waits_for_the_callers_execute(connection: redis.Redis, how: str) -> None:
    with connection.pipeline() as pipe:
        pipe.set("mine", 1)
        job = ENQUEUES[how](Queue("default", connection=connection), pipe)
        pipe.incr("after")
        assert connection.keys("*") == []
        pipe.execute()
    assert landed(connection, how) == ["u"]
    assert Job.fetch("u", connection=connection).get_status() == job.get_status(refresh=False)
    assert connection.get("mine") == b"1" and connection.get("after") == b"1"


@pytest.mark.parametrize("how", ENQUEUES)
def test_unique_job_writes_what_rq_writes_without_a_pipeline(connection: redis.Redis, how: str) -> None:
    """The same keys and job fields as RQ's own script run without pipeline= (RQ's script is what
    runs, inside the caller's EXEC)."""
    ENQUEUES[how](Queue("default", connection=connection), None)
    alone = snapshot(connection)
    connection.flushdb()
    with connection.pipeline() as pipe:
        ENQUEUES[how](Queue("default", connection=connection), pipe)
        pipe.execute()
    assert snapshot(connection) == alone


@pytest.mark.parametrize("how", ENQUEUES)
def test_existing_job_raises_at_the_call_and_the_batch_goes_on(
    connection: redis.Redis, other_client: redis.Redis, how: str
) -> None:
    default = Queue("default", connection=connection)
    existing = default.enqueue_call(record, args=("first",), job_id="u")
    before = snapshot(connection)
    with connection.pipeline() as pipe:
        pipe.set("mine", 1)
        with pytest.raises(DuplicateJobError, match="'u' already exists"):
            ENQUEUES[how](default, pipe)
        assert not pipe.watching  # the WATCH was ours alone: the pipeline is as it was
        default.enqueue_call(record, args=("other",), job_id="other", pipeline=pipe)
        other_client.hset(existing.key, "description", "touched")  # the existing job changes: no abort
        pipe.execute()
    assert connection.get("mine") == b"1"
    assert default.job_ids == ["u", "other"]
    assert Job.fetch("u", connection=connection).args == ("first",)
    assert set(snapshot(connection)) >= set(before)


@pytest.mark.parametrize("how", ENQUEUES)
def test_same_unique_job_twice_in_one_batch_raises_at_the_second(connection: redis.Redis, how: str) -> None:
    default = Queue("default", connection=connection)
    with connection.pipeline() as pipe:
        ENQUEUES[how](default, pipe)
        with pytest.raises(DuplicateJobError):
            ENQUEUES[how](default, pipe)
        pipe.execute()
    assert landed(connection, how) == ["u"]


def test_a_job_buffered_earlier_without_unique_counts_as_existing(connection: redis.Redis) -> None:
    default = Queue("default", connection=connection)
    with connection.pipeline() as pipe:
        default.enqueue_call(record, args=("plain",), job_id="u", pipeline=pipe)
        with pytest.raises(DuplicateJobError):
            ENQUEUES["enqueue"](default, pipe)
        pipe.execute()
    assert default.job_ids == ["u"] and Job.fetch("u", connection=connection).args == ("plain",)


@pytest.mark.parametrize("how", ENQUEUES)
def test_job_created_by_someone_else_before_exec_aborts_the_batch(
    connection: redis.Redis, other_client: redis.Redis, how: str
) -> None:
    default = Queue("default", connection=connection)
    with connection.pipeline() as pipe:
        pipe.set("mine", 1)
        ENQUEUES[how](default, pipe)
        Queue("default", connection=other_client).enqueue_call(record, args=("theirs",), job_id="u")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert connection.get("mine") is None
    assert default.job_ids == ["u"] and Job.fetch("u", connection=connection).args == ("theirs",)
    assert job_keys(connection) == [b"rq:job:u"]


@pytest.mark.parametrize("how", ENQUEUES)
def test_transaction_retry_ends_in_duplicate_job_error(
    connection: redis.Redis, other_client: redis.Redis, how: str
) -> None:
    default = Queue("default", connection=connection)
    attempts = []

    def batch(pipe: Any) -> None:
        attempts.append(1)
        pipe.set("mine", len(attempts))
        ENQUEUES[how](default, pipe)
        if len(attempts) == 1:  # someone else gets there between our check and our EXEC
            Queue("default", connection=other_client).enqueue_call(record, args=("theirs",), job_id="u")

    with pytest.raises(DuplicateJobError):
        connection.transaction(batch)
    assert len(attempts) == 2
    assert connection.get("mine") is None
    assert Job.fetch("u", connection=connection).args == ("theirs",)


def test_duplicate_keeps_the_callers_own_watch(connection: redis.Redis, other_client: redis.Redis) -> None:
    default = Queue("default", connection=connection)
    default.enqueue_call(record, job_id="u")
    connection.set("balance", 10)
    with connection.pipeline() as pipe:
        pipe.watch("balance")
        with pytest.raises(DuplicateJobError):
            ENQUEUES["enqueue"](default, pipe)
        assert pipe.watching and pipe.explicit_transaction  # RQ's multi() came before the check
        pipe.set("balance", 9)
        other_client.set("balance", 0)
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert connection.get("balance") == b"0"


def test_duplicate_after_a_dependent_enqueue_drops_only_its_own_watch(
    connection: redis.Redis, other_client: redis.Redis
) -> None:
    """The guard WATCHed the dependent's parent; the duplicate's WATCH goes, the parent's stays."""
    default = Queue("default", connection=connection)
    parent = Queue("parents", connection=other_client).enqueue_call(record, args=("p",), job_id="p")
    existing = Queue("others", connection=other_client).enqueue_call(record, args=("x",), job_id="u")
    with connection.pipeline() as pipe:
        pipe.set("mine", 1)
        default.enqueue_call(record, args=("c",), job_id="c", depends_on="p", pipeline=pipe)
        with pytest.raises(DuplicateJobError):
            ENQUEUES["enqueue"](default, pipe)
        other_client.hset(existing.key, "description", "touched")  # the existing job changes: no abort
        pipe.execute()
    assert (
        connection.get("mine") == b"1"
        and Job.fetch("c", connection=connection).get_status() == JobStatus.DEFERRED
    )
    with connection.pipeline() as pipe:
        default.enqueue_call(record, args=("c2",), job_id="c2", depends_on="p", pipeline=pipe)
        with pytest.raises(DuplicateJobError):
            ENQUEUES["enqueue"](default, pipe)
        other_client.hset(parent.key, "status", "finished")  # the parent's WATCH survived the duplicate
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert not connection.exists(Job.key_for("c2"))


def test_duplicate_after_the_parent_changed_ends_in_watch_error(
    connection: redis.Redis, other_client: redis.Redis
) -> None:
    default = Queue("default", connection=connection)
    parent = Queue("parents", connection=other_client).enqueue_call(record, args=("p",), job_id="p")
    Queue("others", connection=other_client).enqueue_call(record, args=("x",), job_id="u")
    with connection.pipeline() as pipe:
        pipe.set("mine", 1)
        default.enqueue_call(record, args=("c",), job_id="c", depends_on="p", pipeline=pipe)
        other_client.hset(parent.key, "status", "finished")  # the batch is doomed already
        with pytest.raises(redis.WatchError):
            ENQUEUES["enqueue"](default, pipe)
        assert not pipe.watching and not pipe.command_stack  # reset, as for a lost WATCH
    assert connection.get("mine") is None and not connection.exists(Job.key_for("c"))


def test_unique_job_at_front_lands_at_the_front(connection: redis.Redis) -> None:
    default = Queue("default", connection=connection)
    default.enqueue_call(record, args=("a",), job_id="a")
    with connection.pipeline() as pipe:
        default.enqueue_call(record, args=("u",), job_id="u", unique=True, at_front=True, pipeline=pipe)
        pipe.execute()
    assert default.job_ids == ["u", "a"]
    SimpleWorker([default], connection=connection).work(burst=True)
    assert connection.lrange("executed", 0, -1) == [b"u", b"a"]


def test_unique_job_in_a_plain_pipeline_becomes_a_transaction(
    connection: redis.Redis, other_client: redis.Redis
) -> None:
    default = Queue("default", connection=connection)
    with connection.pipeline(transaction=False) as pipe:
        pipe.set("mine", 1)
        ENQUEUES["schedule_job"](default, pipe)
        other_client.set("rq:job:u", "someone")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert connection.get("mine") is None


def test_unique_jobs_and_a_dependent_on_one_of_them_run_in_order(connection: redis.Redis) -> None:
    """A job depending on a unique job buffered in the same pipeline is DEFERRED, as for any
    parent enqueued earlier in the batch."""
    high, low = Queue("high", connection=connection), Queue("low", connection=connection)
    with connection.pipeline() as pipe:
        high.enqueue_call(record, args=("u",), job_id="u", unique=True, pipeline=pipe)
        low.enqueue_call(record, args=("child",), job_id="child", depends_on="u", pipeline=pipe)
        pipe.execute()
    assert Job.fetch("child", connection=connection).get_status() == JobStatus.DEFERRED
    SimpleWorker([high, low], connection=connection).work(burst=True)
    assert connection.lrange("executed", 0, -1) == [b"u", b"child"]


def test_no_pipeline_is_kept_alive_by_rqs_script_cache(connection: redis.Redis) -> None:
    import rq.scripts

    for how in ENQUEUES:
        connection.flushdb()
        with connection.pipeline() as pipe:
            ENQUEUES[how](Queue("default", connection=connection), pipe)
            pipe.execute()
    caches = [value for value in vars(rq.scripts).values() if type(value) is dict]
    assert caches and not [key for cache in caches for key in cache if isinstance(key, redis.client.Pipeline)]


@pytest.mark.parametrize("how", ENQUEUES)
def test_without_pipeline_unique_is_rqs_own(connection: redis.Redis, how: str) -> None:
    default = Queue("default", connection=connection)
    ENQUEUES[how](default, None)
    assert landed(connection, how) == ["u"]
    with pytest.raises(DuplicateJobError):
        ENQUEUES[how](default, None)


@pytest.mark.reliability
def test_connection_lost_after_the_unique_check_aborts_the_batch(server: Any, proxy: Any) -> None:  # noqa: F811
    """The key was WATCHed on the pipeline's connection; the connection drops; someone creates
    the job meanwhile. EXEC on a new connection would not be watching and the batch would land
    beside their job: redis-py must refuse with WatchError, and nothing of the batch is written."""
    client = client_of(proxy.port)
    default = Queue("default", connection=client)
    pipe = client.pipeline()
    pipe.set("mine", 1)
    ENQUEUES["enqueue"](default, pipe)
    proxy.drop_connections()
    Queue("default", connection=server.direct()).enqueue_call(record, args=("theirs",), job_id="u")
    with pytest.raises(redis.WatchError):
        pipe.execute()
    direct = server.direct()
    assert direct.get("mine") is None and Job.fetch("u", connection=direct).args == ("theirs",)


@pytest.mark.usefixtures("unpatched")
def test_without_guard_unique_job_lands_before_execute_where_d10_was_detected(
    connection: redis.Redis,
) -> None:
    assert detected("D10"), "every RQ release with unique= measured so far has D10"
    with connection.pipeline() as pipe:
        pipe.multi()
        ENQUEUES["enqueue_call"](Queue("default", connection=connection), pipe)
        assert Queue("default", connection=connection).job_ids == ["u"]  # before any execute()
        pipe.reset()
    assert job_keys(connection) == [b"rq:job:u"]  # and the reset leaves it behind


def test_a_neighbours_wrapper_between_enqueue_and_the_script_changes_nothing(
    connection: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenTelemetry wraps Queue._enqueue_job (wrapt): the guard finds the caller's pipeline in
    RQ's frames all the same, below and above that wrapper."""
    import wrapt

    seen: list[str] = []

    def traced(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        seen.append("traced")
        return wrapped(*args, **kwargs)

    monkeypatch.setattr(Queue, "_enqueue_job", wrapt.FunctionWrapper(Queue.__dict__["_enqueue_job"], traced))
    default = Queue("default", connection=connection)
    with connection.pipeline() as pipe:
        pipe.set("mine", 1)
        ENQUEUES["enqueue_call"](default, pipe)
        assert connection.keys("*") == []
        pipe.execute()
    assert seen == ["traced"] and default.job_ids == ["u"] and connection.get("mine") == b"1"
