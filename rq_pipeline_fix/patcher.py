"""Putting the guard on ``rq.queue.Queue.setup_dependencies`` and taking it off again.

All of our state lives here, never on rq's modules or classes. ``apply()`` and ``revert()`` are
idempotent, thread-safe and never raise: when the guard cannot go on safely, RQ is left as it
is and the reason is said once, as a warning and a log record.
"""

from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, cast

from .config import DISABLE_VARIABLE, patching_disabled

log = logging.getLogger("rq_pipeline_fix")

TARGET = "setup_dependencies"


class RQPipelineFixWarning(RuntimeWarning):
    """Why rq-pipeline-fix left (part of) RQ unpatched."""


@dataclass(frozen=True)
class DefectStatus:
    """One defect of DEFECTS.md in the installed RQ.

    ``detected``: what the behaviour probe saw (None: it could not tell). ``version_table``:
    "affected", "unaffected" or "unknown" (a release newer than those measured). ``patched``:
    the guard fixes it in this process. ``reason``: how the verdict was reached.
    """

    id: str
    title: str
    detected: bool | None
    version_table: str
    patched: bool
    reason: str


@dataclass(frozen=True)
class Status:
    """What rq-pipeline-fix did in this process. ``active``: the guard is in place and enabled;
    ``note``: why it is not, or what happened last."""

    rq_version: str | None
    redis_version: str | None
    active: bool
    note: str
    defects: tuple[DefectStatus, ...] = field(default=())

    @property
    def unpatched(self) -> tuple[DefectStatus, ...]:
        """Defects detected (or expected by the version table) but left unpatched."""
        return tuple(
            d
            for d in self.defects
            if not d.patched and (d.detected or (d.detected is None and d.version_table == "affected"))
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _version(distribution: str) -> str | None:
    from importlib import metadata  # imported late: it is slow to import, and status() is rare

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


class _Installed:
    """Our wrapper on the class, the exact function object it replaced, and its on/off switch."""

    def __init__(self, owner: type, original: Callable[..., Any], patched: frozenset[str]) -> None:
        import wrapt

        from .guard import Guard

        self.owner = owner
        self.original = original
        self.patched = patched
        self.enabled = True
        self.wrapper = wrapt.FunctionWrapper(original, Guard(patched), enabled=self.is_enabled)
        setattr(owner, TARGET, self.wrapper)

    def is_enabled(self) -> bool:
        return self.enabled


_lock = threading.RLock()
_installed: _Installed | None = None
_findings: list[Any] = []  # detect.Finding, probed once per original function
_probed: Callable[..., Any] | None = None
_note = "not applied yet: rq.queue has not been imported"
_warned: set[str] = set()


def _say_once(message: str) -> None:
    if message in _warned:
        return
    _warned.add(message)
    log.warning(message)
    warnings.warn(f"rq-pipeline-fix: {message}", RQPipelineFixWarning, stacklevel=3)


def _leave_rq_alone(reason: str) -> Status:
    global _note
    _note = reason
    _say_once(reason)
    return status()


def apply() -> Status:
    """Put the guard on ``Queue.setup_dependencies`` for the defects the installed RQ has.

    Imports ``rq.queue``. Safe to call any number of times, from any thread; never raises.
    """
    global _note
    with _lock:
        try:
            disabled, complaint = patching_disabled()
            if complaint:
                _say_once(complaint)
            if disabled:
                _note = f"disabled by {DISABLE_VARIABLE}"
                return status()
            if _installed is not None and _installed.enabled:
                return status()
            return _install()
        except Exception as exc:  # the host must never break because of us
            return _leave_rq_alone(f"left RQ untouched: unexpected error while patching: {exc!r}")


def _install() -> Status:
    global _installed, _findings, _probed, _note
    try:
        from rq.queue import Queue
    except Exception as exc:
        return _leave_rq_alone(f"left RQ untouched: rq cannot be imported ({exc!r})")
    from .detect import check_shape, detect

    found = Queue.__dict__.get(TARGET)
    problem = check_shape(found)
    if problem is not None:
        return _leave_rq_alone(f"left RQ untouched: {problem}")
    original = cast("Callable[..., Any]", found)  # check_shape found a plain function
    if _probed is not original:
        _findings, _probed = detect(Queue, original, _version("rq")), original
    for finding in _findings:
        if finding.probe is None:
            _say_once(f"{finding.defect.id} not patched: {finding.reason}")
    patched = frozenset(finding.defect.id for finding in _findings if finding.probe)
    if not patched:
        _note = "nothing to do: the installed RQ has none of the defects the guard fixes"
        return status()
    _installed = _Installed(Queue, original, patched)
    _note = f"guard on rq.queue.Queue.{TARGET} for {', '.join(sorted(patched))}"
    log.debug(_note)
    return status()


def revert() -> Status:
    """Take the guard off: put back the exact original function object.

    If another wrapper was put on top of ours since (as tracing tools do), theirs is kept
    working: ours is switched off in place and the status says so. Never raises.
    """
    global _installed, _note
    with _lock:
        installed = _installed
        if installed is None:
            return status()
        try:
            current = installed.owner.__dict__.get(TARGET)
            if current is installed.wrapper:
                setattr(installed.owner, TARGET, installed.original)
                _note = "reverted: the original Queue.setup_dependencies is back"
            elif _wraps(current, installed.wrapper):
                _note = (
                    f"reverted by switching the guard off: another wrapper ({type(current).__name__}) "
                    "sits on top of it and was left in place"
                )
                _say_once(_note)
            else:
                _note = "reverted: Queue.setup_dependencies had already been replaced by someone else"
                _say_once(_note)
            installed.enabled = False
            _installed = None
        except Exception as exc:
            installed.enabled = False
            _installed = None
            _note = f"reverted by switching the guard off after an error: {exc!r}"
            _say_once(_note)
        return status()


def _wraps(outer: object, inner: object) -> bool:
    seen = 0
    while outer is not None and seen < 100:  # a bounded walk down the __wrapped__ chain
        if outer is inner:
            return True
        outer, seen = getattr(outer, "__wrapped__", None), seen + 1
    return False


def status() -> Status:
    """A report of the versions, each defect, and what was patched. Does not import rq."""
    with _lock:
        patched = _installed.patched if _installed is not None else frozenset()
        return Status(
            rq_version=_version("rq"),
            redis_version=_version("redis"),
            active=_installed is not None,
            note=_note,
            defects=tuple(
                DefectStatus(
                    id=f.defect.id,
                    title=f.defect.title,
                    detected=f.probe,
                    version_table=f.table.value,
                    patched=f.defect.id in patched,
                    reason=f.reason,
                )
                for f in _findings
            ),
        )


def activate_when_rq_is_imported() -> None:
    """Apply now if ``rq.queue`` is imported, else as soon as it is; never imports rq itself."""
    try:
        import wrapt

        wrapt.register_post_import_hook(_apply_from_hook, "rq.queue")
    except Exception as exc:
        _leave_rq_alone(f"left RQ untouched: could not register the import hook ({exc!r})")


def _apply_from_hook(module: object) -> None:
    try:
        apply()
    except Exception as exc:  # an exception here would fail the host's own `import rq`
        _leave_rq_alone(f"left RQ untouched: {exc!r}")
