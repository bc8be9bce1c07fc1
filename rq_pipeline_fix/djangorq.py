"""django-rq's deferred commit modes and a caller's pipeline.

django-rq's ``DjangoRQ.enqueue_call`` can defer an enqueue: in commit mode ``on_db_commit`` (the
default since django-rq 4.0) inside ``transaction.atomic()`` until the database commit, in
``request_finished`` mode (``AUTOCOMMIT=False`` before 4.0) until the request ends. It replays the
whole call then, ``pipeline=`` included, into a pipeline the caller has executed (or reset, by
leaving its ``with`` block) in the meantime: the job never lands and nobody is told.

What we do: an enqueue given ``pipeline=`` goes into that pipeline at the call, in every mode.
The caller asked for that pipeline's atomicity, and its ``execute()`` is the one moment that
decides whether the batch lands; a replay after it cannot be right, and an error at the call
would also refuse the code that does work today (executing the pipeline after the atomic block).
So the job lands when the caller executes the pipeline, which may now be before the database
commit, or in a request that fails afterwards. That is a change from what the commit mode
promises, so it is said once per process (a ``DjangoRQCommitWarning`` and the log), naming the
way to tie the batch to the commit: build and execute the pipeline in
``transaction.on_commit()``. Enqueues without ``pipeline=`` keep django-rq's own behaviour.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from .patcher import RQPipelineFixWarning

log = logging.getLogger("rq_pipeline_fix")


class DjangoRQCommitWarning(RQPipelineFixWarning):
    """An enqueue with ``pipeline=`` that django-rq would have deferred went into the pipeline at
    the call: it lands when the pipeline is executed, not at the commit."""


_said: set[str] = set()


def deferring_mode(queue: Any) -> str | None:
    """The commit mode in which django-rq would defer this call now, or None when it enqueues at
    once. django-rq 4.x keeps it in ``_commit_mode``, earlier releases in ``_autocommit``."""
    mode = getattr(queue, "_commit_mode", None)
    if mode is None:
        return None if getattr(queue, "_autocommit", True) else "request_finished"
    if mode == "on_db_commit":
        from django.db import connection

        return mode if connection.in_atomic_block else None
    return None if mode == "auto" else str(mode)


def say_when_not_deferred(queue: Any) -> None:
    """Warn once per mode and process when django-rq would have deferred this enqueue."""
    try:
        mode = deferring_mode(queue)
    except Exception:  # never fail the enqueue over a warning
        return
    if mode is None or mode in _said:
        return
    _said.add(mode)
    where = "inside transaction.atomic()" if mode == "on_db_commit" else "during a request"
    message = (
        f"rq-pipeline-fix: django-rq commit mode {mode!r}: an enqueue with pipeline= {where} went "
        "into your pipeline at once, because django-rq would replay it into that pipeline after "
        "you executed it and the job would be lost. It lands when you execute the pipeline, which "
        "may be before the commit; to tie the batch to the commit, build and execute the pipeline "
        "inside transaction.on_commit()."
    )
    log.warning(message)
    warnings.warn(message, DjangoRQCommitWarning, stacklevel=4)
