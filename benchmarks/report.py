"""The headline figures, each against its target (from issue 6), and the printed table.

A target is a reading of a ratio measured in this run, never an absolute time; ``meets`` is
reported, nothing is asserted.
"""

from __future__ import annotations

from typing import Any

FLAT = 1.25  # our reading of "per-job cost stays flat": largest batch within 25% of the smallest's


def _get(data: Any, *path: Any) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _row(
    name: str, value: Any, spread: str = "", target: str = "", meets: bool | None = None, unit: str = ""
) -> dict[str, Any]:
    return {"figure": name, "value": value, "unit": unit, "spread": spread, "target": target, "meets": meets}


def _median_row(name: str, stats: Any, unit: str = "", target: str = "", test: Any = None) -> dict[str, Any]:
    if not stats or stats.get("median") is None:
        return _row(name, None, target=target, unit=unit)
    median = stats["median"]
    spread = f"{stats['min']:.3g}..{stats['max']:.3g} (n={stats['n']})"
    return _row(name, median, spread, target, None if test is None else bool(test(median)), unit)


def _guard_ratio_row(name: str, value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):  # measured each round
        return [_median_row(name, value, "x", "<= 1.02", lambda v: v <= 1.02)]
    if value is not None:  # derived from the medians
        return [_row(name, value, "derived", "<= 1.02", value <= 1.02, "x")]
    return []


def _instruction_rows(counted: Any, rq: str) -> list[dict[str, Any]]:
    """Callgrind's counts: one reading each, the same on a busy machine as on an idle one."""
    if not counted:
        return []
    if "skipped" in counted:
        return [_row(f"1. instructions per enqueue (callgrind), RQ {rq}", None, counted["skipped"])]
    rows = []
    per_call = counted["instructions_per_enqueue"]
    for driving, ratios in counted["ratio"].items():
        where = driving.replace("_", " ")
        counts = per_call[driving]
        if driving == "setup_dependencies_call":  # the guarded call alone: the guard's own share
            own = counts["guard"] - counts["bare wrapt"]
            name = f"1. guard's own instructions per call over bare wrapt, RQ {rq}"
            rows.append(_row(name, own, "callgrind"))
            enqueue = per_call.get("shared_pipeline", {}).get("original")
            if enqueue:
                share = 100 * own / enqueue
                name = f"1. guard's own share of a shared-pipeline enqueue (over bare wrapt), RQ {rq}"
                rows.append(_row(name, share, "callgrind", "<= 0.5 %", share <= 0.5, "%"))
            continue
        original = counts["original"]
        rows.append(_row(f"1. instructions per enqueue, original, {where}, RQ {rq}", original, "callgrind"))
        guard = ratios["guard"]
        name = f"1. guard/original enqueue, {where}, instructions, RQ {rq}"
        rows.append(_row(name, guard, "callgrind", "<= 1.02", guard <= 1.02, "x"))
        bare = f"1. bare wrapt wrapper/original enqueue, {where}, instructions, RQ {rq}"
        rows.append(_row(bare, ratios["bare wrapt"], "callgrind: any wrapt guard's floor", unit="x"))
        over = counts["guard"] / counts["bare wrapt"]
        name = f"1. guard/bare wrapt wrapper enqueue, {where}, instructions, RQ {rq}"
        rows.append(_row(name, over, "callgrind: +-1% between processes", unit="x"))
    return rows


def _startup_instruction_rows(counted: Any) -> list[dict[str, Any]]:
    """Callgrind's counts of whole processes; wrapt's own import beside ours (no ms: the kernel's
    share of start-up is not counted)."""
    if not counted:
        return []
    if "skipped" in counted:
        return [_row("2. start-up instructions (callgrind)", None, counted["skipped"])]
    return [
        _row(f"2. start-up instructions: {name}", delta / 1e6, "callgrind", unit="M")
        for name, delta in counted["delta_instructions"].items()
    ]


