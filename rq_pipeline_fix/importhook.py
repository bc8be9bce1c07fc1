"""Run a callback once a module has been imported, without importing it ourselves.

The same idea as ``wrapt.register_post_import_hook``, written out because importing wrapt 2.x
pulls in asyncio, inspect and importlib.metadata (tens of milliseconds), and ``import
rq_pipeline_fix`` must stay nearly free for processes that never import rq. wrapt itself is
only imported once rq is, to wrap RQ's methods. Unlike wrapt's, the hook does not depend on
being the finder that finds the module, and a callback may ask to be tried again later:

- **Right after the module's code ran**, when our finder is the one asked for it: it wraps the
  loader that the other finders give (first import, and ``importlib.reload``).
- **Else at the next import of anything**, by noticing the module in ``sys.modules``: another
  finder ahead of ours may find it itself (typeguard's, beartype's, an APM agent's), or the
  module may have been half-imported by another thread when we looked.
- **Else when asked** (``poll``): the patcher's ``apply()`` and ``status()`` do.

A callback returns whether it is done; False (it could not act safely now: another thread holds
what it needs, or a module it needs is still being imported) keeps it waiting. A callback never
imports a module that another thread may be importing: that is how two threads importing rq at
once deadlocked (issue 15).
"""

from __future__ import annotations

import sys
from _thread import get_ident  # builtin: importing threading or typing would cost more than the rest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

    Callback = Callable[[Any], bool]


class _Wait:
    """A callback waiting for ``name``. ``every_load``: also after each ``importlib.reload``
    (it stays registered); ``done``: it ran for the module as it is now."""

    __slots__ = ("callback", "done", "every_load", "name")

    def __init__(self, name: str, callback: Callback, every_load: bool) -> None:
        self.name, self.callback, self.every_load, self.done = name, callback, every_load, False


def when_imported(name: str, callback: Callback, every_load: bool = False) -> None:
    """Call ``callback(module)`` once ``name`` has been imported (now if it is), until it returns
    True; with ``every_load``, again after each reload of the module that our finder sees."""
    wait = _Wait(name, callback, every_load)
    _finder.waits.append(wait)
    if sys.meta_path[:1] != [_finder]:  # first, where we can: then the loader is hooked at once
        if _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
        sys.meta_path.insert(0, _finder)
    module = sys.modules.get(name)
    if module is not None and not _initialising(module):
        _run(wait, module)


def poll() -> None:
    """Run the callbacks whose module has been imported since they were registered or last
    declined (the import was found by another finder, or they had to wait)."""
    for wait in list(_finder.waits):
        module = sys.modules.get(wait.name)
        if not wait.done and module is not None and not _initialising(module):
            _run(wait, module)


def _run(wait: _Wait, module: Any) -> None:
    if get_ident() in _finder.running:  # a callback's own imports: never re-entered
        return
    _finder.running.add(get_ident())
    try:
        wait.done = bool(wait.callback(module))
    except Exception:  # it would fail the host's import: a callback that raises is dropped
        wait.done = True
    finally:
        _finder.running.discard(get_ident())
    if wait.done and not wait.every_load:
        try:  # another thread may have run and removed it meanwhile
            _finder.waits.remove(wait)
            if not _finder.waits:
                sys.meta_path.remove(_finder)
        except ValueError:
            pass


def is_initialised(name: str) -> bool:
    """``name`` is imported and its module code has run to the end."""
    module = sys.modules.get(name)
    return module is not None and not _initialising(module)


def imported_elsewhere(prefix: str, but: str | None = None) -> bool:
    """Another thread is importing a module named ``prefix``... (other than ``but``): it holds
    that module's import lock (taken before the module is even found), so importing it here
    could deadlock. Where importlib keeps no such record, any module of those still running
    counts."""
    try:
        from importlib import _bootstrap

        locks = list(_bootstrap._module_locks.items())  # type: ignore[attr-defined]
    except Exception:
        modules = list(sys.modules.items())
        return any(name.startswith(prefix) and name != but and _initialising(m) for name, m in modules)
    for name, reference in locks:
        lock = reference() if name.startswith(prefix) and name != but else None
        if getattr(lock, "owner", None) not in (None, get_ident()):
            return True
    return False


def initialising(module: Any) -> bool:
    """``module``'s code is running: it is being imported, by this thread or another."""
    return _initialising(module)


def _initialising(module: Any) -> bool:
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


class _Finder:
    """The meta path finder: finds nothing itself. Asked for a name a callback waits for, it
    hooks the loader the other finders give; asked for anything, it first runs the callbacks
    whose module has turned up in ``sys.modules`` meanwhile."""

    def __init__(self) -> None:
        self.waits: list[_Wait] = []
        self.running: set[int] = set()  # threads inside a callback or our own find_spec

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        # Asked at every import of the process, for as long as a callback waits (rq.queue's, for
        # reloads, always): one pass over the waits, and poll() only when it has work to do.
        if get_ident() in self.running:
            return None
        waits = []
        turned_up = False
        for wait in self.waits:
            if wait.name == fullname:
                waits.append(wait)
            if not wait.done and wait.name in sys.modules:
                turned_up = True
        if turned_up:  # its callbacks may finish (and leave): ``waits`` as they are after them
            poll()
            waits = [wait for wait in self.waits if wait.name == fullname]
        if not waits:
            return None
        self.running.add(get_ident())
        try:
            spec = _spec_from_other_finders(self, fullname, path, target)
        finally:
            self.running.discard(get_ident())
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _CallbackLoader(spec.loader, waits)
        return spec


def _spec_from_other_finders(hook: _Finder, fullname: str, path: Any, target: Any) -> Any:
    for finder in list(sys.meta_path):
        find_spec = getattr(finder, "find_spec", None)
        if finder is hook or find_spec is None:
            continue
        spec = find_spec(fullname, path, target)
        if spec is not None:
            return spec
    return None


class _CallbackLoader:
    """Wraps the real loader for one import: runs the module, puts the real loader back on it,
    then calls the callbacks (a failed import leaves them waiting for the next attempt)."""

    def __init__(self, loader: Any, waits: list[_Wait]) -> None:
        self.loader = loader
        self.waits = waits

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = self.loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        for wait in self.waits:  # the module's code ran: a reload makes each wait afresh
            wait.done = False
            _run(wait, module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, ...
        return getattr(self.loader, name)


_finder = _Finder()


def weakly(callback: Callback) -> Callback:
    """``callback`` for a hook that may wait for the whole life of the process (a module that
    may never be imported), without keeping ``callback``'s module alive through it: at exit, a
    finder holding our patcher module's globals costs the interpreter's last collections
    hundreds of thousands of instructions."""
    from _weakref import ref  # builtin: no import cost

    held = ref(callback)

    def call(module: Any) -> bool:
        function = held()
        return True if function is None else function(module)

    return call
