"""``rq-pipeline-fix-run CMD ...``: run any command with the guard armed in every Python it starts.

The runner puts ``rq_pipeline_fix/_bootstrap`` first on ``PYTHONPATH`` and execs the command.
Python imports the ``sitecustomize.py`` in that folder at start-up: it arms the guard (lazily: it
goes on when ``rq.queue`` is imported) and then runs the ``sitecustomize`` the interpreter would
have run without us, so the user's own start-up code still runs. Child interpreters inherit
``PYTHONPATH`` and are covered too. Nothing is installed into the environment: without the
runner, no interpreter runs our start-up code.

The command gets what it would get without the runner, plus that one ``PYTHONPATH`` entry: the
runner, being a Python program, undoes what Python's start-up did to its own process and an exec
would pass on (ignored SIGPIPE and SIGXFSZ, the ``LC_CTYPE`` of the C locale coercion).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

BOOTSTRAP_DIR = str(Path(__file__).resolve().parent / "_bootstrap")
MARKER = (
    "rq-pipeline-fix-bootstrap.marker"  # marks a bootstrap folder of any copy (_bootstrap/sitecustomize.py)
)
COMMAND_NOT_FOUND = 127  # what shells return for a missing command
CANNOT_EXECUTE = 126  # ... and for one found but not executable
USAGE = "usage: rq-pipeline-fix-run [--] CMD [ARG ...]   e.g. rq-pipeline-fix-run rq worker high default"
HELP = f"""{USAGE}

Runs CMD with the rq-pipeline-fix guard armed in every Python it starts: the runner puts its
start-up hook first on PYTHONPATH and execs CMD. The hook runs the sitecustomize the interpreter
would have run without it. RQ_PIPELINE_FIX_DISABLE=1 leaves RQ untouched."""  # not __doc__: -OO drops it

# Python ignores these at start-up (so that a write error is an exception, not a death), and an
# exec keeps an ignored signal ignored: put back the default, as subprocess's restore_signals does.
_IGNORED_BY_PYTHON = ("SIGPIPE", "SIGXFSZ", "SIGXFZ")
# What PEP 538's C locale coercion sets LC_CTYPE to, in Python's order of preference.
_COERCED_LC_CTYPE = ("C.UTF-8", "C.utf8", "UTF-8")


def is_bootstrap_dir(entry: str) -> bool:
    """``entry`` is the bootstrap folder of some copy of rq-pipeline-fix (not only this one's)."""
    return bool(entry) and os.path.isfile(os.path.join(entry, MARKER))


def python_path_with_bootstrap(python_path: str | None) -> str:
    """``python_path`` with this bootstrap folder first and no other; every other entry is kept as
    it is, in its order, empty ones (the working directory) included."""
    if not python_path:  # unset or empty: Python adds nothing for it
        return BOOTSTRAP_DIR
    rest = [entry for entry in python_path.split(os.pathsep) if not is_bootstrap_dir(entry)]
    return os.pathsep.join([BOOTSTRAP_DIR, *rest])


def environment_for_command(environment: dict[str, str]) -> dict[str, str]:
    """``environment`` as the runner was started with it, plus the bootstrap on ``PYTHONPATH``."""
    environment = dict(environment)
    original = _lc_ctype_before_coercion(environment)
    if original is not None:
        if original:
            environment["LC_CTYPE"] = original
        else:
            del environment["LC_CTYPE"]
    environment["PYTHONPATH"] = python_path_with_bootstrap(environment.get("PYTHONPATH"))
    return environment


def _environment_started_with() -> dict[str, str] | None:
    """The environment this process was started with, as the kernel received it (Linux), or None.
    The runner is a Python program too: its own start-up (a sitecustomize or .pth file of its
    environment, Python's locale coercion) may change ``os.environ``, and none of that is the
    command's. Read back as ``os.environ`` decodes it, so exec encodes it byte for byte."""
    try:
        with open("/proc/self/environ", "rb") as file:
            entries = file.read().split(b"\0")
    except OSError:
        return None
    return {
        os.fsdecode(name): os.fsdecode(value)
        for name, sep, value in (entry.partition(b"=") for entry in entries)
        if sep and name
    }


def _lc_ctype_before_coercion(environment: dict[str, str]) -> str | None:
    """Where this Python coerced the C locale (PEP 538: it sets ``LC_CTYPE`` in its own
    environment, which an exec passes on), the ``LC_CTYPE`` it was started with ("": unset);
    else None. Python coerces only with ``LC_ALL`` unset and a C/POSIX ``LC_CTYPE`` locale."""
    if environment.get("LC_ALL") or environment.get("LC_CTYPE") not in _COERCED_LC_CTYPE:
        return None
    try:  # Linux: the environment this process was started with, as the kernel received it
        with open("/proc/self/environ", "rb") as file:
            started = dict(line.partition(b"=")[::2] for line in file.read().split(b"\0") if b"=" in line)
        return os.fsdecode(started.get(b"LC_CTYPE", b""))
    except OSError:
        pass
    # Elsewhere: the C locale also turns on the UTF-8 mode (PEP 540) where nothing else asked for
    # it; an LC_CTYPE the user set to C.UTF-8 does not.
    asked_for_utf8 = "PYTHONUTF8" in environment or "utf8" in sys._xoptions
    coerced = sys.flags.utf8_mode and not asked_for_utf8 and environment.get("PYTHONCOERCECLOCALE") != "0"
    return "" if coerced else None


def _restore_signals() -> None:
    for name in _IGNORED_BY_PYTHON:
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, signal.SIG_DFL)


def _resolve(name: str) -> tuple[str | None, int]:
    """The file to exec for ``name``, or None and the exit status a shell gives: 127 when there
    is no such command, 126 when there is one but it cannot be executed (as ``env`` does)."""
    if os.sep in name or (os.altsep and os.altsep in name):
        if not os.path.exists(name):
            return None, COMMAND_NOT_FOUND
        return name, 0  # exec says why, if it cannot
    found = shutil.which(name)
    if found is not None:
        return found, 0
    folders = os.environ.get("PATH", os.defpath).split(os.pathsep)
    present = any(os.path.isfile(os.path.join(folder or ".", name)) for folder in folders)
    return None, CANNOT_EXECUTE if present else COMMAND_NOT_FOUND


def exec_with_bootstrap(command: Sequence[str]) -> int:
    """Replace this process by ``command`` with the bootstrap on ``PYTHONPATH``.

    Returns (instead of exec'ing) only on error: 2 for a missing command, 127 when it is not
    found, 126 when it cannot be executed, with a message on stderr as a shell would give.
    """
    command = list(command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print(USAGE, file=sys.stderr)
        return 2
    executable, status = _resolve(command[0])
    if executable is None:
        problem = "command not found" if status == COMMAND_NOT_FOUND else "permission denied"
        print(f"rq-pipeline-fix-run: {problem}: {command[0]}", file=sys.stderr)
        return status
    environment = environment_for_command(_environment_started_with() or dict(os.environ))
    sys.stdout.flush()
    sys.stderr.flush()
    _restore_signals()
    try:
        os.execve(executable, command, environment)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.ENOEXEC:
            reason += " (a script needs a #! line)"
        print(f"rq-pipeline-fix-run: {command[0]}: {reason}", file=sys.stderr)
        return COMMAND_NOT_FOUND if exc.errno == errno.ENOENT else CANNOT_EXECUTE
    return 0  # not reached: execve replaces the process or raises


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rq-pipeline-fix-run``."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] in (["-h"], ["--help"]):
        print(HELP)
        return 0
    return exec_with_bootstrap(arguments)
