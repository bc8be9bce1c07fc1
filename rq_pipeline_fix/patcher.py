"""Putting the guard on ``rq.queue.Queue.setup_dependencies`` and taking it off again.

All of our state lives here, never on rq's modules or classes. ``apply()`` and ``revert()`` are
idempotent, thread-safe and never raise: when the guard cannot go on safely, RQ is left as it
is and the reason is said once, as a warning and a log record.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import threading
import warnings
from typing import TYPE_CHECKING, Any

from .config import DISABLE_VARIABLE, patching_disabled

if TYPE_CHECKING:
    from .report import Status

log = logging.getLogger("rq_pipeline_fix")


class RQPipelineFixWarning(RuntimeWarning):
    """Why rq-pipeline-fix left (part of) RQ unpatched."""


# Where an imported package keeps its version: cheaper than importlib.metadata, which is slow
# to import and to query, and which stays the fallback for packages not imported (yet).
_VERSION_ATTRIBUTES = {"rq": ("rq.version", "VERSION"), "redis": ("redis", "__version__")}


def _version(distribution: str) -> str | None:
    module_name, attribute = _VERSION_ATTRIBUTES[distribution]
    module = sys.modules.get(module_name)
    if module is None and distribution in sys.modules:
        # The import hook runs while rq/__init__ is still importing rq.queue, before it reaches
        # rq.version: that module is one line, the package metadata is ~3 ms to read.
        with contextlib.suppress(Exception):
            module = importlib.import_module(module_name)
    version = getattr(module, attribute, None)
    if isinstance(version, str):
        return version
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


class _Installed:
    """Our wrapper on one RQ method, the exact object it replaced, and its on/off switch."""

    def __init__(self, target: Any, owner: type, original: Any, patched: frozenset[str]) -> None:
        import wrapt

        self.target = target
        self.owner = owner
        self.original = original
        self.patched = patched
        self.guard = target.wrapper(target, patched)
        self.wrapper = wrapt.FunctionWrapper(original, self.guard)
        setattr(owner, target.name, self.wrapper)

    def uninstall(self) -> str | None:
        """Put the original back if ours is still the class attribute, else switch ours off.
        Returns what the caller should be told when it could not simply put it back."""
        self.guard.enabled = False
        current = self.owner.__dict__.get(self.target.name)
        if current is self.wrapper:
            setattr(self.owner, self.target.name, self.original)
            return None
        if _wraps(current, self.wrapper):
            return (
                f"{self.target.label}: switched the guard off in place, because another wrapper "
                f"({type(current).__name__}) sits on top of it and was left working"
            )
        return f"{self.target.label}: left as it is, it had already been replaced by someone else"


def _wraps(outer: object, inner: object) -> bool:
    for _ in range(100):  # a bounded walk down the __wrapped__ chain
        if outer is None:
            return False
        if outer is inner:
            return True
        outer = getattr(outer, "__wrapped__", None)
    return False


_lock = threading.RLock()
_reinit_lock = getattr(_lock, "_at_fork_reinit", None)
if _reinit_lock is not None:  # a child forked while another thread held the lock gets a free one
    os.register_at_fork(after_in_child=_reinit_lock)
_installed: list[_Installed] = []
_findings: list[Any] = []  # detect.Finding, probed once per set of original methods
_probed: tuple[object, ...] = ()
_note = "not applied yet: rq.queue has not been imported"
_warned: set[str] = set()


def _say_once(message: str) -> None:
    if message in _warned:
        return
    _warned.add(message)
    log.warning(message)
    warnings.warn(f"rq-pipeline-fix: {message}", RQPipelineFixWarning, stacklevel=3)


def _leave_rq_alone(reason: str) -> None:
    global _note
    _note = reason
    _say_once(reason)


def apply() -> Status:
    """Put the guards on RQ for the defects the installed RQ has.

    Imports ``rq.queue``. Safe to call any number of times, from any thread; never raises.
    """
    _apply()
    return status()


def _apply() -> None:
    global _note
    disabled, complaint = patching_disabled()
    if not disabled:
        # Import before taking our lock: a first `import rq` in another thread holds the
        # module's import lock while its hook waits for ours (an ABBA deadlock otherwise).
        with contextlib.suppress(Exception):  # _install says why rq cannot be used
            import rq.queue  # noqa: F401
    with _lock:
        try:
            if complaint:
                _say_once(complaint)
            if disabled:
                _note = f"disabled by {DISABLE_VARIABLE}"
            elif not _installed:
                _install()
        except Exception as exc:  # the host must never break because of us
            _leave_rq_alone(f"left RQ untouched: unexpected error while patching: {exc!r}")


def _find(target: Any) -> tuple[type, Any] | None:
    """The class that defines ``target`` and the attribute in its ``__dict__``, if this RQ has it."""
    try:
        module = importlib.import_module(target.module)
    except ImportError:
        return None
    owner = getattr(module, target.owner, None)
    if not isinstance(owner, type) or target.name not in owner.__dict__:
        return None
    return owner, owner.__dict__[target.name]


def _install() -> None:
    global _findings, _probed, _note
    try:
        import rq.queue  # noqa: F401
    except Exception as exc:
        _leave_rq_alone(f"left RQ untouched: rq cannot be imported ({exc!r})")
        return
    if _installed:  # importing rq.queue just now ran our import hook, which applied the guards
        return
    from .detect import check_shape, detect
    from .guard import SETUP_DEPENDENCIES, TARGETS

    found = {target: _find(target) for target in TARGETS}
    usable: dict[Any, tuple[type, Any]] = {}
    for target, place in found.items():
        problem = check_shape(
            target.label, place[1] if place else None, target.parameters, target.more_parameters_ok
        )
        if place is not None and problem is None:
            usable[target] = place
        elif target is SETUP_DEPENDENCIES:
            _leave_rq_alone(f"left RQ untouched: {problem}")
            return
        elif place is not None:
            _say_once(f"{', '.join(target.defects)} not patched: {problem}")
    originals = tuple(attribute for _owner, attribute in usable.values())
    if _probed != originals:
        bound = {t.label: attribute.__get__(None, owner) for t, (owner, attribute) in usable.items()}
        _findings, _probed = detect(bound, _version("rq")), originals
    for finding in _findings:
        if finding.probe is None:
            _say_once(f"{finding.defect.id} not patched: {finding.reason}")
    detected = frozenset(finding.defect.id for finding in _findings if finding.probe)
    for target, (owner, attribute) in usable.items():
        patched = detected & frozenset(target.defects)
        if patched:
            _installed.append(_Installed(target, owner, attribute, patched))
    if not _installed:
        _note = "nothing to do: the installed RQ has none of the defects the guards fix"
        return
    _note = "; ".join(f"guard on {i.target.label} for {', '.join(sorted(i.patched))}" for i in _installed)
    log.debug(_note)


def revert() -> Status:
    """Take the guards off: put back the exact original objects.

    If another wrapper was put on top of ours since (as tracing tools do), theirs is kept
    working: ours is switched off in place and the status says so. Never raises.
    """
    global _note
    with _lock:
        if not _installed:
            return status()
        complaints = []
        for installed in _installed:
            try:
                complaint = installed.uninstall()
            except Exception as exc:
                complaint = f"{installed.target.label}: switched the guard off after an error: {exc!r}"
            if complaint:
                complaints.append(complaint)
                _say_once(complaint)
        _installed.clear()
        _note = "reverted: " + ("; ".join(complaints) if complaints else "RQ's own methods are back")
        return status()


def status() -> Status:
    """A report of the versions, each defect, and what was patched. Does not import rq."""
    from .report import DefectStatus, Status  # not at rq's import: the hook builds no report

    with _lock:
        patched = frozenset().union(*(installed.patched for installed in _installed))
        return Status(
            rq_version=_version("rq"),
            redis_version=_version("redis"),
            active=bool(_installed),
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


def apply_from_hook() -> None:
    """``apply()`` for the import hook, which must never raise into the host's ``import rq``, and
    which builds no report: that would import ``packaging`` into every process using rq."""
    try:
        _apply()
    except Exception as exc:
        _leave_rq_alone(f"left RQ untouched: {exc!r}")
