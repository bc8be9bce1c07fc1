"""One PNG of the run: throughput, guard overhead, start-up, dependent jobs and memory.
Bars and points are medians; whiskers span the middle half of the rounds (q1..q3): on a shared
machine one slow round would otherwise set the scale. results.json has min..max too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

NAMES = {
    "a": "(a)\nenqueue\nper job",
    "b": "(b)\nenqueue_\nmany",
    "c": "(c)\nshared\npipeline",
    "d": "(d)\nupstream\nalone",
    "e": "(e)\nraw\nredis-py",
    "c_rq22": "(c)\non\nRQ 2.2",
    "a_hiredis": "(a)\nwith\nhiredis",
    "c_hiredis": "(c)\nwith\nhiredis",
}

MODE_COLOURS = {"enqueue": "tab:blue", "enqueue_many": "tab:green"}


def _errors(stats: list[dict[str, Any]]) -> list[list[float]]:
    return [[s["median"] - s["q1"] for s in stats], [s["q3"] - s["median"] for s in stats]]


def _throughput(axis: Any, results: dict[str, Any]) -> None:
    sections = results.get("throughput") or {}
    if not sections:
        axis.set_visible(False)
        return
    width = 0.8 / max(1, len(sections))
    names = [name for name in NAMES if any(name in s["jobs_per_second"] for s in sections.values())]
    for offset, (latency, section) in enumerate(sections.items()):
        present = [name for name in names if name in section["jobs_per_second"]]
        stats = [section["jobs_per_second"][name] for name in present]
        xs = [names.index(name) + (offset - (len(sections) - 1) / 2) * width for name in present]
        axis.bar(
            xs, [s["median"] for s in stats], width, yerr=_errors(stats), capsize=2, label=f"+{latency} RTT"
        )
    axis.set_xticks(range(len(names)), [NAMES[name] for name in names], fontsize=7)
    axis.set_yscale("log")
    axis.set_ylabel("jobs / s (log)")
    axis.set_title(
        f"3. Throughput, {results['settings']['throughput_jobs']:,} jobs over "
        f"{results['settings']['throughput_queues']} queues",
        fontsize=9,
    )
    axis.legend(fontsize=7)


def _ratio_bars(
    axis: Any, title: str, items: list[tuple[str, dict[str, Any]]], target: float, unit: str
) -> None:
    if not items:
        axis.set_visible(False)
        return
    stats = [s for _label, s in items]
    axis.barh(
        range(len(items)), [s["median"] for s in stats], xerr=_errors(stats), capsize=2, color="tab:gray"
    )
    axis.set_yticks(range(len(items)), [label for label, _s in items], fontsize=7)
    axis.axvline(target, color="tab:red", linestyle="--", linewidth=1, label=f"target {target:g}{unit}")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, loc="lower right")


def _guard(axis: Any, results: dict[str, Any]) -> None:
    items = []
    implied = []
    counted = []
    for key in ("latest", "rq22"):
        guard = (results.get("guard") or {}).get(key)
        if not guard:
            continue
        rq = guard["environment"]["rq"]
        ratios = (guard.get("instructions") or {}).get("ratio", {})
        for driving, figures in guard["enqueue"].items():
            if "ratio" in figures:
                items.append((f"RQ {rq}\n{driving.replace('_', ' ')}", figures["ratio"]))
                implied.append(figures.get("implied_ratio"))
                counted.append(ratios.get(driving, {}).get("guard"))
    _ratio_bars(axis, "1. Guard on / off, per enqueue_call(pipeline=) (bars: wall clock)", items, 1.02, "x")
    for values, style, label in (
        (implied, "kD", "implied by the guard's ns/call"),
        (counted, "r*", "instructions (callgrind)"),
    ):
        points = [(value, row) for row, value in enumerate(values) if value is not None]
        if points:
            axis.plot(*zip(*points), style, markersize=6, label=label)
    axis.legend(fontsize=7, loc="lower right")
    if items:
        axis.set_xlim(0.9, max(1.1, max(s["q3"] for _l, s in items) * 1.05))


def _startup(axis: Any, results: dict[str, Any]) -> None:
    deltas = (results.get("startup") or {}).get("cpu_delta_ms", {})
    items = [(name.replace(" - ", "\nminus "), stats) for name, stats in deltas.items()]
    _ratio_bars(axis, "2. Start-up CPU time added by rq_pipeline_fix (ms)", items, 3.0, " ms")


def _dependent(axis: Any, results: dict[str, Any]) -> None:
    if not results.get("dependent"):
        axis.set_visible(False)
        return
    for mode, section in (results.get("dependent") or {}).items():
        sizes = [int(size) for size in section["sizes"]]
        stats = [figures["us_per_job"] for figures in section["sizes"].values()]
        colour = MODE_COLOURS.get(mode)
        axis.errorbar(sizes, [s["median"] for s in stats], yerr=_errors(stats), marker="o", capsize=2,
                      color=colour, label=f"{mode}: total")  # fmt: skip
        execute = [figures["execute_us_per_job"]["median"] for figures in section["sizes"].values()]
        axis.plot(
            sizes, execute, linestyle="--", marker=".", color=colour, label=f"{mode}: of which execute()"
        )
        server = [figures["server_watch_us_per_dependent_job"] / 2 for figures in section["sizes"].values()]
        axis.plot(sizes, server, linestyle=":", marker=".", color=colour, label=f"{mode}: Redis's WATCH time")
    axis.set_xscale("log")
    sizes = results["settings"]["dependent_sizes"]
    axis.set_xticks(sizes, [f"{size:,}" for size in sizes])
    axis.minorticks_off()
    axis.set_xlabel("jobs in the batch (every other one dependent)")
    axis.set_ylabel("us per job")
    axis.set_title("4. Dependent jobs in one shared pipeline", fontsize=9)
    axis.legend(fontsize=7)


def _memory(axis: Any, results: dict[str, Any]) -> None:
    repeated = (results.get("memory") or {}).get("repeated")
    if not repeated:
        axis.set_visible(False)
        return
    batches = range(1, repeated["batches"] + 1)
    traced = repeated["traced_kib_after_each"]
    rss = [mib * 1024 for mib in repeated["rss_mib_after_each"]]
    axis.plot(batches, [kib - traced[0] for kib in traced], marker=".", label="tracemalloc (Python objects)")
    axis.plot(batches, [kib - rss[0] for kib in rss], marker=".", label="RSS")
    axis.axhline(0, color="black", linewidth=0.5)
    axis.set_xlabel(f"batch ({repeated['jobs_per_batch']:,} jobs each, every other one dependent)")
    axis.set_ylabel("KiB held after the batch, vs after batch 1")
    peak = repeated["traced_peak_bytes"] / 1024 / 1024
    axis.set_title(
        f"5. Memory left after each repeated batch (one batch peaks at {peak:.1f} MiB traced)", fontsize=9
    )
    axis.legend(fontsize=7)


def _summary(axis: Any, rows: list[dict[str, Any]]) -> None:
    axis.axis("off")
    marks = {True: "ok", False: "MISS", None: ""}
    lines = [
        f"{marks[r['meets']]:>4}  {r['figure'][3:78]}: {r['value']:.3g} {r['unit']}"
        for r in rows
        if r["target"] and isinstance(r["value"], float)
    ]
    axis.text(
        0, 1, "Against targets (medians)\n" + "\n".join(lines), va="top", family="monospace", fontsize=6
    )


def draw(results: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    _throughput(axes[0][0], results)
    _guard(axes[0][1], results)
    _startup(axes[0][2], results)
    _dependent(axes[1][0], results)
    _memory(axes[1][1], results)
    _summary(axes[1][2], rows)
    meta = results["meta"]
    figure.suptitle(
        f"rq-pipeline-fix benchmarks: RQ {meta['rq']}, redis-py {meta['redis_py']}, Redis "
        f"{meta['redis_server']}, Python {meta['python']}, {meta['cpus']} CPUs"
        f"{' (--quick)' if meta['quick'] else ''}",
        fontsize=11,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
