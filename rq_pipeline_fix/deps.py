"""Dependent jobs inside a caller's transaction that is already under way (D3, D4, D5).

RQ checks dependencies by WATCHing them and reading their statuses through the pipeline in
immediate mode, then switching to MULTI (``setup_dependencies``) or executing the pipeline
(``enqueue_many``). Once the caller's pipeline is in MULTI or holds commands that is impossible
or splits the caller's batch, so the check runs here instead, with the same contract: the keys
are WATCHed on the connection that will run the caller's EXEC before the statuses are read, so a
parent that changes before the caller's ``execute()`` aborts the whole batch with WatchError.
Everything else is buffered in the caller's transaction: nothing reaches Redis before it runs.

Each parent is judged by the status the batch will leave it with: the last status the batch's
own buffered commands set in its hash (an enqueue sets queued, deferred or scheduled; a re-save
of a finished job sets finished), else the one in Redis, read under WATCH. Which statuses count
as met is the installed RQ's answer, asked of RQ's own code (``rq_counts_as_met``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable
from typing import Any

from .pipelines import DELETED, NO_STATUS, say_once, start_transaction, statuses_written, watched_field

# RQ's two dependency checks, which do not always agree (allow_failure before 3.0, a parent hash
# without a status). Plain strings: they key a cache looked up per parent.
ENQUEUE = "Queue.setup_dependencies"  # enqueue, enqueue_call, enqueue_job: one job
ENQUEUE_MANY = "Job.dependencies_are_met"  # enqueue_many, via Dependency.get_jobs_with_met_dependencies


def setup_in_transaction(queue: Any, job: Any, pipe: Any) -> Any:
    """``Queue.setup_dependencies`` for a pipeline in MULTI or holding buffered commands."""
    start_transaction(pipe)
    if not must_wait([job], pipe, ENQUEUE)[0]:
        return job
    from rq.job import JobStatus

    # What RQ does for a job with an unfinished parent, buffered in the caller's transaction.
    job.set_status(JobStatus.DEFERRED, pipeline=pipe)
    job.register_dependency(pipeline=pipe)
    job.save(pipeline=pipe)
    job.cleanup(ttl=job.ttl, pipeline=pipe)
    return job


def split_in_transaction(
    dependency_class: Any, jobs: Iterable[Any], pipe: Any
) -> tuple[list[Any], list[Any]]:
    """``Dependency.get_jobs_with_met_dependencies`` for the caller's pipeline: registers every
    job as its parents' dependent (as RQ does) and splits them into (met, unmet), with at most one
    round trip for the whole batch and no ``execute()``."""
    start_transaction(pipe)
    jobs = list(jobs)
    for job in jobs:
        job.register_dependency(pipeline=pipe)
    waits = must_wait(jobs, pipe, ENQUEUE_MANY)
    return [job for job, wait in zip(jobs, waits) if not wait], [
        job for job, wait in zip(jobs, waits) if wait
    ]


_NOT_IN_BATCH: Any = object()


def must_wait(jobs: list[Any], pipe: Any, path: str) -> list[bool]:
    """Whether each job has a parent that keeps it deferred, decided inside the caller's
    transaction (already started) with at most one round trip.

    A parent whose status this batch sets is judged by that status, whatever Redis holds, so a
    job with such an unfinished parent waits without anything being read. The other parents are
    WATCHed before their status is read (``watched_field``); a parent missing from Redis and not
    written by the batch, or deleted by the batch, is ignored, as RQ does.
    """
    in_batch = statuses_written(pipe)
    parent_keys = [[job.key_for(parent_id) for parent_id in job._dependency_ids] for job in jobs]
    decided: list[bool | None] = []  # True: waits; None: Redis has the last word
    to_read: list[Any] = []
    for job, keys in zip(jobs, parent_keys):
        allow_failure = _allows_failure(job)
        waits: bool | None = False
        unread = []
        for key in keys:
            status = in_batch.get(key, NO_STATUS)
            if status is NO_STATUS:  # the batch leaves its status as it is: Redis decides
                unread.append(key)
            elif status is DELETED:  # gone when the batch has run: RQ ignores a missing parent
                continue
            elif not rq_counts_as_met(path, status, allow_failure):
                waits = True
                break
        if not waits and unread:
            waits = None
            to_read += unread
        decided.append(waits)
    statuses = watched_field(pipe, to_read, "status") if to_read else {}
    return [
        bool(waits)
        if waits is not None
        else not all(_met_in_redis(path, statuses[key], key in in_batch, job) for key in keys)
        for job, keys, waits in zip(jobs, parent_keys, decided)
    ]


def _met_in_redis(path: str, status: Any, written_by_batch: bool, job: Any) -> bool:
    if status is None and not written_by_batch:
        return True  # missing from Redis, and the batch does not create it: RQ ignores it
    return rq_counts_as_met(path, status, _allows_failure(job))


def _allows_failure(job: Any) -> bool:
    return bool(getattr(job, "allow_dependency_failures", False))  # Dependency(allow_failure=) from 1.11


# --- what the installed RQ counts as a met dependency --------------------------------------------

_answers: dict[tuple[str, Any, bool], bool] = {}  # (path, status as found, allow_failure)


def rq_counts_as_met(path: str, status: Any, allow_failure: bool) -> bool:
    """Whether the installed RQ, deciding on ``path``, lets a child with ``allow_failure`` go
    ahead when its parent's hash has ``status`` (None: a hash without one).

    The answer is RQ's own: its decision code runs once per combination on a stand-in for Redis
    that holds only that parent (``_ask_rq``), and is remembered. RQ releases differ here: before
    3.0, ``setup_dependencies`` defers a child of a FAILED parent even with ``allow_failure``,
    while ``dependencies_are_met`` (enqueue_many, and workers) lets it run.
    """
    try:
        return _answers[path, status, allow_failure]
    except (KeyError, TypeError):
        pass
    text = _status_text(status)
    from rq.job import JobStatus

    if text is not None and text not in {member.value for member in JobStatus}:
        return False  # not a status this RQ knows: its own check fails it (or cannot restore it)
    answer = _ask_rq(path, text, allow_failure)
    with contextlib.suppress(TypeError):  # kept under the status as found: bytes, str or JobStatus
        _answers[path, status, allow_failure] = answer
    return answer


def _status_text(status: Any) -> str | None:
    value = getattr(status, "value", status)  # a JobStatus buffered by set_status(pipeline=)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if value is None or value == "":
        return None
    return str(value)


def _ask_rq(path: str, status: str | None, allow_failure: bool) -> bool:
    from rq.job import JobStatus

    try:
        return _run_rq_check(path, status, allow_failure)
    except Exception as exc:  # a shape of RQ we cannot drive: the documented rule, and say so
        from .detect import reraise_job_timeout

        reraise_job_timeout(exc)  # the job's, and nothing is remembered: asked again next time
        answer = status == JobStatus.FINISHED.value or (allow_failure and status == JobStatus.FAILED.value)
        if status is None:
            answer = path == ENQUEUE_MANY  # dependencies_are_met skips a parent without status
        say_once(
            f"could not ask rq's {path} which dependencies it counts as met ({exc!r}); "
            "deciding as RQ documents: finished, or failed with allow_failure",
            key=(path, "cannot ask"),
        )
        return answer


_PARENT = "rq-pipeline-fix-probe-parent"


def _run_rq_check(path: str, status: str | None, allow_failure: bool) -> bool:
    """Run the installed RQ's dependency check on a child of one parent with ``status``."""
    from rq.job import Job, JobStatus
    from rq.queue import Queue

    redis: Any = _OneParent()  # what RQ's code needs of Redis here, and nothing else
    queue = Queue("rq-pipeline-fix-probe", connection=redis)
    depends_on: Any = _PARENT
    if allow_failure:  # only asked where jobs can have it: Dependency(allow_failure=) is in RQ >= 1.11
        from rq.job import Dependency

        depends_on = Dependency(jobs=[_PARENT], allow_failure=True)
    child = queue.create_job("os.getpid", depends_on=depends_on)
    parent = Job.create("os.getpid", connection=redis, id=_PARENT)
    redis.parent_hash.update(
        (_bytes(field), _bytes(value)) for field, value in parent.to_dict().items() if field != "status"
    )
    if status is not None:
        redis.parent_hash[b"status"] = status.encode()
    if path == ENQUEUE_MANY:
        return bool(inspect.unwrap(Job.dependencies_are_met)(child))
    setup_dependencies = inspect.unwrap(Queue.__dict__["setup_dependencies"])  # RQ's, beneath wrappers
    child._status = JobStatus.QUEUED
    setup_dependencies(queue, child, pipeline=redis.pipeline())
    return bool(child.get_status(refresh=False) != JobStatus.DEFERRED)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(getattr(value, "value", value)).encode()


