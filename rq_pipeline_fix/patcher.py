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
from types import FunctionType
from typing import TYPE_CHECKING, Any, Callable

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
    """A guard of ours on one RQ method: the wrapt wrapper, its guard (which holds the on/off
    switch), the defects it fixes, and whether another copy of the package put it there."""

    def __init__(self, target: Any, owner: type, wrapper: Any, patched: frozenset[str], by: str = "") -> None:
        self.target = target
        self.owner = owner
        self.wrapper = wrapper
        self.patched = patched
        self.by = by  # "": this copy; else where the other copy of rq-pipeline-fix lives

    @property
    def guard(self) -> Any:
        """The guard itself: made now if it still waits for its first use (guard.py loads)."""
        return self.wrapper._self_wrapper

    def switch_off(self) -> None:
        """Its switch off: made first if it still waits for its first use (one that cannot be
        made has put RQ's own back already)."""
        wrapper = self.wrapper
        guard = wrapper.made_guard() if type(wrapper) is _WrappedAtFirstUse else wrapper._self_wrapper
        if guard is not None:
            guard.enabled = False

    def is_on(self) -> bool:
        """Its switch is on. A guard not made yet is, unless it stepped aside for RQ's own:
        nothing can switch it off unmade."""
        if type(self.wrapper) is _WrappedAtFirstUse and not self.wrapper.guard_made():
            return not self.wrapper._self_failed
        return bool(self.guard.enabled)

    @classmethod
    def put_on(cls, target: Any, chain: Any, patched: frozenset[str]) -> _Installed:
        """Our guard directly on RQ's own function, beneath any other library's wrapper, so that
        theirs still sees every call (neighbours.py); on top of what is there only where RQ's own
        is out of reach. Where it sits alone in its class (or module), as at rq's import in
        nearly every process, it goes on as a ``_WrappedAtFirstUse``."""
        make_guard = _guard_maker(target, patched)
        if chain.original is not None and not chain.layers and chain.slot.settable:
            wrapper: Any = _WrappedAtFirstUse(chain.raw_original, make_guard, chain.owner, target.name)
            chain.slot.put(wrapper, chain.owner)
            return cls(target, chain.owner, wrapper, patched)
        import wrapt

        guard = make_guard()
        if chain.original is not None and chain.slot.settable:
            wrapper = wrapt.FunctionWrapper(chain.raw_original, guard)
            chain.slot.put(wrapper, chain.owner)
        else:
            wrapper = wrapt.FunctionWrapper(chain.owner.__dict__[target.name], guard)
            setattr(chain.owner, target.name, wrapper)
        return cls(target, chain.owner, wrapper, patched)

    def chain(self) -> Any:
        return _chain(self.target, self.owner)

    def problem(self, chain: Any) -> str | None:
        """What happened to the guard since it went on, if it is no longer in place and on."""
        from .neighbours import describe

        failed = getattr(self.wrapper, "_self_failed", "")
        if failed:
            return f"{self.target.label}: RQ's own method is back: {failed}"
        if chain.find(self.wrapper) is None:
            now = chain.layers[0].obj if chain.layers else chain.original
            return (
                f"{self.target.label}: the guard is no longer there, someone else replaced or "
                f"unwrapped it (now: {describe(now)}); apply() puts it back"
            )
        if not self.is_on():
            return f"{self.target.label}: the guard was switched off by another copy of rq-pipeline-fix"
        return None

    def uninstall(self) -> str | None:
        """Take the guard out of the chain of wrappers, leaving any other wrapper working; switch
        it off where it cannot be taken out. Returns what the caller should be told then."""
        from .neighbours import describe

        self.switch_off()
        with _swap_lock:  # a first use does not put the wrapt wrapper back while we take it off
            layer = self.chain().find(self.wrapper)
            if layer is None:
                return f"{self.target.label}: left as it is, it had already been replaced by someone else"
            if layer.slot.settable:
                layer.slot.put(self.wrapper.__wrapped__, self.owner)
                return None
        holder = layer.slot.holder
        return (
            f"{self.target.label}: switched the guard off in place, because another wrapper "
            f"({describe(holder)}) holds it where it cannot be taken out; that one was left working"
        )


_swap_lock = threading.Lock()  # held for a few instructions: a fork waits for them, as for _lock


def _guard_maker(target: Any, patched: frozenset[str]) -> Callable[[], Any]:
    """What makes ``target``'s guard: at its first use, where it goes on as a stand-in (guard.py
    is loaded then, not at rq's import)."""

    def make_guard() -> Any:
        from .guard import guard_for

        guard = guard_for(target, patched)
        guard.confirm, guard.decided = _confirm, _is_decided
        return guard

    return make_guard


# What the guards import at their first use (of each path): a fork in the middle of another
# thread's import of one would leave the child that module's import lock, held by a thread it
# does not have. (The probes import under our lock, which a fork waits for too.)
_FIRST_USE_IMPORTS = ("wrapt", *(f"{__package__}.{module}" for module in ("guard", "deps", "unique")))


