"""Item 2: what importing rq_pipeline_fix adds to a process's start-up, timed as whole processes.

The four commands run in a rotated order each round; each delta is taken within one round.
Byte-code is written by warm-up runs first (PYTHONDONTWRITEBYTECODE is dropped for the children):
a user's installed package has its .pyc files, and compiling is not the import's cost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from functools import partial
from typing import Any

from .interpreters import REPO
from .rounds import alternate
from .stats import summary

COMMANDS = {
    "pass": "pass",
    "import rq_pipeline_fix": "import rq_pipeline_fix",
    "import rq": "import rq",
    "import rq; import rq_pipeline_fix": "import rq; import rq_pipeline_fix",
}
PROBED_MODULES = ("rq", "rq.queue", "redis", "wrapt", "logging", "dataclasses", "importlib.metadata")


def _environment() -> dict[str, str]:
    drop = ("PYTHONDONTWRITEBYTECODE", "PYTHONPROFILEIMPORTTIME")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("RQ_PIPELINE_FIX_")}


def _run(code: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *options, "-c", code],
        cwd=REPO,
        env=_environment(),
        capture_output=True,
        text=True,
        check=True,
    )


def _timed(code: str) -> float:
    start = time.perf_counter()
    _run(code)
    return (time.perf_counter() - start) * 1000


def modules_after(code: str) -> list[str]:
    """Which of PROBED_MODULES are in ``sys.modules`` of a child after ``code``."""
    probe = (
        f"{code}; import sys, json; print(json.dumps([m for m in {PROBED_MODULES!r} if m in sys.modules]))"
    )
    return list(json.loads(_run(probe).stdout.strip().splitlines()[-1]))


def import_breakdown(code: str, module: str = "rq_pipeline_fix", top: int = 6) -> dict[str, Any]:
    """``-X importtime`` of ``code``: ``module``'s cumulative import time and its costliest direct
    imports, in microseconds (one run, so only a guide to where the time goes)."""
    entries = []
    for line in _run(code, "-X", "importtime").stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:") :].split("|")
        depth = (len(name) - len(name.lstrip())) // 2
        entries.append((int(self_us), int(cumulative_us), depth, name.strip()))
    # importtime prints a module after everything it imported, one indent level deeper.
    for index, (_self, cumulative, depth, name) in enumerate(entries):
        if name == module:
            children: list[dict[str, Any]] = []
            for child in reversed(entries[:index]):
                if child[2] <= depth:
                    break
                if child[2] == depth + 1:
                    children.append({"module": child[3], "cumulative_us": child[1]})
            children.sort(key=lambda item: item["cumulative_us"], reverse=True)
            return {"cumulative_us": cumulative, "largest_imports": children[:top]}
    return {"cumulative_us": 0, "largest_imports": [], "note": f"{module} was already imported"}


def measure(runs: int) -> dict[str, Any]:
    for code in COMMANDS.values():
        for _ in range(2):
            _run(code)  # warm-up: .pyc files written, file cache hot
    samples = alternate({name: partial(_timed, code) for name, code in COMMANDS.items()}, runs)
    bare = [b - a for a, b in zip(samples["pass"], samples["import rq_pipeline_fix"])]
    with_rq = [b - a for a, b in zip(samples["import rq"], samples["import rq; import rq_pipeline_fix"])]
    return {
        "runs": runs,
        "ms": {name: summary(values) for name, values in samples.items()},
        "delta_ms": {
            "import rq_pipeline_fix - pass": summary(bare),
            "import rq; import rq_pipeline_fix - import rq": summary(with_rq),
        },
        "modules_after_import_rq_pipeline_fix": modules_after("import rq_pipeline_fix"),
        "importtime": {
            "import rq_pipeline_fix": import_breakdown("import rq_pipeline_fix"),
            "import rq; import rq_pipeline_fix": import_breakdown("import rq; import rq_pipeline_fix"),
        },
    }
