"""Item 3: jobs per second for the ways of enqueueing one batch over several queues, at loopback
latency and behind the latency proxy. Variants alternate within each round; every ratio is taken
within one round, then summarised over the rounds."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

from .rounds import alternate
from .settings import Settings
from .stats import ratios, summary

# name: (batch, guard on, redis-py's parser, what it is); "python" is what a default install runs
VARIANTS = {
    "a": ("one_enqueue_per_job", True, "python", "one enqueue per job, no pipeline"),
    "b": ("enqueue_many_per_queue", True, "python", "one enqueue_many per queue"),
    "c": ("shared_pipeline", True, "python", "one shared pipeline, guard on"),
    "d": ("shared_pipeline", False, "python", "one shared pipeline, package reverted (upstream alone)"),
    "e": ("raw_pipeline", True, "python", "raw redis-py pipeline, same keys (floor)"),
    # with redis[hiredis] installed: redis-py packs and parses in C, RQ's code is unchanged
    "a_hiredis": ("one_enqueue_per_job", True, "hiredis", "(a) with hiredis"),
    "c_hiredis": ("shared_pipeline", True, "hiredis", "(c) with hiredis"),
}
HIREDIS_VARIANTS = ("a_hiredis", "c_hiredis")
RQ22 = "c_rq22"  # (c) in the RQ 2.2.x worker
RATIOS = {
    "c/a": ("c", "a"),
    "c/b": ("c", "b"),
    "c/d": ("c", "d"),
    "c/e": ("c", "e"),
    "c_rq22/c": (RQ22, "c"),
    "c_hiredis/a_hiredis": ("c_hiredis", "a_hiredis"),
}
WARM_UP_JOBS = 100


def measure(runner: Any, rq22: Any | None, urls: dict[str, str], settings: Settings) -> dict[str, Any]:
    return {label: _at_latency(runner, rq22, url, label, settings) for label, url in urls.items()}


def _at_latency(runner: Any, rq22: Any | None, url: str, label: str, settings: Settings) -> dict[str, Any]:
    slow = label != "0 ms"
    runs: dict[str, Callable[[int], dict[str, Any]]] = {}
    jobs: dict[str, int] = {}
    with_hiredis = runner.call("environment")["hiredis_installed"]
    for name, (kind, guard, parser, _description) in VARIANTS.items():
        if name in HIREDIS_VARIANTS and not with_hiredis:
            continue
        runs[name] = _caller(runner, url, kind, guard, parser, settings.throughput_queues)
        one_by_one = kind == "one_enqueue_per_job"
        jobs[name] = settings.slow_jobs if slow and one_by_one else settings.throughput_jobs
    if rq22 is not None:
        runs[RQ22] = _caller(rq22, url, "shared_pipeline", True, "python", settings.throughput_queues)
        jobs[RQ22] = settings.throughput_jobs
    skipped = {}
    for name in list(runs):
        warm = runs[name](WARM_UP_JOBS)  # warms caches and connections; finds variants this RQ refuses
        if "error" in warm:
            skipped[name] = warm["error"]
            del runs[name]
    samples = alternate({name: partial(runs[name], jobs[name]) for name in runs}, settings.throughput_rounds)
    rates = {name: [jobs[name] / reply["seconds"] for reply in replies] for name, replies in samples.items()}
    return {
        "jobs": jobs,
        "jobs_per_second": {name: summary(values) for name, values in rates.items()},
        "ratios": {
            label: summary(ratios(rates[top], rates[bottom]))
            for label, (top, bottom) in RATIOS.items()
            if top in rates and bottom in rates
        },
        "skipped": skipped,
    }


def _caller(
    runner: Any, url: str, kind: str, guard: bool, parser: str, queues: int
) -> Callable[[int], dict[str, Any]]:
    def run(jobs: int) -> dict[str, Any]:
        return runner.call(  # type: ignore[no-any-return]
            "batch", url=url, kind=kind, jobs=jobs, queues=queues, guard=guard, parser=parser
        )

    return run