def _before_fork() -> None:
    """Importing what a first use imports here waits for another thread's import of it to end
    (or makes it, once, for every child to come: a worker's work horses then inherit it), so that
    the child's own first use cannot wait for ever on a lock no thread of its holds."""
    from .importhook import is_initialised  # loaded with the package: no import here

    for module in _FIRST_USE_IMPORTS if _installed else ():
        if not is_initialised(module):
            with contextlib.suppress(Exception):
                importlib.import_module(module)  # half-imported by another thread: waits for its end
    _swap_lock.acquire()


os.register_at_fork(
    before=_before_fork, after_in_parent=_swap_lock.release, after_in_child=_swap_lock.release
)


class _WrappedAtFirstUse:
    """The guard on RQ's method until the method is first looked up (or, for a module-level
    function, called): then the wrapt wrapper is made and put where this stood, and every later
    call goes straight to it. Importing wrapt is half of what the guard would otherwise add to
    ``import rq`` (issue 16); a process that never enqueues (``rq info``, most workers) never
    pays it, one that does pays it once, at its first enqueue.

    To neighbours.py it looks like a wrapt wrapper of ours (``__wrapped__``, ``_self_wrapper``),
    so that status, revert and another copy of the package see the guard; ``_self_successor`` is
    the wrapt wrapper that took its place. Another library that wrapped this before the first
    use (taking it from the class's ``__dict__``) keeps it: each call then passes through here."""

    __slots__ = ("__wrapped__", "_guard", "_make_guard", "_name", "_owner", "_self_failed", "_self_successor")

    def __init__(self, original: Any, make_guard: Callable[[], Any], owner: Any, name: str) -> None:
        self.__wrapped__, self._make_guard, self._guard = original, make_guard, None
        self._owner, self._name = owner, name
        self._self_successor: Any = None
        self._self_failed = ""  # why the wrapt wrapper could not be made: RQ's own is back

    @property
    def _self_wrapper(self) -> Any:
        """The guard, made at the first use, or when a report, revert() or another copy of the
        package asks for it first. None can be made: no guard of ours any more, RQ's own is back."""
        guard = self.made_guard()
        if guard is None:
            raise AttributeError("_self_wrapper")
        return guard

    def made_guard(self) -> Any:
        """The guard, made now if it is not yet; None where it cannot be made (RQ's own is back)."""
        if self._guard is None:
            try:
                made = self._make_guard()  # outside our lock: it imports guard.py
            except Exception as exc:  # guard.py broken since rq's import (a partial upgrade, say)
                from .detect import reraise_job_timeout

                reraise_job_timeout(exc)  # the job's: the next lookup tries again
                self._fail(f"the guard could not be made at its first use: {exc!r}")
                return None
            with _swap_lock:
                if self._guard is None:  # another thread's, made meanwhile, stays
                    self._guard = made
        return self._guard

    def guard_made(self) -> bool:
        return self._guard is not None

    def _successor(self) -> Any:
        wrapper = self._self_successor
        if wrapper is not None:
            return wrapper
        try:  # outside our lock: an import takes locks of its own
            import wrapt
        except Exception as exc:  # there at install (_require), broken since: RQ's own, and why
            from .detect import reraise_job_timeout

            reraise_job_timeout(exc)  # the job's: the next lookup tries again
            return self._fail(f"wrapt could not be imported at the guard's first use: {exc!r}")
        guard = self.made_guard()
        if guard is None:
            return self.__wrapped__
        with _swap_lock:
            if self._self_successor is None:
                self._self_successor = wrapt.FunctionWrapper(self.__wrapped__, guard)
                self._step_aside_for(self._self_successor)
            return self._self_successor

    def _fail(self, why: str) -> Any:
        """RQ's own method back where this stood, and where every other guard of ours still waits
        for its first use (theirs would fail alike), and why, said once."""
        for installed in list(_installed):
            if type(installed.wrapper) is _WrappedAtFirstUse:
                installed.wrapper._step_aside(why)
        self._step_aside(why)
        say_once(f"guards taken off at their first use, RQ's own methods left: {why}")
        return self.__wrapped__

    def _step_aside(self, why: str) -> None:
        if self._self_successor is not None or self._self_failed:
            return  # in use already, or already aside
        if self._guard is not None:
            self._guard.enabled = False
        self._self_failed = why
        with _swap_lock:
            self._step_aside_for(self.__wrapped__)

    def _step_aside_for(self, replacement: Any) -> None:
        """Put ``replacement`` where this stands, if it still does (not taken off, nor wrapped
        over by another library); under ``_swap_lock``, which revert() takes too."""
        if self._owner.__dict__.get(self._name) is self:
            setattr(self._owner, self._name, replacement)

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        return self._successor().__get__(instance, owner)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # a module-level function (rq.queue's)
        return self._successor()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # __name__, __code__, ...: RQ's, as wrapt's proxies do
        return getattr(self.__wrapped__, name)

    # What the class itself would answer, RQ's too, as wrapt's proxies do: mock's autospec, pydoc
    # and inspect.isfunction take this for the function it stands for.
    __class__ = property(lambda self: type(self.__wrapped__))
    __doc__ = property(lambda self: self.__wrapped__.__doc__)
    __module__ = property(lambda self: self.__wrapped__.__module__)


