"""The transaction-aware guards: what each one does in each state of the caller's pipeline (the
methods they go on are targets.py's). Loaded at the guards' first use, not at rq's import.

RQ ends ``Queue.setup_dependencies`` by switching the caller's pipeline to MULTI; redis-py
refuses that when the pipeline is already in MULTI (D1) or already holds commands (D2), and RQ's
dependency check WATCHes keys, which redis-py refuses after MULTI (D3). ``enqueue_many`` checks
dependencies in ``Dependency.get_jobs_with_met_dependencies``, which WATCHes (D4) and runs
``execute()`` on the caller's pipeline (D5). ``enqueue_many`` and ``enqueue_at`` write through a
WATCHing pipeline, which runs each command at once instead of buffering it (D6, D7). Each guard
looks up the pipeline's state in its table and steps in only where the installed RQ was found to
fail; everywhere else it calls RQ. Before 3.0, ``ScheduledJobRegistry.schedule`` ignores the
pipeline and writes through its own connection (D8): that guard needs no table. Neither do
``Group.enqueue_many``, which runs the caller's ``execute()`` (D9), the Lua helpers behind
``unique=True``, which write through the queue's connection (D10), and django-rq's
``DjangoRQ.enqueue_call``, whose deferred commit modes replay an enqueue into a pipeline already
executed (see ``djangorq``): each has one fix for every pipeline state.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable

from redis.client import Pipeline  # fakeredis pipelines subclass it; ClusterPipeline does not

from .pipelines import PipelineState, note_written, pipeline_state, start_transaction
from .targets import QUEUE_MODULE

if TYPE_CHECKING:
    from .targets import Target

    Refusal = Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], tuple[tuple[Any, ...], dict[str, Any]]]

Action = Callable[..., Any]


class Decision:  # plain classes, not NamedTuples: those compile code of their own at rq's import
    __slots__ = ("action", "confirmed", "defect", "then_call_rq")

    def __init__(
        self,
        defect: str | None,
        action: Action | None,
        then_call_rq: bool = False,
        confirmed: Decision | None = None,
    ) -> None:
        self.defect = defect  # the defect RQ's own code hits in this state; None: RQ is right here
        self.action = action  # what the guard does instead; None: call RQ
        self.then_call_rq = then_call_rq  # the action only prepares the pipeline; RQ's own code follows
        # On a guard's copy of a step-in entry, until its defect is probed in this RQ: the plain
        # decision to take once the probe confirms it (see by_state). None: a plain decision.
        self.confirmed = confirmed

    def unconfirmed(self) -> Decision:
        """This decision, to be taken once the defect is confirmed (see ``by_state``)."""
        return Decision(self.defect, self.action, self.then_call_rq, confirmed=self)


CALL_RQ = Decision(None, None)

# defect id -> calls in this process that a guard answered itself for it (where RQ's own code
# would have failed or been wrong). Counted only there, never on the path where RQ's code runs.
STEPPED_IN: dict[str, int] = {}
_told: set[str] = set()
log = logging.getLogger("rq_pipeline_fix")


def stepped_in(defect: str, method: str) -> None:
    """Count one call the guard answered itself for ``defect``, on the RQ method ``method``; the
    first per defect in this process is logged at INFO. Not a lock's worth: two threads stepping
    in at the same instant may lose one increment (more likely under free threading), and the
    first one may then be told twice; a count to read, not an audit."""
    count = STEPPED_IN[defect] = STEPPED_IN.get(defect, 0) + 1
    if count == 1 and defect not in _told:
        _told.add(defect)
        log.info("%s: the guard stepped in for %s (first time in this process)", defect, method)


def _setup_in_transaction(queue: Any, job: Any, pipe: Any) -> Any:
    from .deps import setup_in_transaction  # loaded by the first dependent job that needs it

    return setup_in_transaction(queue, job, pipe)


def _split_in_transaction(dependency_class: Any, jobs: Any, pipe: Any) -> Any:
    from .deps import split_in_transaction

    return split_in_transaction(dependency_class, jobs, pipe)


def _leave_as_is(queue: Any, job: Any, pipe: Any) -> Any:
    return job


def _start_transaction(queue: Any, job: Any, pipe: Any) -> Any:
    start_transaction(pipe)
    return job


# Queue.setup_dependencies(job, pipeline) for a job without dependencies: DEFECTS.md's table.
WITHOUT_DEPENDENCIES: dict[str, Decision] = {
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
WITH_DEPENDENCIES: dict[str, Decision] = {
    PipelineState.FRESH: CALL_RQ,
    PipelineState.WATCHING: CALL_RQ,
    PipelineState.MULTI: Decision("D3", _setup_in_transaction),
    PipelineState.BUFFERED_IN_TRANSACTION: Decision("D3", _setup_in_transaction),
    PipelineState.BUFFERED_OUTSIDE_TRANSACTION: Decision("D3", _setup_in_transaction),
}

# Dependency.get_jobs_with_met_dependencies(jobs, pipeline), called by enqueue_many. RQ's own
# pipeline has been executed by then, so it is fresh; any other state is the caller's pipeline,
# which RQ would WATCH after MULTI (D4) or execute() early, splitting the caller's batch (D5).
MET_DEPENDENCIES: dict[str, Decision] = {
    PipelineState.FRESH: CALL_RQ,
    PipelineState.WATCHING: Decision("D5", _split_in_transaction),
    PipelineState.MULTI: Decision("D4", _split_in_transaction),
    PipelineState.BUFFERED_IN_TRANSACTION: Decision("D5", _split_in_transaction),
    PipelineState.BUFFERED_OUTSIDE_TRANSACTION: Decision("D5", _split_in_transaction),
}


def _buffer_writes(queue: Any, subject: Any, pipe: Any) -> None:
    if pipe.watching:  # transaction=False without a WATCH stays a plain pipeline, as asked
        start_transaction(pipe)


def buffered_writes(defect: str) -> dict[str, Decision]:
    """Queue.enqueue_many(job_datas, pipeline) (D6), Queue.schedule_job(job, datetime, pipeline),
    behind enqueue_at/enqueue_in (D7), and before RQ 1.14 Queue.enqueue_job (D12) write through
    the pipeline themselves, without the MULTI that setup_dependencies gives enqueue: while the
    caller WATCHes, each write would run at once."""
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
ENQUEUE_JOB_WRITES = buffered_writes("D12")  # RQ < 1.14: enqueue_job without setup_dependencies


def _always(defect_id: str) -> bool:
    return True


def _present(defect_id: str) -> bool:
    return True


class _Wrapper:
    """What the wrappers on RQ's less travelled paths share (the per-enqueue path has
    ``by_state``): the target, the defects to fix, and an off switch that ``revert()`` uses when
    another wrapper sits on top of ours (an attribute read per call; wrapt's ``enabled=``
    callable would cost a Python call per call)."""

    # The marker by which every copy of this package knows a guard of ours (neighbours.MARKER):
    # a second copy, or this one after a reload, has classes of its own.
    rq_pipeline_fix_guard = True

    def __init__(self, target: Target, patched: frozenset[str]) -> None:
        self.target = target
        self.patched = patched
        self.enabled = True
        self.confirm: Callable[[str], bool] = _present  # asked before a lazy defect's first fix
        names = target.parameters[1:]  # without self/cls, which wrapt passes apart
        self.subject_name = names[0]
        self.pipeline_at = len(names) - 1  # the pipeline is the last parameter we know

    def steps_in(self, pipe: Any, defect: str) -> bool:
        """Whether this call is the guard's to do (a caller's redis-py pipeline, ``defect``
        confirmed by its probe); counted when it is."""
        if not (isinstance(pipe, Pipeline) and self.confirm(defect)):
            return False
        stepped_in(defect, self.target.label)
        return True

    def pipeline_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The call's pipeline, passed by position or by name (RQ passes ``pipeline=`` by name)."""
        return args[self.pipeline_at] if len(args) > self.pipeline_at else kwargs.get("pipeline")


