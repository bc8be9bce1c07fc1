"""The behaviour probes and the version table, on stand-ins for RQ's method and on the real one."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import pytest
from packaging.version import Version
from rq.queue import Queue

from rq_pipeline_fix import detect
from rq_pipeline_fix.detect import TableVerdict, check_shape, table_verdict

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


def probed(
    setup_dependencies: Any, rq_version: str = INSTALLED_RQ, get_jobs_with_met_dependencies: Any = None
) -> dict[str, detect.Finding]:
    originals = {
        "Queue.setup_dependencies": setup_dependencies,
        "Dependency.get_jobs_with_met_dependencies": get_jobs_with_met_dependencies,
    }
    return {f.defect.id: f for f in detect.detect(originals, rq_version)}


def installed_originals() -> tuple[Any, Any]:
    from rq.dependency import Dependency

    return (
        Queue.__dict__["setup_dependencies"].__wrapped__,
        Dependency.__dict__["get_jobs_with_met_dependencies"].__wrapped__.__get__(None, Dependency),
    )


@pytest.mark.parametrize(
    ("version", "d1", "d2"),
    [
        ("1.8.1", TableVerdict.UNAFFECTED, TableVerdict.UNAFFECTED),
        ("1.9.0", TableVerdict.AFFECTED, TableVerdict.AFFECTED),
        ("1.16.2", TableVerdict.AFFECTED, TableVerdict.AFFECTED),
        ("2.2.0", TableVerdict.AFFECTED, TableVerdict.AFFECTED),
        ("2.3.0", TableVerdict.UNAFFECTED, TableVerdict.AFFECTED),
        ("2.12.0", TableVerdict.UNAFFECTED, TableVerdict.AFFECTED),
        (str(detect.LAST_MEASURED_RQ), TableVerdict.UNAFFECTED, TableVerdict.AFFECTED),
        ("99.0", TableVerdict.UNKNOWN, TableVerdict.UNKNOWN),
        ("not-a-version", TableVerdict.UNKNOWN, TableVerdict.UNKNOWN),
        (None, TableVerdict.UNKNOWN, TableVerdict.UNKNOWN),
    ],
)
def test_version_table(version: str | None, d1: TableVerdict, d2: TableVerdict) -> None:
    assert table_verdict(D1, version) is d1
    assert table_verdict(D2, version) is d2


def test_probes_see_every_defect_in_rq_1_9_code() -> None:
    findings = probed(like_rq_1_9, "1.9.0")
    assert findings["D4"].reason == "rq 1.9.0 has no Dependency.get_jobs_with_met_dependencies"
    assert {k: f.probe for k, f in findings.items()} == {
        "D1": True,
        "D2": True,
        "D3": True,
        "D4": False,
        "D5": False,
    }
    assert "as the version table expects" in findings["D1"].reason


def test_probes_see_upstream_fix_of_d1_in_rq_2_3_code() -> None:
    findings = probed(like_rq_2_3, "2.3.0", like_rq_2_get_jobs_with_met_dependencies)
    assert {k: f.probe for k, f in findings.items()} == {
        "D1": False,
        "D2": True,
        "D3": True,
        "D4": True,
        "D5": True,
    }


def test_probes_see_a_fixed_enqueue_many_dependency_check() -> None:
    findings = probed(like_rq_2_3, "2.3.0", fixed_get_jobs_with_met_dependencies)
    assert (findings["D4"].probe, findings["D5"].probe) == (False, False)
    assert "trusting the probe" in findings["D5"].reason


def test_probe_wins_over_version_table_and_says_so() -> None:
    findings = probed(fully_fixed, "2.2.0", fixed_get_jobs_with_met_dependencies)
    assert all(f.probe is False for f in findings.values())
    assert findings["D1"].table is TableVerdict.AFFECTED
    assert findings["D1"].present is False
    assert "trusting the probe" in findings["D1"].reason


def test_unknown_future_release_is_decided_by_the_probe() -> None:
    findings = probed(like_rq_2_3, "99.0")
    assert findings["D1"].table is TableVerdict.UNKNOWN and findings["D1"].present is False
    assert findings["D2"].present is True
    assert "newer than the releases measured" in findings["D2"].reason


def test_probe_that_would_touch_redis_decides_nothing() -> None:
    findings = probed(talks_to_redis)
    for finding in (findings["D1"], findings["D2"], findings["D3"]):
        assert finding.probe is None
        assert "tried to talk to Redis" in finding.reason or "sent a command to Redis" in finding.reason


def test_probes_of_the_installed_rq_match_the_version_table() -> None:
    findings = probed(*installed_originals()[:1], INSTALLED_RQ, installed_originals()[1])
    assert findings["D1"].probe == (Version(INSTALLED_RQ) < Version("2.3.0"))
    assert findings["D2"].probe is findings["D3"].probe is True
    assert findings["D4"].probe is findings["D5"].probe is True
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
