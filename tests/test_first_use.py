"""Probing at first use: no probe runs at rq's import; a guard's first step-in for a defect probes
it (the answer is then remembered), and status() probes whatever is still pending, so that it
reports what probing at rq's import reported.

Each test runs in a fresh interpreter, where nothing has been probed yet; the probes are counted
through ``probes.PROBES``, the table every probe is looked up in.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from packaging.version import Version
from rq.version import VERSION as INSTALLED_RQ

from tests.conftest import child_environment

COUNTING = """
import json, sys
import rq_pipeline_fix
from rq_pipeline_fix import detect, guard, patcher, probes

ran = []
for name, probe in list(probes.PROBES.items()):
    def counted(kit, name=name, probe=probe):
        ran.append(name)
        return probe(kit)
    probes.PROBES[name] = counted
{before_rq}
import redis
from rq import Queue

connection = redis.Redis.from_url(sys.argv[1])
connection.flushdb()
queue = Queue("first-use", connection=connection)
pending = sorted(f.defect.id for f in patcher._findings if detect.is_pending(f))
at_import = list(ran)
outcome = extra = None
try:
{body}
except Exception as exc:
    outcome = f"{{type(exc).__name__}}: {{exc}}"
at_use = list(ran)
report = rq_pipeline_fix.status()
print(json.dumps({{
    "extra": extra,
    "after_status": list(ran),
    "at_import": at_import,
    "pending": pending,
    "at_use": at_use,
    "outcome": outcome,
    "stepped_in": dict(guard.STEPPED_IN),
    "queued": [job_id.decode() for job_id in connection.lrange(queue.key, 0, -1)],
    "deferred": [job_id.decode() for job_id in connection.zrange("rq:deferred:first-use", 0, -1)],
    "status": {{k: v for k, v in report.to_dict().items()}},
}}))
"""


def run_child(redis_url: str, body: str = "pass", before_rq: str = "") -> dict[str, Any]:
    indented = "\n".join(f"    {line}" for line in body.strip().splitlines())
    code = COUNTING.format(body=indented, before_rq=before_rq)
    shown = subprocess.run(
        [sys.executable, "-c", code, redis_url],
        capture_output=True,
        text=True,
        env=child_environment(),
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    return dict(json.loads(shown.stdout.strip().splitlines()[-1]))


def without_counts(status: dict[str, Any]) -> dict[str, Any]:
    defects = [{k: v for k, v in d.items() if k != "stepped_in"} for d in status["defects"]]
    return {**status, "defects": defects}


TWO_ENQUEUES = """
pipe = connection.pipeline()
queue.enqueue_call("os.getpid", job_id="first", pipeline=pipe)
queue.enqueue_call("os.getpid", job_id="second", pipeline=pipe)
pipe.execute()
"""

DEPENDENT_INTO_MULTI = """
queue.enqueue_call("os.getpid", job_id="parent")
pipe = connection.pipeline()
pipe.multi()
queue.enqueue_call("os.getpid", job_id="child", depends_on="parent", pipeline=pipe)
pipe.execute()
"""


def test_import_of_rq_runs_no_probe_and_status_probes_every_defect(redis_url: str) -> None:
    shown = run_child(redis_url)
    assert shown["at_import"] == [] and shown["at_use"] == []
    assert "D2" in shown["pending"] and "D3" in shown["pending"]
    assert all(defect["detected"] is not None for defect in shown["status"]["defects"])


def test_first_step_in_probes_its_defect_and_two_enqueues_into_one_pipeline_land(redis_url: str) -> None:
    shown = run_child(redis_url, TWO_ENQUEUES)
    assert shown["outcome"] is None and shown["queued"] == ["first", "second"]
    if Version(INSTALLED_RQ) < Version("2.3.0"):  # D1: RQ's second multi() would fail
        assert shown["at_use"] == ["D1"] and shown["stepped_in"] == {"D1": 1}
    else:  # RQ is right here: no guard steps in, nothing is probed
        assert shown["at_use"] == [] and shown["stepped_in"] == {}


def test_first_dependent_job_into_a_multi_pipeline_probes_d3_and_is_deferred(redis_url: str) -> None:
    shown = run_child(redis_url, DEPENDENT_INTO_MULTI)
    assert shown["outcome"] is None
    assert shown["at_use"] == ["D3"] and shown["stepped_in"] == {"D3": 1}
    assert shown["queued"] == ["parent"] and shown["deferred"] == ["child"]


def test_a_defect_the_first_use_probe_finds_absent_leaves_rqs_own_code_running(redis_url: str) -> None:
    rq_correct = "probes.PROBES['D3'] = lambda kit: ran.append('D3') or False"
    shown = run_child(redis_url, DEPENDENT_INTO_MULTI, before_rq=rq_correct)
    assert shown["at_use"] == ["D3"] and shown["stepped_in"] == {}
    assert "Cannot issue a WATCH after a MULTI" in str(shown["outcome"])  # RQ's own error
    d3 = next(d for d in shown["status"]["defects"] if d["id"] == "D3")
    assert d3["detected"] is False and not d3["patched"]


def test_a_first_use_probe_that_fails_leaves_rqs_own_code_running_and_says_why(redis_url: str) -> None:
    broken = (
        "def broken(kit):\n"
        "    ran.append('D3')\n"
        "    raise RuntimeError('probe broken on purpose')\n"
        "probes.PROBES['D3'] = broken"
    )
    shown = run_child(redis_url, DEPENDENT_INTO_MULTI, before_rq=broken)
    assert shown["at_use"] == ["D3"] and shown["stepped_in"] == {}
    assert "Cannot issue a WATCH after a MULTI" in str(shown["outcome"])  # not our exception
    d3 = next(d for d in shown["status"]["defects"] if d["id"] == "D3")
    assert d3["detected"] is None and "probe broken on purpose" in d3["reason"]
    assert shown["after_status"].count("D3") == 1  # probed once, not again by status()


def test_status_reports_what_probing_every_defect_at_import_reported(redis_url: str) -> None:
    eager = (
        "from rq_pipeline_fix.detect import detect as probe_all\n"
        "findings = probe_all(patcher._bound, patcher._version('rq'), now=True)\n"
        "extra = {f.defect.id: [f.probe, f.reason] for f in findings}"
    )
    shown = run_child(redis_url, eager)
    assert shown["outcome"] is None
    reported = {d["id"]: d for d in shown["status"]["defects"]}
    assert {i: [d["detected"], d["reason"]] for i, d in reported.items()} == shown["extra"]
    for defect in reported.values():
        assert defect["patched"] is bool(defect["detected"]), defect  # this RQ's guards fix all it has
    guarded = {d["id"] for d in reported.values() if d["detected"]}
    for part in shown["status"]["note"].split("; "):
        assert part.startswith("guard on ") and set(part.split(" for ")[1].split(", ")) <= guarded, part
    # after first uses, the same report (bar the counts)
    used = run_child(redis_url, TWO_ENQUEUES + DEPENDENT_INTO_MULTI.replace('"parent"', '"p2"'))
    assert used["outcome"] is None
    assert without_counts(used["status"]) == without_counts(shown["status"])


@pytest.mark.skipif(Version(INSTALLED_RQ) < Version("1.14"), reason="D12: enqueue_job is guarded there")
def test_on_a_release_newer_than_measured_enqueue_job_is_probed_at_import_and_left_alone(
    redis_url: str,
) -> None:
    shown = run_child(redis_url, before_rq="detect.LAST_MEASURED_RQ = '0.1'")
    assert shown["at_import"] == ["D12"]
    assert "Queue.enqueue_job" not in shown["status"]["note"]


@pytest.mark.parametrize(
    "version", ["1.9.0", "1.13.0", "1.15.0", "2.2.0", "2.3.0", "3.0.0", "99.0", "2.3.0rc1"]
)
def test_the_version_table_read_at_import_agrees_with_the_one_reports_read(version: str) -> None:
    from rq_pipeline_fix.detect import DEFECTS, table_expects
    from rq_pipeline_fix.versions import TableVerdict, table_verdict

    for defect in DEFECTS:
        expected = table_expects(defect, version)
        verdict = table_verdict(defect.affected, version)
        if expected is None:  # unknown, or not a plain release: a guard goes on, the probe decides
            assert verdict is TableVerdict.UNKNOWN or not version.replace(".", "").isdigit()
        else:
            assert verdict is (TableVerdict.AFFECTED if expected else TableVerdict.UNAFFECTED)


TWO_THREADS_AT_ONCE = """
import threading
queue.enqueue_call("os.getpid", job_id="parent")
barrier = threading.Barrier(2)
errors = []

