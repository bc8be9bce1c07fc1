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

from .pipelines import buffered_hash_keys, start_transaction, watch_and_read


def setup_in_transaction(queue: Any, job: Any, pipe: Any) -> Any:
    """``Queue.setup_dependencies`` for a pipeline in MULTI or holding buffered commands."""
    start_transaction(pipe)
    if not unfinished_parents([job], pipe)[0]:
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
    job as its parents' dependent (as RQ does) and splits them into (met, unmet), with one round
    trip for the whole batch and no ``execute()``."""
    start_transaction(pipe)
    jobs = list(jobs)
    for job in jobs:
        job.register_dependency(pipeline=pipe)
    blocked = unfinished_parents(jobs, pipe)
    met = [job for job, parents in zip(jobs, blocked) if not parents]
    unmet = [job for job, parents in zip(jobs, blocked) if parents]
    return met, unmet


def unfinished_parents(jobs: list[Any], pipe: Any) -> list[list[str]]:
    """For each job, the parents that keep it deferred, checked race-free inside the caller's
    transaction (already started) in one round trip. A parent only buffered in this pipeline is
    unfinished; a parent missing from Redis is ignored, as RQ ignores it."""
    parent_keys = [[job.key_for(parent_id) for parent_id in job._dependency_ids] for job in jobs]
    watched = [key for job, keys in zip(jobs, parent_keys) for key in (job.dependencies_key, *keys)]
    all_parent_keys = [key for keys in parent_keys for key in keys]
    if not all_parent_keys:
        return [[] for _ in jobs]
    replies = watch_and_read(
        pipe, watch_keys=watched, reads=[("HGET", key, "status") for key in all_parent_keys]
    )
    status_by_key = dict(zip(all_parent_keys, replies))
    buffered = buffered_hash_keys(pipe)
    return [
        [
            parent_id
            for parent_id, key in zip(job._dependency_ids, keys)
            if key in buffered or not _is_met(status_by_key[key], job)
        ]
        for job, keys in zip(jobs, parent_keys)
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
