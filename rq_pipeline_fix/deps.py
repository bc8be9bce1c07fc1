"""Dependent jobs inside a caller's transaction that is already under way (D3, D4, D5).

RQ checks dependencies by WATCHing them and reading their statuses through the pipeline in
immediate mode, then switching to MULTI (``setup_dependencies``) or executing the pipeline
(``enqueue_many``). Once the caller's pipeline is in MULTI or holds commands that is impossible
or splits the caller's batch, so the check runs here instead, with the same contract: the keys
are WATCHed on the connection that will run the caller's EXEC before the statuses are read, so a
parent that changes before the caller's ``execute()`` aborts the whole batch with WatchError.
Everything else is buffered in the caller's transaction: nothing reaches Redis before it runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .pipelines import buffered_hash_keys, start_transaction, watched_field


def setup_in_transaction(queue: Any, job: Any, pipe: Any) -> Any:
    """``Queue.setup_dependencies`` for a pipeline in MULTI or holding buffered commands."""
    start_transaction(pipe)
    if not must_wait([job], pipe)[0]:
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
    waits = must_wait(jobs, pipe)
    return [job for job, wait in zip(jobs, waits) if not wait], [
        job for job, wait in zip(jobs, waits) if wait
    ]


def must_wait(jobs: list[Any], pipe: Any) -> list[bool]:
    """Whether each job has a parent that keeps it deferred, decided inside the caller's
    transaction (already started) with at most one round trip.

    A parent only buffered in this pipeline is unfinished whatever Redis holds, so a job with
    one waits without anything being read. The other jobs' parents are WATCHed before their
    status is read (``watched_field``); a parent missing from Redis is ignored, as RQ does.
    """
    buffered = buffered_hash_keys(pipe)
    parent_keys = [[job.key_for(parent_id) for parent_id in job._dependency_ids] for job in jobs]
    waiting_on_batch = [any(key in buffered for key in keys) for keys in parent_keys]
    to_read = [key for keys, waits in zip(parent_keys, waiting_on_batch) if not waits for key in keys]
    statuses = watched_field(pipe, to_read, "status") if to_read else {}
    return [
        waits or not all(_is_met(statuses[key], job) for key in keys)
        for job, keys, waits in zip(jobs, parent_keys, waiting_on_batch)
    ]


def _is_met(status: Any, job: Any) -> bool:
    """FINISHED parents are met, and FAILED ones when the job has ``allow_failure``; a parent
    missing from Redis (no status) counts as met, as in RQ."""
    from rq.job import JobStatus

    if status is None:
        return True
    text = status.decode() if isinstance(status, bytes) else str(status)
    if text == JobStatus.FINISHED.value:
        return True
    return text == JobStatus.FAILED.value and bool(getattr(job, "allow_dependency_failures", False))