def dependent_into_multi(job_id):
    pipe = connection.pipeline()
    pipe.multi()
    barrier.wait()
    try:
        queue.enqueue_call("os.getpid", job_id=job_id, depends_on="parent", pipeline=pipe)
        pipe.execute()
    except Exception as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=dependent_into_multi, args=(name,)) for name in ("a", "b")]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
extra = errors
"""


def test_two_threads_first_using_one_defect_at_once_probe_it_once_and_both_are_fixed(redis_url: str) -> None:
    shown = run_child(redis_url, TWO_THREADS_AT_ONCE)
    assert shown["outcome"] is None and shown["extra"] == []
    assert shown["at_use"] == ["D3"] and shown["stepped_in"] == {"D3": 2}
    assert sorted(shown["deferred"]) == ["a", "b"]


def test_a_jobs_timeout_striking_during_the_first_use_probe_reaches_the_job_and_the_fix_stays(
    redis_url: str,
) -> None:
    """RQ raises a job's timeout from SIGALRM wherever the job is: here, inside the probe run at its
    first dependent enqueue. The timeout is the job's; the defect stays to be probed at the next."""
    strikes_once = (
        "from rq.timeouts import JobTimeoutException\n"
        "real_d3 = probes.PROBES['D3']\n"
        "def strikes(kit):\n"
        "    if not extra_state:\n"
        "        extra_state.append(1)\n"
        "        raise JobTimeoutException('Task exceeded maximum timeout value (1 seconds)')\n"
        "    return real_d3(kit)\n"
        "extra_state = []\n"
        "probes.PROBES['D3'] = strikes"
    )
    code = f"""
try:
{chr(10).join("    " + line for line in DEPENDENT_INTO_MULTI.strip().splitlines())}
except JobTimeoutException as exc:
    extra = repr(exc)
pipe = connection.pipeline()
pipe.multi()
queue.enqueue_call("os.getpid", job_id="child2", depends_on="parent", pipeline=pipe)
pipe.execute()
"""
    shown = run_child(redis_url, code, before_rq=strikes_once)
    assert shown["extra"] is not None and "JobTimeoutException" in shown["extra"]  # not swallowed
    assert shown["outcome"] is None  # the next dependent enqueue probed D3 and was fixed
    assert shown["deferred"] == ["child2"] and shown["stepped_in"] == {"D3": 1}


