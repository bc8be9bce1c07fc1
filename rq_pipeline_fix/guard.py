"""The transaction-aware guards: what we wrap in RQ, and what each wrapper does in each state of
the caller's pipeline.

RQ ends ``Queue.setup_dependencies`` by switching the caller's pipeline to MULTI; redis-py
refuses that when the pipeline is already in MULTI (D1) or already holds commands (D2), and RQ's
dependency check WATCHes keys, which redis-py refuses after MULTI (D3). ``enqueue_many`` checks
dependencies in ``Dependency.get_jobs_with_met_dependencies``, which WATCHes (D4) and runs
``execute()`` on the caller's pipeline (D5). ``enqueue_many`` and ``enqueue_at`` write through a
WATCHing pipeline, which runs each command at once instead of buffering it (D6, D7). Each guard
looks up the pipeline's state in its table and steps in only where the installed RQ was found to
fail; everywhere else it calls RQ. Before 3.0, ``ScheduledJobRegistry.schedule`` ignores the
pipeline and writes through its own connection (D8): that guard needs no table.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, NamedTuple

from redis.client import Pipeline  # fakeredis pipelines subclass it; ClusterPipeline does not

from . import deps
from .pipelines import PipelineState, pipeline_state, start_transaction

Action = Callable[..., Any]


class Decision(NamedTuple):
    defect: str | None  # the defect RQ's own code hits in this state; None: RQ is right here
    action: Action | None  # what the guard does instead; None: call RQ
    then_call_rq: bool = False  # the action only prepares the pipeline; RQ's own code follows


CALL_RQ = Decision(None, None)


def _leave_as_is(queue: Any, job: Any, pipe: Any) -> Any:
    return job


def _start_transaction(queue: Any, job: Any, pipe: Any) -> Any:
    start_transaction(pipe)
    return job


# Queue.setup_dependencies(job, pipeline) for a job without dependencies: DEFECTS.md's table.
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

# Queue.setup_dependencies(job, pipeline) for a job with dependencies: RQ WATCHes and reads them
# in immediate mode, which works until the pipeline is in MULTI or holds commands; from then on
# the check runs inside the caller's transaction.
WITH_DEPENDENCIES: dict[PipelineState, Decision] = {
    PipelineState.FRESH: CALL_RQ,
    PipelineState.WATCHING: CALL_RQ,
    PipelineState.MULTI: Decision("D3", deps.setup_in_transaction),
    PipelineState.BUFFERED_IN_TRANSACTION: Decision("D3", deps.setup_in_transaction),
    PipelineState.BUFFERED_OUTSIDE_TRANSACTION: Decision("D3", deps.setup_in_transaction),
}

# Dependency.get_jobs_with_met_dependencies(jobs, pipeline), called by enqueue_many. RQ's own
# pipeline has been executed by then, so it is fresh; any other state is the caller's pipeline,
# which RQ would WATCH after MULTI (D4) or execute() early, splitting the caller's batch (D5).
MET_DEPENDENCIES: dict[PipelineState, Decision] = {
    PipelineState.FRESH: CALL_RQ,
    PipelineState.WATCHING: Decision("D5", deps.split_in_transaction),
    PipelineState.MULTI: Decision("D4", deps.split_in_transaction),
    PipelineState.BUFFERED_IN_TRANSACTION: Decision("D5", deps.split_in_transaction),
    PipelineState.BUFFERED_OUTSIDE_TRANSACTION: Decision("D5", deps.split_in_transaction),
}


def _buffer_writes(queue: Any, subject: Any, pipe: Any) -> None:
    if pipe.watching:  # transaction=False without a WATCH stays a plain pipeline, as asked
        start_transaction(pipe)


def buffered_writes(defect: str) -> dict[PipelineState, Decision]:
    """Queue.enqueue_many(job_datas, pipeline) (D6) and Queue.schedule_job(job, datetime, pipeline),
    behind enqueue_at/enqueue_in (D7), write through the pipeline themselves, without the MULTI
    that setup_dependencies gives enqueue: while the caller WATCHes, each write would run at once."""
    return {
        PipelineState.FRESH: CALL_RQ,
        PipelineState.WATCHING: Decision(defect, _buffer_writes, then_call_rq=True),
        PipelineState.MULTI: CALL_RQ,
        PipelineState.BUFFERED_IN_TRANSACTION: CALL_RQ,
        # WATCH issued after commands were buffered: immediate mode again.
        PipelineState.BUFFERED_OUTSIDE_TRANSACTION: Decision(defect, _buffer_writes, then_call_rq=True),
    }


ENQUEUE_MANY_WRITES = buffered_writes("D6")
SCHEDULE_JOB_WRITES = buffered_writes("D7")


class _Wrapper:
    """What our wrapt wrappers share: the target, the defects to fix, and an off switch that
    ``revert()`` uses when another wrapper sits on top of ours (an attribute read per call;
    wrapt's ``enabled=`` callable would cost a Python call per call)."""

    # The marker by which every copy of this package knows a guard of ours (neighbours.MARKER):
    # a second copy, or this one after a reload, has classes of its own.
    rq_pipeline_fix_guard = True

    def __init__(self, target: Target, patched: frozenset[str]) -> None:
        self.target = target
        self.patched = patched
        self.enabled = True
        names = target.parameters[1:]  # without self/cls, which wrapt passes apart
        self.subject_name = names[0]
        self.pipeline_at = len(names) - 1  # the pipeline is the last parameter we know
        self.table_for = target.table_for

    def pipeline_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The call's pipeline, passed by position or by name (RQ passes ``pipeline=`` by name)."""
        return args[self.pipeline_at] if len(args) > self.pipeline_at else kwargs.get("pipeline")


class Guard(_Wrapper):
    """A wrapt wrapper: looks up the caller's pipeline state and steps in for patched defects.

    ``patched`` holds the ids of the defects to fix; a state whose defect is not in it goes to
    RQ's own code, so the guard is invisible wherever the installed RQ is already right. This
    runs on every enqueue into a pipeline, hence ``pipeline_of`` inlined.
    """

    def __call__(self, wrapped: Action, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        pipe = args[self.pipeline_at] if len(args) > self.pipeline_at else kwargs.get("pipeline")
        if not (self.enabled and isinstance(pipe, Pipeline)):  # None, or not redis-py's: RQ's own way
            return wrapped(*args, **kwargs)
        subject = args[0] if args else kwargs.get(self.subject_name)
        decision = self.table_for(subject)[pipeline_state(pipe)]
        action = decision.action
        if action is None or decision.defect not in self.patched:  # RQ is right here, or not patched
            return wrapped(*args, **kwargs)
        result = action(instance, subject, pipe)
        return wrapped(*args, **kwargs) if decision.then_call_rq else result


class ScheduleThroughPipeline(_Wrapper):
    """The wrapt wrapper for ``ScheduledJobRegistry.schedule(job, scheduled_datetime, pipeline)``
    where it ZADDs through ``self.connection`` whatever the pipeline (D8): the entry lands at once,
    outside the caller's transaction, and stays behind if the batch aborts. In every pipeline
    state the fix is the same: RQ's own code, run on a copy of the registry whose connection is
    the caller's pipeline, so its timestamp rules stay those of the installed release."""

    def __call__(self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        pipe = self.pipeline_of(args, kwargs)
        if not (self.enabled and isinstance(pipe, Pipeline)) or "D8" not in self.patched:
            return wrapped(*args, **kwargs)
        registry = copy.copy(instance)
        registry.connection = pipe
        return wrapped.__func__(registry, *args, **kwargs)


def _setup_dependencies_table(job: Any) -> dict[PipelineState, Decision]:
    return WITH_DEPENDENCIES if job._dependency_ids else WITHOUT_DEPENDENCIES


def _no_table(subject: Any) -> dict[PipelineState, Decision]:
    return {}


class Target(NamedTuple):  # not a dataclass: creating one costs a millisecond at rq's import
    """One method of RQ that we wrap: where it is, the parameters we expect, the defects it has,
    and which decision table applies to a call (by its first argument)."""

    module: str
    owner: str
    name: str
    parameters: tuple[str, ...]
    defects: tuple[str, ...]
    table_for: Callable[[Any], dict[PipelineState, Decision]] = _no_table
    more_parameters_ok: bool = False  # later RQ releases add trailing options we pass through
    wrapper: type[_Wrapper] = Guard

    @property
    def label(self) -> str:
        return f"{self.owner}.{self.name}"


SETUP_DEPENDENCIES = Target(
    "rq.queue",
    "Queue",
    "setup_dependencies",
    ("self", "job", "pipeline"),
    ("D1", "D2", "D3"),
    _setup_dependencies_table,
)
GET_JOBS_WITH_MET_DEPENDENCIES = Target(
    "rq.dependency",  # only in releases whose enqueue_many takes depends_on (1.15 on)
    "Dependency",
    "get_jobs_with_met_dependencies",
    ("cls", "jobs", "pipeline"),
    ("D4", "D5"),
    lambda jobs: MET_DEPENDENCIES,
)
ENQUEUE_MANY = Target(
    "rq.queue",
    "Queue",
    "enqueue_many",
    ("self", "job_datas", "pipeline"),
    ("D6",),
    lambda job_datas: ENQUEUE_MANY_WRITES,
    more_parameters_ok=True,
)
SCHEDULE_JOB = Target(
    "rq.queue",
    "Queue",
    "schedule_job",
    ("self", "job", "datetime", "pipeline"),
    ("D7",),
    lambda job: SCHEDULE_JOB_WRITES,
    more_parameters_ok=True,
)
REGISTRY_SCHEDULE = Target(
    "rq.registry",
    "ScheduledJobRegistry",
    "schedule",
    ("self", "job", "scheduled_datetime", "pipeline"),
    ("D8",),
    more_parameters_ok=True,
    wrapper=ScheduleThroughPipeline,  # one fix for every pipeline state: no table
)
TARGETS = (SETUP_DEPENDENCIES, GET_JOBS_WITH_MET_DEPENDENCIES, ENQUEUE_MANY, SCHEDULE_JOB, REGISTRY_SCHEDULE)
