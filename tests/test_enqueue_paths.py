"""Every enqueue path of RQ that takes ``pipeline=`` joins the caller's transaction (the audit in
docs/enqueue-paths.md): given a caller's pipeline that is in MULTI, holds a command of the
caller's, or WATCHes a key, the call writes nothing to Redis; ``reset()`` leaves nothing; after
``execute()`` the job is there; and a WATCHed key changed before ``execute()`` aborts it all.
Paths a release does not have are skipped. (The paths with a contract of their own have their
own modules: unique= in test_unique.py, Group in test_group.py, is_async=False in
test_sync_queue.py, bad input in test_bad_input.py.)"""

from __future__ import annotations

import inspect
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus

from tests.conftest import detected
from tests.jobs import record
from tests.snapshot import snapshot

WHEN = datetime(2100, 1, 1, tzinfo=timezone.utc)
J = "j"  # the job every path enqueues

Enqueue = Callable[[Queue, Any], Any]


def _job(queue: Queue) -> Job:
    return queue.create_job(record, args=("j",), job_id=J)


PATHS: dict[str, Enqueue] = {
    "enqueue": lambda q, p: q.enqueue(record, "j", job_id=J, pipeline=p),
    "enqueue_call": lambda q, p: q.enqueue_call(record, args=("j",), job_id=J, pipeline=p),
    "enqueue_call at_front": lambda q, p: q.enqueue_call(
        record, args=("j",), job_id=J, at_front=True, pipeline=p
    ),
    "enqueue_job": lambda q, p: q.enqueue_job(_job(q), pipeline=p),
    "enqueue_job at_front": lambda q, p: q.enqueue_job(_job(q), pipeline=p, at_front=True),
    "enqueue_many": lambda q, p: q.enqueue_many([Queue.prepare_data(record, ("j",), job_id=J)], pipeline=p),
    "enqueue_at": lambda q, p: q.enqueue_at(WHEN, record, "j", job_id=J, pipeline=p),
    "enqueue_in": lambda q, p: q.enqueue_in(timedelta(days=1), record, "j", job_id=J, pipeline=p),
    "schedule_job": lambda q, p: q.schedule_job(_job(q), WHEN, pipeline=p),
    "depends_on a queued job": lambda q, p: q.enqueue(record, "j", job_id=J, depends_on="parent", pipeline=p),
    "depends_on a finished job": lambda q, p: q.enqueue(record, "j", job_id=J, depends_on="done", pipeline=p),
    "options: timeouts, TTLs, meta, description": lambda q, p: q.enqueue_call(
        record,
        args=("j",),
        job_id=J,
        timeout=30,
        result_ttl=60,
        ttl=600,
        failure_ttl=60,
        meta={"k": "v"},
        description="d",
        pipeline=p,
    ),
}
# The building blocks the enqueue methods call, public too: each writes through the pipeline as
# the caller's own command would, so after a WATCH (immediate mode, no multi() yet) it runs at
# once, like any command sent then. The enqueue methods above switch to MULTI themselves.
PRIMITIVES: dict[str, Enqueue] = {
    "Job.save": lambda q, p: _job(q).save(pipeline=p),
    "Queue.push_job_id": lambda q, p: q.push_job_id(J, pipeline=p),
}


def _optional_paths() -> None:
    """The paths only some releases have, added where the installed RQ has them."""
    import rq

    if "depends_on" in inspect.signature(Queue.prepare_data).parameters:  # 1.15 on
        PATHS["enqueue_many depends_on"] = lambda q, p: q.enqueue_many(
            [Queue.prepare_data(record, ("j",), job_id=J, depends_on="parent")], pipeline=p
        )
    if "group_id" in inspect.signature(Queue.enqueue_many).parameters:  # 2.0 on
        PATHS["enqueue_many group_id"] = lambda q, p: q.enqueue_many(
            [Queue.prepare_data(record, ("j",), job_id=J)], pipeline=p, group_id="g"
        )
    try:
        from rq.job import Dependency
    except ImportError:  # RQ < 1.12
        pass
    else:
        PATHS["depends_on Dependency(allow_failure=True)"] = lambda q, p: q.enqueue(
            record, "j", job_id=J, depends_on=Dependency(jobs=["failed"], allow_failure=True), pipeline=p
        )
        if "enqueue_at_front" in inspect.signature(Dependency).parameters:
            PATHS["depends_on Dependency(enqueue_at_front=True)"] = lambda q, p: q.enqueue(
                record,
                "j",
                job_id=J,
                depends_on=Dependency(jobs=["parent"], enqueue_at_front=True),
                pipeline=p,
            )
    if hasattr(rq, "Retry"):
        PATHS["retry=Retry"] = lambda q, p: q.enqueue(
            record, "j", job_id=J, retry=rq.Retry(max=2), pipeline=p
        )
    if hasattr(rq, "Repeat"):  # 2.4 on
        PATHS["repeat=Repeat"] = lambda q, p: q.enqueue(
            record, "j", job_id=J, repeat=rq.Repeat(times=2), pipeline=p
        )
    callback = getattr(rq, "Callback", None)
    if callback is not None:  # on_success/on_failure/on_stopped as Callback objects
        PATHS["on_success/on_failure/on_stopped=Callback"] = lambda q, p: q.enqueue(
            record,
            "j",
            job_id=J,
            on_success=callback(record),
            on_failure=callback(record),
            on_stopped=callback(record),
            pipeline=p,
        )
    if hasattr(rq, "Webhook"):  # 3.0
        PATHS["webhooks=Webhook"] = lambda q, p: q.enqueue(
            record, "j", job_id=J, webhooks=[rq.Webhook("http://127.0.0.1:9/hook", "finished")], pipeline=p
        )
    if hasattr(rq, "RateLimit"):  # 3.0: enqueue_job refuses a pipeline; enqueue_at takes one
        PATHS["enqueue_at rate_limit=RateLimit"] = lambda q, p: q.enqueue_at(
            WHEN, record, "j", job_id=J, rate_limit=rq.RateLimit("k", 1), pipeline=p
        )