def _alongside(installed: _Installed, chain: Any) -> str | None:
    """Where the guard sits among other libraries' wrappers, for the report; None: alone."""
    from .neighbours import describe, guard_of

    layer = chain.find(installed.wrapper)
    if layer is None:  # gone: problem() says so
        return None
    index = chain.layers.index(layer)
    above = [describe(other.obj) for other in chain.layers[:index] if guard_of(other.obj) is None]
    below = [describe(other.obj) for other in chain.layers[index + 1 :] if guard_of(other.obj) is None]
    parts = [f"guard put on by another copy of rq-pipeline-fix ({installed.by})"] if installed.by else []
    if chain.original is None:
        parts.append(_replaced(chain))
    elif below:
        parts.append(
            f"guard above {', '.join(below)}, RQ's own being out of reach beneath: the calls the guard "
            "answers itself do not reach it"
        )
    if above:
        direct = chain.original is not None and not below
        where = "guard directly on RQ's own, beneath" if direct else "beneath"
        parts.append(f"{where} {', '.join(above)}, which {'see' if len(above) > 1 else 'sees'} every call")
    return f"{installed.target.label}: {'; '.join(parts)}" if parts else None


def _replaced(chain: Any) -> str:
    from .neighbours import describe

    return (
        f"RQ's own was replaced by {describe(chain.judged)}, which keeps no reference to it that "
        "could be found: that was probed and guarded as found"
    )


_lock = threading.RLock()
# A fork waits for apply()/revert() in other threads to finish (a child forked half-way through
# would inherit a torn set of wrappers, and records saying they are all in place); the forking
# thread, which then holds the lock, is the child's only thread and releases it there too.
os.register_at_fork(before=_lock.acquire, after_in_parent=_lock.release, after_in_child=_lock.release)
_installed: list[_Installed] = []
_findings: list[Any] = []  # detect.Finding, probed once per set of original methods
_probed: dict[str, object] = {}  # label -> the original attribute the findings were probed on
_bound: dict[str, Any] = {}  # label -> that original, bound as RQ calls it (the probes' input)
_awaited: set[str] = set()  # modules of targets whose import (or its end) we wait for
_wanted = False  # apply() is in force: a late target is patched when its module is imported
_reverted = False  # revert() was called: the import hook (a reload of rq.queue) does not re-apply
_busy = False  # this thread is applying: a hook that fires from inside (a probe's import) waits
_note = "not applied yet: rq.queue has not been imported"
_unguarded: list[str] = []  # methods another library replaced without keeping RQ's, left unguarded
_warned: set[str] = set()


def say_once(message: str) -> None:
    """Say why, once per reason: a log record and an RQPipelineFixWarning. Never raises: where
    warnings are errors (``-W error``, a test suite's filterwarnings) the log record says it."""
    if message in _warned:
        return
    _warned.add(message)
    log.warning(message)
    with contextlib.suppress(Exception):  # a warning turned exception must not escape into the host
        warnings.warn(f"rq-pipeline-fix: {message}", RQPipelineFixWarning, stacklevel=3)


def _leave_rq_alone(reason: str) -> None:
    global _note, _wanted
    _note = reason
    _wanted = False  # nothing more goes on: no late target, no guard a report finds missing
    say_once(reason)


def apply() -> Status:
    """Put the guards on RQ for the defects the installed RQ has.

    Imports ``rq.queue``. Safe to call any number of times, from any thread; never raises.
    """
    global _reverted
    disabled, complaint = patching_disabled()
    problem = None if disabled else _import_targets()
    _poll()  # import hooks that had to wait (another finder found rq, another thread held a lock)
    with _lock:
        _reverted = False
        _apply(disabled, complaint, None, problem)
    _poll()  # hooks that fired while we held the lock
    return status()


def _import_targets() -> str | None:
    """Import ``rq.queue`` and the modules of RQ's other targets, before taking our lock: nothing
    imports under it. A first ``import rq`` in another thread holds module locks while its hook
    waits for ours (an ABBA deadlock otherwise). Returns why rq cannot be imported, if so."""
    try:
        import rq.queue  # noqa: F401

        from .targets import TARGETS
    except Exception as exc:
        return f"rq cannot be imported ({exc!r})"
    for module in {target.module for target in TARGETS if not target.late} - _absent:
        if module in sys.modules:
            continue
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:  # this RQ has no such module (_install says so):
            if exc.name == module:  # not asked again, so that a fork in the middle of asking
                _absent.add(module)  # cannot leave the child an import lock nobody releases
        except Exception:
            pass
    return None


_absent: set[str] = set()  # target modules this RQ does not have


