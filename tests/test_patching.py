"""apply/revert/status: identity, idempotence, threads, the kill switch and never breaking the host."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import wrapt
from rq import Queue

import rq_pipeline_fix
from rq_pipeline_fix import patcher
from tests.jobs import record


def current() -> Any:
    return Queue.__dict__["setup_dependencies"]


@pytest.fixture
def original() -> Iterator[Any]:
    """RQ's own function; whatever a test puts on the class, the original is back afterwards."""
    rq_pipeline_fix.revert()
    function = current()
    assert not isinstance(function, wrapt.ObjectProxy)
    yield function
    rq_pipeline_fix.revert()
    Queue.setup_dependencies = function
    rq_pipeline_fix.apply()


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
        timeout=60,
    )


def test_apply_wraps_the_original_and_revert_puts_back_the_same_object(original: Any) -> None:
    rq_pipeline_fix.apply()
    assert type(current()).__name__ == "_WrappedAtFirstUse"  # the wrapt wrapper is made at first use
    assert current().__wrapped__ is original
    rq_pipeline_fix.revert()
    assert current() is original


def test_the_first_use_puts_the_wrapt_wrapper_in_the_guards_place(original: Any) -> None:
    rq_pipeline_fix.apply()
    Queue.setup_dependencies  # noqa: B018  (a lookup, as every call makes)
    assert isinstance(current(), wrapt.FunctionWrapper)
    assert current().__wrapped__ is original
    assert rq_pipeline_fix.status().active
    rq_pipeline_fix.revert()
    assert current() is original


def test_apply_is_idempotent(original: Any) -> None:
    rq_pipeline_fix.apply()
    wrapper = current()
    rq_pipeline_fix.apply()
    assert current() is wrapper
    assert wrapper.__wrapped__ is original


