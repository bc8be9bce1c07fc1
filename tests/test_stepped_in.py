"""Step-in counts: ``status()`` says, per defect, how many calls in this process the guard answered
itself, instead of RQ's own code; the first one per defect is logged once at INFO. Real enqueues
against the suite's Redis, each checked by what landed there too."""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Iterator

import pytest
import redis
from rq import Queue

import rq_pipeline_fix
from rq_pipeline_fix import cli, guard
from tests.conftest import job_keys


def counts() -> dict[str, int]:
    return {d.id: d.stepped_in for d in rq_pipeline_fix.status().defects}


def patched(defect_id: str) -> bool:
    return any(d.id == defect_id and d.patched for d in rq_pipeline_fix.status().defects)


@pytest.fixture
def fresh_counts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's counts and first-time log as if no guard had stepped in yet."""
    monkeypatch.setattr(guard, "STEPPED_IN", {})
    monkeypatch.setattr(guard, "_told", set())
    yield


def test_a_caller_command_before_enqueues_counts_d2_per_enqueue_and_a_dependent_d3(
    connection: redis.Redis, fresh_counts: None
) -> None:
    high, low = Queue("high", connection=connection), Queue("low", connection=connection)
    with connection.pipeline() as pipe:
        pipe.incr("batches")  # buffered first: RQ's multi() would refuse (D2)
        parent = high.enqueue_call("os.getpid", pipeline=pipe)
        low.enqueue_call("os.getpid", pipeline=pipe)
        low.enqueue_call("os.getpid", depends_on=parent.id, pipeline=pipe)  # into that pipeline (D3)
        pipe.execute()
    assert connection.get("batches") == b"1" and len(job_keys(connection)) == 3
    assert {defect: n for defect, n in counts().items() if n} == {"D2": 2, "D3": 1}


def test_a_fresh_pipeline_where_rqs_own_code_runs_counts_nothing(
    connection: redis.Redis, fresh_counts: None
) -> None:
    with connection.pipeline() as pipe:
        Queue("high", connection=connection).enqueue_call("os.getpid", pipeline=pipe)  # RQ's multi()
        pipe.execute()
    assert len(job_keys(connection)) == 1
    assert set(counts().values()) == {0}


def test_a_second_enqueue_into_one_pipeline_counts_d1_only_where_rq_has_it(
    connection: redis.Redis, fresh_counts: None
) -> None:
    queue = Queue("high", connection=connection)
    with connection.pipeline() as pipe:
        queue.enqueue_call("os.getpid", pipeline=pipe)
        queue.enqueue_call("os.getpid", pipeline=pipe)  # already MULTI: RQ < 2.3 fails (D1), later is right
        pipe.execute()
    assert queue.count == 2
    assert counts()["D1"] == (1 if patched("D1") else 0)


@pytest.mark.skipif(
    "depends_on" not in inspect.signature(Queue.prepare_data).parameters,
    reason="this RQ's enqueue_many takes no depends_on (RQ 1.15 on)",
)
def test_enqueue_many_with_depends_on_after_a_caller_command_counts_d5(
    connection: redis.Redis, fresh_counts: None
) -> None:
    queue = Queue("high", connection=connection)
    with connection.pipeline() as pipe:
        pipe.incr("batches")
        data = [Queue.prepare_data("os.getpid", job_id="p"), Queue.prepare_data("os.getpid", depends_on="p")]
        queue.enqueue_many(data, pipeline=pipe)
        assert connection.get("batches") is None  # not executed early: the guard kept it in the batch
        pipe.execute()
    assert connection.get("batches") == b"1" and len(job_keys(connection)) == 2
    assert counts()["D5"] == 1


def test_status_json_has_the_counts(
    connection: redis.Redis, fresh_counts: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with connection.pipeline() as pipe:
        pipe.incr("batches")
        Queue("high", connection=connection).enqueue_call("os.getpid", pipeline=pipe)
        pipe.execute()
    cli.main(["status", "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert shown["schema"] == 1
    assert {d["id"]: d["stepped_in"] for d in shown["defects"]} == {**dict.fromkeys(counts(), 0), "D2": 1}


def test_the_status_table_has_a_stepped_in_column(
    connection: redis.Redis, fresh_counts: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with connection.pipeline() as pipe:
        pipe.incr("batches")
        Queue("high", connection=connection).enqueue_call("os.getpid", pipeline=pipe)
        pipe.execute()
    cli.main(["status"])
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("defect "))
    d2 = next(line for line in lines if line.startswith("D2 "))
    column = header.index("stepped in")
    assert d2[column:].split()[0] == "1"


def test_the_first_step_in_per_defect_is_logged_once_at_info(
    connection: redis.Redis, fresh_counts: None, caplog: pytest.LogCaptureFixture
) -> None:
    queue = Queue("high", connection=connection)
    with caplog.at_level(logging.INFO, logger="rq_pipeline_fix"):
        for _ in range(2):
            with connection.pipeline() as pipe:
                pipe.incr("batches")
                queue.enqueue_call("os.getpid", pipeline=pipe)
                queue.enqueue_call("os.getpid", pipeline=pipe)
                pipe.execute()
    assert queue.count == 4 and counts()["D2"] == 4
    told = [r for r in caplog.records if r.name == "rq_pipeline_fix" and "stepped in" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in told] == [
        (logging.INFO, "D2: the guard stepped in for Queue.setup_dependencies (first time in this process)")
    ]
