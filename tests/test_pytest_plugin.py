"""The pytest plugin, in real pytest subprocesses: the guard is on before test modules import rq,
one header line says what was patched, and ``-p no:rq_pipeline_fix`` or the kill switch keep
RQ as installed."""

from __future__ import annotations

from importlib import metadata

import pytest
import redis
from rq import Queue

pytest_plugins = ["pytester"]

# The inner test imports rq at module level (collection time) and shares one pipeline across
# queues after a command of its own: without the guard that fails on every RQ release (D2).
INNER_TEST = """
import os
import types

import pytest
import redis
from rq import Queue

GUARDED = {guarded}


def enqueue_across_queues_after_a_command():
    connection = redis.Redis.from_url(os.environ["REDIS_URL"])
    with connection.pipeline() as pipe:
        pipe.incr("plugin-calls")
        for name in ("high", "low"):
            Queue(name, connection=connection).enqueue_call("os.getpid", pipeline=pipe)
        pipe.execute()


def test_one_pipeline_across_queues():
    setup_dependencies = Queue.__dict__["setup_dependencies"]
    if GUARDED:
        assert type(setup_dependencies).__name__ == "FunctionWrapper"
        enqueue_across_queues_after_a_command()
    else:
        assert type(setup_dependencies) is types.FunctionType
        with pytest.raises(redis.RedisError, match="Commands without an initial WATCH"):
            enqueue_across_queues_after_a_command()
"""


@pytest.fixture
def inner(
    pytester: pytest.Pytester, redis_url: str, connection: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    monkeypatch.setenv("REDIS_URL", redis_url)  # connection has emptied the database
    monkeypatch.delenv("RQ_PIPELINE_FIX_DISABLE", raising=False)
    return pytester


def write_inner_test(pytester: pytest.Pytester, guarded: bool) -> None:
    pytester.makepyfile(test_inner=INNER_TEST.format(guarded=guarded))


def landed(connection: redis.Redis) -> tuple[int, int, object]:
    high, low = (Queue(name, connection=connection) for name in ("high", "low"))
    return high.count, low.count, connection.get("plugin-calls")


def test_guard_is_on_before_test_modules_import_rq(inner: pytest.Pytester, connection: redis.Redis) -> None:
    write_inner_test(inner, guarded=True)
    result = inner.runpytest_subprocess("-q")  # no header: the import hook alone must put the guard on
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("rq-pipeline-fix:*")
    assert landed(connection) == (1, 1, b"1")


def test_report_header_names_rq_version_and_what_was_patched(inner: pytest.Pytester) -> None:
    write_inner_test(inner, guarded=True)
    result = inner.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    rq_version = metadata.version("rq")
    result.stdout.fnmatch_lines([f"rq-pipeline-fix: rq {rq_version}, redis-py *; guard on for *D2*"])


def test_p_no_rq_pipeline_fix_leaves_rq_as_installed(inner: pytest.Pytester, connection: redis.Redis) -> None:
    write_inner_test(inner, guarded=False)
    result = inner.runpytest_subprocess("-p", "no:rq_pipeline_fix")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("rq-pipeline-fix:*")
    assert landed(connection) == (0, 0, None)


def test_kill_switch_leaves_rq_as_installed(
    inner: pytest.Pytester, connection: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RQ_PIPELINE_FIX_DISABLE", "1")
    write_inner_test(inner, guarded=False)
    result = inner.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["rq-pipeline-fix: rq *; off (RQ_PIPELINE_FIX_DISABLE is set), RQ untouched"])
    assert landed(connection) == (0, 0, None)
