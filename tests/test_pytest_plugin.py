"""The pytest plugin, in real pytest subprocesses: the guard is on before test modules import rq,
one header line says what was patched, ``-p no:rq_pipeline_fix`` or the kill switch keep RQ as
installed, and strict mode stops a session whose RQ is not known to be fully patched."""

from __future__ import annotations

import subprocess
import sys
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
        assert type(setup_dependencies).__name__ == "_WrappedAtFirstUse"
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


# --- strict mode: --rq-pipeline-fix-strict / rq_pipeline_fix_strict -----------------------------

# Counts its runs in Redis: a session stopped at start leaves no count.
COUNTING_TEST = """
import os

import redis


def test_runs():
    redis.Redis.from_url(os.environ["REDIS_URL"]).incr("inner-test-runs")
"""

# A conftest of the inner session, loaded before the session starts and before rq is imported:
# D2's probe cannot tell, and the installed RQ is past the version table (as after an upgrade).
UNDECIDED_D2 = """
import rq_pipeline_fix.detect as detect
import rq_pipeline_fix.probes as probes

detect.LAST_MEASURED_RQ = "0.1"


def cannot_tell(kit):
    raise probes.ProbeTouchedRedis("the probed code sent a command to Redis")


probes.PROBES["D2"] = cannot_tell
"""

STRICT_INI = "[pytest]\nrq_pipeline_fix_strict = true\n"


def runs(connection: redis.Redis) -> object:
    return connection.get("inner-test-runs")


def assert_stopped_at_start(result: pytest.RunResult, connection: redis.Redis, *lines: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: rq-pipeline-fix strict: RQ is not known to be fully patched:", *lines]
    )
    assert runs(connection) is None


def test_strict_lets_the_session_run_when_every_defect_present_is_patched(
    inner: pytest.Pytester, connection: redis.Redis
) -> None:
    inner.makepyfile(test_inner=COUNTING_TEST)
    result = inner.runpytest_subprocess("--rq-pipeline-fix-strict")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK and runs(connection) == b"1"


def test_strict_under_the_kill_switch_stops_the_session_naming_each_defect(
    inner: pytest.Pytester, connection: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RQ_PIPELINE_FIX_DISABLE", "1")
    inner.makepyfile(test_inner=COUNTING_TEST)
    result = inner.runpytest_subprocess("--rq-pipeline-fix-strict")
    assert_stopped_at_start(
        result,
        connection,
        "  D2 unpatched: disabled by RQ_PIPELINE_FIX_DISABLE",
        "  D3 unpatched: disabled by RQ_PIPELINE_FIX_DISABLE",
    )


def test_strict_ini_option_stops_the_session_as_the_flag_does(
    inner: pytest.Pytester, connection: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RQ_PIPELINE_FIX_DISABLE", "1")
    inner.makeini(STRICT_INI)
    inner.makepyfile(test_inner=COUNTING_TEST)
    result = inner.runpytest_subprocess()
    assert_stopped_at_start(result, connection, "  D2 unpatched: disabled by RQ_PIPELINE_FIX_DISABLE")


def test_strict_stops_the_session_when_a_probe_cannot_tell_past_the_version_table(
    inner: pytest.Pytester, connection: redis.Redis
) -> None:
    inner.makeconftest(UNDECIDED_D2)
    inner.makepyfile(test_inner=COUNTING_TEST)
    result = inner.runpytest_subprocess("--rq-pipeline-fix-strict")
    assert_stopped_at_start(
        result,
        connection,
        "  D2 undecided: the probe failed: ProbeTouchedRedis(*); rq * is newer than the version table",
    )
    result.stderr.no_fnmatch_line("  D3 *")  # probed, reproduced and patched as usual


def test_without_strict_an_undecided_defect_leaves_the_session_running(
    inner: pytest.Pytester, connection: redis.Redis
) -> None:
    inner.makeconftest(UNDECIDED_D2)
    inner.makepyfile(test_inner=COUNTING_TEST)
    result = inner.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["rq-pipeline-fix: *; NOT patched: D2 (see `rq-pipeline-fix status`)"])
    assert runs(connection) == b"1"


def test_help_still_works_with_strict_set_and_failing(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RQ_PIPELINE_FIX_DISABLE", "1")
    inner.makeini(STRICT_INI)
    result = inner.runpytest_subprocess("--help")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        ["rq-pipeline-fix:", "  --rq-pipeline-fix-strict*", "  rq_pipeline_fix_strict *"]
    )


def test_p_no_rq_pipeline_fix_means_no_strict_check(
    inner: pytest.Pytester, connection: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RQ_PIPELINE_FIX_DISABLE", "1")
    inner.makeini(STRICT_INI)
    inner.makepyfile(test_inner=COUNTING_TEST)
    result = inner.runpytest_subprocess("-p", "no:rq_pipeline_fix")
    result.assert_outcomes(passed=1, warnings=1)  # pytest's: unknown config option
    assert runs(connection) == b"1"


def test_pytest_strict_and_status_strict_name_the_same_defects(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RQ_PIPELINE_FIX_DISABLE", "1")
    inner.makepyfile(test_inner=COUNTING_TEST)
    from_pytest = inner.runpytest_subprocess("--rq-pipeline-fix-strict").stderr.lines
    command = [sys.executable, "-m", "rq_pipeline_fix", "status", "--strict"]
    from_status = subprocess.run(command, capture_output=True, text=True, timeout=120).stderr.splitlines()
    named = [line for line in from_status if line.startswith("  D")]
    assert named and [line for line in from_pytest if line.startswith("  D")] == named


def test_report_header_with_warnings_as_errors_is_a_line_not_an_internal_error(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_inner_test(inner, guarded=False)
    monkeypatch.setenv("RQ_PIPELINE_FIX_DISABLE", "maybe")  # a complaint, as a warning
    result = inner.runpytest_subprocess("-W", "error")
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["rq-pipeline-fix: rq *; off (RQ_PIPELINE_FIX_DISABLE is set), RQ untouched"])