_optional_paths()

STATES: dict[str, Callable[[Any], None]] = {
    "in MULTI": lambda pipe: pipe.multi(),
    "holding a command": lambda pipe: pipe.set("mine", 1),
    "WATCHing": lambda pipe: pipe.watch("balance"),
}


@pytest.fixture
def seeded(connection: redis.Redis) -> redis.Redis:
    """A queued parent, a finished and a failed job, and the key the caller WATCHes."""
    parents = Queue("parents", connection=connection)
    parents.enqueue_call(record, args=("parent",), job_id="parent")
    for job_id, status in (("done", JobStatus.FINISHED), ("failed", JobStatus.FAILED)):
        parents.enqueue_call(record, args=(job_id,), job_id=job_id).set_status(status)
    connection.set("balance", 10)
    return connection


@pytest.mark.parametrize(
    ("path", "state"),
    [(path, state) for path in PATHS for state in STATES]
    + [(path, state) for path in PRIMITIVES for state in STATES if state != "WATCHing"],
)
def test_path_joins_the_callers_transaction(seeded: redis.Redis, path: str, state: str) -> None:
    queue = Queue("default", connection=seeded)
    enqueue = {**PATHS, **PRIMITIVES}[path]
    before = snapshot(seeded)
    with seeded.pipeline() as pipe:
        STATES[state](pipe)
        enqueue(queue, pipe)
        pipe.set("after", 1)
        assert snapshot(seeded) == before, f"{path} wrote around the caller's pipeline"
        pipe.reset()
        assert snapshot(seeded) == before
        STATES[state](pipe)
        enqueue(queue, pipe)
        pipe.set("after", 1)
        pipe.execute()
    assert seeded.exists(f"rq:job:{J}") or path == "Queue.push_job_id"
    assert seeded.get("after") == b"1" and snapshot(seeded) != before


@pytest.mark.parametrize("path", PRIMITIVES)
def test_building_block_after_a_watch_runs_at_once_like_the_callers_own_commands(
    seeded: redis.Redis, path: str
) -> None:
    queue = Queue("default", connection=seeded)
    before = snapshot(seeded)
    with seeded.pipeline() as pipe:
        pipe.watch("balance")
        PRIMITIVES[path](queue, pipe)
        assert snapshot(seeded) != before  # as pipe.set() would in immediate mode
        pipe.reset()


@pytest.mark.parametrize("path", PATHS)
def test_path_aborted_by_a_watched_key_leaves_nothing(
    seeded: redis.Redis, other_client: redis.Redis, path: str
) -> None:
    queue = Queue("default", connection=seeded)
    with seeded.pipeline() as pipe:
        pipe.watch("balance")
        PATHS[path](queue, pipe)
        pipe.set("after", 1)
        other_client.set("balance", 0)
        before = snapshot(seeded)
        with pytest.raises(redis.WatchError):
            pipe.execute()
    assert snapshot(seeded) == before and seeded.get("after") is None


def test_rate_limited_enqueue_with_a_pipeline_is_refused_by_rq_before_any_write(seeded: redis.Redis) -> None:
    rq = pytest.importorskip("rq")
    if not hasattr(rq, "RateLimit"):
        pytest.skip("rate_limit= arrived in RQ 3.0")
    before = snapshot(seeded)
    with seeded.pipeline() as pipe:
        pipe.set("mine", 1)
        with pytest.raises(ValueError, match="cannot be enqueued with a pipeline"):
            Queue("default", connection=seeded).enqueue(
                record, "j", rate_limit=rq.RateLimit("k", 1), pipeline=pipe
            )
        pipe.execute()
    assert {**before, b"mine": seeded.get("mine")} == {**before, b"mine": b"1"}
    assert set(snapshot(seeded)) - set(before) == {b"mine"}


@pytest.mark.usefixtures("unpatched")
def test_without_guard_enqueue_job_writes_through_a_watching_pipeline_at_once_where_d12_was_detected(
    seeded: redis.Redis,
) -> None:
    """RQ < 1.14: enqueue_job does not call setup_dependencies, so nothing switches the caller's
    WATCHing pipeline to MULTI and each write runs at once."""
    queue = Queue("default", connection=seeded)
    with seeded.pipeline() as pipe:
        pipe.watch("balance")
        queue.enqueue_job(_job(queue), pipeline=pipe)
        landed = queue.job_ids
        pipe.reset()
    assert landed == ([J] if detected("D12") else [])