def _for_patched(table: dict[str, Decision] | None, patched: frozenset[str]) -> dict[str, Decision | None]:
    """``table`` as one guard needs it: where the guard steps in, the decision to take once the
    probe has confirmed its defect; None wherever RQ's own code runs (RQ is right there, or that
    defect is not patched in this process)."""
    return {
        state: decision.unconfirmed() if decision.action is not None and decision.defect in patched else None
        for state, decision in (table or {}).items()
    }


def by_state(
    target: Target,
    patched: frozenset[str],
    decisions: dict[str, Decision],
    decisions_with_dependencies: dict[str, Decision] | None = None,
    refuse: Refusal | None = None,
) -> Any:
    """The wrapt wrapper for a target with decision tables (``decisions_with_dependencies``: for
    a job with dependencies, where that differs): looks up the caller's pipeline state and steps in for
    patched defects; any other call goes to RQ's own code, so the guard is invisible wherever the
    installed RQ is already right. With ``refuse`` it first refuses,
    with a TypeError, a ``pipeline=`` that is not redis-py's where RQ would write part of the call
    through it and then fail.

    This runs on every enqueue, so it is a closure, not an object's ``__call__`` (wrapt calls a
    function for ~500 instructions less), its tables are reduced at install to what this RQ needs,
    and its own attributes (the marker, ``enabled``, ``patched``: what patcher and other copies
    of the package read and set) are read through the dict they live in.

    The defects are probed at their first use, not at rq's import: a step-in entry first asks
    ``confirm`` (the probe, then a lookup), and the guard's tables are rewritten by the answer,
    so that from then on the entry is the plain decision, or None (RQ's own code) where the
    probe found RQ right: no cost on any path once each defect is decided.
    """
    names = target.parameters[1:]  # without self/cls, which wrapt passes apart
    subject_name = names[0]
    at = len(names) - 1  # the pipeline is the last parameter we know
    method = target.label
    table = _for_patched(decisions, patched)
    with_dependencies = decisions_with_dependencies
    dependent = _for_patched(with_dependencies, patched) if with_dependencies is not None else None
    multi = PipelineState.MULTI  # tested inline: the state of all but the first enqueue into a pipeline
    tables = [reduced for reduced in (table, dependent) if reduced is not None]

    def confirmed(decision: Decision) -> Decision | None:
        """The first step-in for a defect: probe it (``confirm``), and rewrite every entry of it
        in this guard's tables with the answer."""
        present = attributes["confirm"](decision.defect)
        if not attributes["decided"](decision.defect):  # not probed yet (an import under way): this call only
            return decision.confirmed if present else None
        for reduced in tables:
            for state, entry in list(reduced.items()):
                if entry is not None and entry.defect == decision.defect and entry.confirmed is not None:
                    reduced[state] = entry.confirmed if present else None
        return decision.confirmed if present else None

    def guard(wrapped: Action, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            pipe = kwargs["pipeline"]  # how RQ passes it: cheaper than kwargs.get
        except KeyError:
            pipe = args[at] if len(args) > at else None
        if isinstance(pipe, Pipeline):  # not None, nor another kind of pipeline: RQ's own way
            subject: Any = args[0] if args else kwargs.get(subject_name)
            decision = (dependent if dependent is not None and subject._dependency_ids else table)[
                multi if pipe.explicit_transaction else pipeline_state(pipe)
            ]
            if decision is not None and attributes["enabled"]:
                if decision.confirmed is not None:  # its defect not probed yet in this guard
                    decision = attributes["confirmed"](decision)  # not a closure cell: none per call
                    if decision is None:
                        return wrapped(*args, **kwargs)
                stepped_in(decision.defect, method)  # type: ignore[arg-type]
                result = decision.action(instance, subject, pipe)  # type: ignore[misc]
                if not decision.then_call_rq:
                    return result
        elif refuse is not None and pipe is not None and attributes["enabled"]:
            args, kwargs = refuse(guard, pipe, args, kwargs)
        return wrapped(*args, **kwargs)

    attributes: dict[str, Any] = guard.__dict__
    attributes.update(
        rq_pipeline_fix_guard=True,  # neighbours.MARKER
        enabled=True,
        patched=patched,
        target=target,
        confirm=_present,
        decided=_always,
        confirmed=confirmed,
        subject_name=subject_name,
    )
    return guard


class ScheduleThroughPipeline(_Wrapper):
    """The wrapt wrapper for ``ScheduledJobRegistry.schedule(job, scheduled_datetime, pipeline)``
    where it ZADDs through ``self.connection`` whatever the pipeline (D8): the entry lands at once,
    outside the caller's transaction, and stays behind if the batch aborts. In every pipeline
    state the fix is the same: RQ's own code, run on a copy of the registry whose connection is
    the caller's pipeline, so its timestamp rules stay those of the installed release."""

    def __call__(self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        pipe = self.pipeline_of(args, kwargs)
        if not (self.enabled and "D8" in self.patched and self.steps_in(pipe, "D8")):
            return wrapped(*args, **kwargs)
        registry = copy.copy(instance)
        registry.connection = pipe
        return _function_of(wrapped)(registry, *args, **kwargs)  # also when called by its class


def _has_execute(pipe: Any) -> bool:
    return callable(getattr(pipe, "execute", None))


def _refuse_client_for_dependent_jobs(
    guard: Any, pipe: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``enqueue_many(job_datas, pipeline=<a Redis client>)`` with ``depends_on``: RQ saves the
    jobs through the client at once, then calls its ``execute()``, which a client does not have."""
    if _has_execute(pipe) or not callable(getattr(pipe, "hset", None)):
        return args, kwargs  # a pipeline of another kind buffers, and what cannot write fails first
    job_datas = list(args[0] if args else kwargs.get(guard.subject_name, ()))  # may be a one-shot iterable
    args, kwargs = (
        ((job_datas, *args[1:]), kwargs) if args else (args, {**kwargs, guard.subject_name: job_datas})
    )
    if any(getattr(job_data, "depends_on", None) for job_data in job_datas):
        raise TypeError(
            f"rq-pipeline-fix: pipeline= must be a pipeline (connection.pipeline()), not a "
            f"{type(pipe).__name__}: enqueue_many with depends_on would write the jobs through it at "
            "once and then fail calling its execute(), leaving the batch half-enqueued"
        )
    return args, kwargs


def _refuse_foreign_pipeline_for_scheduled_entry(
    guard: Any, pipe: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``schedule_job`` (behind ``enqueue_at``/``enqueue_in``) where D8 is patched: RQ writes the
    scheduled-registry entry through the queue's own connection, and ``ScheduleThroughPipeline``
    can move it into a redis-py Pipeline only. Into any other pipeline (a ClusterPipeline, say)
    the entry would land at once while the job itself waits in, or fails with, that pipeline."""
    if "D8" in guard.patched and _has_execute(pipe) and guard.confirm("D8"):
        raise TypeError(
            f"rq-pipeline-fix: this RQ writes the scheduled-registry entry of enqueue_at/enqueue_in "
            f"through the queue's own connection (D8); it can be moved into a redis-py Pipeline, not "
            f"a {type(pipe).__name__}. Use connection.pipeline(), or enqueue_at without pipeline="
        )
    return args, kwargs


class _ExecuteLeftToCaller:
    """The caller's pipeline, for RQ code that ends by calling ``execute()`` on it: every command
    goes to the pipeline as RQ sends it; ``execute()`` does nothing, the caller's own runs it all."""

    __slots__ = ("_pipe",)

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def execute(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []


def _function_of(wrapped: Any) -> Any:
    """RQ's plain function behind what wrapt hands a wrapper (a bound method, or a partial when
    the method was called through the class)."""
    return getattr(wrapped, "__func__", None) or wrapped.__wrapped__


class GroupInTransaction(_Wrapper):
    """``Group.enqueue_many(queue, job_datas, pipeline)``: RQ enqueues the jobs into the pipeline,
    then ``Group._add_jobs`` adds the group's keys and runs ``execute()`` on it (D9), so with a
    caller's pipeline its earlier commands and the batch reach Redis before the caller's
    ``execute()``. Fix: RQ's own method, on a copy of the group whose ``_add_jobs`` gets the
    pipeline behind a stand-in that leaves ``execute()`` to the caller. The caller's group and
    pipeline are not changed; ``pipeline=None`` is RQ's own way."""

    def __call__(self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        pipe = self.pipeline_of(args, kwargs)
        if not (self.enabled and "D9" in self.patched and self.steps_in(pipe, "D9")):
            return wrapped(*args, **kwargs)
        group = copy.copy(instance)
        add_jobs = type(instance)._add_jobs
        group._add_jobs = lambda jobs, pipeline: add_jobs(
            group, jobs, pipeline=_ExecuteLeftToCaller(pipeline)
        )
        return _function_of(wrapped)(group, *args, **kwargs)


_FRAMES_TO_SEARCH = 12  # ours, wrapt's (in its pure-Python mode), then RQ's: enqueue_at > ... > run_sync


def callers_pipeline() -> tuple[str, Any]:
    """The caller's ``pipeline=`` for a function RQ calls without passing it on, and the name of
    the rq.queue function that called that one.

    For the unique= script helpers (D10) and the sync run (D11) the only place that still knows
    the pipeline is RQ's calling frames: the ``pipeline`` of the outermost of the rq.queue frames
    above us is what the caller gave the public method (an inner one may be RQ's own, as
    ``enqueue_many(pipeline=None)`` passes its own down). ``callers_without_pipeline`` checks at
    install that the direct callers take ``pipeline``. Reading frames costs nothing to other
    enqueues; wrapping the callers instead would put a wrapper on every enqueue.
    """
    frame: FrameType | None = sys._getframe(1)
    caller, pipe = "", None
    for _ in range(_FRAMES_TO_SEARCH):
        if frame is None:
            break
        if frame.f_globals.get("__name__") == QUEUE_MODULE:
            caller = caller or frame.f_code.co_name
            local = frame.f_locals
            if "pipeline" in local:
                pipe = local["pipeline"]
        elif caller:  # past the rq.queue frames
            break
        frame = frame.f_back
    return caller, pipe


class UniqueInTransaction(_Wrapper):
    """rq.queue's ``save_unique_job`` / ``schedule_unique_job``, the Lua helpers behind
    ``unique=True`` (D10), which RQ calls with the queue's connection whatever ``pipeline=`` the
    enqueue was given. With a caller's redis-py pipeline, the job joins its transaction
    (``unique.unique_in_transaction``); without one, RQ's own script runs as RQ runs it."""

    def __init__(self, target: Target, patched: frozenset[str]) -> None:
        super().__init__(target, patched)
        self.job_at = target.parameters.index("job")  # module-level functions: no self to skip

    def __call__(self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        caller, pipe = callers_pipeline() if self.enabled and "D10" in self.patched else ("", None)
        # is_async=False runs the job at the call: it cannot wait for the caller's EXEC (D11).
        if caller == "_enqueue_sync_job" or not self.steps_in(pipe, "D10"):
            return wrapped(*args, **kwargs)
        from .unique import unique_in_transaction  # loaded by the first unique job in a pipeline

        job = args[self.job_at] if len(args) > self.job_at else kwargs["job"]
        return unique_in_transaction(wrapped, job, pipe, args, kwargs)


class SyncOutcomeLast(_Wrapper):
    """``Queue.run_sync(job)`` (RQ 1.13 on) and ``Queue.run_job(job)`` when RQ calls it without
    run_sync (1.9 ... 1.12): a queue with ``is_async=False`` runs the job at the call, writing
    its outcome through the queue's connection, while the job's QUEUED state RQ wrote just before
    waits in the caller's pipeline, whose ``execute()`` then writes it over the outcome (D11).
    The job cannot join the transaction (it has run); the fix makes the outcome last: after the
    run, the job hash as the run left it (and its TTL) is read in one round trip and put back by
    the caller's transaction after RQ's stale writes."""

    def __call__(self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        caller, pipe = callers_pipeline() if self.enabled and "D11" in self.patched else ("", None)
        # run_sync's own wrapper does it for run_job under run_sync
        if caller == "run_sync" or not self.steps_in(pipe, "D11"):
            return wrapped(*args, **kwargs)
        job = args[0] if args else kwargs[self.subject_name]
        try:
            result = wrapped(*args, **kwargs)
        except BaseException:  # RQ < 1.13 lets the job's exception out: the outcome still goes last
            with contextlib.suppress(Exception):
                _buffer_as_it_is(instance.connection, job.key, pipe)
            raise
        _buffer_as_it_is(instance.connection, job.key, pipe)
        return result


def _buffer_as_it_is(connection: Any, key: Any, pipe: Any) -> None:
    """Buffer into ``pipe`` what puts ``key`` back as it is in Redis now, TTL included: DUMP and
    RESTORE, byte for byte whatever the client's decoding (job hashes hold binary fields)."""
    with connection.pipeline(transaction=False) as read:
        read.dump(key)
        read.pttl(key)
        read.hget(key, "status")
        value, ttl, status = read.execute()
    if value is not None:
        pipe.restore(key, max(ttl, 0), value, replace=True)
        note_written(pipe, key, status)  # for dependents later in the batch: the outcome, not QUEUED


class PipelineAtTheCall(_Wrapper):
    """django-rq's ``DjangoRQ.enqueue_call(*args, **kwargs)``: see ``djangorq``. An enqueue given
    ``pipeline=`` goes into that pipeline at the call, in every commit mode; any other enqueue
    is django-rq's own."""

    def __call__(self, wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not self.enabled or kwargs.get("pipeline") is None:
            return wrapped(*args, **kwargs)
        from . import djangorq

        djangorq.say_when_not_deferred(instance)
        return instance.original_enqueue_call(*args, **kwargs)


# How each target (targets.py) is guarded, by its label. On the per-enqueue paths: by the state
# of the caller's pipeline, through the decision tables above (and a refusal of pipelines RQ
# would half-write through); elsewhere, by one fix for every state.
BY_STATE: dict[str, tuple[dict[str, Decision], dict[str, Decision] | None, Refusal | None]] = {
    "Queue.setup_dependencies": (WITHOUT_DEPENDENCIES, WITH_DEPENDENCIES, None),
    "Dependency.get_jobs_with_met_dependencies": (MET_DEPENDENCIES, None, None),
    "Queue.enqueue_many": (ENQUEUE_MANY_WRITES, None, _refuse_client_for_dependent_jobs),
    "Queue.schedule_job": (SCHEDULE_JOB_WRITES, None, _refuse_foreign_pipeline_for_scheduled_entry),
    "Queue.enqueue_job": (ENQUEUE_JOB_WRITES, None, None),
}
ONE_FIX: dict[str, type[_Wrapper]] = {
    "ScheduledJobRegistry.schedule": ScheduleThroughPipeline,
    "Group.enqueue_many": GroupInTransaction,
    "rq.queue.save_unique_job": UniqueInTransaction,
    "rq.queue.schedule_unique_job": UniqueInTransaction,
    "Queue.run_sync": SyncOutcomeLast,
    "Queue.run_job": SyncOutcomeLast,  # steps aside under run_sync
    "DjangoRQ.enqueue_call": PipelineAtTheCall,
}


def guard_for(target: Target, patched: frozenset[str]) -> Any:
    """The wrapt wrapper that guards ``target`` for the ``patched`` defects."""
    fix = ONE_FIX.get(target.label)
    if fix is not None:
        return fix(target, patched)
    return by_state(target, patched, *BY_STATE[target.label])
