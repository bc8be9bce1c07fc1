"""The measurements one interpreter can take, by name, with JSON-able arguments and results, so
the same code runs in this process (the RQ installed here) and in a worker process (RQ 2.2.x)."""

from __future__ import annotations

import gc
import platform
import time
from typing import Any, Callable

from . import workload

_clients: dict[tuple[str, bool, str], Any] = {}


def _client(url: str, counting: bool = False, parser: str = "python") -> Any:
    key = (url, counting, parser)
    if key not in _clients:
        _clients[key] = workload.connect(url, counting=counting, parser=parser)
    return _clients[key]


def set_guard(on: bool) -> None:
    """Guard on (``apply()``) or RQ's own methods (``revert()``); the toggle is what item 1 compares."""
    import rq_pipeline_fix

    status = rq_pipeline_fix.apply() if on else rq_pipeline_fix.revert()
    if status.active != on:
        raise RuntimeError(f"could not switch the guard {'on' if on else 'off'}: {status.note}")


_bare: list[Any] = []  # the bare wrapt wrapper while it is on


def _pass_through(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return wrapped(*args, **kwargs)


def set_variant(variant: str) -> None:
    """``guard`` (``apply()``), ``original`` (``revert()``: RQ's own methods) or ``bare wrapt``:
    RQ's own with a wrapt wrapper on ``Queue.setup_dependencies`` that only calls through, the
    floor of any wrapt-based guard, measured beside the guard in every run."""
    import wrapt
    from rq.queue import Queue

    while _bare:  # off before apply(), which would otherwise put the guard beneath it
        bare = _bare.pop()
        original = bare.__wrapped__
        if Queue.__dict__.get("setup_dependencies") is bare:
            setattr(Queue, "setup_dependencies", original)  # noqa: B010
    set_guard(variant == "guard")
    if variant == "bare wrapt":
        wrapper = wrapt.FunctionWrapper(Queue.__dict__["setup_dependencies"], _pass_through)
        setattr(Queue, "setup_dependencies", wrapper)  # noqa: B010
        _bare.append(wrapper)


def environment() -> dict[str, Any]:
    import redis
    import rq

    import rq_pipeline_fix

    status = rq_pipeline_fix.status()
    return {
        "python": platform.python_version(),
        "rq": rq.__version__,
        "redis_py": redis.__version__,
        "hiredis_installed": workload.hiredis_installed(),
        "parser": "python",  # every figure but the (a)/(c) hiredis variants: what a default install runs
        "guard": status.note,
        "defects_patched": sorted(d.id for d in status.defects if d.patched),
    }


def redis_server_version(url: str) -> str:
    return str(_client(url).info("server")["redis_version"])


_BATCHES: dict[str, Callable[[Any, int, int], float]] = {
    "one_enqueue_per_job": workload.one_enqueue_per_job,
    "enqueue_many_per_queue": workload.enqueue_many_per_queue,
    "shared_pipeline": workload.shared_pipeline,
    "raw_pipeline": workload.raw_pipeline,
}


def batch(
    url: str, kind: str, jobs: int, queues: int, guard: bool = True, parser: str = "python"
) -> dict[str, Any]:
    """Seconds for one batch of ``kind``; ``error`` instead when this RQ raises on it."""
    set_guard(guard)
    client = _client(url, parser=parser)
    try:
        return {"seconds": _BATCHES[kind](client, jobs, queues)}
    except Exception as exc:  # e.g. RQ 2.2 without the guard: nested MULTI (D1)
        client.connection_pool.disconnect()
        return {"error": f"{type(exc).__name__}: {exc}"}


def guard_enqueue(url: str, driving: str, jobs: int, variant: str) -> dict[str, Any]:
    """Seconds for ``jobs`` ``enqueue_call(pipeline=...)`` with ``variant`` (``set_variant``; item 1)."""
    set_variant(variant)
    client = _client(url)
    drive = (
        workload.fresh_pipeline_per_enqueue
        if driving == "fresh_pipeline"
        else workload.enqueues_into_shared_pipeline
    )
    try:
        seconds, cpu_seconds = drive(client, jobs)
    except Exception as exc:  # RQ < 2.3 without the guard: nested MULTI (D1) in a shared pipeline
        client.connection_pool.disconnect()
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"seconds": seconds, "cpu_seconds": cpu_seconds}


def setup_dependencies_ns(url: str, path: str, calls: int, variant: str) -> dict[str, Any]:
    """Nanoseconds per ``queue.setup_dependencies(job, pipeline=pipe)`` for a job without
    dependencies, no Redis I/O: ``multi`` keeps the pipeline in MULTI (RQ >= 2.3 and our guard
    leave it alone), ``fresh`` resets it before every call (both call ``multi()``)."""
    from rq.job import Job

    set_variant(variant)
    client = _client(url)
    (queue,) = workload.queues(client, 1)
    job = Job.create(workload.noop, connection=client)
    pipe = client.pipeline()
    pipe.multi()
    reset = path == "fresh"
    try:
        if reset:
            pipe.explicit_transaction = False
        queue.setup_dependencies(job, pipeline=pipe)  # on RQ < 2.3 the original refuses the MULTI path
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    gc.disable()  # a collection landing in one variant's loop is noise, not cost
    try:
        start = time.perf_counter_ns()
        if reset:
            for _ in range(calls):
                pipe.explicit_transaction = False
                queue.setup_dependencies(job, pipeline=pipe)
        else:
            for _ in range(calls):
                queue.setup_dependencies(job, pipeline=pipe)
        elapsed = time.perf_counter_ns() - start
    finally:
        gc.enable()
    return {"ns_per_call": elapsed / calls}


def dependent(url: str, mode: str, jobs: int, queues: int) -> dict[str, Any]:
    """One batch of the dependency pattern (item 4) with the guard on: seconds, socket writes
    (round trips), WATCH commands the server saw, and the resulting DEFERRED/queued counts."""
    set_guard(True)
    client = _client(url, counting=True)
    client.config_resetstat()
    before = workload.CountingConnectionMixin.sends
    if mode == "enqueue_many":
        enqueue_seconds, execute_seconds = workload.dependent_enqueue_many(client, jobs)
        queue_count = 1
    else:
        enqueue_seconds, execute_seconds = workload.dependent_enqueues(client, jobs, queues)
        queue_count = queues
    sends = workload.CountingConnectionMixin.sends - before - 1  # the flushdb before the clock started
    stats = client.info("commandstats").get("cmdstat_watch", {})
    deferred, queued = workload.deferred_and_queued(client, queue_count)
    return {
        "seconds": enqueue_seconds + execute_seconds,
        "enqueue_seconds": enqueue_seconds,
        "execute_seconds": execute_seconds,
        "round_trips": sends,
        "watch_calls": int(stats.get("calls", 0)),
        "watch_usec": int(stats.get("usec", 0)),
        "deferred": deferred,
        "queued": queued,
    }


TASKS: dict[str, Callable[..., Any]] = {
    "environment": environment,
    "redis_server_version": redis_server_version,
    "batch": batch,
    "guard_enqueue": guard_enqueue,
    "setup_dependencies_ns": setup_dependencies_ns,
    "dependent": dependent,
}
