"""What we wrap in RQ (and django-rq): each method's place, the parameters we expect, and the
defects it has. All that putting the guards on needs at rq's import; what a guard does at a call
is guard.py's, loaded at the guards' first use (``guard.guard_for``).
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing's: this module is loaded at rq's import
if TYPE_CHECKING:
    from typing import Any, Callable

QUEUE_MODULE = "rq.queue"


class Target:  # a plain class: a NamedTuple or a dataclass costs a fraction of a millisecond at rq's import
    """One method that we wrap: where it is, the parameters we expect, and the defects it has.
    ``owner`` "" is the module itself (a module-level function, wrapped under the name its
    callers look up). A target with no defects fixes a neighbour of RQ, not RQ: it is wrapped
    whenever it is found. How each is guarded, decision tables included, is in guard.py.

    ``late``: its module is imported by its own package, never by us (rq.group cannot be imported
    while rq/__init__ is still running, when rq.queue's hook fires; django_rq is not ours to
    load). ``check``: why the owner cannot be wrapped, beyond its shape."""

    __slots__ = ("check", "defects", "late", "module", "more_parameters_ok", "name", "owner", "parameters")

    def __init__(
        self,
        module: str,
        owner: str,
        name: str,
        parameters: tuple[str, ...],
        defects: tuple[str, ...],
        more_parameters_ok: bool = False,  # later RQ releases add trailing options we pass through
        late: bool = False,
        check: Callable[[Any], str | None] | None = None,
    ) -> None:
        self.module, self.owner, self.name = module, owner, name
        self.parameters, self.defects = parameters, defects
        self.more_parameters_ok, self.late, self.check = more_parameters_ok, late, check

    @property
    def label(self) -> str:
        return f"{self.owner or self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"Target({self.module}:{self.label})"


def callers_without_pipeline(name: str, but: tuple[str, ...] = ()) -> str | None:
    """Why ``guard.callers_pipeline`` cannot find the caller's pipeline for ``name`` in this RQ:
    no method of Queue calls it, or one (other than those in ``but``, which are wrapped
    themselves) has no ``pipeline`` parameter. None: it can."""
    queue_class = getattr(sys.modules.get(QUEUE_MODULE), "Queue", None)
    callers = [
        function
        for function in vars(queue_class or object).values()
        if name in getattr(getattr(function, "__code__", None), "co_names", ())
    ]
    if not callers:
        return f"no method of {QUEUE_MODULE}.Queue calls {name}"
    for function in callers:
        code = function.__code__
        if function.__name__ not in but and "pipeline" not in code.co_varnames[: code.co_argcount]:
            return f"{QUEUE_MODULE}.Queue.{function.__name__} calls {name} without a pipeline parameter"
    return None


SETUP_DEPENDENCIES = Target(
    "rq.queue", "Queue", "setup_dependencies", ("self", "job", "pipeline"), ("D1", "D2", "D3")
)
GET_JOBS_WITH_MET_DEPENDENCIES = Target(
    "rq.dependency",  # only in releases whose enqueue_many takes depends_on (1.15 on)
    "Dependency",
    "get_jobs_with_met_dependencies",
    ("cls", "jobs", "pipeline"),
    ("D4", "D5"),
)
ENQUEUE_MANY = Target(
    "rq.queue", "Queue", "enqueue_many", ("self", "job_datas", "pipeline"), ("D6",), more_parameters_ok=True
)
SCHEDULE_JOB = Target(
    "rq.queue",
    "Queue",
    "schedule_job",
    ("self", "job", "datetime", "pipeline"),
    ("D7", "D8"),  # D8: a pipeline the scheduled entry cannot be moved into is refused here
    more_parameters_ok=True,
)
ENQUEUE_JOB = Target(
    "rq.queue",  # wrapped only where D12 is found (RQ < 1.14): it is on every enqueue's path
    "Queue",
    "enqueue_job",
    ("self", "job", "pipeline"),
    ("D12",),
    more_parameters_ok=True,
)
REGISTRY_SCHEDULE = Target(
    "rq.registry",
    "ScheduledJobRegistry",
    "schedule",
    ("self", "job", "scheduled_datetime", "pipeline"),
    ("D8",),
    more_parameters_ok=True,
)
GROUP_ENQUEUE_MANY = Target(
    "rq.group",  # RQ 2.0 on
    "Group",
    "enqueue_many",
    ("self", "queue", "job_datas", "pipeline"),
    ("D9",),
    more_parameters_ok=True,
    late=True,
    check=lambda group: None if callable(getattr(group, "_add_jobs", None)) else "Group has no _add_jobs",
)


def _unique_script_helper(name: str, parameters: tuple[str, ...]) -> Target:
    """A Lua helper behind unique=True, by the name rq.queue imported from rq.scripts (RQ 2.8 on)
    and calls: wrapping it there costs nothing to enqueues without unique=."""
    return Target(
        "rq.queue",
        "",
        name,
        parameters,
        ("D10",),
        more_parameters_ok=True,
        check=lambda module: callers_without_pipeline(name),
    )


SAVE_UNIQUE_JOB = _unique_script_helper("save_unique_job", ("connection", "queue_key", "job"))
SCHEDULE_UNIQUE_JOB = _unique_script_helper(
    "schedule_unique_job", ("connection", "queue_key", "registry_key", "job")
)
RUN_SYNC = Target(
    "rq.queue",  # RQ 1.13 on
    "Queue",
    "run_sync",
    ("self", "job"),
    ("D11",),
    check=lambda queue: callers_without_pipeline("run_sync"),
)
RUN_JOB = Target(
    "rq.queue",
    "Queue",
    "run_job",
    ("self", "job"),
    ("D11",),
    check=lambda queue: callers_without_pipeline("run_job", but=("run_sync",)),  # its own guard steps aside
)


def _undeferred_enqueue_missing(django_rq_class: Any) -> str | None:
    """What guard.PipelineAtTheCall needs from django-rq: the enqueue it calls instead, undeferred."""
    if callable(getattr(django_rq_class, "original_enqueue_call", None)):
        return None
    return "DjangoRQ has no original_enqueue_call"


DJANGO_RQ_ENQUEUE_CALL = Target(
    "django_rq.queues",
    "DjangoRQ",
    "enqueue_call",
    ("self", "args", "kwargs"),
    (),  # django-rq's commit modes, not an RQ defect: wrapped whenever django-rq is imported
    late=True,
    check=_undeferred_enqueue_missing,
)
TARGETS = (
    SETUP_DEPENDENCIES,
    GET_JOBS_WITH_MET_DEPENDENCIES,
    ENQUEUE_MANY,
    SCHEDULE_JOB,
    ENQUEUE_JOB,
    REGISTRY_SCHEDULE,
    GROUP_ENQUEUE_MANY,
    SAVE_UNIQUE_JOB,
    SCHEDULE_UNIQUE_JOB,
    RUN_SYNC,
    RUN_JOB,
    DJANGO_RQ_ENQUEUE_CALL,
)
