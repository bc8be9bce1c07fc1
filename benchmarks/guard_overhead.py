"""Item 1: what the guard costs on the path every enqueue into a caller's pipeline takes.

Same RQ, same process, variants switched between the runs of one round: the guard (``apply()``),
RQ's own methods (``revert()``), and between them a bare wrapt wrapper that only calls through
(the floor of any wrapt-based guard), so that the guard's own share is measured in every run.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from .rounds import alternate
from .settings import Settings
from .stats import ratios, summary


def measure(runner: Any, url: str, settings: Settings) -> dict[str, Any]:
    result: dict[str, Any] = {
        "environment": runner.call("environment"),
        "enqueue": {},
        "setup_dependencies": {},
    }
    drivings = {"fresh_pipeline": settings.guard_jobs, "shared_pipeline": settings.guard_shared_jobs}
    for driving, jobs in drivings.items():
        result["enqueue"][driving] = _enqueue(runner, url, driving, jobs, settings.guard_rounds)
    for path in ("multi", "fresh"):
        result["setup_dependencies"][path] = _setup_dependencies(runner, url, path, settings)
    for driving, path in (("fresh_pipeline", "fresh"), ("shared_pipeline", "multi")):
        _add_implied_ratio(result["enqueue"][driving], result["setup_dependencies"][path])
    return result


def _add_implied_ratio(enqueue: dict[str, Any], call: dict[str, Any]) -> None:
    """The ratio the guard's measured cost per call implies for one enqueue: a cross-check of the
    end-to-end ratio that load on the machine cannot blur (it is a difference of two tight loops)."""
    if "original_us_per_enqueue" in enqueue and "guard_cost_ns" in call:
        cost_us = call["guard_cost_ns"]["median"] / 1000
        enqueue["implied_ratio"] = 1 + cost_us / enqueue["original_us_per_enqueue"]["median"]


VARIANTS = ("guard", "bare wrapt", "original")


def _enqueue(runner: Any, url: str, driving: str, jobs: int, rounds: int) -> dict[str, Any]:
    def run(variant: str) -> dict[str, Any]:
        return runner.call("guard_enqueue", url=url, driving=driving, jobs=jobs, variant=variant)  # type: ignore[no-any-return]

    warm = {variant: run(variant) for variant in VARIANTS}  # also: does the original survive this driving?
    failed = {name: reply["error"] for name, reply in warm.items() if "error" in reply}
    if failed:
        return {"jobs": jobs, "skipped": failed}
    samples = alternate({variant: partial(run, variant) for variant in VARIANTS}, rounds)
    us = {v: [reply["seconds"] / jobs * 1e6 for reply in samples[v]] for v in VARIANTS}
    cpu = {v: [reply["cpu_seconds"] for reply in samples[v]] for v in VARIANTS}
    return {
        "jobs": jobs,
        "guard_us_per_enqueue": summary(us["guard"]),
        "bare_wrapt_us_per_enqueue": summary(us["bare wrapt"]),
        "original_us_per_enqueue": summary(us["original"]),
        "ratio": summary(ratios(us["guard"], us["original"])),
        "cpu_ratio": summary(ratios(cpu["guard"], cpu["original"])),
        "bare_wrapt_ratio": summary(ratios(us["bare wrapt"], us["original"])),
        "bare_wrapt_cpu_ratio": summary(ratios(cpu["bare wrapt"], cpu["original"])),
        # the guard's own share, on top of the floor any wrapt-based guard has
        "guard_over_bare_wrapt_cpu_ratio": summary(ratios(cpu["guard"], cpu["bare wrapt"])),
    }


def _setup_dependencies(runner: Any, url: str, path: str, settings: Settings) -> dict[str, Any]:
    def run(variant: str) -> dict[str, Any]:
        return runner.call(  # type: ignore[no-any-return]
            "setup_dependencies_ns", url=url, path=path, calls=settings.micro_calls, variant=variant
        )

    original_fails = "error" in run("original")  # then so does RQ's own beneath a bare wrapper
    variants = {v: partial(run, v) for v in VARIANTS if v == "guard" or not original_fails}
    samples = alternate(variants, settings.micro_rounds)
    guard_ns = [reply["ns_per_call"] for reply in samples["guard"]]
    result: dict[str, Any] = {"calls": settings.micro_calls, "guard_ns": summary(guard_ns)}
    if original_fails:
        result["original"] = "raises on this path (the defect the guard fixes here)"
        return result
    original_ns = [reply["ns_per_call"] for reply in samples["original"]]
    bare_ns = [reply["ns_per_call"] for reply in samples["bare wrapt"]]
    result["original_ns"] = summary(original_ns)
    result["bare_wrapt_ns"] = summary(bare_ns)
    result["guard_cost_ns"] = summary([g - o for g, o in zip(guard_ns, original_ns)])
    result["bare_wrapt_cost_ns"] = summary([b - o for b, o in zip(bare_ns, original_ns)])
    result["guard_over_bare_wrapt_ns"] = summary([g - b for g, b in zip(guard_ns, bare_ns)])
    return result