def headline(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for key, label in (("latest", "latest RQ"), ("rq22", "RQ 2.2")):
        guard = _get(results, "guard", key)
        if not guard:
            continue
        rq = _get(guard, "environment", "rq")
        for driving in ("fresh_pipeline", "shared_pipeline"):
            for kind, clock in (
                ("ratio", "wall clock"),
                ("cpu_ratio", "CPU time"),
                ("implied_ratio", "ns/call"),
            ):
                name = f"1. guard/original enqueue, {driving.replace('_', ' ')}, {clock}, RQ {rq}"
                rows += _guard_ratio_row(name, _get(guard, "enqueue", driving, kind))
            over_bare = _get(guard, "enqueue", driving, "guard_over_bare_wrapt_cpu_ratio")
            if over_bare:
                name = f"1. guard/bare wrapt wrapper enqueue, {driving.replace('_', ' ')}, CPU time, RQ {rq}"
                rows.append(_median_row(name, over_bare, "x", "<= 1.005", lambda v: v <= 1.005))
        rows += _instruction_rows(guard.get("instructions"), rq)
        for path in ("multi", "fresh"):
            cost = _get(guard, "setup_dependencies", path, "guard_cost_ns")
            if cost:
                rows.append(
                    _median_row(
                        f"1. guard cost per setup_dependencies call, {path} path, RQ {rq}", cost, "ns"
                    )
                )
            elif _get(guard, "setup_dependencies", path, "guard_ns"):
                rows.append(
                    _median_row(
                        f"1. guard's whole setup_dependencies call, {path} path, {label}",
                        _get(guard, "setup_dependencies", path, "guard_ns"),
                        "ns",
                    )
                )
    startup = results.get("startup")
    if startup:
        for name, stats in startup["cpu_delta_ms"].items():
            rows.append(_median_row(f"2. start-up CPU: {name}", stats, "ms", "<= +3 ms", lambda v: v <= 3.0))
        for name, stats in startup["wall_delta_ms"].items():
            rows.append(_median_row(f"2. start-up wall clock: {name}", stats, "ms"))
        for name, stats in startup.get("wall_ratio", {}).items():
            if name.startswith("import rq; import rq_pipeline_fix"):
                row = _median_row(
                    f"2. start-up wall ratio: {name}", stats, "x", "<= 1.03", lambda v: v <= 1.03
                )
                rows.append(row)
        rows += _startup_instruction_rows(startup.get("callgrind"))
        for name, stats in startup["import_statement_cpu_ms"].items():
            rows.append(
                _median_row(f"2. CPU of the import statement, timed in the child, {name}", stats, "ms")
            )
        imported = startup["modules_after_import_rq_pipeline_fix"]
        rows.append(
            _row(
                "2. rq imported by `import rq_pipeline_fix`",
                "rq" in imported,
                target="False",
                meets="rq" not in imported,
            )
        )
    throughput = results.get("throughput") or {}
    targets = {("0 ms", "c/a"): 3.0, ("1 ms", "c/a"): 20.0, ("0 ms", "c/d"): 0.95, ("1 ms", "c/d"): 0.95}
    for latency in ("0 ms", "1 ms"):  # the same targets with redis-py's C parser
        targets[latency, "c_hiredis/a_hiredis"] = targets[latency, "c/a"]
    for latency, section in throughput.items():
        for ratio, stats in section["ratios"].items():
            floor = targets.get((latency, ratio))
            rows.append(
                _median_row(
                    f"3. {ratio} at +{latency}",
                    stats,
                    "x",
                    f">= {floor}" if floor else "",
                    (lambda v, f=floor: v >= f) if floor else None,
                )
            )
        for name, stats in section["jobs_per_second"].items():
            rows.append(
                _median_row(
                    f"3. ({name}) jobs/s at +{latency}, {section['jobs'][name]} jobs", stats, "jobs/s"
                )
            )
    for mode, section in (results.get("dependent") or {}).items():
        for size, figures in section["sizes"].items():
            rows.append(_median_row(f"4. {mode}: us per job at {size} jobs", figures["us_per_job"], "us"))
            if mode == "enqueue":
                trips = figures["round_trips_per_dependent_job"]
                rows.append(
                    _row(
                        f"4. {mode}: round trips per dependent job at {size}",
                        trips,
                        unit="",
                        target="<= 1",
                        meets=trips <= 1.0 + 1e-9,
                    )
                )
            else:
                trips = figures["round_trips_per_batch"] - 1  # the caller's execute() is one
                rows.append(
                    _row(
                        f"4. {mode}: round trips for the batch at {size} (besides EXEC)",
                        trips,
                        target="<= 1",  # one WATCH + reads for parents in Redis; none for buffered ones
                        meets=trips <= 1,
                    )
                )
            rows.append(
                _row(
                    f"4. {mode}: statuses as expected at {size}",
                    figures["statuses_as_expected"],
                    meets=figures["statuses_as_expected"],
                )
            )
        ratio = section["per_job_ratio_largest_to_smallest"]
        rows.append(
            _row(
                f"4. {mode}: per-job cost, largest / smallest batch",
                ratio,
                unit="x",
                target=f"flat (<= {FLAT})",
                meets=ratio <= FLAT,
            )
        )
        rows.append(
            _row(f"4. {mode}: slope", section["slope_us_per_job_per_1k_jobs"], unit="us/job per 1k jobs")
        )
    memory = results.get("memory")
    if memory:
        rows.append(
            _row(
                f"5. peak RSS, {memory['peak_rss']['jobs']}-job batch",
                memory["peak_rss"]["peak_mib"],
                f"batch adds {memory['peak_rss']['batch_mib']:.1f} MiB",
                unit="MiB",
            )
        )
        rows.append(
            _row(
                f"5. tracemalloc peak, {memory['tracemalloc']['jobs']}-job batch",
                memory["tracemalloc"]["peak_mib"],
                unit="MiB",
            )
        )
        repeated = memory["repeated"]
        growth = repeated["traced_growth_bytes_per_batch"]
        allowed = repeated["traced_peak_bytes"] * 0.001
        rows.append(
            _row(
                f"5. traced growth per batch over {repeated['batches']} batches",
                growth,
                unit="bytes",
                target="~0 (< 0.1% of a batch's peak)",
                meets=abs(growth) < allowed,
            )
        )
        rows.append(_row("5. RSS growth per batch", repeated["rss_growth_bytes_per_batch"], unit="bytes"))
        released = repeated["bookkeeping_entries_after_pipeline_gone"]
        rows.append(
            _row(
                "5. per-pipeline bookkeeping left after the pipelines are gone",
                max(released),
                f"while alive: {max(repeated['bookkeeping_entries_while_pipeline_alive'])}",
                target="0",
                meets=max(released) == 0,
            )
        )
    return rows


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    verdicts = {True: "meets", False: "MISSES", None: ""}
    lines = [
        (
            r["figure"],
            f"{_format(r['value'])} {r['unit']}".strip(),
            r["spread"],
            r["target"],
            verdicts[r["meets"]],
        )
        for r in rows
    ]
    header = ("figure", "median", "spread (min..max)", "target", "")
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    out = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
        for line in [header, *lines]
    ]
    out.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(out)
