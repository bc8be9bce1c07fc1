"""Item 4: dependent jobs in one shared pipeline (every other job depends on the job just before
it, only buffered in the same pipeline): per-job cost against batch size, round trips per
dependent job, and the server's own WATCH time, which the client waits for."""

from __future__ import annotations

from functools import partial
from typing import Any

from .rounds import alternate
from .settings import Settings
from .stats import linear_fit, summary

MODES = {
    "enqueue": "enqueue_call per job over the queues, one shared pipeline",
    "enqueue_many": "one enqueue_many on one queue into the caller's pipeline",
}


def measure(runner: Any, url: str, settings: Settings) -> dict[str, Any]:
    def run(mode: str, jobs: int) -> dict[str, Any]:
        return runner.call(  # type: ignore[no-any-return]
            "dependent", url=url, mode=mode, jobs=jobs, queues=settings.throughput_queues
        )

    for mode in MODES:
        run(mode, 100)  # warm-up
    variants = {
        f"{mode} {size}": partial(run, mode, size) for mode in MODES for size in settings.dependent_sizes
    }
    samples = alternate(variants, settings.dependent_rounds)
    return {mode: _mode(mode, samples, settings) for mode in MODES}


def _mode(mode: str, samples: dict[str, list[dict[str, Any]]], settings: Settings) -> dict[str, Any]:
    sizes: dict[str, Any] = {}
    xs: list[float] = []
    ys: list[float] = []
    for size in settings.dependent_sizes:
        replies = samples[f"{mode} {size}"]
        dependents = size // 2
        per_job = [reply["seconds"] / size * 1e6 for reply in replies]
        xs += [size] * len(per_job)
        ys += per_job
        last = replies[-1]
        sizes[str(size)] = {
            "us_per_job": summary(per_job),
            # where it goes: enqueueing (RQ + our dependency checks) vs the caller's execute()
            "enqueue_us_per_job": summary([reply["enqueue_seconds"] / size * 1e6 for reply in replies]),
            "execute_us_per_job": summary([reply["execute_seconds"] / size * 1e6 for reply in replies]),
            # socket writes during the batch, less the one execute(): what the dependency checks cost
            "round_trips_per_dependent_job": (last["round_trips"] - 1) / dependents,
            "round_trips_per_batch": last["round_trips"],
            "watch_commands": last["watch_calls"],
            "server_watch_us_per_dependent_job": last["watch_usec"] / dependents,
            "deferred": last["deferred"],
            "queued": last["queued"],
            "statuses_as_expected": last["deferred"] == dependents and last["queued"] == size - dependents,
        }
    slope, intercept = linear_fit(xs, ys)
    smallest, largest = (str(s) for s in (min(settings.dependent_sizes), max(settings.dependent_sizes)))
    return {
        "description": MODES[mode],
        "sizes": sizes,
        "slope_us_per_job_per_1k_jobs": slope * 1000,
        "intercept_us_per_job": intercept,
        "per_job_ratio_largest_to_smallest": sizes[largest]["us_per_job"]["median"]
        / sizes[smallest]["us_per_job"]["median"],
    }
