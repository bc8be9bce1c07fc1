"""Item 1: what the guard costs on the path every enqueue into a caller's pipeline takes.

Same RQ, same process, guard toggled with ``apply()``/``revert()`` between variants of one round.
"""

from __future__ import annotations

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


def _enqueue(runner: Any, url: str, driving: str, jobs: int, rounds: int) -> dict[str, Any]:
    def run(guard: bool) -> dict[str, Any]:
        return runner.call("guard_enqueue", url=url, driving=driving, jobs=jobs, guard=guard)  # type: ignore[no-any-return]

    warm = {"guard": run(True), "original": run(False)}  # also: does the original survive this driving?
    failed = {name: reply["error"] for name, reply in warm.items() if "error" in reply}
    if failed:
        return {"jobs": jobs, "skipped": failed}
    samples = alternate({"guard": lambda: run(True), "original": lambda: run(False)}, rounds)
    guard_us = [reply["seconds"] / jobs * 1e6 for reply in samples["guard"]]
    original_us = [reply["seconds"] / jobs * 1e6 for reply in samples["original"]]
    guard_cpu = [reply["cpu_seconds"] for reply in samples["guard"]]
    original_cpu = [reply["cpu_seconds"] for reply in samples["original"]]
    return {
        "jobs": jobs,
        "guard_us_per_enqueue": summary(guard_us),
        "original_us_per_enqueue": summary(original_us),
        "ratio": summary(ratios(guard_us, original_us)),
        "cpu_ratio": summary(ratios(guard_cpu, original_cpu)),
    }


def _setup_dependencies(runner: Any, url: str, path: str, settings: Settings) -> dict[str, Any]:
    def run(guard: bool) -> dict[str, Any]:
        return runner.call(  # type: ignore[no-any-return]
            "setup_dependencies_ns", url=url, path=path, calls=settings.micro_calls, guard=guard
        )

    variants = {"guard": lambda: run(True), "original": lambda: run(False)}
    original_fails = "error" in run(False)
    if original_fails:
        variants.pop("original")
    samples = alternate(variants, settings.micro_rounds)
    guard_ns = [reply["ns_per_call"] for reply in samples["guard"]]
    result: dict[str, Any] = {"calls": settings.micro_calls, "guard_ns": summary(guard_ns)}
    if original_fails:
        result["original"] = "raises on this path (the defect the guard fixes here)"
        return result
    original_ns = [reply["ns_per_call"] for reply in samples["original"]]
    result["original_ns"] = summary(original_ns)
    result["guard_cost_ns"] = summary([g - o for g, o in zip(guard_ns, original_ns)])
    return result
