"""The transaction-aware guard around ``Queue.setup_dependencies``.

RQ ends ``setup_dependencies`` by switching the caller's pipeline to MULTI. redis-py refuses that
when the pipeline is already in MULTI (D1) or already holds buffered commands (D2), and RQ's
dependency check WATCHes keys, which redis-py refuses after MULTI (D3). The guard looks at the
pipeline's state first and only steps in where the installed RQ was found to fail; everywhere
else it calls RQ's own code.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from . import deps
from .pipelines import PipelineState, pipeline_state, start_transaction


def _leave_as_is(queue: Any, job: Any, pipe: Any) -> Any:
    return job


def _start_transaction(queue: Any, job: Any, pipe: Any) -> Any:
    start_transaction(pipe)
    return job


class Decision(NamedTuple):
    defect: str | None  # the defect RQ's own code hits in this state; None: RQ is right here
    action: Callable[[Any, Any, Any], Any] | None  # what the guard does instead; None: call RQ


CALL_RQ = Decision(None, None)

# Jobs without dependencies: the table "Required guard" of DEFECTS.md, one row per state.
WITHOUT_DEPENDENCIES: dict[PipelineState, Decision] = {
    # RQ's multi() is right: the pipeline becomes a transaction.
    PipelineState.FRESH: CALL_RQ,
    # RQ's multi() is right: its writes stay buffered until the caller's execute().
    PipelineState.WATCHING: CALL_RQ,
    # Already a transaction: a second multi() is the "nested MULTI" error.
    PipelineState.MULTI: Decision("D1", _leave_as_is),
    # execute() wraps everything buffered in MULTI/EXEC anyway.
    PipelineState.BUFFERED_IN_TRANSACTION: Decision("D2", _leave_as_is),
    # multi() refuses, but the batch must still become one transaction, as in the fresh case.
    PipelineState.BUFFERED_OUTSIDE_TRANSACTION: Decision("D2", _start_transaction),
}

# Jobs with dependencies: RQ WATCHes and reads them itself, which works until the pipeline is
# in MULTI or holds commands; from then on the dependency check runs inside the transaction.
WITH_DEPENDENCIES: dict[PipelineState, Decision] = {
    PipelineState.FRESH: CALL_RQ,
    PipelineState.WATCHING: CALL_RQ,
    PipelineState.MULTI: Decision("D3", deps.setup_in_transaction),
    PipelineState.BUFFERED_IN_TRANSACTION: Decision("D3", deps.setup_in_transaction),
    PipelineState.BUFFERED_OUTSIDE_TRANSACTION: Decision("D3", deps.setup_in_transaction),
}


def decide(job: Any, pipe: Any) -> Decision:
    table = WITH_DEPENDENCIES if job._dependency_ids else WITHOUT_DEPENDENCIES
    return table[pipeline_state(pipe)]


class Guard:
    """The wrapt wrapper for ``Queue.setup_dependencies(self, job, pipeline=None)``.

    ``patched`` holds the ids of the defects to fix; a state whose defect is not in it goes to
    RQ's own code, so the guard is invisible wherever the installed RQ is already right.
    """

    def __init__(self, patched: frozenset[str]) -> None:
        self.patched = patched

    def __call__(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        job, pipe = _job_and_pipeline(*args, **kwargs)
        if pipe is None:
            return wrapped(*args, **kwargs)
        decision = decide(job, pipe)
        if decision.action is None or decision.defect not in self.patched:
            return wrapped(*args, **kwargs)
        return decision.action(instance, job, pipe)


def _job_and_pipeline(job: Any, pipeline: Any = None) -> tuple[Any, Any]:
    return job, pipeline
