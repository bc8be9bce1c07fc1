"""The guard's lifecycle beyond tests/test_patching.py: apply() and revert() racing in threads,
apply() racing the first ``import rq``, every way of arming it in one process (import, pytest
plugin, sitecustomize bootstrap) adding one layer, fork() (by hand and by RQ's work horse),
revert() on every target, and wrappers that tracing tools put on top of ours."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
import os
import random
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import wrapt
from rq import Queue
from rq.job import Job, JobStatus

import rq_pipeline_fix
from rq_pipeline_fix.runner import BOOTSTRAP_DIR
from rq_pipeline_fix.targets import TARGETS
from tests.conftest import child_environment, console_script
from tests.jobs import record

pytestmark = pytest.mark.reliability

REPOSITORY = str(Path(__file__).resolve().parent.parent)
TIMEOUT = 120  # seconds: a safety bound on subprocesses, never asserted on
# The base of every wrapt proxy: FunctionWrapper is not a wrapt.ObjectProxy in wrapt 2.
PROXY: type = getattr(wrapt, "BaseObjectProxy", wrapt.ObjectProxy)


def is_ours(layer: object) -> bool:
    wrapper = getattr(layer, "_self_wrapper", None)
    return str(getattr(wrapper, "__module__", "")).startswith("rq_pipeline_fix")


def is_layer(obj: object) -> bool:
    """A wrapt proxy, or a guard of ours not used yet (it becomes a wrapt wrapper at first use)."""
    return isinstance(obj, PROXY) or is_ours(obj)


def is_enabled(layer: object) -> bool:
    """Our wrapper's own off switch (``revert()`` turns it off when it cannot unwrap)."""
    wrapper: Any = getattr(layer, "_self_wrapper", None)
    return bool(wrapper.enabled)


def target_owner(target: Any) -> Any:
    """The class (or module, for a module-level function) a target of RQ's lives in; None where
    this RQ has none (rq.dependency before 1.15), for a late target whose module nobody imported,
    and for django-rq's (whether a process imported django_rq is not what these tests compare)."""
    if (target.late and target.module not in sys.modules) or not target.module.startswith("rq."):
        return None
    try:
        module = importlib.import_module(target.module)
    except ImportError:
        return None
    return getattr(module, target.owner, None) if target.owner else module


def guard_layers() -> dict[str, list[bool]]:
    """For each target this RQ has: our wrapper layers from the outside in, enabled or not."""
    found: dict[str, list[bool]] = {}
    for target in TARGETS:
        owner = target_owner(target)
        if owner is None or target.name not in owner.__dict__:
            continue
        layer, layers = owner.__dict__[target.name], []
        while is_layer(layer):
            if is_ours(layer):
                layers.append(is_enabled(layer))
            layer = getattr(layer, "__wrapped__", None)
        found[target.label] = layers
    return found


def innermost(attribute: object) -> object:
    while is_layer(attribute):
        attribute = getattr(attribute, "__wrapped__", None)
    return attribute


def run_python(code: str, *argv: str, **environment: str | None) -> subprocess.CompletedProcess[str]:
    env = child_environment(**{"PYTHONPATH": REPOSITORY, **environment})
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=REPOSITORY,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


@pytest.fixture
def originals() -> Iterator[dict[str, tuple[type, object]]]:
    """RQ's own attributes for every target, found with the guard off; put back afterwards
    whatever a test left on the classes, and the guard re-applied."""
    rq_pipeline_fix.revert()
    found = {}
    for target in TARGETS:
        owner = target_owner(target)
        if owner is not None and target.name in owner.__dict__:
            found[target.label] = (owner, owner.__dict__[target.name])
    assert not any(is_layer(attribute) for _, attribute in found.values())
    yield found
    rq_pipeline_fix.revert()
    for label, (owner, attribute) in found.items():
        setattr(owner, label.rpartition(".")[2], attribute)
    rq_pipeline_fix.apply()


@pytest.fixture
def expected_layers() -> dict[str, list[bool]]:
    """What one apply() gives with this RQ: the reference for processes that arm it many ways."""
    rq_pipeline_fix.apply()
    layers = guard_layers()
    assert layers["Queue.setup_dependencies"] == [True]
    assert all(found in ([], [True]) for found in layers.values())
    return layers


# --- threads ------------------------------------------------------------------------------------