def _apply(disabled: bool, complaint: str | None, firing: str | None, problem: str | None = None) -> bool:
    """apply() under the lock, also for the import hook of module ``firing`` (its code has run,
    the import is not over). Returns False where it must be tried again later: a module it needs
    is being imported by another thread, or a lock of the import system is held."""
    global _note, _busy
    if _busy:
        return False
    _busy = True
    try:
        if complaint:
            say_once(complaint)
        if disabled and _installed:  # the switch is read when the guard goes on, not after
            _note = f"{DISABLE_VARIABLE} was set after the guard went on: it stays on until revert()"
        elif disabled:
            _note = f"disabled by {DISABLE_VARIABLE}"
        elif problem is not None:
            _leave_rq_alone(f"left RQ untouched: {problem}")
        elif not _in_place():
            return _install(firing)
        return True
    except Exception as exc:  # the host must never break because of us
        if _try_again_later(exc):
            _note = f"not applied yet, tried again at the next import or call: {exc!r}"
            return False
        _leave_rq_alone(f"left RQ untouched: unexpected error while patching: {exc!r}")
        return True
    finally:
        _busy = False


def _ran_into_an_import(finding: Any) -> bool:
    """A probe that failed on an import under way (RQ's code imports rq modules as it runs):
    another thread's (a deadlock error), or a module of rq's still half-way (an ImportError).
    Not a verdict on RQ: the probe is run again once the imports are over."""
    if finding.probe is not None:
        return False
    if "_DeadlockError(" in finding.note:
        return True
    if "ImportError(" not in finding.note:  # before walking sys.modules
        return False
    from .importhook import initialising

    return any(name.startswith("rq.") and initialising(m) for name, m in list(sys.modules.items()))


def _try_again_later(exc: Exception) -> bool:
    """An import that could not be finished now (importlib's _DeadlockError, an ImportError of a
    module another thread is still importing), as opposed to something wrong with RQ."""
    if isinstance(exc, ModuleNotFoundError) and not (exc.name or "rq").startswith("rq"):
        return False  # a dependency that is not installed (wrapt, packaging): it will not come
    return isinstance(exc, ImportError) or type(exc).__name__ == "_DeadlockError"


def _rq_import_under_way(firing: str | None) -> bool:
    """Another thread is importing a module of rq's (other than ``firing``). The probes run RQ
    code, which imports rq modules as it goes: it would wait for that import while that import
    waits for the module we are in, and one of the two would fail with a deadlock error (issue
    15: two threads' first ``import rq.queue`` and ``import rq.registry``). The guard goes on
    when that import is over."""
    from .importhook import imported_elsewhere

    return imported_elsewhere("rq.", but=firing)


def _ready(module: str, firing: str | None) -> bool:
    """``module``'s code has run to the end (or it is the module whose import hook is firing):
    its classes may be read. Never imports it."""
    from .importhook import is_initialised

    return module == firing or is_initialised(module)


def _find(target: Any) -> Any:
    """The chain of wrappers on ``target`` down to RQ's own function (neighbours.Chain), or None
    where this RQ does not define the method (or its module is not imported: the caller awaits
    it; nothing is imported here). ``owner`` "" is the module itself (a module-level function).
    A target without defects fixes a neighbour of RQ's: its own function is the neighbour's."""
    module = sys.modules.get(target.module)
    if module is None:
        return None
    owner = getattr(module, target.owner, None) if target.owner else module
    if not (isinstance(owner, type) or owner is module) or target.name not in owner.__dict__:
        return None
    if target.defects:
        unwrapped = _Unwrapped.of(owner, target.name)
        if unwrapped is not None:
            return unwrapped
    return _chain(target, owner)


class _Unwrapped:
    """What ``neighbours.chain_of`` finds for RQ's own function where it sits unwrapped in its
    class (or module), as it does in nearly every process at rq's import: known here without
    loading neighbours, a third of a millisecond. Has what installing needs; everything later
    (status, revert) walks the real chain."""

    layers = ()
    settable = True

    def __init__(self, owner: Any, name: str, original: Any) -> None:
        self.owner, self.name = owner, name
        self.original = self.raw_original = self.judged = original
        self.slot = self  # the class attribute itself holds it

    @classmethod
    def of(cls, owner: Any, name: str) -> _Unwrapped | None:
        attribute = owner.__dict__[name]
        function = attribute.__func__ if type(attribute) in (classmethod, staticmethod) else attribute
        rq = getattr(sys.modules.get("rq"), "__file__", None)
        if type(function) is not FunctionType or not rq:
            return None
        rq_own = function.__code__.co_filename.startswith(os.path.dirname(rq) + os.sep)
        return cls(owner, name, attribute) if rq_own else None

    def put(self, raw: Any, owner: Any) -> None:
        setattr(owner, self.name, raw)


def _chain(target: Any, owner: Any, chain_of: Callable[[Any, str], Any] | None = None) -> Any:
    """``neighbours.chain_of``, except that for a neighbour's method (a target without defects)
    its own function, not RQ's, ends the chain."""
    if chain_of is None:
        from . import neighbours

        chain_of = neighbours.chain_of
    chain = chain_of(owner, target.name)
    if target.defects or chain.original is not None:
        return chain
    from .neighbours import Chain

    for index, layer in enumerate(chain.layers):  # the first plain function from the outside in
        if type(layer.obj) is FunctionType:
            return Chain(owner, target.name, chain.layers[:index], layer.obj, layer.slot)
    return chain


