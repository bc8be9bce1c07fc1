"""Which defects the installed RQ has: a behaviour probe per defect, checked against a version table.

A probe (probes.py, loaded only when one runs) drives the *installed* RQ code with a real redis-py
pipeline that never connects, and sees exactly what RQ would do to a caller's pipeline. The version
table records what was measured on each release line; when the two disagree the probe wins (it
saw this very RQ), and the disagreement is recorded in the reason.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .probes import ProbeKit
    from .versions import TableVerdict


class Defect:  # plain classes, not NamedTuples: those compile code of their own at rq's import
    """One defect: its id, its title, the RQ releases where it was measured (a specifier), the
    RQ method that has it and that we wrap, and ``lazy``: probed at the first call that needs it
    (or for a report), not at rq's import; its guard goes on unprobed where the version table
    does not rule it out, and steps in only once the probe has confirmed it (the probes were a
    third of the package's cost at rq's import). One that is not lazy waits too where the table
    can tell, and is probed at rq's import only on a release newer than those measured."""

    __slots__ = ("affected", "id", "lazy", "method", "title")

    def __init__(
        self, id: str, title: str, affected: str, method: str = "Queue.setup_dependencies", lazy: bool = True
    ) -> None:
        self.id, self.title, self.affected, self.method, self.lazy = id, title, affected, method, lazy

    def __repr__(self) -> str:
        return f"Defect({self.id!r})"


DEPENDENCY_CHECK = "Dependency.get_jobs_with_met_dependencies"  # enqueue_many's dependency check
_SAVE_UNIQUE = "rq.queue.save_unique_job"  # the unique= script helpers, by the name rq.queue calls
_SINCE_1_9 = ">=1.9.0"  # pipeline= on enqueue calls arrived in 1.9.0
_SINCE_1_15 = ">=1.15.0"  # enqueue_many takes depends_on (rq.dependency appears)
_SINCE_2_0 = ">=2.0.0"  # rq.group appears
_SINCE_2_8 = ">=2.8.0"  # unique= appears (enqueue_call, enqueue_job, schedule_job)

# fmt: off
DEFECTS: tuple[Defect, ...] = (
    Defect("D1", "nested MULTI for jobs without dependencies", ">=1.9.0,<2.3.0"),
    Defect("D2", "MULTI after commands already buffered in the pipeline", _SINCE_1_9),
    Defect("D3", "dependent job into a pipeline in MULTI or holding commands", _SINCE_1_9),
    Defect("D4", "enqueue_many with depends_on into a pipeline in MULTI", _SINCE_1_15, DEPENDENCY_CHECK),
    Defect("D5", "enqueue_many with depends_on runs the caller's execute()", _SINCE_1_15, DEPENDENCY_CHECK),
    Defect("D6", "enqueue_many writes at once through a WATCHing pipeline", _SINCE_1_9, "Queue.enqueue_many"),
    Defect("D7", "enqueue_at/enqueue_in write at once through a WATCHing pipeline", _SINCE_1_9,
           "Queue.schedule_job"),
    Defect("D8", "enqueue_at/enqueue_in put the scheduled entry outside the caller's pipeline",
           ">=1.9.0,<3.0.0", "ScheduledJobRegistry.schedule"),
    Defect("D9", "Group.enqueue_many runs the caller's execute()", _SINCE_2_0, "Group.enqueue_many"),
    Defect("D10", "unique=True writes the job at once through the queue's own connection", _SINCE_2_8,
           _SAVE_UNIQUE),
    Defect("D11", "is_async=False: the caller's execute() writes the job that ran back as queued", _SINCE_1_9,
           "Queue.run_job"),
    # Not lazy: on a release the table cannot tell about, its guard would sit on every enqueue's
    # path (enqueue_job) unprobed, so there it is probed at rq's import instead.
    Defect("D12", "enqueue_job writes at once through a WATCHing pipeline", ">=1.9.0,<1.14.0",
           "Queue.enqueue_job", lazy=False),
)
# fmt: on
# Every release up to this one was measured; later ones are judged by the probes alone.
LAST_MEASURED_RQ = "3.0.0"

DEFECTS_BY_ID = {defect.id: defect for defect in DEFECTS}


