"""An interpreter with a defective RQ 2.2.x release (D1 present), for the side-by-side figures.

Given ``--rq22-python`` or ``RQ_PIPELINE_FIX_BENCH_RQ22_PYTHON`` it uses that interpreter;
otherwise it builds ``benchmarks/.venvs/rq22`` (git-ignored) once with this checkout installed
in editable mode, RQ 2.2.x and the redis-py version installed here, and reuses it while those
requirements stay the same.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from .interpreters import REPO

ENV_VARIABLE = "RQ_PIPELINE_FIX_BENCH_RQ22_PYTHON"
RQ_SPEC = "rq>=2.2,<2.3"
VENV = REPO / "benchmarks" / ".venvs" / "rq22"


def _requirements() -> list[str]:
    import redis

    return [RQ_SPEC, f"redis=={redis.__version__}"]  # same client library as this process


def _python_in(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def rq22_python(explicit: str | None, log: Callable[[str], None] = print) -> str:
    """The interpreter to run the RQ 2.2.x worker with, building the venv if needed."""
    chosen = explicit or os.environ.get(ENV_VARIABLE)
    if chosen:
        return chosen
    python = _python_in(VENV)
    stamp = VENV / "benchmark-requirements.txt"
    wanted = "\n".join(_requirements()) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return str(python)
    log(f"creating {VENV.relative_to(REPO)} with {', '.join(_requirements())} (once; reused later)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-e",
            str(REPO),
            *_requirements(),
        ],
        check=True,
    )
    stamp.write_text(wanted)
    return str(python)