def _usable(target: Any, chain: Any) -> str | None:
    """Why ``target``, found as ``chain``, cannot be wrapped safely, or None."""
    from .detect import check_shape

    judged = chain.judged if chain else None
    problem = check_shape(target.label, judged, target.parameters, target.more_parameters_ok)
    if problem is None and chain is not None and target.check is not None:
        problem = target.check(chain.owner)
    return problem


def _may_come(module: str) -> bool:
    """False when ``module``'s package is imported and has no such module (rq.group before RQ
    2.0); asking never imports anything, and a package not imported yet may bring it later."""
    package = module.rpartition(".")[0]
    if package not in sys.modules:
        return True
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _what(target: Any) -> str:
    return ", ".join(target.defects) or target.label


def _chains() -> list[tuple[_Installed, Any]]:
    """Each guard we put on, with the chain of wrappers on its method as it is now."""
    return [(installed, installed.chain()) for installed in _installed]


def _in_place() -> bool:
    """Every guard we put on is still there and on (a neighbour's unpatch may have taken one off),
    and its class is still the one its module has (not replaced by ``importlib.reload``)."""
    return (
        bool(_installed)
        and all(installed.problem(chain) is None for installed, chain in _chains())
        and not _reloaded()
    )


def _owner_now(target: Any) -> Any:
    module = sys.modules.get(target.module)
    return getattr(module, target.owner, None) if target.owner else module


def _reloaded() -> list[str]:
    """The guarded methods whose module was reloaded since: its class is a new, unguarded one."""
    guarded = {(installed.target, installed.owner) for installed in _installed}
    return sorted(
        {
            f"{target.label}: {target.module} was reloaded since the guard went on, its new "
            f"{target.owner or 'module'} is unguarded; apply() guards it"
            for target, owner in guarded
            if _owner_now(target) is not None
            and _owner_now(target) is not owner
            and (target, _owner_now(target)) not in guarded
        }
    )


def _install(firing: str | None) -> bool:
    """Probe and guard what the imported RQ has; await the targets whose module is not imported
    yet. Returns False where rq.queue itself is still being imported by another thread."""
    global _findings, _probed, _bound, _wanted
    from .detect import NOT_IMPORTED_YET, detect, is_pending
    from .targets import SETUP_DEPENDENCIES, TARGETS

    if not _ready(SETUP_DEPENDENCIES.module, firing) or _rq_import_under_way(firing):
        return False

    for stale in [installed for installed, chain in _chains() if installed.problem(chain)]:
        stale.switch_off()  # gone, or switched off by another copy: a new one goes on below
        _installed.remove(stale)
    # Never imported from here (we may be inside rq's import, another thread inside another's):
    # a target whose module is not imported yet, or half-way, is guarded when its import is over.
    awaited = {t: t.module for t in TARGETS if not _ready(t.module, firing) and _may_come(t.module)}
    usable: dict[Any, Any] = {}
    unusable: dict[str, str] = {}
    for target in TARGETS:
        chain = None if target in awaited else _find(target)
        problem = _usable(target, chain)
        if chain is not None and problem is None:
            usable[target] = chain
        elif target is SETUP_DEPENDENCIES:
            _leave_rq_alone(f"left RQ untouched: {problem}")
            return True
        elif chain is not None:
            unusable[target.label] = problem or ""
            say_once(f"{_what(target)} not patched: {problem}")
    originals = {t.label: getattr(chain.judged, "__func__", chain.judged) for t, chain in usable.items()}
    if _probed != originals:
        _bound = {t.label: chain.judged.__get__(None, chain.owner) for t, chain in usable.items()}
        labels = {target.label: module for target, module in awaited.items()}
        findings = detect(_bound, _version("rq"), awaited=labels)
        if any(map(_ran_into_an_import, findings)):
            return False
        _findings, _probed = _undecided_where(unusable, findings), originals
        _decided.clear()
    for finding in _findings:
        if (
            finding.probe is None
            and not finding.note.startswith(NOT_IMPORTED_YET)
            and not is_pending(finding)
            and finding.defect.method not in unusable  # said above
        ):
            say_once(f"{finding.defect.id} not patched: {finding.reason}")
    _wanted = True
    _put_on(usable)
    for module in set(awaited.values()) - _awaited:
        _awaited.add(module)
        _when_imported(module, _install_late)
    return True


def _undecided_where(unusable: dict[str, str], findings: list[Any]) -> list[Any]:
    """``findings``, with the defects of the methods RQ has in a shape we cannot guard marked
    undecided: the probes were not given those methods, and would otherwise call them absent."""
    return [
        f._replace(probe=None, note=f"not probed: {unusable[f.defect.method]}")
        if f.defect.method in unusable
        else f
        for f in findings
    ]


