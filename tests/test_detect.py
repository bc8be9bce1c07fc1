"""The behaviour probes and the version table, on stand-ins for RQ's method and on the real one."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import pytest
import wrapt
from packaging.version import Version
from rq.queue import Queue

import rq_pipeline_fix
from rq_pipeline_fix import detect
from rq_pipeline_fix.detect import check_shape
from rq_pipeline_fix.versions import TableVerdict, table_verdict

D1, D2, D3 = (detect.DEFECTS_BY_ID[defect_id] for defect_id in ("D1", "D2", "D3"))
INSTALLED_RQ = metadata.version("rq")


# Stand-ins for Queue.setup_dependencies as successive RQ releases wrote it (reduced to what
# touches the caller's pipeline).
def like_rq_1_9(self: Any, job: Any, pipeline: Any = None) -> Any:
    if job._dependency_ids:
        pipeline.watch(job.dependencies_key)
        pipeline.multi()
    elif pipeline is not None:
        pipeline.multi()
    return job


def like_rq_2_3(self: Any, job: Any, pipeline: Any = None) -> Any:
    if job._dependency_ids:
        pipeline.watch(job.dependencies_key)
        pipeline.multi()
    elif pipeline is not None and not pipeline.explicit_transaction:
        pipeline.multi()
    return job


def fully_fixed(self: Any, job: Any, pipeline: Any = None) -> Any:
    return job


def talks_to_redis(self: Any, job: Any, pipeline: Any = None) -> Any:
    self.connection.ping()
    return job


def like_rq_2_get_jobs_with_met_dependencies(jobs: Any, pipeline: Any) -> Any:
    for job in jobs:
        pipeline.watch(*[job.key_for(parent) for parent in job._dependency_ids])
        job.register_dependency(pipeline=pipeline)
        pipeline.execute()
    return jobs, []


def fixed_get_jobs_with_met_dependencies(jobs: Any, pipeline: Any) -> Any:
    return jobs, []


def like_rq_enqueue_many(self: Any, job_datas: Any, pipeline: Any = None, group_id: Any = None) -> Any:
    pipeline.sadd("rq:queues", self.key)  # as RQ writes, without switching a WATCHing pipe to MULTI
    return []


def like_rq_schedule_job(self: Any, job: Any, datetime: Any, pipeline: Any = None) -> Any:
    pipeline.sadd("rq:queues", self.key)
    return job


def like_rq_registry_schedule(self: Any, job: Any, scheduled_datetime: Any, pipeline: Any = None) -> Any:
    return self.connection.zadd(self.key, {job.id: 0})  # RQ < 3.0 ignores the pipeline here


def like_rq_group_enqueue_many(self: Any, queue: Any, job_datas: Any, pipeline: Any = None) -> Any:
    pipe = pipeline if pipeline else self.connection.pipeline()
    pipe.sadd(self.key, "job")
    pipe.execute()  # Group._add_jobs, RQ 2.0 ... 3.0
    return []


def group_enqueue_many_leaving_execute_to_caller(
    self: Any, queue: Any, job_datas: Any, pipeline: Any = None
) -> Any:
    pipe = pipeline if pipeline else self.connection.pipeline()
    pipe.sadd(self.key, "job")
    if pipeline is None:
        pipe.execute()
    return []


def buffering_enqueue_many(self: Any, job_datas: Any, pipeline: Any = None) -> Any:
    if pipeline.watching:
        pipeline.multi()
    pipeline.sadd("rq:queues", self.key)
    return []


METHODS = {
    "setup_dependencies": "Queue.setup_dependencies",
    "get_jobs_with_met_dependencies": "Dependency.get_jobs_with_met_dependencies",
    "enqueue_many": "Queue.enqueue_many",
    "schedule_job": "Queue.schedule_job",
    "schedule": "ScheduledJobRegistry.schedule",
    "group_enqueue_many": "Group.enqueue_many",
    "save_unique_job": "rq.queue.save_unique_job",
    "run_job": "Queue.run_job",
    "enqueue_job": "Queue.enqueue_job",
}


def probed(rq_version: str = INSTALLED_RQ, **methods: Any) -> dict[str, detect.Finding]:
    """The probes' findings for stand-in methods (by short name); a method not given is absent."""
    originals = {label: methods.get(name) for name, label in METHODS.items()}
    return {f.defect.id: f for f in detect.detect(originals, rq_version, now=True)}