def table_expects(defect: Defect, rq_version: str | None) -> bool | None:
    """What the version table says of ``defect`` in ``rq_version``: True affected, False not,
    None unknown (newer than measured, or a version other than plain numbers). Read without
    ``packaging`` (a few milliseconds to import): the specifiers above are ``>=``/``<`` clauses
    of plain releases, and at rq's import it decides which methods get a guard; reports use
    ``versions.table_verdict``."""
    version = _release(rq_version or "")
    if version is None or version > (_release(LAST_MEASURED_RQ) or ()):
        return None
    for clause in defect.affected.split(","):
        clause = clause.strip()
        bound = _release(clause.lstrip("<>="))
        if bound is None or not clause.startswith((">=", "<")) or clause.startswith("<="):
            return None
        if (version < bound) if clause.startswith(">=") else (version >= bound):
            return False
    return True


def _release(text: str) -> tuple[int, ...] | None:
    try:
        return _releases[text]  # the same dozen strings, read for every defect at rq's import
    except KeyError:
        release = _releases[text] = _parse_release(text)
        return release


_releases: dict[str, tuple[int, ...] | None] = {}


def _parse_release(text: str) -> tuple[int, ...] | None:
    parts = text.strip().split(".")
    if not all(part.isdigit() for part in parts):
        return None
    numbers = [int(part) for part in parts]
    while len(numbers) > 1 and numbers[-1] == 0:  # 2.3 is 2.3.0
        numbers.pop()
    return tuple(numbers)


class Finding:
    """What is known about one defect in the installed RQ: ``probe`` None: the probe could not
    decide; ``note``: why, or why there was nothing to probe."""

    __slots__ = ("defect", "note", "probe", "rq_version")

    def __init__(self, defect: Defect, probe: bool | None, rq_version: str | None, note: str = "") -> None:
        self.defect, self.probe, self.rq_version, self.note = defect, probe, rq_version, note

    def __repr__(self) -> str:
        return f"Finding({self.defect.id!r}, probe={self.probe!r}, note={self.note!r})"

    def _replace(self, **changes: Any) -> Finding:
        """A copy with ``changes`` (as a NamedTuple's)."""
        now = {"defect": self.defect, "probe": self.probe, "rq_version": self.rq_version, "note": self.note}
        return Finding(**{**now, **changes})

    @property
    def table(self) -> TableVerdict:
        from .versions import table_verdict  # only reports need the version table

        return table_verdict(self.defect.affected, self.rq_version)

    @property
    def reason(self) -> str:
        if self.note:
            return self.note
        seen = "the probe reproduced it" if self.probe else "the probe found RQ correct"
        table = self.table
        if table == "unknown":
            return f"{seen}; rq {self.rq_version} is newer than the releases measured"
        if (table == "affected") == self.probe:
            return f"{seen}, as the version table expects"
        says = f"the version table says rq {self.rq_version} is {table.value}"
        return f"{seen}, although {says}; trusting the probe"

    @property
    def present(self) -> bool | None:
        if self.probe is not None:
            return self.probe
        table = self.table
        return None if table == "unknown" else table == "affected"


def check_shape(label: str, attribute: object, expected: Sequence[str], more_ok: bool = False) -> str | None:
    """Why ``attribute`` (as found in its class's ``__dict__``) cannot be wrapped safely, or None
    when it is a plain function or classmethod with the parameters we know (followed by others,
    with ``more_ok``)."""
    function = attribute.__func__ if isinstance(attribute, classmethod) else attribute
    if not inspect.isfunction(function):
        return f"{label} is a {type(attribute).__name__}, not a plain function"
    if hasattr(function, "__wrapped__"):  # a decorated function: its signature is the wrapped one's
        names = list(inspect.signature(function).parameters)
    else:
        names = _parameter_names(function.__code__)
    if (names[: len(expected)] if more_ok else names) != list(expected):
        return f"{label} has parameters {names}, expected {list(expected)}"
    return None


def _parameter_names(code: Any) -> list[str]:
    """What ``inspect.signature(function).parameters`` lists, read off the code object: a tenth
    of the cost, and these checks run at rq's import."""
    positional = code.co_argcount  # positional-only ones included
    count = positional + code.co_kwonlyargcount
    names = list(code.co_varnames[:positional])
    if code.co_flags & inspect.CO_VARARGS:
        names.append(code.co_varnames[count])
        count += 1
    names += code.co_varnames[positional : positional + code.co_kwonlyargcount]
    if code.co_flags & inspect.CO_VARKEYWORDS:
        names.append(code.co_varnames[count])
    return names


NOT_IMPORTED_YET = "not probed yet"  # the start of a Finding's note while its module is awaited
AT_FIRST_USE = "to be probed at the first call that needs it"  # a lazy defect's note until then


