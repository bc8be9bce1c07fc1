"""Item 2: what importing rq_pipeline_fix adds to a process's start-up, timed as whole processes.

The commands run in a rotated order each round; each delta is taken within one round. Both the
wall-clock time and the child's CPU time (user + system, from ``wait4``) are kept: on a shared
machine the wall clock also counts waiting for a core, which blurs a difference of a few
milliseconds between processes that take 200; CPU time does not.
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

from . import callgrind
from .interpreters import REPO
from .rounds import alternate
from .stats import median_interval, ratios, summary

COMMANDS = {
    "pass": "pass",
    "import rq_pipeline_fix": "import rq_pipeline_fix",
    "import rq": "import rq",
    "import rq; import rq_pipeline_fix": "import rq; import rq_pipeline_fix",
    # the order a sitecustomize gives: the guard goes on when rq.queue is imported
    "import rq_pipeline_fix; import rq.queue": "import rq_pipeline_fix; import rq.queue",
}
# (command, its baseline): each delta is taken within one round
DELTAS = (
    ("import rq_pipeline_fix", "pass"),
    ("import rq; import rq_pipeline_fix", "import rq"),
    ("import rq_pipeline_fix; import rq.queue", "import rq"),
)
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


def _timed(code: str) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) milliseconds of one whole child process."""
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env=_environment(), stdout=subprocess.DEVNULL
    )
    _pid, status, usage = os.wait4(child.pid, 0)
    wall = (time.perf_counter() - start) * 1000
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise RuntimeError(f"python -c {code!r} exited with {child.returncode}")
    return wall, (usage.ru_utime + usage.ru_stime) * 1000


def import_statement_ms(before: str, runs: int) -> dict[str, Any]:
    """CPU milliseconds of the ``import rq_pipeline_fix`` statement itself, timed inside a child
    after ``before``: the cross-check of the process deltas, free of start-up noise."""
    code = (
        f"{before}\nimport time\nstart = time.process_time()\nimport rq_pipeline_fix\n"
        "print((time.process_time() - start) * 1000)"
    )
    return summary([float(_run(code).stdout.strip().splitlines()[-1]) for _ in range(runs)])


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


# Instruction counts (callgrind) of whole processes: what each command executes, unmoved by other
# work on the machine. "import rq; import wrapt" gives what wrapt's own import would add; the guard
# imports it at the first use of a guarded method, which the last command makes (one lookup).
FIRST_USE = "import rq; import rq_pipeline_fix; from rq.queue import Queue; Queue.setup_dependencies"
COUNTED = {
    **COMMANDS,
    "import rq; import wrapt": "import rq; import wrapt",
    "... then the first use": FIRST_USE,
}
COUNTED_DELTAS = (*DELTAS, ("import rq; import wrapt", "import rq"), ("... then the first use", "import rq"))


def instructions() -> dict[str, Any]:
    """Instructions of each command in COUNTED and the deltas (user space only: the kernel's
    share of a process's CPU time, e.g. reading files, is not counted, so there is no fair
    conversion to milliseconds)."""
    try:
        counts = {
            name: callgrind.collected([sys.executable, "-c", code], _environment())
            for name, code in COUNTED.items()
        }
    except callgrind.CallgrindFailed as exc:
        return {"skipped": str(exc)}
    return {
        "instructions": counts,
        "delta_instructions": {
            f"{slower} - {baseline}": counts[slower] - counts[baseline] for slower, baseline in COUNTED_DELTAS
        },
    }


def _warm_up() -> None:
    for code in COUNTED.values():
        for _ in range(2):
            _run(code)  # .pyc files written (callgrind would count compiling them), file cache hot