def test_a_jobs_timeout_striking_during_rqs_dependency_check_reaches_the_job(redis_url: str) -> None:
    """The same for the guard's question to RQ's own dependency check (deps._ask_rq), asked at a
    dependent's enqueue into a batch: the timeout is the job's, and no answer is remembered."""
    strikes_once = (
        "from rq.timeouts import JobTimeoutException\n"
        "import rq_pipeline_fix.deps as deps\n"
        "real_check = deps._run_rq_check\n"
        "def strikes(*args):\n"
        "    if not extra_state:\n"
        "        extra_state.append(1)\n"
        "        raise JobTimeoutException('Task exceeded maximum timeout value (1 seconds)')\n"
        "    return real_check(*args)\n"
        "extra_state = []\n"
        "deps._run_rq_check = strikes"
    )
    batch = """
pipe = connection.pipeline()
pipe.incr("x")
queue.enqueue_call("os.getpid", job_id="{parent}", pipeline=pipe)
queue.enqueue_call("os.getpid", job_id="{child}", depends_on="{parent}", pipeline=pipe)
pipe.execute()
"""
    code = f"""
try:
{chr(10).join("    " + line for line in batch.format(parent="p1", child="c1").strip().splitlines())}
except JobTimeoutException as exc:
    extra = [repr(exc), connection.get("x")]
{batch.format(parent="p2", child="c2")}
"""
    shown = run_child(redis_url, code, before_rq=strikes_once)
    assert shown["extra"] is not None and "JobTimeoutException" in shown["extra"][0]  # not swallowed
    assert shown["extra"][1] is None  # and nothing of that batch was written
    assert shown["outcome"] is None and shown["queued"] == ["p2"] and shown["deferred"] == ["c2"]


def test_a_first_use_while_rq_is_being_imported_elsewhere_is_not_remembered(redis_url: str) -> None:
    """The probe cannot run while another thread imports an rq module: that call steps in unless
    the version table rules the defect out, and the next call probes."""
    # Set after rq's import: an import under way at the first use only, and a release the version
    # table cannot tell about (where an answer taken from it would be "absent").
    once = (
        "detect.LAST_MEASURED_RQ = '1.0.0'\n"
        "patcher._rq_import_under_way = lambda firing, calls=[]: calls.append(1) or len(calls) == 1\n"
    )
    second = DEPENDENT_INTO_MULTI.replace('"child"', '"child2"').split("\n", 2)[2]  # without the parent
    shown = run_child(redis_url, once + DEPENDENT_INTO_MULTI + second)
    assert shown["outcome"] is None and shown["deferred"] == ["child", "child2"]
    assert shown["at_use"] == ["D3"]  # not at the first call, but at the second
    assert shown["stepped_in"] == {"D3": 2}
    d3 = next(d for d in shown["status"]["defects"] if d["id"] == "D3")
    assert d3["detected"] is True and d3["patched"]
