"""Beside other libraries that patch RQ, in either order, and beside another copy of this package
(rq_pipeline_fix/neighbours.py): the probes judge RQ's own code beneath every wrapper, the guard
goes directly on RQ's own function beneath the others' wrappers (so they see every call), and each
side's lifecycle leaves the other working.

The first part uses wrappers of our own making, one per way a library keeps RQ's method; the
second the real libraries (the ``peers`` extra), each in a process of its own (tests/peers.py):
they cannot all be undone, and which came first is the point.
"""

from __future__ import annotations

import functools
import importlib
import json
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
import redis
import wrapt
from rq import Queue
from rq.job import Job, JobStatus

import rq_pipeline_fix
from rq_pipeline_fix import patcher
from rq_pipeline_fix.neighbours import chain_of, describe, guard_of
from rq_pipeline_fix.targets import TARGETS
from tests.conftest import child_environment
from tests.jobs import record

REPOSITORY = str(Path(__file__).resolve().parent.parent)
TIMEOUT = 120  # seconds: a safety bound on subprocesses, never asserted on


def layers(owner: type, name: str) -> list[str]:
    """The chain on ``owner.name``, outermost first: "guard", a neighbour's name, "rq"."""
    chain = chain_of(owner, name)
    found = ["guard" if guard_of(layer.obj) else "neighbour" for layer in chain.layers]
    return [*found, "rq"] if chain.original is not None else found


def defects(report: rq_pipeline_fix.Status) -> list[tuple[str, bool | None, bool, str]]:
    return [(d.id, d.detected, d.patched, d.reason) for d in report.defects]


@pytest.fixture
def rq_as_installed() -> Iterator[rq_pipeline_fix.Status]:
    """The guard off and RQ's classes as installed; whatever a test puts on them is taken off
    afterwards and the guard applied again. Yields the status with the guard on RQ alone."""
    alone = rq_pipeline_fix.apply()
    rq_pipeline_fix.revert()
    owners = {owner_of(target) for target in TARGETS} | {Queue, Job}
    saved = {owner: dict(vars(owner)) for owner in owners if owner is not None}
    yield alone
    rq_pipeline_fix.revert()
    for owner, attributes in saved.items():
        for name, value in attributes.items():
            if owner.__dict__.get(name) is not value:
                setattr(owner, name, value)
    rq_pipeline_fix.apply()


def owner_of(target: Any) -> Any:
    """The class (or module) of an RQ target; None for django-rq's and a module nobody imported."""
    if not target.module.startswith("rq.") or (target.late and target.module not in sys.modules):
        return None
    try:
        module = importlib.import_module(target.module)
    except ImportError:  # rq.dependency: RQ < 1.15
        return None
    return getattr(module, target.owner, None) if target.owner else module