def _put_on(usable: dict[Any, Any]) -> None:
    """Guard each usable target whose defects were detected, or are lazy and not probed yet (the
    guard asks ``_confirm`` at its first call), or that fixes a neighbour; unless a guard of ours
    is already on it."""
    global _unguarded

    _require("wrapt")  # imported at the guards' first use: known to be there before they go on
    detected = _guarded_ids()
    guarded = {(installed.target, installed.owner) for installed in _installed}
    for target, chain in usable.items():
        patched = detected & frozenset(target.defects)
        if (target, chain.owner) in guarded:
            continue
        theirs = _guard_of_another_copy(target, chain) if chain.layers else None
        if theirs is not None:
            _installed.append(theirs)
            if patched - theirs.patched:
                missing = ", ".join(sorted(patched - theirs.patched))
                say_once(
                    f"{missing} not patched: the guard another copy of rq-pipeline-fix ({theirs.by}) "
                    f"put on {target.label} does not fix {'them' if ',' in missing else 'it'}"
                )
        elif patched or not target.defects:
            _installed.append(_Installed.put_on(target, chain, patched))
    guarded = {installed.target for installed in _installed}
    _unguarded = [
        line for line in _unguarded if not any(line.startswith(f"{target.label}: ") for target in usable)
    ] + [
        f"{target.label}: {_replaced(chain)}"
        for target, chain in usable.items()
        if chain.original is None and target not in guarded
    ]
    _describe_installed()


def _require(module: str) -> None:
    """Raise ModuleNotFoundError now, where RQ can still be left untouched, if ``module`` is not
    installed; finds it without importing it."""
    if sys.modules.get(module) is None:  # None there: a blocked import (find_spec says so)
        import importlib.util

        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)


def _guarded_ids() -> frozenset[str]:
    """The defects that get a guard: found by a probe, or not probed yet (lazy: the guard asks
    ``_confirm`` before it steps in) where the version table does not say this RQ is free of it.
    One the table rules out gets none (enqueue_job, on every enqueue's path, stays RQ's own from
    1.14 on); a report still probes it."""
    from .detect import is_pending, table_expects

    version = _version("rq")
    return frozenset(
        f.defect.id
        for f in _findings
        if f.probe or (is_pending(f) and table_expects(f.defect, version) is not False)
    )


def _describe_installed() -> None:
    global _note
    if not _installed:
        _note = "nothing to do: the installed RQ has none of the defects the guards fix"
        return
    _note = "; ".join(
        dict.fromkeys(  # once per method: after a reload, its old class and its new one are guarded
            f"guard on {i.target.label}" + (f" for {', '.join(sorted(i.patched))}" if i.patched else "")
            for i in _installed
        )
    )
    log.debug(_note)


_decided: dict[str, bool] = {}  # defect id -> present, once probed: what _confirm answers unlocked
_probing = False  # a first-use probe is running (in the thread holding the lock)


def _confirm(defect_id: str) -> bool:
    """Whether a defect is present, asked by a guard before it steps in: probed at the first call
    that asks (or by a report), under our lock, then answered from ``_decided`` without it.
    Never raises into the caller's call: a probe that cannot tell leaves RQ's own code at work
    and says so once. While another thread imports a module of rq's, the probe (which runs RQ
    code that imports rq modules) waits for a later call; this one trusts the version table."""
    try:
        return _decided[defect_id]
    except KeyError:
        pass
    try:
        with _lock:
            if _probing:  # RQ's code under a probe reached a guard: RQ's own, as probes need
                return False
            if _rq_import_under_way(None):
                return _unless_ruled_out(defect_id)
            _settle({defect_id})
            return _decided.get(defect_id, _unless_ruled_out(defect_id))
    except Exception as exc:
        from .detect import reraise_job_timeout

        reraise_job_timeout(exc)  # struck during the probe: the job's, and the defect stays open
        with contextlib.suppress(Exception):
            say_once(f"{defect_id} not patched: the probe at its first use failed: {exc!r}")
        _decided[defect_id] = False
        return False


def _unless_ruled_out(defect_id: str) -> bool:
    """For one call whose defect could not be probed now (asked again at the next): step in unless
    the version table rules the defect out. The guard's way is right where RQ's is right too;
    RQ's own code where RQ has the defect would fail the call."""
    from .detect import DEFECTS_BY_ID, table_expects

    return table_expects(DEFECTS_BY_ID[defect_id], _version("rq")) is not False


def _is_decided(defect_id: str) -> bool:
    return defect_id in _decided


def _settle(ids: Any) -> None:
    """Probe the defects of ``ids`` not probed yet, in one go; under our lock. A probe that ran
    into an import under way stays pending (asked again at the next call or report)."""
    global _findings, _probing
    from .detect import detect, is_pending

    pending = {f.defect.id for f in _findings if f.defect.id in ids and is_pending(f)}
    if pending:
        _probing = True
        try:
            fresh = {f.defect.id: f for f in detect(_bound, _version("rq"), only=pending, now=True)}
        finally:
            _probing = False
        fresh = {i: f for i, f in fresh.items() if not _ran_into_an_import(f)}
        _findings = [fresh.get(f.defect.id, f) for f in _findings]
        for finding in fresh.values():
            if finding.probe is None:
                say_once(f"{finding.defect.id} not patched: {finding.reason}")
    for finding in _findings:
        if finding.defect.id in ids and not is_pending(finding):
            _decided[finding.defect.id] = bool(finding.probe)


