"""The test suite never flushes a database it was not given for that, and says how to proceed.

Each test starts a server of its own, plants a key standing for a developer's data, and runs
pytest on one of our test modules in a subprocess, as a contributor would run the suite.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from rq_pipeline_fix.server import embedded_redis_server
from tests.conftest import child_environment
from tests.servers import URL_VARIABLE, server_executable

REPO = Path(__file__).resolve().parents[1]
ONE_TEST = "tests/test_shared_pipeline.py::test_fresh_pipeline_is_switched_to_multi_as_upstream_does"


@pytest.fixture
def own_server() -> Iterator[str]:
    """A server only this test uses (not the session's): its URL, database 0."""
    executable = server_executable()  # also when this run itself was given a URL
    if executable is None:
        pytest.skip("no server executable to start")
    with embedded_redis_server(executable) as url:
        yield url


def run_suite(*arguments: str, **environment: str | None) -> subprocess.CompletedProcess[str]:
    """pytest on our own tests in a child, without writing matrix results or reading REDIS_URL from us."""
    changes: dict[str, str | None] = {
        "RQ_PIPELINE_FIX_RESULTS_DIR": None,
        "REDIS_URL": None,
        URL_VARIABLE: None,
        **environment,
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *arguments],
        cwd=REPO,
        env=child_environment(**changes),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_run_refuses_a_given_database_holding_keys_it_did_not_write(own_server: str) -> None:
    developer = redis.Redis.from_url(own_server)
    developer.set("my-app:session", "precious")
    shown = run_suite(ONE_TEST, **{URL_VARIABLE: own_server})
    assert shown.returncode == pytest.ExitCode.USAGE_ERROR, shown.stdout + shown.stderr
    said = shown.stdout + shown.stderr
    assert "holds 1 key(s) the tests did not write" in said and "'my-app:session'" in said
    assert "To proceed" in said and "empty database" in said
    assert "passed" not in shown.stdout  # no test ran
    assert developer.dbsize() == 1 and developer.get("my-app:session") == b"precious"


def test_redis_url_alone_is_never_used(own_server: str) -> None:
    developer = redis.Redis.from_url(own_server)
    developer.set("my-app:session", "precious")
    shown = run_suite(ONE_TEST, REDIS_URL=own_server)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "REDIS_URL is set and ignored" in shown.stdout
    assert "1 passed" in shown.stdout
    assert developer.dbsize() == 1 and developer.get("my-app:session") == b"precious"


def test_an_empty_given_database_is_used_and_left_empty(own_server: str) -> None:
    given = own_server.rsplit("/", 1)[0] + "/3"
    neighbour = redis.Redis.from_url(own_server)  # database 0 of the same server
    neighbour.set("my-app:session", "precious")
    seen = redis.Redis.from_url(given)
    shown = run_suite(ONE_TEST, **{URL_VARIABLE: given})
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert f"test server: {URL_VARIABLE}={given}" in shown.stdout and "1 passed" in shown.stdout
    assert seen.info("commandstats")["cmdstat_exec"]["calls"] >= 1  # the test's pipeline ran here
    assert seen.dbsize() == 0  # flushed at the end: the next run accepts it again
    assert neighbour.get("my-app:session") == b"precious"
    again = run_suite(ONE_TEST, **{URL_VARIABLE: given})
    assert again.returncode == 0, again.stdout + again.stderr
