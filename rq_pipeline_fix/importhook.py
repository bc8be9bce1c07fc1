"""Run a callback once a module has been imported, without importing it ourselves.

The same idea as ``wrapt.register_post_import_hook``, written out because importing wrapt 2.x
pulls in asyncio, inspect and importlib.metadata (tens of milliseconds), and ``import
rq_pipeline_fix`` must stay nearly free for processes that never import rq. wrapt itself is
only imported once rq is, to wrap RQ's methods.
"""

from __future__ import annotations

import sys
from _thread import get_ident  # builtin: importing threading or typing would cost more than the rest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

    Callback = Callable[[Any], None]


def when_imported(name: str, callback: Callback) -> None:
    """Call ``callback(module)`` now if ``name`` is imported, else right after its import."""
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
        return
    sys.meta_path.insert(0, _PostImportFinder(name, callback))


class _PostImportFinder:
    """A meta path finder that lets the other finders find ``name`` and hooks the loader.

    It stays in ``sys.meta_path`` until the module has been imported once (a failed import
    leaves it for the next attempt), then removes itself.
    """

    def __init__(self, name: str, callback: Callback) -> None:
        self.name = name
        self.callback = callback
        self._finding: set[int] = set()  # threads in our own find_spec, which must not find us again

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.name or get_ident() in self._finding:
            return None
        self._finding.add(get_ident())
        try:
            spec = _spec_from_other_finders(self, fullname, path, target)
        finally:
            self._finding.discard(get_ident())
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _CallbackLoader(spec.loader, self)
        return spec

    def imported(self, module: Any) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        self.callback(module)


def _spec_from_other_finders(hook: _PostImportFinder, fullname: str, path: Any, target: Any) -> Any:
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
    then calls the callback."""

    def __init__(self, loader: Any, hook: _PostImportFinder) -> None:
        self.loader = loader
        self.hook = hook

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = self.loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.hook.imported(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, ...
        return getattr(self.loader, name)


def is_initialised(name: str) -> bool:
    """``name`` is imported and its module code has run to the end."""
    module = sys.modules.get(name)
    return module is not None and not _initialising(module)


def _initialising(module: Any) -> bool:
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def when_initialised(name: str, callback: Callback) -> None:
    """``when_imported``, but never with a module whose code is still running: when ``name`` is
    being imported right now (it is what imports rq, say), ``callback`` runs at the first import
    that starts after it finished."""
    module = sys.modules.get(name)
    if module is None or not _initialising(module):
        when_imported(name, callback)
    else:
        sys.meta_path.insert(0, _AfterImportFinder(name, callback))


class _AfterImportFinder:
    """A meta path finder that finds nothing: it only looks, at each import, whether ``name``
    has finished importing, and then hands it over once and removes itself."""

    def __init__(self, name: str, callback: Callback) -> None:
        self.name = name
        self.callback: Callback | None = callback

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        callback = self.callback
        module = sys.modules.get(self.name)
        if callback is None or module is None or _initialising(module):
            return None
        self.callback = None  # once, even if two threads get here together
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        callback(module)
        return None


def weakly(callback: Callback) -> Callback:
    """``callback`` for a hook that may wait for the whole life of the process (a module that
    may never be imported), without keeping ``callback``'s module alive through it: at exit, a
    finder holding our patcher module's globals costs the interpreter's last collections
    hundreds of thousands of instructions."""
    from _weakref import ref  # builtin: no import cost

    held = ref(callback)

    def call(module: Any) -> None:
        function = held()
        if function is not None:
            function(module)

    return call
