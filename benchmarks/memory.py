"""Item 5: memory of a big shared-pipeline batch, and no growth over repeated batches.

Each measurement runs in a fresh child process (``python -m benchmarks.memory MODE URL JOBS
[BATCHES]``) so that peak RSS belongs to that batch alone, and tracemalloc's own overhead and
slowness stay out of the RSS figure and out of the other sections.
"""

from __future__ import annotations

import gc
import json
import resource
import subprocess
import sys
import tracemalloc
from typing import Any, Callable

from . import workload
from .interpreters import REPO
from .stats import linear_fit

MIB = 1024 * 1024


def _max_rss_bytes() -> int:
    """This process's peak RSS. On Linux from VmHWM: ``getrusage``'s ru_maxrss survives exec, so a
    child forked from the (big) benchmark process would start from the parent's RSS."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _current_rss_bytes() -> int:
    import os

    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _ready(url: str) -> tuple[Any, list[Any]]:
    """Client, queues, guard on, and one job already enqueued: imports and caches are baseline."""
    import rq_pipeline_fix

    rq_pipeline_fix.apply()
    client = workload.connect(url)
    targets = workload.queues(client, 10)
    workload.shared_pipeline(client, 10, 10)
    gc.collect()
    return client, targets


def peak_rss(url: str, jobs: int) -> dict[str, Any]:
    client, _targets = _ready(url)
    before = _max_rss_bytes()
    seconds = workload.shared_pipeline(client, jobs, 10)
    after = _max_rss_bytes()
    return {
        "jobs": jobs,
        "seconds": seconds,
        "baseline_mib": before / MIB,
        "peak_mib": after / MIB,
        "batch_mib": (after - before) / MIB,
        "bytes_per_job": (after - before) / jobs,
    }


def traced_peak(url: str, jobs: int) -> dict[str, Any]:
    client, _targets = _ready(url)
    tracemalloc.start()
    workload.shared_pipeline(client, jobs, 10)
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "jobs": jobs,
        "peak_mib": peak / MIB,
        "left_after_mib": current / MIB,
        "bytes_per_job": peak / jobs,
    }


def repeated(url: str, jobs: int, batches: int) -> dict[str, Any]:
    """``batches`` batches of the dependency pattern, each in its own pipeline: traced memory and
    RSS after each one, and the per-pipeline bookkeeping (``pipelines._notes_by_pipeline``,
    keyed weakly by pipeline) while the pipeline lives and after it is gone."""
    from rq_pipeline_fix import pipelines

    client, targets = _ready(url)
    tracemalloc.start()
    traced, rss, alive, released = [], [], [], []
    for _ in range(batches):
        client.flushdb()
        pipe = client.pipeline()
        created = workload.enqueue_dependency_pattern(pipe, targets, jobs)
        alive.append(len(pipelines._notes_by_pipeline))
        pipe.execute()
        del pipe, created
        gc.collect()
        released.append(len(pipelines._notes_by_pipeline))
        traced.append(tracemalloc.get_traced_memory()[0])
        rss.append(_current_rss_bytes())
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    steady = list(range(max(1, batches // 4), batches))  # the first batches fill caches once (~10 KiB)
    traced_slope, _ = linear_fit(steady, [traced[i] for i in steady])
    rss_slope, _ = linear_fit(steady, [rss[i] for i in steady])
    return {
        "jobs_per_batch": jobs,
        "batches": batches,
        "traced_kib_after_each": [value / 1024 for value in traced],
        "rss_mib_after_each": [value / MIB for value in rss],
        "traced_peak_bytes": traced_peak,
        "growth_fitted_from_batch": steady[0] + 1,
        "traced_growth_bytes_per_batch": traced_slope,
        "rss_growth_bytes_per_batch": rss_slope,
        "bookkeeping_entries_while_pipeline_alive": alive,
        "bookkeeping_entries_after_pipeline_gone": released,
    }


MODES: dict[str, Callable[..., dict[str, Any]]] = {
    "peak_rss": peak_rss,
    "traced_peak": traced_peak,
    "repeated": repeated,
}


def _start(mode: str, *arguments: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.memory", mode, *map(str, arguments)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


def _result(child: subprocess.Popen[str]) -> dict[str, Any]:
    output, _ = child.communicate()
    if child.returncode:
        raise RuntimeError(f"{child.args!r} exited with {child.returncode}")
    return json.loads(output.strip().splitlines()[-1])  # type: ignore[no-any-return]


def measure(url: str, jobs: int, batches: int, batch_jobs: int) -> dict[str, Any]:
    """The three children run at once, each on its own database of the server: memory figures do
    not depend on sharing the CPU, and tracemalloc makes these the slowest batches of the run."""
    base = url.rsplit("/", 1)[0]
    children = {
        "peak_rss": _start("peak_rss", f"{base}/1", jobs),
        "tracemalloc": _start("traced_peak", f"{base}/2", jobs),
        "repeated": _start("repeated", f"{base}/3", batch_jobs, batches),
    }
    return {name: _result(child) for name, child in children.items()}


if __name__ == "__main__":
    mode, url, *numbers = sys.argv[1:]
    print(json.dumps(MODES[mode](url, *map(int, numbers))))