class _OneParent:
    """Stands for Redis, and for a pipeline of it, in front of RQ's dependency checks: it holds
    one job hash, the parent's, answers the reads those checks make, and ignores every write."""

    def __init__(self, parent_hash: dict[bytes, bytes] | None = None) -> None:
        self.parent_hash: dict[bytes, bytes] = {} if parent_hash is None else parent_hash
        self.replies: list[Any] = []

    def pipeline(self, *args: Any, **kwargs: Any) -> _OneParent:
        return _OneParent(self.parent_hash)

    def hgetall(self, key: Any) -> dict[bytes, bytes]:
        self.replies.append(self.parent_hash)
        return self.parent_hash

    def hget(self, key: Any, field: Any) -> bytes | None:
        self.replies.append(self.parent_hash.get(_bytes(field)))
        return self.replies[-1]  # type: ignore[no-any-return]

    def smembers(self, key: Any) -> set[bytes]:
        return {_PARENT.encode()}  # the child's dependencies set

    def info(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"redis_version": "7.0.0"}  # some releases ask before writing

    def execute(self, *args: Any, **kwargs: Any) -> list[Any]:
        replies, self.replies = self.replies, []
        return replies

    def __enter__(self) -> _OneParent:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def __getattr__(self, command: str) -> Any:
        if command.startswith("_"):  # e.g. RQ 1.16 caches the server version on the connection
            raise AttributeError(command)
        return lambda *args, **kwargs: None  # writes, TTLs, WATCH, MULTI
