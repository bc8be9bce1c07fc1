"""``rq-pipeline-fix-run CMD ...``: run any command with the guard armed in every Python it starts.

The runner puts ``rq_pipeline_fix/_bootstrap`` first on ``PYTHONPATH`` and execs the command.
Python imports the ``sitecustomize.py`` in that folder at start-up; it calls ``bootstrap()``,
which arms the guard (lazily: it goes on when ``rq.queue`` is imported) and then runs the
``sitecustomize`` the interpreter would have run without us, so the user's own start-up code
still runs. Child interpreters inherit ``PYTHONPATH`` and are covered too. Nothing is installed
into the environment: without the runner, no interpreter runs our start-up code.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from .patcher import RQPipelineFixWarning

log = logging.getLogger("rq_pipeline_fix")

BOOTSTRAP_DIR = str(Path(__file__).resolve().parent / "_bootstrap")
COMMAND_NOT_FOUND = 127  # what shells return for a missing command
USAGE = "usage: rq-pipeline-fix-run [--] CMD [ARG ...]   e.g. rq-pipeline-fix-run rq worker high default"


# --- inside the started interpreter ---------------------------------------------------------------


def bootstrap() -> None:
    """Run from our ``sitecustomize``: arm the guard, then chain to the next ``sitecustomize``.

    Importing this module already imported ``rq_pipeline_fix``, which registered the import hook;
    the hook honours ``RQ_PIPELINE_FIX_DISABLE`` itself. Never raises: a failure here must not
    stop the user's program from starting.
    """
    try:
        import rq_pipeline_fix  # noqa: F401  (the lazy guard; kept explicit for readers)

        chain_next_sitecustomize()
    except Exception as exc:
        _warn(f"the start-up hook failed, the program runs without it: {exc!r}")


def chain_next_sitecustomize() -> ModuleType | None:
    """Import the ``sitecustomize`` that ours hides on ``sys.path``, as Python would have.

    Only acts while ``sys.modules["sitecustomize"]`` is our bootstrap module. ``find_spec`` tells
    "there is no other sitecustomize" (nothing to do) apart from "the user's sitecustomize raised"
    (a warning, as Python's own ``site`` prints one). Returns the module imported, if any.
    """
    ours = sys.modules.get("sitecustomize")
    if ours is None or not _is_bootstrap_file(getattr(ours, "__file__", None)):
        return None
    removed = [index for index, entry in enumerate(sys.path) if _is_bootstrap_dir(entry)]
    for index in reversed(removed):
        del sys.path[index]
    del sys.modules["sitecustomize"]
    try:
        spec = importlib.util.find_spec("sitecustomize")
        if spec is None:
            return None
        try:
            return importlib.import_module("sitecustomize")
        except Exception as exc:
            _warn(f"the sitecustomize at {spec.origin} raised {exc!r}; start-up continues")
            return None
    finally:
        # Python's import of our module ends by reading it back from sys.modules: leave one there.
        sys.modules.setdefault("sitecustomize", ours)
        if removed:
            sys.path.insert(min(removed[0], len(sys.path)), BOOTSTRAP_DIR)


def _is_bootstrap_dir(entry: str) -> bool:
    try:
        return os.path.samefile(entry or ".", BOOTSTRAP_DIR)
    except OSError:
        return False


def _is_bootstrap_file(path: str | None) -> bool:
    return path is not None and _is_bootstrap_dir(os.path.dirname(path))


def _warn(message: str) -> None:
    log.warning(message)
    warnings.warn(f"rq-pipeline-fix: {message}", RQPipelineFixWarning, stacklevel=2)


# --- the console script ---------------------------------------------------------------------------


def python_path_with_bootstrap(python_path: str | None) -> str:
    """``python_path`` with the bootstrap folder first, once; other entries keep their order."""
    entries = [entry for entry in (python_path or "").split(os.pathsep) if entry]
    rest = [entry for entry in entries if not _is_bootstrap_dir(entry)]
    return os.pathsep.join([BOOTSTRAP_DIR, *dict.fromkeys(rest)])


def exec_with_bootstrap(command: Sequence[str]) -> int:
    """Replace this process by ``command`` with the bootstrap on ``PYTHONPATH``.

    Returns (instead of exec'ing) only on error: 2 for a missing command, 127 when it is not found.
    """
    command = list(command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print(USAGE, file=sys.stderr)
        return 2
    executable = shutil.which(command[0])
    if executable is None:
        print(f"rq-pipeline-fix-run: command not found: {command[0]}", file=sys.stderr)
        return COMMAND_NOT_FOUND
    environment = dict(os.environ, PYTHONPATH=python_path_with_bootstrap(os.environ.get("PYTHONPATH")))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(executable, command, environment)
    return 0  # not reached: execve replaces the process or raises


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rq-pipeline-fix-run``."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] in (["-h"], ["--help"]):
        print(USAGE)
        print(__doc__)
        return 0
    return exec_with_bootstrap(arguments)