def _guard_what_the_table_missed() -> None:
    """A defect the version table ruled out (so its method got no guard at rq's import) that a
    report's probe finds after all (a fork, a backport, another method of RQ's replaced): its
    guard goes on now, as probing at rq's import would have put it. Under our lock."""
    if not _wanted or patching_disabled()[0]:  # the switch set since: nothing new goes on
        return
    guarded = frozenset().union(*(installed.patched for installed in _installed))
    missed = {f.defect.id for f in _findings if f.probe} - guarded
    if not missed:
        return
    from .targets import TARGETS

    usable = {}
    for target in TARGETS:
        chain = _find(target) if target.label in _bound and missed & set(target.defects) else None
        if chain is not None and _usable(target, chain) is None:
            usable[target] = chain
    _put_on(usable)


def _retire_idle() -> None:
    """Take off the guards none of whose defects the probes found (absent, or a probe that could
    not tell: RQ's own method back, as if the guard had never gone on, which is what probing at
    rq's import did): under our lock, by a report, after ``_settle``."""
    from .detect import is_pending

    if not _installed:
        return
    needed = {f.defect.id for f in _findings if f.probe or is_pending(f)}
    idle = [
        installed
        for installed, chain in _chains()
        if not installed.by
        and installed.target.defects
        and installed.patched
        and not installed.patched & needed
        and installed.problem(chain) is None
        and getattr(chain.find(installed.wrapper), "slot", None) is not None
        and chain.find(installed.wrapper).slot.settable
    ]
    for installed in idle:
        installed.uninstall()
        _installed.remove(installed)
    if idle:
        _describe_installed()


def _when_imported(module: str, callback: Any) -> None:
    from .importhook import weakly, when_imported

    when_imported(module, weakly(callback))


def _install_late(module: Any) -> bool:
    """Import hook for an awaited target's module (rq.group, django_rq.queues, or one that was
    not imported yet or half-way when the guard went on): probe and wrap its targets, if the
    guard is still wanted. Never raises into the host's import; False: try again later."""
    global _findings, _busy
    if not _lock.acquire(blocking=False):  # another thread is applying: it polls when done
        return False
    try:
        from .detect import DEFECTS, detect, is_pending
        from .targets import SETUP_DEPENDENCIES, TARGETS

        if (
            _busy
            or not _ready(SETUP_DEPENDENCIES.module, module.__name__)
            or _rq_import_under_way(module.__name__)
        ):
            return False  # the probes need rq.queue whole, and no rq import under way
        _busy = True
        try:
            _awaited.discard(module.__name__)
            if not _wanted:
                return True
            targets = [t for t in TARGETS if t.module == module.__name__ and t.label not in _probed]
            usable: dict[Any, Any] = {}
            unusable: dict[str, str] = {}
            for target in targets:
                chain = _find(target)
                problem = _usable(target, chain)
                if chain is not None and problem is None:
                    usable[target] = chain
                    _probed[target.label] = getattr(chain.judged, "__func__", chain.judged)
                    _bound[target.label] = chain.judged.__get__(None, chain.owner)
                elif chain is not None:
                    unusable[target.label] = problem or ""
                    say_once(f"{_what(target)} not patched: {problem}")
            ids = {defect for target in targets for defect in target.defects}
            if ids:
                found = _undecided_where(unusable, detect(_bound, _version("rq"), only=ids))
                if any(map(_ran_into_an_import, found)):
                    for target in targets:
                        _probed.pop(target.label, None)
                    _awaited.add(module.__name__)
                    return False
                fresh = {f.defect.id: f for f in found}
                for finding in fresh.values():
                    said = finding.defect.method in unusable  # said above
                    if finding.probe is None and not is_pending(finding) and not said:
                        say_once(f"{finding.defect.id} not patched: {finding.reason}")
                known = {f.defect.id: f for f in _findings if f.defect.id not in ids}
                _findings = [
                    known.get(d.id) or fresh[d.id] for d in DEFECTS if d.id in known or d.id in fresh
                ]
                _decided.clear()
            _put_on(usable)
        finally:
            _busy = False
    except Exception as exc:  # an exception here would fail the host's own import
        if _try_again_later(exc):
            _awaited.add(module.__name__)
            return False
        with contextlib.suppress(Exception):
            say_once(f"{module.__name__} left untouched: unexpected error while patching: {exc!r}")
    finally:
        _lock.release()
    return True