def test_concurrent_apply_wraps_once(original: Any) -> None:
    start = threading.Barrier(16)

    def apply_together() -> None:
        start.wait()
        rq_pipeline_fix.apply()

    threads = [threading.Thread(target=apply_together) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert current().__wrapped__ is original


def test_revert_twice_is_harmless(original: Any) -> None:
    rq_pipeline_fix.revert()
    report = rq_pipeline_fix.revert()
    assert current() is original and not report.active


def test_revert_keeps_a_wrapper_added_on_top_of_ours(original: Any, connection: redis.Redis) -> None:
    calls = []

    def tracer(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        calls.append(1)
        return wrapped(*args, **kwargs)

    rq_pipeline_fix.apply()
    ours = current()
    Queue.setup_dependencies = wrapt.FunctionWrapper(ours, tracer)  # as a tracing library would
    report = rq_pipeline_fix.revert()
    assert current().__wrapped__ is original  # ours taken out from beneath theirs
    assert "which keep working" in report.note and not report.active
    pipe = connection.pipeline()
    Queue("default", connection=connection).enqueue_call(record, args=("a",), pipeline=pipe)
    pipe.execute()
    assert calls == [1] and Queue("default", connection=connection).count == 1


def test_unexpected_signature_leaves_rq_untouched_and_says_why(
    original: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def setup_dependencies(self: Any, job: Any, pipeline: Any = None, *, future_flag: bool = False) -> Any:
        return job

    Queue.setup_dependencies = setup_dependencies
    with pytest.warns(rq_pipeline_fix.RQPipelineFixWarning, match="future_flag"):
        report = rq_pipeline_fix.apply()
    assert current() is setup_dependencies and not report.active
    assert "future_flag" in report.note
    assert [r.name for r in caplog.records if "future_flag" in r.getMessage()] == ["rq_pipeline_fix"]


def test_probe_that_errors_means_no_patch(original: Any) -> None:
    def setup_dependencies(self: Any, job: Any, pipeline: Any = None) -> Any:
        self.connection.ping()  # the probe's offline connection refuses this
        return job

    Queue.setup_dependencies = setup_dependencies
    with pytest.warns(rq_pipeline_fix.RQPipelineFixWarning, match="not patched"):
        report = rq_pipeline_fix.apply()
    assert current() is setup_dependencies
    checked_by_setup_dependencies = [d for d in report.defects if d.id in ("D1", "D2", "D3")]
    assert all(d.detected is None and not d.patched for d in checked_by_setup_dependencies)


def test_import_does_not_import_rq_and_patches_when_rq_arrives() -> None:
    result = run_python(
        "import sys, rq_pipeline_fix; assert 'rq' not in sys.modules, 'rq imported early';"
        "import rq; from rq.queue import Queue;"
        "print(type(Queue.__dict__['setup_dependencies']).__name__, rq_pipeline_fix.status().active)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["_WrappedAtFirstUse", "True"]


def test_apply_before_rq_is_imported_wraps_once() -> None:
    result = run_python(
        "import rq_pipeline_fix; rq_pipeline_fix.apply(); from rq.queue import Queue;"
        "print(type(Queue.__dict__['setup_dependencies'].__wrapped__).__name__)"
    )
    assert result.stdout.split() == ["function"], result.stderr  # our hook fired inside apply()


def test_import_after_rq_patches_at_once() -> None:
    result = run_python(
        "import rq, rq_pipeline_fix; from rq.queue import Queue;"
        "print(type(Queue.__dict__['setup_dependencies']).__name__)"
    )
    assert result.stdout.split() == ["_WrappedAtFirstUse"], result.stderr


def test_wrapt_and_the_guards_are_loaded_at_the_first_use_of_a_guarded_method_not_at_rqs_import() -> None:
    loaded = "[m in sys.modules for m in ('wrapt', 'rq_pipeline_fix.guard', 'rq_pipeline_fix.probes')]"
    result = run_python(
        f"import sys, rq, rq_pipeline_fix; from rq.queue import Queue; print({loaded});"
        "Queue.setup_dependencies;"
        f"print({loaded}, type(Queue.__dict__['setup_dependencies']).__name__)"
    )
    assert result.stdout.splitlines() == [
        "[False, False, False]",
        "[True, True, False] FunctionWrapper",  # a probe runs at the first step-in that needs it
    ], result.stderr


def test_every_target_has_a_guard() -> None:
    from rq_pipeline_fix.guard import guard_for
    from rq_pipeline_fix.targets import TARGETS

    for target in TARGETS:
        guard = guard_for(target, frozenset(target.defects))
        assert guard.rq_pipeline_fix_guard is True and guard.target is target, target


def test_a_method_of_a_shape_we_cannot_guard_is_undecided_not_absent() -> None:
    # As after an RQ upgrade that renames enqueue_many's parameters: RQ has the method, so D6 is
    # not ruled out, but it can be neither probed nor guarded.
    result = run_python(
        "import json, rq.queue, rq_pipeline_fix\n"
        "def enqueue_many(self, datas, pipe=None): pass\n"
        "rq.queue.Queue.enqueue_many = enqueue_many\n"
        "report = rq_pipeline_fix.apply()\n"
        "(d6,) = [d for d in report.defects if d.id == 'D6']\n"
        "print(json.dumps([d6.detected, d6.patched, d6.reason, [d.id for d in report.unpatched]]))"
    )
    assert result.returncode == 0, result.stderr
    detected, patched, reason, unpatched = json.loads(result.stdout)
    assert detected is None and not patched and "D6" in unpatched
    assert reason.startswith("not probed: Queue.enqueue_many has parameters ['self', 'datas', 'pipe']")
    assert result.stderr.count("RQPipelineFixWarning: rq-pipeline-fix: D6 not patched") == 1


@pytest.mark.parametrize(
    ("value", "patched", "complaint"),
    [
        ("1", False, False),
        ("true", False, False),
        ("0", True, False),
        ("", True, False),
        ("maybe", False, True),
    ],
)
def test_kill_switch(value: str, patched: bool, complaint: bool) -> None:
    result = run_python(
        "import json, rq_pipeline_fix, rq; from rq.queue import Queue;"
        "print(json.dumps([type(Queue.__dict__['setup_dependencies']).__name__ == '_WrappedAtFirstUse',"
        " rq_pipeline_fix.status().note]))",
        RQ_PIPELINE_FIX_DISABLE=value,
    )
    assert result.returncode == 0, result.stderr
    wrapped, note = json.loads(result.stdout)
    assert wrapped is patched
    assert ("RQ_PIPELINE_FIX_DISABLE" in note) is not patched
    assert ("is not one of" in result.stderr) is complaint


def test_rq_missing_import_works_and_status_says_so() -> None:
    result = run_python(
        "import sys; sys.modules['rq'] = None;"  # makes `import rq` fail as if not installed
        "import rq_pipeline_fix; report = rq_pipeline_fix.apply(); print(report.active, '|', report.note)"
    )
    assert result.returncode == 0, result.stderr
    active, note = result.stdout.split("|")
    assert active.strip() == "False" and "rq cannot be imported" in note
    assert result.stderr.count("RQPipelineFixWarning") == 1


def test_status_is_a_typed_report_that_serialises() -> None:
    report = rq_pipeline_fix.status()
    data = json.loads(json.dumps(report.to_dict()))
    assert data["rq_version"] == report.rq_version and data["redis_version"] == report.redis_version
    assert {d["id"] for d in data["defects"]} >= {"D1", "D2", "D3"}
    fields = {"id", "title", "detected", "version_table", "patched", "reason", "stepped_in"}
    assert set(data["defects"][0]) == fields


def test_one_warning_per_reason(original: Any, recwarn: pytest.WarningsRecorder) -> None:
    patcher._warned.clear()
    Queue.setup_dependencies = 42
    rq_pipeline_fix.apply()
    rq_pipeline_fix.apply()
    assert len([w for w in recwarn if issubclass(w.category, rq_pipeline_fix.RQPipelineFixWarning)]) == 1


def test_apply_with_warnings_as_errors_and_an_odd_kill_switch_value_says_so_and_does_not_raise() -> None:
    result = run_python(
        "import rq_pipeline_fix; report = rq_pipeline_fix.apply(); print(report.active, '|', report.note)",
        RQ_PIPELINE_FIX_DISABLE="maybe",
        PYTHONWARNINGS="error",
    )
    assert result.returncode == 0, result.stderr
    active, note = result.stdout.split("|")
    assert active.strip() == "False" and "disabled by RQ_PIPELINE_FIX_DISABLE" in note
    assert "is not one of" in result.stderr  # the log record still says it


REVERT_UNDER_A_PROXY = """
import rq_pipeline_fix
from rq.queue import Queue

class Proxy:  # another library's proxy on top of ours, which revert() cannot take ours out of
    def __init__(self, wrapped):
        self.__wrapped__ = wrapped
    def __get__(self, instance, owner):
        return self.__wrapped__.__get__(instance, owner)

Queue.setup_dependencies = Proxy(Queue.__dict__["setup_dependencies"])
report = rq_pipeline_fix.revert()
print(report.active, rq_pipeline_fix.status().active, "|", report.note)
"""


def test_revert_under_a_wrapper_on_top_with_warnings_as_errors_switches_the_guards_off() -> None:
    result = run_python(REVERT_UNDER_A_PROXY, PYTHONWARNINGS="error")
    assert result.returncode == 0, result.stderr
    states, note = result.stdout.split("|")
    assert states.split() == ["False", "False"]
    assert "switched the guard off in place" in note


def test_kill_switch_set_after_the_guard_went_on_is_reported_as_such() -> None:
    result = run_python(
        "import os, rq_pipeline_fix, rq;"
        "os.environ['RQ_PIPELINE_FIX_DISABLE'] = '1';"
        "report = rq_pipeline_fix.apply(); print(report.active, '|', report.note)"
    )
    assert result.returncode == 0, result.stderr
    active, note = result.stdout.split("|")
    assert active.strip() == "True"
    assert "set after the guard went on" in note and "disabled by" not in note


MISSING_DEPENDENCY = """
import sys, warnings
sys.modules[{module!r}] = None  # as if the install had skipped it (pip install --no-deps)
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import rq_pipeline_fix, rq.queue
    report = rq_pipeline_fix.status()
    rq_pipeline_fix.apply()
print(report.active, "|", report.note)
print(type(rq.queue.Queue.__dict__["setup_dependencies"]).__name__)
print(sum("rq-pipeline-fix" in str(w.message) for w in caught))
"""


def test_a_dependency_missing_from_the_install_leaves_rq_untouched_and_says_why_once() -> None:
    shown = run_python(MISSING_DEPENDENCY.format(module="wrapt"))
    assert shown.returncode == 0, shown.stderr
    (active, note), kind, warned = shown.stdout.splitlines()[0].split(" | "), *shown.stdout.splitlines()[1:]
    assert active == "False" and note.startswith("left RQ untouched") and "wrapt" in note
    assert kind == "function" and warned == "1"  # RQ's own method; one warning, not one per try


AUTOSPEC_BEFORE_THE_FIRST_USE = """
from unittest import mock
import rq, rq_pipeline_fix
from rq.queue import Queue
queue = Queue.__new__(Queue)  # no connection needed: the method is mocked
with mock.patch.object(Queue, "setup_dependencies", autospec=True) as patched:
    queue.setup_dependencies("job", pipeline=None)
    patched.assert_called_once_with(queue, "job", pipeline=None)  # self recorded, as for a function
    try:
        queue.setup_dependencies("job", 1, 2, 3, bogus=1)
    except TypeError:
        print("signature enforced")
print(type(Queue.__dict__["setup_dependencies"]).__name__)
"""


def test_mock_autospec_before_the_first_use_sees_rqs_function() -> None:
    shown = run_python(AUTOSPEC_BEFORE_THE_FIRST_USE)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == ["signature enforced", "_WrappedAtFirstUse"]


WRAPT_BROKEN_AFTER_THE_GUARD_WENT_ON = """
import sys, warnings
import rq, rq_pipeline_fix
from rq.queue import Queue
sys.modules["wrapt"] = None  # found at rq's import, unimportable at the first use
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    method = Queue.setup_dependencies
print(type(Queue.__dict__["setup_dependencies"]).__name__, method is Queue.__dict__["setup_dependencies"])
print(sum("wrapt could not be imported at the guard's first use" in str(w.message) for w in caught))
# Every other guard would fail alike at its first use: they all stepped aside, and the report says so.
report = rq_pipeline_fix.status()
patched = [d.id for d in report.defects if d.patched]
print(type(Queue.__dict__["enqueue_many"]).__name__, report.active, patched)
print("Queue.enqueue_many: RQ's own method is back: wrapt could not be imported" in report.note)
"""


def test_wrapt_broken_at_the_first_use_leaves_rqs_own_method_and_says_why() -> None:
    shown = run_python(WRAPT_BROKEN_AFTER_THE_GUARD_WENT_ON)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == ["function True", "1", "function False []", "True"]


GUARD_MODULE_BROKEN_AFTER_THE_GUARD_WENT_ON = """
import sys, warnings
import redis, rq, rq_pipeline_fix
from rq import Queue
sys.modules["rq_pipeline_fix.guard"] = None  # loaded at the first use: unimportable by then
# (a partial upgrade, say): every enqueue works, as RQ's own, and both the warning and the
# report say why
connection = redis.Redis.from_url({url!r})
connection.delete("rq:queue:guard-broken")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with connection.pipeline() as pipe:
        Queue("guard-broken", connection=connection).enqueue("os.getpid", pipeline=pipe)
        pipe.execute()
print(type(Queue.__dict__["setup_dependencies"]).__name__, connection.llen("rq:queue:guard-broken"))
print(sum("the guard could not be made at its first use" in str(w.message) for w in caught))
report = rq_pipeline_fix.status()
print(report.active, [d.id for d in report.defects if d.patched], len(report.defects) > 0)
print("RQ's own method is back: the guard could not be made at its first use" in report.note)
"""


def test_guard_module_broken_at_the_first_use_leaves_rqs_own_method_and_says_why(redis_url: str) -> None:
    shown = run_python(GUARD_MODULE_BROKEN_AFTER_THE_GUARD_WENT_ON.format(url=redis_url))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == ["function 1", "1", "False [] True", "True"]


# A job's timeout (SIGALRM, raised wherever the job is) that strikes while the guard's first use
# imports what it needs: the job gets it, as without the package, and the guard stays for the
# next call (it was taken off for good, and the job ran on past its timeout).
TIMEOUT_AT_THE_FIRST_USE = """
import sys
import redis, rq, rq_pipeline_fix
from rq import Queue
from rq.job import Job
from rq.timeouts import JobTimeoutException

struck = []
def death_penalty(event, args):
    if event == "import" and args[0] == {module!r} and not struck:
        struck.append(1)
        raise JobTimeoutException("Task exceeded maximum timeout value")
sys.addaudithook(death_penalty)
connection = redis.Redis.from_url({url!r})
connection.delete("x", "rq:queue:high", "rq:queue:low")

def batch(parent, child):
    with connection.pipeline() as pipe:
        pipe.incr("x")
        Queue("high", connection=connection).enqueue_call("os.getpid", job_id=parent, pipeline=pipe)
        low = Queue("low", connection=connection)
        low.enqueue_call("os.getpid", job_id=child, depends_on=parent, pipeline=pipe)
        pipe.execute()

try:
    batch("p1", "c1")
    print("no timeout")
except JobTimeoutException:
    print("timeout", connection.get("x"), connection.llen("rq:queue:high"))
batch("p2", "c2")
child = Job.fetch("c2", connection=connection).get_status()
child = getattr(child, "value", child)  # RQ 1.x: a str
print(connection.get("x").decode(), connection.lrange("rq:queue:high", 0, -1), child)
print(rq_pipeline_fix.status().active)
"""


@pytest.mark.parametrize("module", ["wrapt", "rq_pipeline_fix.guard"])
def test_a_jobs_timeout_at_the_first_use_reaches_the_job_and_the_guard_stays(
    redis_url: str, module: str
) -> None:
    shown = run_python(TIMEOUT_AT_THE_FIRST_USE.format(url=redis_url, module=module))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == ["timeout None 0", "1 [b'p2'] deferred", "True"], shown.stderr


def test_status_and_apply_never_raise_even_when_the_report_cannot_be_built() -> None:
    shown = run_python(MISSING_DEPENDENCY.format(module="packaging"))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0].split(" | ")[0] in {"True", "False"}