def installed_originals() -> dict[str, Any]:
    """RQ's own methods as installed (None where this release has none), without our wrappers."""
    import rq.queue
    from rq.registry import ScheduledJobRegistry

    try:
        from rq.dependency import Dependency
    except ImportError:  # RQ < 1.15
        Dependency = None
    try:
        from rq.group import Group
    except ImportError:  # RQ < 2.0
        Group = None
    owners = {"Queue": Queue, "Dependency": Dependency, "ScheduledJobRegistry": ScheduledJobRegistry}
    owners.update({"Group": Group, "rq": rq.queue})
    originals = {}
    for name, label in METHODS.items():
        owner, attribute_name = owners[label.split(".")[0]], label.rpartition(".")[2]
        if owner is None or attribute_name not in vars(owner):
            continue
        attribute = vars(owner)[attribute_name]
        if isinstance(attribute, wrapt.ObjectProxy):  # a guard of ours: RQ's method is beneath it
            attribute = attribute.__wrapped__
        originals[name] = attribute.__get__(None, owner)
    return originals


def probes(findings: dict[str, detect.Finding]) -> dict[str, bool | None]:
    return {defect_id: finding.probe for defect_id, finding in findings.items()}


@pytest.mark.parametrize(
    ("version", "d1", "d2"),
    [
        ("1.8.1", TableVerdict.UNAFFECTED, TableVerdict.UNAFFECTED),
        ("1.9.0", TableVerdict.AFFECTED, TableVerdict.AFFECTED),
        ("1.16.2", TableVerdict.AFFECTED, TableVerdict.AFFECTED),
        ("2.2.0", TableVerdict.AFFECTED, TableVerdict.AFFECTED),
        ("2.3.0", TableVerdict.UNAFFECTED, TableVerdict.AFFECTED),
        ("2.12.0", TableVerdict.UNAFFECTED, TableVerdict.AFFECTED),
        (detect.LAST_MEASURED_RQ, TableVerdict.UNAFFECTED, TableVerdict.AFFECTED),
        ("99.0", TableVerdict.UNKNOWN, TableVerdict.UNKNOWN),
        ("not-a-version", TableVerdict.UNKNOWN, TableVerdict.UNKNOWN),
        (None, TableVerdict.UNKNOWN, TableVerdict.UNKNOWN),
    ],
)
def test_version_table(version: str | None, d1: TableVerdict, d2: TableVerdict) -> None:
    assert table_verdict(D1.affected, version) is d1
    assert table_verdict(D2.affected, version) is d2


def test_probes_see_every_defect_in_rq_1_9_code() -> None:
    findings = probed(
        "1.9.0",
        setup_dependencies=like_rq_1_9,
        enqueue_many=like_rq_enqueue_many,
        schedule_job=like_rq_schedule_job,
        schedule=like_rq_registry_schedule,
    )
    assert findings["D4"].reason == "rq 1.9.0 has no Dependency.get_jobs_with_met_dependencies"
    assert probes(findings) == {
        "D1": True,
        "D2": True,
        "D3": True,
        "D4": False,
        "D5": False,
        "D6": True,
        "D7": True,
        "D8": True,
        "D9": False,
        "D10": False,
        "D11": False,
        "D12": False,
    }
    assert "as the version table expects" in findings["D1"].reason
    assert findings["D9"].reason == "rq 1.9.0 has no Group.enqueue_many"
    assert findings["D10"].reason == "rq 1.9.0 has no rq.queue.save_unique_job"


def test_probes_see_upstream_fix_of_d1_in_rq_2_3_code() -> None:
    findings = probed(
        "2.3.0",
        setup_dependencies=like_rq_2_3,
        get_jobs_with_met_dependencies=like_rq_2_get_jobs_with_met_dependencies,
    )
    assert probes(findings) == {
        "D1": False,
        "D2": True,
        "D3": True,
        "D4": True,
        "D5": True,
        "D6": False,
        "D7": False,
        "D8": False,
        "D9": False,
        "D10": False,
        "D11": False,
        "D12": False,
    }


def test_probe_sees_group_enqueue_many_running_the_callers_execute() -> None:
    pytest.importorskip("rq.group", reason="rq.group arrived in RQ 2.0")
    findings = probed(setup_dependencies=like_rq_2_3, group_enqueue_many=like_rq_group_enqueue_many)
    assert findings["D9"].probe is True
    fixed = probed(
        setup_dependencies=like_rq_2_3, group_enqueue_many=group_enqueue_many_leaving_execute_to_caller
    )
    assert fixed["D9"].probe is False


@pytest.mark.usefixtures("unpatched")
def test_every_defect_waits_for_its_first_use_and_a_report_probes_them_all() -> None:
    """No probe at rq's import of a release the version table knows: each defect is probed by the
    guard's first call that needs the answer, or by status()."""
    originals = {METHODS[name]: method for name, method in installed_originals().items()}
    findings = {f.defect.id: f for f in detect.detect(originals, INSTALLED_RQ)}
    for finding in findings.values():
        if finding.defect.method in originals:
            assert detect.is_pending(finding) and finding.probe is None, finding
        else:
            assert not detect.is_pending(finding), finding
    report = {d.id: d for d in rq_pipeline_fix.apply().defects}
    assert all(report[d].detected is not None for d in findings)  # a report probes them