def _guard_of_another_copy(target: Any, chain: Any) -> _Installed | None:
    """A guard already on the method and on, put there by another copy of the package (vendored,
    symlinked) or by this one before ``importlib.reload``: it is adopted, not wrapped again."""
    found = chain.enabled_guard()
    if found is None:
        return None
    wrapper, guard = found
    module = sys.modules.get(guard.__module__)
    by = os.path.dirname(getattr(module, "__file__", None) or guard.__module__)
    return _Installed(target, chain.owner, wrapper, frozenset(guard.patched), by=by)


def revert() -> Status:
    """Take the guards off: put back the exact original objects.

    Other libraries' wrappers on the same methods (tracing tools') are kept working: ours is
    taken out from beneath them, or, where it cannot be, switched off in place and the status
    says so. Never raises.
    """
    global _note, _wanted, _reverted
    with _lock:
        _wanted, _reverted = False, True
        if not _installed:
            return status()
        kept = sorted({installed.target.label for installed, chain in _chains() if chain.others()})
        complaints = []
        for installed in _installed:
            try:
                complaint = installed.uninstall()
            except Exception as exc:
                complaint = f"{installed.target.label}: switched the guard off after an error: {exc!r}"
            if complaint:
                complaints.append(complaint)
                say_once(complaint)
        _installed.clear()
        _note = "reverted: " + ("; ".join(complaints) if complaints else "RQ's own methods are back")
        if kept:
            _note += f" (beneath other libraries' wrappers on {', '.join(kept)}, which keep working)"
        return status()


def status() -> Status:
    """A report of the versions, each defect, and what was patched. Does not import rq; never
    raises (a report that cannot be built says why in its note)."""
    from .report import Status  # not at rq's import: the hook builds no report

    try:
        return _status()
    except Exception as exc:  # e.g. a dependency missing from a broken install
        active = any(installed.is_on() for installed in _installed)
        note = f"{_note}; the report could not be built: {exc!r}"
        return Status(_version("rq"), _version("redis"), active, note, (), ())


def _status() -> Status:
    from .report import DefectStatus, Status

    _poll()  # an import hook that had to wait (another finder found rq, say) acts now
    with _lock:
        if _findings:  # a report says what is so: probe the defects not probed yet now
            _settle({f.defect.id for f in _findings})
            _guard_what_the_table_missed()
            _retire_idle()
        found = frozenset(f.defect.id for f in _findings if f.probe)
        seen = [(installed, chain, installed.problem(chain)) for installed, chain in _chains()]
        in_place = [installed for installed, _chain, problem in seen if problem is None]
        # A guard on a class that a reload replaced fixes nothing any more: only those on what
        # RQ's modules hold now count as patched.
        current = [i for i in in_place if _owner_now(i.target) in (None, i.owner)]
        patched = found & frozenset().union(*(installed.patched for installed in current))
        reloaded = _reloaded()
        problems = [problem for _installed, _chain, problem in seen if problem] + reloaded
        alongside = [_alongside(installed, chain) for installed, chain, _problem in seen]
        stepped_in = _stepped_in()
        return Status(
            rq_version=_version("rq"),
            redis_version=_version("redis"),
            active=bool(in_place) and not reloaded,
            note="; ".join([_note, *problems]),
            defects=tuple(
                DefectStatus(
                    id=f.defect.id,
                    title=f.defect.title,
                    detected=f.probe,
                    version_table=f.table.value,
                    patched=f.defect.id in patched,
                    reason=f.reason,
                    stepped_in=stepped_in.get(f.defect.id, 0),
                )
                for f in _findings
            ),
            neighbours=tuple(line for line in [*alongside, *_unguarded] if line),
        )


def _stepped_in() -> dict[str, int]:
    """Calls the guards answered themselves, by defect: counted by the guard module of the copy
    of the package that put each guard on (another copy's, where ours adopted its guard)."""
    names = {
        f"{__package__}.guard",
        *(installed.guard.__module__ for installed in _installed if installed.by),
    }
    total: dict[str, int] = {}
    for name in names:  # a module not imported: none of its guards has run
        for defect, count in getattr(sys.modules.get(name), "STEPPED_IN", {}).items():
            total[defect] = total.get(defect, 0) + count
    return total


def apply_from_hook(module: Any) -> bool:
    """``apply()`` for the import hook of rq.queue (``module``, whose code has just run, or a
    reload of it): never raises into the host's import, never imports, never waits for our lock,
    and builds no report (that would import ``packaging`` into every process using rq). Returns
    False to be tried again at the next import, ``apply()`` or ``status()``: another thread
    holds our lock, or a module the guards need is being imported."""
    if not _lock.acquire(blocking=False):
        return False
    try:
        if _reverted:  # revert() was called: a reload does not undo it
            return True
        disabled, complaint = patching_disabled()
        return _apply(disabled, complaint, module.__name__)
    except Exception as exc:
        with contextlib.suppress(Exception):
            _leave_rq_alone(f"left RQ untouched: {exc!r}")
        return True
    finally:
        _lock.release()


def _poll() -> None:
    """Run the import hooks that are waiting (importhook.poll); outside our lock."""
    from .importhook import poll

    with contextlib.suppress(Exception):
        poll()