def is_pending(finding: Finding) -> bool:
    """A lazy defect not probed yet: its guard goes on, and asks at its first call."""
    return finding.probe is None and finding.note.startswith(AT_FIRST_USE)


def detect(
    originals: Mapping[str, Callable[..., Any] | None],
    rq_version: str | None,
    only: Collection[str] | None = None,
    awaited: Mapping[str, str] | None = None,
    now: bool = False,
) -> list[Finding]:
    """Probe every defect of ``DEFECTS`` (or those whose ids are in ``only``) in the installed
    RQ; never raises.

    ``originals`` maps "Class.method" to RQ's original, bound as RQ calls it (a plain function
    for ``Queue.setup_dependencies``), or to None where the installed RQ lacks the method.
    ``awaited`` maps the label of a method whose module is not imported yet (rq imports it later
    in its own ``import rq``) to that module: its defect is probed once it is. A defect that
    waits for its first use (``_at_first_use``) is probed only ``now``.
    """
    awaited = awaited or {}
    defects = [defect for defect in DEFECTS if only is None or defect.id in only]
    if now:  # a lazy defect at the first use of its path: on RQ's own methods from the start
        return _probe_all(defects, originals, rq_version, awaited, now, rq_own=True)
    findings = _probe_all(defects, originals, rq_version, awaited, now, rq_own=False)
    if any(f.probe is None and not f.note.startswith((NOT_IMPORTED_YET, AT_FIRST_USE)) for f in findings):
        # Another library's wrapper on a method the probes use (Queue.create_job, Job.save, ...)
        # may have touched Redis: probe again on RQ's own methods beneath such wrappers. Only
        # then: walking Queue's and Job's ~200 attributes costs more than every probe together.
        findings = _probe_all(defects, originals, rq_version, awaited, now, rq_own=True)
    return findings


def _probe_all(
    defects: list[Defect],
    originals: Mapping[str, Callable[..., Any] | None],
    rq_version: str | None,
    awaited: Mapping[str, str],
    now: bool,
    rq_own: bool,
) -> list[Finding]:
    kit: ProbeKit | None = None
    kit_error = ""
    later = {defect.id: not now and _at_first_use(defect, rq_version) for defect in defects}
    if any(not later[defect.id] and defect.method not in awaited for defect in defects):
        try:  # only when something is probed now: a kit costs a few hundred thousand instructions
            from .probes import ProbeKit

            kit = ProbeKit(originals, rq_own)
        except Exception as exc:
            reraise_job_timeout(exc)
            kit_error = f"the probe could not set up: {exc!r}"
    return [
        _finding(defect, kit, kit_error, originals, rq_version, awaited.get(defect.method), later[defect.id])
        for defect in defects
    ]


def _at_first_use(defect: Defect, rq_version: str | None) -> bool:
    """Whether ``defect`` waits for its first use: a lazy one always; another only where the
    version table can tell (a release newer than those measured gets it probed at rq's import)."""
    return defect.lazy or table_expects(defect, rq_version) is not None


def _finding(
    defect: Defect,
    kit: ProbeKit | None,
    kit_error: str,
    originals: Mapping[str, Callable[..., Any] | None],
    rq_version: str | None,
    awaited: str | None,
    later: bool = False,
) -> Finding:
    if awaited is not None:
        return Finding(defect, None, rq_version, f"{NOT_IMPORTED_YET}: {awaited} has not been imported")
    if originals.get(defect.method) is None:
        return Finding(defect, False, rq_version, f"rq {rq_version} has no {defect.method}")
    if later:
        return Finding(defect, None, rq_version, f"{AT_FIRST_USE} ({defect.method})")
    if kit is None:
        return Finding(defect, None, rq_version, kit_error)
    try:
        from .probes import PROBES

        return Finding(defect, PROBES[defect.id](kit), rq_version)
    except Exception as exc:
        reraise_job_timeout(exc)
        return Finding(defect, None, rq_version, f"the probe failed: {exc!r}")


def reraise_job_timeout(exc: Exception) -> None:
    """A job's timeout (RQ raises it from SIGALRM wherever the job is: inside a probe, a guard's
    first use or a dependency check run at the job's enqueue) belongs to the job: it goes on up,
    and what it interrupted is tried again at the next call."""
    timeouts = sys.modules.get("rq.timeouts")
    if timeouts is not None and isinstance(exc, getattr(timeouts, "BaseTimeoutException", ())):
        raise exc
