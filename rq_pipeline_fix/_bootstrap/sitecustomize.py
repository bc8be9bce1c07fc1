"""Imported by Python at start-up as the top-level module ``sitecustomize`` when
``rq-pipeline-fix-run`` has put this folder first on ``PYTHONPATH``; see ``rq_pipeline_fix.runner``.

It arms the guard where rq-pipeline-fix is importable, then imports the ``sitecustomize`` this
one hides, as Python would have without us. The chaining needs the standard library only: a
Python of another install (another venv, the system Python) that inherited ``PYTHONPATH`` still
runs its own ``sitecustomize``, whether it has the package or not. Any folder of rq-pipeline-fix's
bootstrap, of whichever copy, is known by the marker file beside this one and skipped.

The folder has no ``__init__.py`` on purpose: it is a ``sys.path`` entry, not a package, and this
file is never meant to be imported as ``rq_pipeline_fix._bootstrap.sitecustomize``. Nothing here
may raise: a failure must not stop the user's program from starting.
"""

import sys

MARKER = "rq-pipeline-fix-bootstrap.marker"  # the file that marks a bootstrap folder (runner.py too)


def _warn(message: str) -> None:
    """Say it as rq-pipeline-fix says things (warning and log record) where it is importable,
    else as a RuntimeWarning; on stderr where warnings are errors (``-W error``)."""
    try:
        try:
            from rq_pipeline_fix.patcher import say_once
        except ImportError:
            import warnings

            warnings.warn(f"rq-pipeline-fix: {message}", RuntimeWarning, stacklevel=3)
        else:
            say_once(message)
    except Exception:
        sys.stderr.write(f"rq-pipeline-fix: {message}\n")


def _arm() -> None:
    try:
        import rq_pipeline_fix  # noqa: F401  (the lazy guard: it goes on when rq.queue is imported)
    except ImportError as exc:
        if exc.name != "rq_pipeline_fix":  # installed but broken; absent: nothing to guard here
            _warn(f"start-up hook not loaded: {exc!r}")
    except Exception as exc:
        _warn(f"start-up hook not loaded: {exc!r}")


def _is_bootstrap_folder(entry: str) -> bool:
    import os

    return bool(entry) and os.path.isfile(os.path.join(entry, MARKER))


def _chain() -> None:
    ours = sys.modules.get("sitecustomize")
    hidden = [(index, entry) for index, entry in enumerate(sys.path) if _is_bootstrap_folder(entry)]
    for index, _entry in reversed(hidden):
        del sys.path[index]
    sys.modules.pop("sitecustomize", None)
    try:
        import importlib.util

        # find_spec first: "there is no other sitecustomize" is not the user's file raising ImportError.
        spec = importlib.util.find_spec("sitecustomize")
        if spec is None:
            return
        try:
            importlib.import_module("sitecustomize")
        except Exception as exc:  # as Python's own site module does: say it, start up anyway
            _warn(f"the sitecustomize at {spec.origin} raised {exc!r}; start-up continues")
    finally:
        # Python's import of this module ends by reading it back from sys.modules: leave one there.
        if ours is not None:
            sys.modules.setdefault("sitecustomize", ours)
        if hidden:
            first = min(hidden[0][0], len(sys.path))
            sys.path[first:first] = [entry for _index, entry in hidden]


try:
    _arm()
    _chain()
except Exception as exc:
    _warn(f"the start-up hook failed, the program runs without it: {exc!r}")
