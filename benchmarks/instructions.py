"""Item 1 without the machine's noise: instructions per ``enqueue_call(pipeline=...)``, counted by
callgrind (``valgrind --tool=callgrind``), which counts the same for the same code whatever else
the machine is doing.

Each variant runs in its own child under valgrind: RQ's own method (``original``), a wrapt
``FunctionWrapper`` whose wrapper only calls through (``bare wrapt``: the floor of any
wrapt-based guard) and the guard (``guard``). Only the timed loops are counted: each runs inside
``functools.reduce``, and callgrind collects only while that C function is on the stack
(``--collect-atstart=no --toggle-collect=functools_reduce``), writing one dump per loop. The
loops: *shared pipeline*, enqueues into one pipeline that is reset, never executed (no I/O);
*fresh pipeline*, one enqueue per new pipeline and its ``execute()`` (this process's side of the
I/O: packing, parsing; not the server's, nor time waiting). The garbage collector is off while
counting. ``python -m benchmarks.instructions [JOBS]`` prints the counts (200 enqueues per loop by
default) against a throwaway redis-server; each child is ``... --child VARIANT URL JOBS``.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import callgrind

VARIANTS = ("original", "bare wrapt", "guard")
# In the order the child runs them. The last is no enqueue: one queue.setup_dependencies(job,
# pipeline=pipe) call on a pipeline in MULTI, the guarded call alone, where the wrapper's own
# cost is not lost among the ~400k instructions of an enqueue (whose count moves by a few
# thousand between processes that differ only in what they imported: CPython's type caches).
DRIVINGS = ("shared_pipeline", "fresh_pipeline", "setup_dependencies_call")
WARM_UP = 200  # enqueues before counting: first calls specialise byte-code and fill caches
_TOTALS = re.compile(r"^totals: (\d+)$", re.MULTILINE)


def measure(python: str, url: str, jobs: int) -> dict[str, Any]:
    """Instructions per enqueue for each driving and variant, and each variant's ratio to the original."""
    counts: dict[str, dict[str, float]] = {driving: {} for driving in DRIVINGS}
    for variant in VARIANTS:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("RQ_PIPELINE_FIX_")}
        if variant != "guard":
            environment["RQ_PIPELINE_FIX_DISABLE"] = "1"  # in case a start-up hook imports us
        command = [python, "-m", "benchmarks.instructions", "--child", variant, url, str(jobs)]
        with tempfile.TemporaryDirectory() as directory:
            output = Path(directory, "callgrind.out")
            options = (
                f"--callgrind-out-file={output}",
                *callgrind.ONLY_IN_REDUCE,
                "--dump-after=functools_reduce",
            )
            try:
                callgrind.run(command, environment, *options)  # one dump per loop: output.1, output.2
            except callgrind.CallgrindFailed as exc:
                return {"skipped": f"{variant}: {exc}"}
            dumps = [Path(f"{output}.{part}") for part in range(1, len(DRIVINGS) + 1)]
            if not all(dump.exists() for dump in dumps):
                return {"skipped": f"{variant}: callgrind wrote no dump for each loop"}
            for driving, dump in zip(DRIVINGS, dumps):
                found = _TOTALS.search(dump.read_text())
                assert found is not None, f"no totals in {dump}"
                counts[driving][variant] = int(found.group(1)) / jobs
    return {
        "jobs": jobs,
        "instructions_per_enqueue": counts,
        "ratio": {
            driving: {v: n / by_variant["original"] for v, n in by_variant.items() if v != "original"}
            for driving, by_variant in counts.items()
        },
    }


def _pass_through(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return wrapped(*args, **kwargs)


def _child(variant: str, url: str, jobs: int) -> None:
    import functools
    import gc

    if variant == "guard":
        import rq_pipeline_fix  # before rq, as at a user's start-up
    import redis
    from rq import Queue

    from .workload import noop

    if variant == "bare wrapt":
        import wrapt

        wrapt.wrap_function_wrapper("rq.queue", "Queue.setup_dependencies", _pass_through)
    queue = Queue("bench-instructions", connection=redis.Redis.from_url(url))
    if variant == "guard":
        assert rq_pipeline_fix.status().active, rq_pipeline_fix.status().note
    shared = queue.connection.pipeline()

    def into_shared_pipeline(_: None, index: int) -> None:
        queue.enqueue_call(noop, args=(index,), pipeline=shared)

    def into_fresh_pipeline(_: None, index: int) -> None:
        with queue.connection.pipeline() as pipe:
            queue.enqueue_call(noop, args=(index,), pipeline=pipe)
            pipe.execute()

    in_multi = queue.connection.pipeline()
    in_multi.multi()
    job = queue.create_job(noop, args=(0,))

    def setup_dependencies_call(_: None, index: int) -> None:
        queue.setup_dependencies(job, pipeline=in_multi)

    for enqueue in (into_shared_pipeline, into_fresh_pipeline, setup_dependencies_call):  # DRIVINGS
        for index in range(WARM_UP):
            enqueue(None, index)
        gc.collect()
        gc.disable()  # when a collection lands, and what it walks, would differ between variants
        functools.reduce(enqueue, range(jobs), None)  # the only code callgrind counts
        gc.enable()
    shared.reset()
    queue.connection.flushdb()  # the benchmark's own throwaway server


def main(argv: list[str]) -> int:
    jobs = int(argv[0]) if argv else 200
    with callgrind.throwaway_redis() as url:
        counted = measure(sys.executable, url, jobs)
    if "skipped" in counted:
        print(counted["skipped"])
        return 1
    per_call = counted["instructions_per_enqueue"]
    for driving, counts in per_call.items():
        shown = ", ".join(f"{variant} {count:,.0f}" for variant, count in counts.items())
        over = counts["guard"] / counts["bare wrapt"]
        print(f"{driving}: instructions per call: {shown}")
        print(
            f"  guard/original {counts['guard'] / counts['original']:.4f}x, bare wrapt/original "
            f"{counts['bare wrapt'] / counts['original']:.4f}x, guard/bare wrapt {over:.4f}x"
        )
    own = per_call["setup_dependencies_call"]["guard"] - per_call["setup_dependencies_call"]["bare wrapt"]
    share = 100 * own / per_call["shared_pipeline"]["original"]
    print(f"the guard's own instructions per call over bare wrapt: {own:,.0f} = {share:.2f}% of an enqueue")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(main(sys.argv[1:]))