def probe_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next apply() probe afresh (the findings are kept per set of RQ's own methods);
    the findings on RQ alone come back after the test."""
    monkeypatch.setattr(patcher, "_findings", patcher._findings)
    monkeypatch.setattr(patcher, "_probed", ())


def reads_parents(queue: Any, job: Any) -> None:
    """What OpenTelemetry's wrapper does for a job with dependencies: it reads the parents from
    Redis. On the probes' offline connection that is an error: through it, D3 cannot be probed."""
    if job._dependency_ids:
        queue.connection.exists(*[job.key_for(parent) for parent in job._dependency_ids])


def shared_batch(connection: redis.Redis) -> None:
    """A command of the caller's own, a parent and its child in one pipeline: the guard steps in
    for both enqueues on every RQ release (D2, then D3)."""
    with connection.pipeline() as pipe:
        pipe.incr("batches")
        high, low = Queue("high", connection=connection), Queue("low", connection=connection)
        high.enqueue_call(record, args=("parent",), job_id="parent", pipeline=pipe)
        low.enqueue_call(record, args=("child",), job_id="child", depends_on="parent", pipeline=pipe)
        pipe.execute()


def assert_batch_landed(connection: redis.Redis) -> None:
    assert connection.get("batches") == b"1"
    assert Queue("high", connection=connection).job_ids == ["parent"]
    assert Job.fetch("child", connection=connection).get_status() == JobStatus.DEFERRED


# --- neighbours of our own making: one per way of keeping RQ's method ----------------------------


def wrapt_wrapper(calls: list[str]) -> None:
    """OpenTelemetry's and ddtrace's way: wrapt.wrap_function_wrapper."""

    def tracer(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        job = args[0] if args else kwargs["job"]
        calls.append(job.id)
        reads_parents(instance, job)
        return wrapped(*args, **kwargs)

    wrapt.wrap_function_wrapper(Queue, "setup_dependencies", tracer)


def closure(calls: list[str]) -> None:
    """Sentry's way: a plain function keeping RQ's in a closure cell, functools.wraps'd."""
    original = Queue.setup_dependencies

    @functools.wraps(original)
    def setup_dependencies(self: Any, job: Any, pipeline: Any = None) -> Any:
        calls.append(job.id)
        reads_parents(self, job)
        return original(self, job, pipeline=pipeline)

    Queue.setup_dependencies = setup_dependencies  # type: ignore[method-assign]


def default_argument(calls: list[str]) -> None:
    before_us = Queue.setup_dependencies

    def setup_dependencies(self: Any, job: Any, pipeline: Any = None, rq: Any = before_us) -> Any:
        calls.append(job.id)
        reads_parents(self, job)
        return rq(self, job, pipeline=pipeline)

    setup_dependencies.__name__ = "setup_dependencies"
    Queue.setup_dependencies = setup_dependencies  # type: ignore[method-assign]


MODULE_GLOBAL = """
from rq.queue import Queue

setup_dependencies_before_us = Queue.setup_dependencies

def setup_dependencies(self, job, pipeline=None):
    calls.append(job.id)
    reads_parents(self, job)
    return setup_dependencies_before_us(self, job, pipeline=pipeline)

Queue.setup_dependencies = setup_dependencies
"""


def module_global(calls: list[str]) -> None:
    """A module of its own that keeps RQ's method in a global."""
    module = types.ModuleType("a_tracing_library")
    module.__dict__.update(calls=calls, reads_parents=reads_parents)
    exec(compile(MODULE_GLOBAL, "a_tracing_library.py", "exec"), module.__dict__)


def out_of_reach(calls: list[str]) -> None:
    """Keeps RQ's method where no reference can be followed (inside a dict): only the
    ``__wrapped__`` that functools.wraps sets leads to it, enough to judge, not to go beneath."""
    kept = {"rq": Queue.setup_dependencies}

    @functools.wraps(kept["rq"])
    def setup_dependencies(self: Any, job: Any, pipeline: Any = None) -> Any:
        calls.append(job.id)
        reads_parents(self, job)
        return kept["rq"](self, job, pipeline=pipeline)

    Queue.setup_dependencies = setup_dependencies  # type: ignore[method-assign]


@pytest.mark.parametrize(
    "neighbour", [wrapt_wrapper, closure, default_argument, module_global], ids=lambda f: f.__name__
)
def test_guard_goes_beneath_a_neighbour_that_reads_redis_and_it_sees_every_call(
    rq_as_installed: rq_pipeline_fix.Status,
    neighbour: Callable[[list[str]], None],
    connection: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    neighbour(calls)  # the neighbour first, as `RQInstrumentor().instrument()` before our import
    probe_again(monkeypatch)
    report = rq_pipeline_fix.apply()
    assert defects(report) == defects(rq_as_installed)  # D3 probed beneath it, not "probe failed"
    assert layers(Queue, "setup_dependencies") == ["neighbour", "guard", "rq"]
    assert any("beneath" in line and "every call" in line for line in report.neighbours)
    shared_batch(connection)
    assert_batch_landed(connection)
    assert calls == ["parent", "child"]  # both answered by the guard, both seen by the neighbour
    rq_pipeline_fix.revert()
    assert layers(Queue, "setup_dependencies") == ["neighbour", "rq"]  # theirs kept, working
    Queue("default", connection=connection).enqueue(record, "after-revert", job_id="after-revert")
    assert calls[-1] == "after-revert"


def test_guard_goes_above_a_neighbour_whose_reference_is_out_of_reach_and_says_so(
    rq_as_installed: rq_pipeline_fix.Status, connection: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    out_of_reach(calls)
    probe_again(monkeypatch)
    report = rq_pipeline_fix.apply()
    assert defects(report) == defects(rq_as_installed)  # judged through __wrapped__
    assert layers(Queue, "setup_dependencies") == ["guard", "neighbour", "rq"]
    (line,) = [line for line in report.neighbours if line.startswith("Queue.setup_dependencies")]
    assert "guard above" in line and "do not reach it" in line
    shared_batch(connection)
    assert_batch_landed(connection)
    assert calls == []  # as the status says: the guard answered both itself


def test_a_neighbour_that_replaced_rq_without_keeping_it_is_named_in_status(
    rq_as_installed: rq_pipeline_fix.Status, connection: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    def setup_dependencies(self: Any, job: Any, pipeline: Any = None) -> Any:
        if pipeline is not None and not pipeline.explicit_transaction:
            pipeline.multi()  # RQ 2.3's fix of D1, without D2's
        return job

    Queue.setup_dependencies = setup_dependencies  # type: ignore[method-assign]
    probe_again(monkeypatch)
    report = rq_pipeline_fix.apply()
    (line,) = [line for line in report.neighbours if line.startswith("Queue.setup_dependencies")]
    assert "test_neighbours" in line and "keeps no reference" in line
    found = {d.id: (d.detected, d.patched) for d in report.defects}
    assert found["D1"] == (False, False) and found["D2"] == (True, True)  # judged as found
    assert layers(Queue, "setup_dependencies") == ["guard", "neighbour"]


def test_probes_decide_beneath_a_neighbour_on_other_methods_that_reads_redis(
    rq_as_installed: rq_pipeline_fix.Status, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probes create jobs (Queue.create_job) and RQ saves them (Job.save): a tracer's wrapper
    there that reads Redis would leave every probe undecided; the probes (at first use, or a
    report's) run on RQ's own methods beneath such wrappers."""
    calls: list[str] = []

    def tracer(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        calls.append(wrapped.__name__)
        instance.connection.ping()  # the probes' offline connection refuses this
        return wrapped(*args, **kwargs)

    wrapt.wrap_function_wrapper(Queue, "create_job", tracer)
    wrapt.wrap_function_wrapper(Job, "save", tracer)
    probe_again(monkeypatch)
    report = rq_pipeline_fix.apply()
    assert calls == []  # never through the tracer
    assert defects(report) == defects(rq_as_installed)


def test_the_walk_down_a_cycle_of_replacements_ends(rq_as_installed: rq_pipeline_fix.Status) -> None:
    namespace: dict[str, Any] = {}
    exec(  # two replacements, each calling the other by a global named like the method
        "def setup_dependencies(self, job, pipeline=None):\n    return other(self, job, pipeline)\n"
        "def other(self, job, pipeline=None):\n    return setup_dependencies(self, job, pipeline)\n"
        "other.__name__ = 'setup_dependencies'\n",
        namespace,
    )
    Queue.setup_dependencies = namespace["setup_dependencies"]
    chain = chain_of(Queue, "setup_dependencies")
    assert chain.original is None and len(chain.layers) <= 64


# --- another copy of this package (issue 15, item 4) -----------------------------------------------


def run_python(code: str, *argv: str, **environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=REPOSITORY,
        env=child_environment(PYTHONPATH=REPOSITORY, **environment),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


TWO_COPIES = """
import importlib, json, sys, warnings
warnings.simplefilter("always")
first_name, second_name, copies, url = sys.argv[1:5]
sys.path.insert(0, copies)
first = importlib.import_module(first_name)
import rq.queue, redis
second = importlib.import_module(second_name)  # its import hook applies at once: rq.queue is in
from tests.peers import chains

report = second.apply()
connection = redis.Redis.from_url(url)
with connection.pipeline() as pipe:  # needs the guard on every RQ: a command first, then a child
    pipe.incr("batches")
    rq.queue.Queue("high", connection=connection).enqueue_call("os.getpid", job_id="p", pipeline=pipe)
    rq.queue.Queue("low", connection=connection).enqueue_call("os.getpid", depends_on="p", pipeline=pipe)
    pipe.execute()
out = {
    "first": first.status().to_dict(), "second": report.to_dict(), "chains": chains(),
    "batches": int(connection.get("batches")),
}
out["second_revert"] = second.revert().to_dict()
out["chains_reverted"] = chains()
out["first_after"] = first.status().to_dict()
out["first_again"] = first.apply().to_dict()
out["chains_again"] = chains()
print(json.dumps(out))
"""


@pytest.fixture
def symlinked_copy(tmp_path: Path) -> str:
    """A second copy of the package under another name, as a vendored or symlinked one is."""
    package = Path(REPOSITORY, "rq_pipeline_fix")
    (tmp_path / "vendored_rq_pipeline_fix").symlink_to(package, target_is_directory=True)
    return str(tmp_path)


@pytest.mark.parametrize("first", ["rq_pipeline_fix", "vendored_rq_pipeline_fix"])
def test_a_second_copy_of_the_package_adopts_the_first_ones_guard(
    first: str, symlinked_copy: str, connection: redis.Redis, redis_url: str
) -> None:
    second = "vendored_rq_pipeline_fix" if first == "rq_pipeline_fix" else "rq_pipeline_fix"
    shown = run_python(TWO_COPIES, first, second, symlinked_copy, redis_url)
    assert shown.returncode == 0, shown.stderr
    assert "probe failed" not in shown.stderr
    out = json.loads(shown.stdout)
    verdicts = [[{**d, "stepped_in": None} for d in out[copy]["defects"]] for copy in ("first", "second")]
    assert verdicts[1] == verdicts[0]  # probed beneath the first's guards (counts: before, after the batch)
    assert all(d["detected"] is not None for d in out["second"]["defects"])
    assert out["second"]["active"] and out["batches"] == 1
    for label, chain in out["chains"].items():
        assert chain.count("rq-pipeline-fix") <= 1, label  # never wrapped twice
    assert any("another copy" in line for line in out["second"]["neighbours"])
    # The second's revert() takes the guards off; the first one's status says so, its apply() is back.
    assert not out["second_revert"]["active"]
    assert all("rq-pipeline-fix" not in chain for chain in out["chains_reverted"].values())
    assert not out["first_after"]["active"] and "no longer there" in out["first_after"]["note"]
    assert out["first_again"]["active"] and out["chains_again"] == out["chains"]


RELOAD = """
import importlib, json, sys, warnings
warnings.simplefilter("always")
import rq_pipeline_fix, rq.queue
from rq_pipeline_fix import patcher
from tests.peers import chains
before = rq_pipeline_fix.status().to_dict()
importlib.reload(patcher)  # a development server's auto-reload: the module forgets what it put on
after = rq_pipeline_fix.apply().to_dict()
out = {"before": before, "after": after, "chains": chains()}
out["reverted"] = rq_pipeline_fix.revert().to_dict()
out["chains_reverted"] = chains()
print(json.dumps(out))
"""


def test_reload_of_the_patcher_adopts_the_guards_it_put_on() -> None:
    shown = run_python(RELOAD)
    assert shown.returncode == 0, shown.stderr
    assert "probe failed" not in shown.stderr
    out = json.loads(shown.stdout)
    assert out["after"]["defects"] == out["before"]["defects"] and out["after"]["active"]
    for label, chain in out["chains"].items():
        assert chain.count("rq-pipeline-fix") <= 1, label
    assert not out["reverted"]["active"]
    assert all("rq-pipeline-fix" not in chain for chain in out["chains_reverted"].values())


# --- the real libraries, each in a process of its own, in both orders ----------------------------

PEERS = {"opentelemetry": "opentelemetry_instrumentation_rq", "sentry": "sentry_sdk", "ddtrace": "ddtrace"}
ORDERS = ("neighbour-first", "package-first")
QUIET_DDTRACE = {  # no telemetry, remote configuration or start-up log from ddtrace's threads
    "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
    "DD_REMOTE_CONFIGURATION_ENABLED": "false",
    "DD_TRACE_STARTUP_LOGS": "false",
}
_runs: dict[tuple[str, str], dict[str, Any]] = {}
Beside = tuple[str, dict[str, Any]]  # a neighbour's name, and what tests/peers.py saw beside it


def run(neighbour: str, order: str, redis_url: str) -> dict[str, Any]:
    """tests/peers.py's JSON for one neighbour and order, run once per session."""
    if neighbour in PEERS:
        pytest.importorskip(PEERS[neighbour], reason="the `peers` extra is not installed")
    if (neighbour, order) not in _runs:
        shown = subprocess.run(
            [sys.executable, "-m", "tests.peers", neighbour, order, redis_url],
            cwd=REPOSITORY,
            env=child_environment(PYTHONPATH=REPOSITORY, **QUIET_DDTRACE),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert shown.returncode == 0, shown.stderr[-3000:]
        _runs[neighbour, order] = json.loads(shown.stdout)
    return _runs[neighbour, order]


def without(prefix: str, observed: list[list[Any]]) -> list[tuple[Any, ...]]:
    """The observations about jobs ``prefix*``, with the prefix taken off (sorted: children of
    one parent are run in no particular order)."""
    about = [(what, str(job_id), *more) for what, job_id, *more in observed]
    return sorted((what, job[len(prefix) :], *more) for what, job, *more in about if job.startswith(prefix))


@pytest.fixture(params=[(n, o) for n in PEERS for o in ORDERS], ids=lambda p: f"{p[0]}-{p[1]}")
def beside(request: pytest.FixtureRequest, redis_url: str) -> Beside:
    neighbour, order = request.param
    return neighbour, run(neighbour, order, redis_url)


def test_status_beside_a_neighbour_is_the_status_alone(beside: Beside, redis_url: str) -> None:
    _neighbour, out = beside
    alone = run("none", "package-first", redis_url)
    assert out["status"]["defects"] == alone["status"]["defects"]
    assert out["status"]["unpatched"] == [] and out["status"]["ok"]


def test_a_shared_batch_lands_beside_a_neighbour_and_a_worker_runs_parents_first(
    beside: Beside,
) -> None:
    _neighbour, out = beside
    for prefix in ("shared-", "own-"):
        facts = out["redis"][prefix]
        assert [facts[job]["status"] for job in ("parent", "child", "many-child", "later")] == [
            "finished",
            "finished",
            "finished",
            "scheduled",
        ]
        assert facts["scheduled"] == [f"{prefix}later"]
        ran = [label for label in out["executed"] if label.startswith(prefix)]
        assert ran[0] == f"{prefix}parent" and sorted(ran[1:]) == [f"{prefix}child", f"{prefix}many-child"]


def test_the_neighbour_sees_the_calls_the_guard_answers_as_it_sees_rq_own(
    beside: Beside,
) -> None:
    """The same enqueues, ``shared-*`` answered by the guard, ``own-*`` by RQ's own code: the
    neighbour records the same for both, and the same in job.meta."""
    neighbour, out = beside
    shared = without("shared-", out["observed"])
    own = without("own-", out["observed"])
    if neighbour == "opentelemetry":  # it links a child's span to its parents read from Redis,
        shared = [entry[:2] for entry in shared]  # where a parent buffered in the same
        own = [entry[:2] for entry in own]  # pipeline is not yet: no link for that one
        assert ("setup dependencies low", "child") in shared  # the span of a call the guard answered
    assert shared == own and shared
    metas = {job: facts["meta"] for job, facts in out["redis"]["shared-"].items() if job != "scheduled"}
    assert metas == {job: facts["meta"] for job, facts in out["redis"]["own-"].items() if job != "scheduled"}
    expected = {"opentelemetry": "traceparent", "sentry": "_sentry_trace_headers"}.get(neighbour)
    if expected:  # the trace context, put in job.meta before the guard saved the child
        assert expected in metas["child"]


def test_either_order_gives_the_same_chain_of_wrappers(beside: Beside, redis_url: str) -> None:
    neighbour, out = beside
    first, second = (run(neighbour, order, redis_url) for order in ORDERS)
    assert first["chains"] == second["chains"] == out["chains"]
    for label in ("Queue.setup_dependencies", "Queue.schedule_job"):
        assert out["chains"][label][-2:] == ["rq-pipeline-fix", "rq"], label  # ours right on RQ's own


def test_revert_leaves_the_neighbour_working(beside: Beside) -> None:
    neighbour, out = beside
    assert not out["reverted"]["active"] and out["reverted"]["warnings"] == []
    for label, chain in out["chains"].items():
        assert out["chains_reverted"][label] == [layer for layer in chain if layer != "rq-pipeline-fix"]
    if neighbour != "sentry":  # sentry records producer-side only in job.meta (checked above)
        assert [job_id for _what, job_id, *_ in out["observed_after_revert"]] == ["after-revert"]


def test_the_neighbours_own_unpatch_leaves_the_guard_working(beside: Beside) -> None:
    _neighbour, out = beside
    assert out["status_after_unpatch"]["active"] and out["status_after_unpatch"]["unpatched"] == []
    facts = out["after_unpatch"]
    assert isinstance(facts, dict), facts
    assert [facts[job]["status"] for job in ("parent", "child", "many-child", "later")] == [
        "queued",
        "deferred",
        "deferred",
        "scheduled",
    ]
    for label in ("Queue.setup_dependencies", "Queue.schedule_job"):
        assert out["chains_after_unpatch"][label][-2:] == ["rq-pipeline-fix", "rq"], label


def test_opentelemetry_on_rq_3_stops_half_way_and_the_guard_works_beneath_what_it_left(
    redis_url: str,
) -> None:
    """opentelemetry-instrumentation-rq 0.1.4 declares rq >= 1.15, but on RQ 3.0 its instrument()
    raises after wrapping five methods (Job.execute_success_callback is gone): those stay on, and
    its uninstrument() does nothing, since it never counted as instrumented."""
    out = run("opentelemetry", "neighbour-first", redis_url)
    import rq

    if int(rq.__version__.split(".")[0]) < 3:
        assert out["instrument_raised"] is None
        pytest.skip("it instruments RQ 2.x fully")
    assert "execute_success_callback" in out["instrument_raised"]
    assert out["chains"]["Queue.setup_dependencies"][0].startswith("opentelemetry_instrumentation_rq")
    assert out["chains_after_unpatch"] == out["chains"]
    assert out["status"]["ok"]


def test_describe_names_a_replacement_by_its_own_code() -> None:
    @functools.wraps(Queue.enqueue_call)
    def enqueue_call(*args: Any, **kwargs: Any) -> Any:
        return None

    described = describe(enqueue_call)  # functools.wraps gave it RQ's __module__ and __qualname__
    assert described.startswith("tests.test_neighbours.") and described.endswith("enqueue_call")