@pytest.mark.usefixtures("unpatched")
def test_on_a_release_newer_than_measured_d12_alone_is_probed_at_once() -> None:
    """Its guard would sit on every enqueue's path (enqueue_job) unprobed: not lazy there."""
    originals = {METHODS[name]: method for name, method in installed_originals().items()}
    findings = detect.detect(originals, "99.0")
    assert [f.defect.id for f in findings if f.probe is not None and f.defect.method in originals] == ["D12"]
    assert all(
        detect.is_pending(f) for f in findings if f.defect.id != "D12" and f.defect.method in originals
    )


def test_probe_sees_an_enqueue_many_that_buffers_in_a_watching_pipeline() -> None:
    assert probed(setup_dependencies=like_rq_2_3, enqueue_many=buffering_enqueue_many)["D6"].probe is False
    assert probed(setup_dependencies=like_rq_2_3, enqueue_many=like_rq_enqueue_many)["D6"].probe is True


def test_probes_see_a_fixed_enqueue_many_dependency_check() -> None:
    findings = probed(
        "2.3.0",
        setup_dependencies=like_rq_2_3,
        get_jobs_with_met_dependencies=fixed_get_jobs_with_met_dependencies,
    )
    assert (findings["D4"].probe, findings["D5"].probe) == (False, False)
    assert "trusting the probe" in findings["D5"].reason


def test_probe_wins_over_version_table_and_says_so() -> None:
    findings = probed(
        "2.2.0",
        setup_dependencies=fully_fixed,
        get_jobs_with_met_dependencies=fixed_get_jobs_with_met_dependencies,
        enqueue_many=buffering_enqueue_many,
    )
    assert all(f.probe is False for f in findings.values())
    assert findings["D1"].table is TableVerdict.AFFECTED
    assert findings["D1"].present is False
    assert "trusting the probe" in findings["D1"].reason


def test_unknown_future_release_is_decided_by_the_probe() -> None:
    findings = probed("99.0", setup_dependencies=like_rq_2_3)
    assert findings["D1"].table is TableVerdict.UNKNOWN and findings["D1"].present is False
    assert findings["D2"].present is True
    assert "newer than the releases measured" in findings["D2"].reason


def test_probe_that_would_touch_redis_decides_nothing() -> None:
    findings = probed(setup_dependencies=talks_to_redis)
    for finding in (findings["D1"], findings["D2"], findings["D3"]):
        assert finding.probe is None
        assert "tried to talk to Redis" in finding.reason or "sent a command to Redis" in finding.reason


@pytest.mark.usefixtures("unpatched")  # RQ's own methods call each other (enqueue_many > enqueue_job)
def test_probes_of_the_installed_rq_match_the_version_table() -> None:
    findings = probed(INSTALLED_RQ, **installed_originals())
    assert findings["D1"].probe == (Version(INSTALLED_RQ) < Version("2.3.0"))
    assert all(findings[d].probe is True for d in ("D2", "D3", "D6", "D7"))
    assert findings["D4"].probe is findings["D5"].probe is (Version(INSTALLED_RQ) >= Version("1.15"))
    assert findings["D8"].probe == (Version(INSTALLED_RQ) < Version("3.0.0"))
    assert findings["D9"].probe == (Version(INSTALLED_RQ) >= Version("2.0.0"))
    assert findings["D10"].probe == (Version(INSTALLED_RQ) >= Version("2.8.0"))
    assert findings["D11"].probe is True
    assert findings["D12"].probe == (Version(INSTALLED_RQ) < Version("1.14"))
    for finding in findings.values():
        if finding.table is not TableVerdict.UNKNOWN:
            assert finding.present == (finding.table is TableVerdict.AFFECTED), finding


def test_shape_check_names_the_problem() -> None:
    expected = ("self", "job", "pipeline")
    assert check_shape("Queue.setup_dependencies", like_rq_1_9, expected) is None
    assert "parameters ['self', 'job', 'pipeline', 'extra']" in str(
        check_shape("Queue.setup_dependencies", lambda self, job, pipeline=None, extra=None: job, expected)
    )
    assert "staticmethod" in str(check_shape("Queue.setup_dependencies", staticmethod(like_rq_1_9), expected))
    assert "NoneType" in str(check_shape("Queue.setup_dependencies", None, expected))

    def get_jobs(cls: Any, jobs: Any, pipeline: Any) -> Any:
        return jobs, []

    assert check_shape("Dependency.x", classmethod(get_jobs), ("cls", "jobs", "pipeline")) is None