def measure(runs: int) -> dict[str, Any]:
    _warm_up()
    samples = alternate({name: partial(_timed, code) for name, code in COMMANDS.items()}, runs)
    result: dict[str, Any] = {"runs": runs}
    for index, clock in enumerate(("wall", "cpu")):
        ms = {name: [sample[index] for sample in values] for name, values in samples.items()}
        result[f"{clock}_ms"] = {name: summary(values) for name, values in ms.items()}
        result[f"{clock}_delta_ms"] = {
            f"{slower} - {baseline}": summary([b - a for a, b in zip(ms[baseline], ms[slower])])
            for slower, baseline in DELTAS
        }
        result[f"{clock}_ratio"] = {
            f"{slower} / {baseline}": _with_interval(ratios(ms[slower], ms[baseline]))
            for slower, baseline in DELTAS
        }
    return {
        **result,
        "callgrind": instructions(),
        "import_statement_cpu_ms": {
            "alone": import_statement_ms("pass", max(5, runs // 4)),
            "after import rq": import_statement_ms("import rq", max(5, runs // 4)),
        },
        "modules_after_import_rq_pipeline_fix": modules_after("import rq_pipeline_fix"),
        "importtime": {
            "import rq_pipeline_fix": import_breakdown("import rq_pipeline_fix"),
            "import rq; import rq_pipeline_fix": import_breakdown("import rq; import rq_pipeline_fix"),
        },
    }


def ratios_only(runs: int, deltas: tuple[tuple[str, str], ...] = DELTAS) -> dict[str, Any]:
    """Wall-clock and CPU ratios of whole processes (``deltas``), ``runs`` alternating rounds of
    the commands they name."""
    _warm_up()
    names = dict.fromkeys(name for pair in deltas for name in pair)
    samples = alternate({name: partial(_timed, COMMANDS[name]) for name in names}, runs)
    result: dict[str, Any] = {"runs": runs}
    for index, clock in enumerate(("wall", "cpu")):
        ms = {name: [sample[index] for sample in values] for name, values in samples.items()}
        result[f"{clock}_ms"] = {name: summary(values)["median"] for name, values in ms.items()}
        result[f"{clock}_ratio"] = {
            f"{slower} / {baseline}": _with_interval(ratios(ms[slower], ms[baseline]))
            for slower, baseline in deltas
        }
    return result


# Issue 16's target, on its own: only its two commands, back to back (AB BA BA AB), so that a
# round costs two processes, not five, and a run of a given length has 2.5 times the rounds.
TARGET = ("import rq; import rq_pipeline_fix", "import rq")


def _with_interval(values: list[float]) -> dict[str, Any]:
    """``summary`` and the 95% confidence interval of the median (``ci95``)."""
    return {**summary(values), "ci95": median_interval(values)}


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.startup [RUNS]``: the instruction counts (callgrind) and the
    wall-clock and CPU ratios over RUNS alternating rounds (default 60), medians of per-round
    ratios; without writing any results file. ``python -m benchmarks.startup --target RUNS``:
    the ratios of issue 16's target alone (``TARGET``), over RUNS rounds of its two commands."""
    args = argv if argv is not None else sys.argv[1:]
    if args[:1] == ["--target"]:
        timed = ratios_only(int((args[1:] or ["500"])[0]), (TARGET,))
    else:
        _warm_up()
        counted = instructions()
        for name, delta in counted.get("delta_instructions", {}).items():
            print(f"instructions  {name:55s} {delta / 1e6:8.2f} M")
        if "skipped" in counted:
            print(f"instructions skipped: {counted['skipped']}")
        timed = ratios_only(int((args or ["60"])[0]))
    for clock in ("wall", "cpu"):
        for name, stats in timed[f"{clock}_ratio"].items():
            low, high = stats["ci95"] or (float("nan"), float("nan"))
            spread = f"median's 95% CI {low:.3f}..{high:.3f}; q1..q3 {stats['q1']:.3f}..{stats['q3']:.3f}"
            print(f"{clock:4s} ratio    {name:55s} {stats['median']:8.3f} x  ({spread}, n={stats['n']})")
    print(f"median wall ms: {json.dumps({k: round(v, 1) for k, v in timed['wall_ms'].items()})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
