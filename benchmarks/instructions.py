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
counting. Child: ``python -m benchmarks.instructions VARIANT URL JOBS OUTPUT``.
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
DRIVINGS = ("shared_pipeline", "fresh_pipeline")  # in the order the child runs them
WARM_UP = 200  # enqueues before counting: first calls specialise byte-code and fill caches
_TOTALS = re.compile(r"^totals: (\d+)$", re.MULTILINE)


def measure(python: str, url: str, jobs: int) -> dict[str, Any]:
    """Instructions per enqueue for each driving and variant, and each variant's ratio to the original."""
    counts: dict[str, dict[str, float]] = {driving: {} for driving in DRIVINGS}
    for variant in VARIANTS:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("RQ_PIPELINE_FIX_")}
        if variant != "guard":
            environment["RQ_PIPELINE_FIX_DISABLE"] = "1"  # in case a start-up hook imports us
        command = [python, "-m", "benchmarks.instructions", variant, url, str(jobs)]
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

    for enqueue in (into_shared_pipeline, into_fresh_pipeline):  # the order of DRIVINGS
        for index in range(WARM_UP):
            enqueue(None, index)
        gc.collect()
        gc.disable()  # when a collection lands, and what it walks, would differ between variants
        functools.reduce(enqueue, range(jobs), None)  # the only code callgrind counts
        gc.enable()
    shared.reset()
    queue.connection.flushdb()  # the benchmark's own throwaway server


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
