"""Dependent jobs inside a caller's transaction that is already under way (D3).

RQ checks dependencies by WATCHing them and reading their statuses through the pipeline in
immediate mode, then switching to MULTI. Once the caller's pipeline is in MULTI or holds
commands that is impossible, so the check runs here instead, with the same contract: the keys
are WATCHed on the connection that will run the caller's EXEC before the statuses are read, so
a parent that changes before the caller's ``execute()`` aborts the whole batch with WatchError.
"""

from __future__ import annotations

from typing import Any

from .pipelines import buffered_hash_keys, start_transaction, watch_and_read


def setup_in_transaction(queue: Any, job: Any, pipe: Any) -> Any:
    """``Queue.setup_dependencies`` for a pipeline in MULTI or holding buffered commands."""
    if not unfinished_parents(job, pipe):
        return job
    from rq.job import JobStatus

    # What RQ does for a job with an unfinished parent, buffered in the caller's transaction.
    job.set_status(JobStatus.DEFERRED, pipeline=pipe)
    job.register_dependency(pipeline=pipe)
    job.save(pipeline=pipe)
    job.cleanup(ttl=job.ttl, pipeline=pipe)
    return job


def unfinished_parents(job: Any, pipe: Any) -> list[str]:
    """The parents of ``job`` that keep it deferred, checked race-free inside the caller's
    transaction in one round trip. A parent only buffered in this pipeline is unfinished; a
    parent missing from Redis is ignored, as RQ ignores it."""
    start_transaction(pipe)
    parent_ids = list(job._dependency_ids)
    parent_keys = [job.key_for(parent_id) for parent_id in parent_ids]
    statuses = watch_and_read(
        pipe,
        watch_keys=[job.dependencies_key, *parent_keys],
        reads=[("HGET", key, "status") for key in parent_keys],
    )
    buffered = buffered_hash_keys(pipe)
    met = met_statuses(job)
    return [
        parent_id
        for parent_id, key, status in zip(parent_ids, parent_keys, statuses)
        if key in buffered or (status is not None and _text(status) not in met)
    ]


def met_statuses(job: Any) -> set[str]:
    """Parent statuses that let ``job`` run: FINISHED, and FAILED with ``allow_failure``."""
    from rq.job import JobStatus

    met = {JobStatus.FINISHED.value}
    if getattr(job, "allow_dependency_failures", False):
        met.add(JobStatus.FAILED.value)
    return met


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
