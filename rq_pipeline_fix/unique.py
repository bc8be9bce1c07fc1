"""Unique jobs (``unique=True``, RQ 2.8 on) inside a caller's transaction (D10).

RQ checks that a unique job does not exist yet and writes it in one Lua script
(``rq.scripts.save_unique_job`` / ``schedule_unique_job``), run at once on the queue's own
connection whatever ``pipeline=`` says: the job lands before the caller's EXEC and stays if the
batch aborts. Here the check follows the dependency contract instead: the job's key is WATCHed on
the connection that will run the caller's EXEC and its existence read in the same round trip. A
job that exists (in Redis, or written earlier in this transaction) raises RQ's
``DuplicateJobError`` at the call and leaves the caller's pipeline as it was; otherwise RQ's own
script is buffered in the caller's transaction, where it writes exactly what it writes without a
pipeline. A job someone else creates before EXEC aborts the batch with WatchError, and
``Redis.transaction(fn)``'s retry then raises DuplicateJobError. (How the helpers are wrapped,
and how the caller's pipeline is found: ``guard.UniqueInTransaction``.)
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from .pipelines import DELETED, note_written, start_transaction, statuses_written, unwatch_one, watched_exists

_NOT_WRITTEN: Any = object()


def unique_in_transaction(
    helper: Callable[..., Any], job: Any, pipe: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run RQ's script helper ``helper(connection, ...)`` for ``job`` inside the caller's
    transaction ``pipe``, after the existence check described above."""
    key = job.key
    in_batch = statuses_written(pipe).get(key, _NOT_WRITTEN)
    if in_batch is _NOT_WRITTEN:
        duplicate = watched_exists(pipe, [key])[key]
        if duplicate:  # leave the transaction as it was, where the WATCHes are ours
            unwatch_one(pipe, key)
    else:  # written earlier in the batch; deleted by it before the script runs: no duplicate
        duplicate = in_batch is not DELETED
    if duplicate:
        from rq.exceptions import DuplicateJobError

        raise DuplicateJobError(f"Job with ID '{job.id}' already exists")
    start_transaction(pipe)
    if args:
        args = (pipe, *args[1:])
    else:
        kwargs = {**kwargs, "connection": pipe}
    try:
        return helper(*args, **kwargs)  # the script is buffered: redis-py loads it before EXEC
    finally:
        forget_scripts_registered_on(pipe)
        status = job.get_status(refresh=False)  # QUEUED or SCHEDULED, set by RQ before the script
        note_written(pipe, key, getattr(status, "value", status))


def forget_scripts_registered_on(client: Any) -> None:
    """Drop what ``rq.scripts`` cached for ``client``: RQ keeps the script it registers on each
    connection in module-level dicts that never shrink, which for a pipeline (one per batch)
    would keep every pipeline alive. Every such dict is searched, not two names of one release."""
    scripts = sys.modules.get("rq.scripts")
    for value in vars(scripts).values() if scripts is not None else ():
        if type(value) is dict:
            value.pop(client, None)