def test_apply_and_revert_racing_in_threads_leave_one_guard_or_the_originals(
    originals: dict[str, tuple[type, object]], expected_layers: dict[str, list[bool]]
) -> None:
    start = threading.Barrier(16)
    errors: list[BaseException] = []

    def churn(seed: int) -> None:
        rng = random.Random(seed)
        start.wait()
        try:
            for _ in range(25):
                rng.choice([rq_pipeline_fix.apply, rq_pipeline_fix.revert])()
        except BaseException as exc:  # apply/revert must never raise
            errors.append(exc)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rq_pipeline_fix.RQPipelineFixWarning)
        threads = [threading.Thread(target=churn, args=(seed,)) for seed in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
    assert errors == []
    if rq_pipeline_fix.status().active:
        assert guard_layers() == expected_layers
    else:
        assert all(
            owner.__dict__[label.rpartition(".")[2]] is attribute
            for label, (owner, attribute) in originals.items()
        )
    for label, (owner, attribute) in originals.items():
        assert innermost(owner.__dict__[label.rpartition(".")[2]]) is attribute
    rq_pipeline_fix.revert()
    assert all(
        owner.__dict__[label.rpartition(".")[2]] is attribute
        for label, (owner, attribute) in originals.items()
    )
    rq_pipeline_fix.apply()
    assert guard_layers() == expected_layers


def test_first_uses_in_many_threads_at_once_leave_one_wrapt_guard_and_every_batch_whole(
    originals: dict[str, tuple[type, object]], connection: redis.Redis
) -> None:
    rq_pipeline_fix.apply()
    assert type(Queue.__dict__["setup_dependencies"]).__name__ == "_WrappedAtFirstUse"
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def enqueue_a_batch(index: int) -> None:  # needs the guard on every RQ: a command before the enqueues
        start.wait()
        try:
            with connection.pipeline() as pipe:
                pipe.incr("batches")
                Queue("high", connection=connection).enqueue_call(record, job_id=f"a{index}", pipeline=pipe)
                Queue("low", connection=connection).enqueue_call(
                    record, job_id=f"b{index}", depends_on=f"a{index}", pipeline=pipe
                )
                pipe.execute()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=enqueue_a_batch, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert errors == []
    assert int(connection.get("batches") or 0) == 8 and connection.llen("rq:queue:high") == 8
    assert connection.llen("rq:queue:low") == 0
    assert {Job.fetch(f"b{i}", connection=connection).get_status() for i in range(8)} == {JobStatus.DEFERRED}
    wrapper = Queue.__dict__["setup_dependencies"]
    assert isinstance(wrapper, wrapt.FunctionWrapper)
    assert wrapper.__wrapped__ is originals["Queue.setup_dependencies"][1]


def test_revert_around_a_first_use_in_another_thread_leaves_rqs_own_method(
    originals: dict[str, tuple[type, object]],
) -> None:
    """Whichever comes first, the first use (the wrapt wrapper takes the guard's place) or
    revert(), RQ's own method is what is left. (The narrowest overlap, between the first use's
    check that the guard is still there and its write, is closed by a lock that this test does
    not reliably reach.)"""
    owner, original = originals["Queue.setup_dependencies"]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch as often as they can: the two meet mid-way
    try:
        for _ in range(200):
            rq_pipeline_fix.apply()
            start = threading.Barrier(2)

            def first_use(start: threading.Barrier = start) -> None:
                start.wait()
                Queue.setup_dependencies  # noqa: B018  (a lookup, as every call makes)

            user = threading.Thread(target=first_use)
            user.start()
            start.wait()
            rq_pipeline_fix.revert()
            user.join(TIMEOUT)
            assert owner.__dict__["setup_dependencies"] is original
    finally:
        sys.setswitchinterval(interval)


# A post-import hook of the test's own, registered before rq_pipeline_fix's so that it runs first
# inside rq.queue's import: it holds that import (and its module lock) until apply() has started
# in another thread. Then the import goes on into rq_pipeline_fix's hook, which calls apply().
RACE_FIRST_IMPORT = """
import faulthandler, importlib.abc, json, sys, threading, time

class HoldImport(importlib.abc.MetaPathFinder):
    def __init__(self):
        self.holding, self.release = threading.Event(), threading.Event()

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "rq.queue":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        real, hold = spec.loader, self

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return real.create_module(spec)

            def exec_module(self, module):
                real.exec_module(module)
                hold.holding.set()
                hold.release.wait(10)

        spec.loader = Loader()
        return spec

import importlib.util
hold = HoldImport()
sys.meta_path.insert(0, hold)
import rq_pipeline_fix  # its hook goes first on sys.meta_path: it runs after ours, on the way out
from rq_pipeline_fix import patcher

importer = threading.Thread(target=importlib.import_module, args=("rq.queue",), daemon=True)
importer.start()
hold.holding.wait(10)
applier = threading.Thread(target=rq_pipeline_fix.apply, daemon=True)
applier.start()
deadline = time.monotonic() + 2  # until apply() holds its lock, if it takes it before importing
while time.monotonic() < deadline:
    if not patcher._lock.acquire(blocking=False):
        break
    patcher._lock.release()
    time.sleep(0.001)
hold.release.set()
deadline = time.monotonic() + 10  # a safety bound: both finish in well under a second
importer.join(max(0, deadline - time.monotonic()))
applier.join(max(0, deadline - time.monotonic()))
if importer.is_alive() or applier.is_alive():
    faulthandler.dump_traceback(all_threads=True)
    print("DEADLOCK", flush=True)
    import os
    os._exit(3)
from tests.test_lifecycle import guard_layers
print(json.dumps(guard_layers()))
"""


def test_apply_racing_the_first_import_of_rq_wraps_once_without_deadlock(
    expected_layers: dict[str, list[bool]],
) -> None:
    """apply() in one thread while another runs the first ``import rq``: the import holds
    rq.queue's module lock and its hook calls apply(); apply() must not hold its own lock while
    waiting for that import (it did: an ABBA deadlock, fixed by importing rq.queue first)."""
    shown = run_python(RACE_FIRST_IMPORT)
    assert "DEADLOCK" not in shown.stdout, shown.stderr[-3000:]
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == expected_layers


# --- one process, every way of arming the guard ----------------------------------------------------


ARM_EVERY_WAY = """
import json, sys
assert type(sys.modules["sitecustomize"]).__name__ == "module"
assert sys.modules["sitecustomize"].__file__.startswith(sys.argv[1]), "the bootstrap did not run"
assert "rq" not in sys.modules
import rq_pipeline_fix
import rq_pipeline_fix.pytest_plugin
import rq
from rq.queue import Queue
rq_pipeline_fix.apply()
from tests.test_lifecycle import guard_layers
print(json.dumps(guard_layers()))
"""


def test_import_plugin_and_sitecustomize_in_one_process_wrap_once(
    expected_layers: dict[str, list[bool]],
) -> None:
    pythonpath = os.pathsep.join([BOOTSTRAP_DIR, REPOSITORY])
    shown = run_python(ARM_EVERY_WAY, BOOTSTRAP_DIR, PYTHONPATH=pythonpath)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == expected_layers


# --- fork ---------------------------------------------------------------------------------------


FORK = """
import os, sys, traceback
import redis, rq_pipeline_fix
from rq import Queue
from tests.jobs import record

client = redis.Redis.from_url(sys.argv[1])
parents_batch = client.pipeline()  # the parent's own batch, WATCHing through the guard across the fork
parents_batch.incr("parent-side")
Queue("high", connection=client).enqueue_call(record, job_id="parent-side-child", depends_on="existing",
                                              pipeline=parents_batch)
assert parents_batch.watching

def child_batch():
    with client.pipeline() as pipe:  # the same client: redis-py's pool starts afresh after fork
        pipe.incr("child-side")
        Queue("high", connection=client).enqueue_call(record, job_id="child-high", pipeline=pipe)
        Queue("low", connection=client).enqueue_call(record, job_id="child-low", depends_on="child-high",
                                                     pipeline=pipe)
        pipe.execute()

pid = os.fork()
if pid == 0:
    try:
        child_batch()
        code = 0
    except BaseException:
        traceback.print_exc()
        code = 1
    os._exit(code)
_, status = os.waitpid(pid, 0)
parents_batch.execute()
sys.exit(os.waitstatus_to_exitcode(status))
"""


# A fork while another thread is inside its first batch, importing what a first use imports (held
# there by a finder of the test's): the child must not inherit that module's import lock from a
# thread it does not have.
FORK_DURING_A_FIRST_USE = """
import os, sys, threading, time
import redis, rq, rq_pipeline_fix
from rq.queue import Queue
from tests.jobs import record

entered = threading.Event()

class SlowImport:  # ahead of every finder: holds the other thread's import for a second
    def find_spec(self, name, path=None, target=None):
        if name == sys.argv[2] and threading.current_thread() is not threading.main_thread():
            entered.set()
            time.sleep(1.0)
        return None

sys.meta_path.insert(0, SlowImport())
def batch(job_id, dependent_id):  # a first batch that needs the guard, as in the child
    connection = redis.Redis.from_url(sys.argv[1])
    with connection.pipeline() as pipe:
        pipe.incr("batches")
        Queue("high", connection=connection).enqueue_call(record, job_id=job_id, pipeline=pipe)
        low = Queue("low", connection=connection)
        low.enqueue_call(record, job_id=dependent_id, depends_on=job_id, pipeline=pipe)
        pipe.execute()

user = threading.Thread(target=batch, args=("p", "q"))
user.start()
assert entered.wait(30)
pid = os.fork()
if pid == 0:  # the child's first enqueue
    batch("a", "b")
    os._exit(0)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("exit", os.waitstatus_to_exitcode(status))
        break
    time.sleep(0.05)
else:
    os.kill(pid, 9)
    print("hung")
user.join()
"""


# The fork waits for that import (the fork hook imports the module too), and then for our lock,
# which the other thread needs next (its first step-in probes under it), so it forks while that
# thread waits. Not the probes' import, nor deps': that thread holds our lock across the first
# and never needs it after the second, so it runs on into RQ code that imports as it goes
# (socket.getaddrinfo's encodings.idna, datetime.strptime), and a fork at that instant leaves the
# child that import's lock whatever we do: a hazard of RQ's and Python's, not ours.
@pytest.mark.parametrize("held", ["wrapt", "rq_pipeline_fix.guard"])
def test_fork_during_another_threads_first_use_leaves_the_child_a_working_guard(
    connection: redis.Redis, redis_url: str, held: str
) -> None:
    shown = run_python(FORK_DURING_A_FIRST_USE, redis_url, held)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["exit", "0"], shown.stderr
    assert int(connection.get("batches") or 0) == 2
    assert sorted(Queue("high", connection=connection).job_ids) == ["a", "p"]
    for dependent in ("b", "q"):
        assert Job.fetch(dependent, connection=connection).get_status() == JobStatus.DEFERRED


def test_forked_child_enqueues_a_batch_that_needs_the_guard(connection: redis.Redis, redis_url: str) -> None:
    """The child inherits the patched classes and our module state; the parent's batch, WATCHing
    through the guard when it forked, still lands after the child's."""
    Queue("parents", connection=connection).enqueue_call(record, job_id="existing")
    shown = run_python(FORK, redis_url)
    assert shown.returncode == 0, shown.stderr
    assert connection.get("child-side") == b"1" and connection.get("parent-side") == b"1"
    high = Queue("high", connection=connection)
    assert high.job_ids == ["child-high"]
    assert Job.fetch("child-low", connection=connection).get_status() == JobStatus.DEFERRED
    assert Job.fetch("parent-side-child", connection=connection).get_status() == JobStatus.DEFERRED


FORKS_DURING_APPLY_AND_REVERT = """
import json, os, signal, sys, threading
import rq, rq_pipeline_fix
from tests.test_lifecycle import guard_layers

expected = json.loads(sys.argv[1])
stop = threading.Event()

def churn():  # another thread forever inside apply() or revert() at the moments of the forks
    while not stop.is_set():
        rq_pipeline_fix.revert()
        rq_pipeline_fix.apply()

threading.Thread(target=churn, daemon=True).start()
torn = 0
for _ in range(int(sys.argv[2])):
    pid = os.fork()
    if pid == 0:
        signal.alarm(20)  # a safety bound: a child stuck on an inherited lock is killed
        report = rq_pipeline_fix.apply()
        os._exit(0 if report.active and guard_layers() == expected else 1)
    _, status = os.waitpid(pid, 0)
    torn += os.waitstatus_to_exitcode(status) != 0
stop.set()
print(torn)
"""
FORKS = 200  # 5-10 % of them were torn (34 of 400 measured) before fork() waited for the lock


@pytest.mark.skipif(
    importlib.metadata.version("rq").startswith("1.9."),
    reason="open: on RQ 1.9 (CI's Python 3.9 cell) about 1 child in 200 still comes out torn; "
    "cause not found yet (0 in 1,800 forks outside pytest)",
)
def test_forks_while_another_thread_applies_and_reverts_leave_every_child_a_whole_guard(
    expected_layers: dict[str, list[bool]],
) -> None:
    shown = run_python(FORKS_DURING_APPLY_AND_REVERT, json.dumps(expected_layers), str(FORKS))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["0"]


def test_work_horse_forked_by_rq_worker_enqueues_a_dependent_batch(
    connection: redis.Redis, redis_url: str
) -> None:
    """A real forking ``rq worker``: the job runs in the work horse (a fork of the worker) and
    enqueues, after a command of its own, a child and a grandchild that depends on it."""
    job = Queue("parents", connection=connection).enqueue_call(
        "tests.workload.enqueue_chain_after_a_command", args=(["high", "low"],)
    )
    worker = subprocess.Popen(
        [
            console_script("rq-pipeline-fix-run"),
            "rq",
            "worker",
            "--burst",
            "--url",
            redis_url,
            "parents",
            "high",
            "low",
        ],
        cwd=REPOSITORY,
        env=child_environment(PYTHONPATH=REPOSITORY),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = worker.communicate(timeout=TIMEOUT)
    assert worker.returncode == 0, output
    job = Job.fetch(job.id, connection=connection)
    assert job.get_status() == JobStatus.FINISHED, output
    horse = connection.hgetall("work-horse")
    assert int(horse[b"ppid"]) == worker.pid != int(horse[b"pid"])  # ran in a fork of the worker
    assert connection.get("chains") == b"1"
    assert connection.lrange("executed", 0, -1) == [b"chain-high", b"chain-low"]


# --- revert and other wrappers ------------------------------------------------------------------


def test_revert_puts_back_every_original_object(originals: dict[str, tuple[type, object]]) -> None:
    report = rq_pipeline_fix.apply()
    assert report.active
    wrapped = {label for label, layers in guard_layers().items() if layers}
    assert "Queue.setup_dependencies" in wrapped
    for label in wrapped:
        owner, attribute = originals[label]
        assert owner.__dict__[label.rpartition(".")[2]].__wrapped__ is attribute
    rq_pipeline_fix.revert()
    for label, (owner, attribute) in originals.items():
        assert owner.__dict__[label.rpartition(".")[2]] is attribute, label


def tracer_on_top(owner: type, name: str, calls: list[str]) -> None:
    """What sentry-sdk, ddtrace or OpenTelemetry do: a wrapt wrapper over whatever is there."""

    def tracer(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        calls.append(name)
        return wrapped(*args, **kwargs)

    wrapt.wrap_function_wrapper(owner, name, tracer)


def test_revert_under_tracers_on_every_target_keeps_them_working_and_says_so(
    originals: dict[str, tuple[type, object]], connection: redis.Redis
) -> None:
    rq_pipeline_fix.apply()
    wrapped = [label for label, layers in guard_layers().items() if layers]
    calls: list[str] = []
    for label in wrapped:
        tracer_on_top(originals[label][0], label.rpartition(".")[2], calls)
    with warnings.catch_warnings():
        warnings.simplefilter("error", rq_pipeline_fix.RQPipelineFixWarning)  # nothing to complain of
        report = rq_pipeline_fix.revert()
    assert not report.active
    for label in wrapped:
        assert label in report.note and "keep working" in report.note
        assert guard_layers()[label] == []  # ours taken out from beneath theirs
        owner, attribute = originals[label]
        assert owner.__dict__[label.rpartition(".")[2]].__wrapped__ is attribute
    q = Queue("default", connection=connection)
    parent = q.enqueue(record, "parent")  # no shared pipeline: RQ's own behaviour, through their wrapper
    if "depends_on" in inspect.signature(Queue.prepare_data).parameters:
        q.enqueue_many([Queue.prepare_data(record, args=("child",), job_id="child", depends_on=parent)])
    else:  # RQ < 1.15
        q.enqueue_call(record, args=("child",), job_id="child", depends_on=parent)
    assert (
        "setup_dependencies" in calls and Job.fetch("child", connection=connection).get_status() == "deferred"
    )


def test_apply_after_such_a_revert_guards_again_under_the_tracer(
    originals: dict[str, tuple[type, object]], connection: redis.Redis
) -> None:
    rq_pipeline_fix.apply()
    calls: list[str] = []
    tracer_on_top(Queue, "setup_dependencies", calls)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rq_pipeline_fix.RQPipelineFixWarning)
        rq_pipeline_fix.revert()
    assert rq_pipeline_fix.apply().active
    assert guard_layers()["Queue.setup_dependencies"].count(True) == 1  # one guard at work, not two
    with connection.pipeline() as pipe:  # needs the guard on every RQ: a command before the enqueues
        pipe.incr("counter")
        Queue("high", connection=connection).enqueue_call(record, job_id="a", pipeline=pipe)
        Queue("low", connection=connection).enqueue_call(record, job_id="b", depends_on="a", pipeline=pipe)
        pipe.execute()
    assert Queue("high", connection=connection).job_ids == ["a"]
    assert Job.fetch("b", connection=connection).get_status() == JobStatus.DEFERRED
    # Ours went beneath theirs: theirs sees every call, the two the guard answers itself included.
    Queue("default", connection=connection).enqueue(record, "no-pipeline")
    assert calls == ["setup_dependencies"] * 3
