"""The dependent-job WATCH contract under the client settings production code uses (issue 14).

The guard WATCHes a dependent job's parents on the pipeline's connection and keeps that WATCH
open until the caller's EXEC. Whatever the client settings (health checks, retries, timeouts,
RESP3, a blocking pool, a single-connection client), the batch must either land whole with
every child judged by its parent's real status, or abort with WatchError (which
``Redis.transaction`` retries) — never commit after its WATCH was lost. Every test lets real
workers (``SimpleWorker``) drain the queues and then checks the final state: no child left
DEFERRED on a FINISHED parent, and no connection left checked out of the client's pool.

The client under test reaches Redis through ``tests/proxy.py`` (a loopback TCP proxy) so that
its connections can be cut at the worst moment; workers and checks use a direct client.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Iterator
from typing import Any, Callable, NamedTuple
from urllib.parse import urlparse

import pytest
import redis
from packaging.version import Version
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import DeferredJobRegistry

from tests.jobs import fail, record
from tests.proxy import CuttingProxy

try:
    from rq.job import Dependency
except ImportError:  # RQ < 1.11
    Dependency = None  # type: ignore[assignment,misc]

pytestmark = pytest.mark.reliability

HEALTH_CHECK_INTERVAL = 0.2  # seconds; the tests wait past it where a health check must run
QUEUE_NAMES = ("parents", "children", "other")


# --- the client settings ----------------------------------------------------------------------


def redis_py_is_at_least(version: str) -> bool:
    return Version(redis.__version__) >= Version(version)


class Setting(NamedTuple):
    name: str
    options: Callable[[], dict[str, Any]]  # a fresh Retry per client: redis-py copies or shares it
    health_checks: bool = False
    blocking_pool: bool = False
    needs_redis_py: str = "4"


def _retries() -> dict[str, Any]:
    return {
        "retry": Retry(ExponentialBackoff(cap=0.05, base=0.01), 3),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    }


SETTINGS = [
    Setting("defaults", dict),  # redis-py >= 6 retries by default
    Setting("health-checks", lambda: {"health_check_interval": HEALTH_CHECK_INTERVAL}, health_checks=True),
    Setting("retries", _retries),
    Setting(
        "health-checks+retries",
        lambda: {"health_check_interval": HEALTH_CHECK_INTERVAL, **_retries()},
        health_checks=True,
    ),
    Setting("socket-timeout", lambda: {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}),
    Setting("resp3", lambda: {"protocol": 3}, needs_redis_py="5"),
    Setting("blocking-pool", dict, blocking_pool=True),
    Setting("single-connection-client", lambda: {"single_connection_client": True}),
    Setting(
        "all-of-them",
        lambda: {
            "health_check_interval": HEALTH_CHECK_INTERVAL,
            "socket_timeout": 2.0,
            **_retries(),
            **({"protocol": 3} if redis_py_is_at_least("5") else {}),
        },
        health_checks=True,
        blocking_pool=True,
    ),
]


def setting_params() -> list[Any]:
    return [
        pytest.param(
            setting,
            id=setting.name,
            marks=pytest.mark.skipif(
                not redis_py_is_at_least(setting.needs_redis_py),
                reason=f"redis-py {redis.__version__} has no such setting",
            ),
        )
        for setting in SETTINGS
    ]


def make_client(setting: Setting, port: int) -> redis.Redis:
    options = setting.options()
    if setting.blocking_pool:
        pool = redis.BlockingConnectionPool(
            host="127.0.0.1", port=port, max_connections=4, timeout=5, **options
        )
        return redis.Redis(connection_pool=pool)
    return redis.Redis(host="127.0.0.1", port=port, **options)


def connections_in_use(client: redis.Redis) -> int:
    """Connections checked out of the client's pool, other than a single-connection client's own."""
    pool: Any = client.connection_pool
    if isinstance(pool, redis.BlockingConnectionPool):
        idle = {connection for connection in pool.pool.queue if connection is not None}
        in_use = {connection for connection in pool._connections if connection not in idle}
    else:
        in_use = set(pool._in_use_connections)
    in_use.discard(getattr(client, "connection", None))
    return len(in_use)


def let_health_checks_run(setting: Setting) -> None:
    """Wait until the next command on a pooled connection runs its health check first."""
    if setting.health_checks:
        time.sleep(HEALTH_CHECK_INTERVAL * 1.5)


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def proxy(redis_url: str) -> Iterator[CuttingProxy]:
    cutting = CuttingProxy(urlparse(redis_url).port or 6379)
    yield cutting
    cutting.close()


@pytest.fixture(params=setting_params())
def setting(request: pytest.FixtureRequest) -> Setting:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def client(setting: Setting, proxy: CuttingProxy, connection: redis.Redis) -> Iterator[redis.Redis]:
    """The client under test, through the proxy, on the emptied database."""
    test_client = make_client(setting, proxy.port)
    yield test_client
    test_client.close()


def queue(client: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=client)


def drain(direct: redis.Redis) -> None:
    """Real workers run everything that can run, dependents included."""
    SimpleWorker([queue(direct, name) for name in QUEUE_NAMES], connection=direct).work(burst=True)


def status_of(direct: redis.Redis, job_id: str) -> JobStatus:
    return Job.fetch(job_id, connection=direct).get_status()


def stranded_children(direct: redis.Redis) -> list[str]:
    """Children left DEFERRED although a parent they wait for is FINISHED: lost work."""
    stranded = []
    for name in QUEUE_NAMES:
        for job_id in DeferredJobRegistry(queue=queue(direct, name)).get_job_ids():
            job = Job.fetch(job_id, connection=direct)
            parents = [Job.fetch(parent_id, connection=direct) for parent_id in job._dependency_ids]
            if job.get_status() == JobStatus.DEFERRED and any(
                parent.get_status() == JobStatus.FINISHED for parent in parents
            ):
                stranded.append(job_id)
    return stranded


def assert_drained_cleanly(direct: redis.Redis, client: redis.Redis) -> None:
    drain(direct)
    assert stranded_children(direct) == []
    assert connections_in_use(client) == 0


def executed(direct: redis.Redis) -> list[str]:
    return [label.decode() for label in direct.lrange("executed", 0, -1)]


def finish(direct: redis.Redis, job_id: str) -> None:
    """A worker elsewhere runs the parent now."""
    SimpleWorker([queue(direct, "parents")], connection=direct).work(burst=True)
    assert status_of(direct, job_id) == JobStatus.FINISHED


def seed_parents(direct: redis.Redis) -> None:
    parents = queue(direct, "parents")
    parents.enqueue_call(record, args=("parent-a",), job_id="parent-a")  # queued, not run yet
    queue(direct, "other").enqueue_call(record, args=("parent-b",), job_id="parent-b")  # not run by finish()


# --- the matrix: the dependent path under each client setting -----------------------------------


def test_dependent_batch_lands_whole_and_runs_in_order(client: redis.Redis, connection: redis.Redis) -> None:
    done = queue(connection, "parents").enqueue_call(record, args=("done",), job_id="done")
    drain(connection)
    connection.delete("executed")
    seed_parents(connection)
    children = queue(client, "children")
    with client.pipeline() as pipe:
        pipe.incr("batches")
        first = queue(client, "other").enqueue_call(record, args=("first",), pipeline=pipe)
        children.enqueue_call(record, args=("after-first",), depends_on=first, job_id="c1", pipeline=pipe)
        children.enqueue_call(record, args=("after-done",), depends_on=done, job_id="c2", pipeline=pipe)
        children.enqueue_call(record, args=("after-a",), depends_on="parent-a", job_id="c3", pipeline=pipe)
        pipe.execute()
    assert connection.get("batches") == b"1"
    assert [status_of(connection, job_id) for job_id in ("c1", "c2", "c3")] == [
        JobStatus.DEFERRED,
        JobStatus.QUEUED,
        JobStatus.DEFERRED,
    ]
    assert_drained_cleanly(connection, client)
    order = executed(connection)
    assert order.index("first") < order.index("after-first") and order.index("parent-a") < order.index(
        "after-a"
    )
    assert all(status_of(connection, job_id) == JobStatus.FINISHED for job_id in ("c1", "c2", "c3"))


def test_parent_finishing_before_exec_is_retried_and_the_child_runs(
    client: redis.Redis, connection: redis.Redis
) -> None:
    seed_parents(connection)
    attempts: list[int] = []

    def batch(pipe: Any) -> None:
        attempts.append(1)
        queue(client, "other").enqueue_call(record, args=("sibling",), pipeline=pipe)
        queue(client, "children").enqueue_call(record, args=("child",), depends_on="parent-a", pipeline=pipe)
        if len(attempts) == 1:
            finish(connection, "parent-a")

    client.transaction(batch)
    assert len(attempts) == 2
    assert queue(connection, "children").count == 1  # the retry saw the finished parent
    assert_drained_cleanly(connection, client)


def cut_connection(how: str, client: redis.Redis, proxy: CuttingProxy) -> None:
    if how == "network-blip":
        proxy.drop_connections()  # every live socket closed; the proxy takes new ones at once
        if getattr(client, "connection", None) is not None:
            # A single-connection client's own connection (RQ reads through it) reports the cut at
            # its next command where redis-py does not retry (4.x, 5.x by default), as it would
            # to any caller; a pool checks a connection before handing it out.
            with contextlib.suppress(redis.ConnectionError):
                client.ping()
    else:
        client.connection_pool.disconnect()  # as at shutdown or after a fork; redis-py reconnects on next use


@pytest.mark.parametrize("how", ["network-blip", "pool-disconnect"])
@pytest.mark.parametrize("where", ["next-dependent", "exec"])
def test_connection_lost_after_the_watch_never_commits_unwatched(
    client: redis.Redis,
    connection: redis.Redis,
    proxy: CuttingProxy,
    setting: Setting,
    how: str,
    where: str,
) -> None:
    """The guard WATCHed parent A; the connection is lost; a worker finishes A; redis-py may then
    reconnect without a word (a health check, a retry, a connection simply opened again). The
    first attempt must abort (WatchError, so ``Redis.transaction`` retries), the retry queues the
    child of the finished parent, and the workers run it."""
    seed_parents(connection)
    attempts: list[int] = []

    def batch(pipe: Any) -> None:
        attempts.append(1)
        pipe.incr("batches")
        children = queue(client, "children")
        children.enqueue_call(record, args=("child-a",), depends_on="parent-a", pipeline=pipe)
        if len(attempts) == 1:
            cut_connection(how, client, proxy)
            finish(connection, "parent-a")
            let_health_checks_run(setting)
        if where == "next-dependent":  # WATCHes parent b on the same connection, first
            children.enqueue_call(record, args=("child-b",), depends_on="parent-b", pipeline=pipe)

    client.transaction(batch)
    assert len(attempts) == 2, "the first attempt committed although its WATCH was gone"
    assert connection.get("batches") == b"1"
    assert queue(connection, "children").count == 1  # child-a, queued at once by the retry
    assert_drained_cleanly(connection, client)
    assert "child-a" in executed(connection)


# --- item 1: the issue's own scenario, with the issue's own settings ----------------------------


@pytest.mark.parametrize("where", ["next-dependent", "exec"])
def test_health_check_reconnect_after_the_watch_gives_watch_error(
    connection: redis.Redis, proxy: CuttingProxy, where: str
) -> None:
    """``Redis(health_check_interval=1)`` with retries; the connection drops after the guard's
    WATCH; more than a second later the next command on it reconnects inside the health check.
    Without the fix the batch committed and child A stayed DEFERRED on a FINISHED parent."""
    seed_parents(connection)
    client = redis.Redis(host="127.0.0.1", port=proxy.port, health_check_interval=1, **_retries())
    pipe = client.pipeline()
    pipe.incr("batches")
    children = queue(client, "children")
    children.enqueue_call(record, args=("child-a",), depends_on="parent-a", job_id="child-a", pipeline=pipe)
    proxy.drop_connections()
    finish(connection, "parent-a")
    time.sleep(1.1)  # past the health check interval
    with pytest.raises(redis.WatchError):
        if where == "next-dependent":
            children.enqueue_call(record, args=("child-b",), depends_on="parent-b", pipeline=pipe)
        pipe.execute()
    pipe.reset()
    assert not connection.exists(Job.key_for("child-a")) and connection.get("batches") is None
    assert (pipe.watching, pipe.explicit_transaction, pipe.connection) == (False, False, None)
    assert_drained_cleanly(connection, client)
    client.close()


# --- item 3: a server stall during the guard's WATCH ------------------------------------------


def stall_server(direct: redis.Redis, milliseconds: int) -> None:
    """The server answers no client for ``milliseconds`` (as under DEBUG SLEEP or a busy script);
    unlike those, CLIENT PAUSE is in force when its reply arrives, so the stall is certain."""
    direct.execute_command("CLIENT", "PAUSE", milliseconds, "ALL")


def test_server_stall_during_the_guards_watch_gives_a_retryable_watch_error(
    connection: redis.Redis, proxy: CuttingProxy
) -> None:
    """``Redis(socket_timeout=0.2)``, the server busy for 0.5 s while the guard WATCHes: the
    caller gets WatchError (``Redis.transaction`` retries it), the pipeline fully reset and its
    connection dropped and back in the pool. Without the fix: TimeoutError, a pipeline left
    watching, in MULTI, with its connection checked out (redis-py's reset() UNWATCHed on the
    stalled server and timed out too)."""
    seed_parents(connection)
    client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=0.2, socket_connect_timeout=0.2)
    children = queue(client, "children")
    pipe = client.pipeline()
    pipe.incr("batches")
    children.enqueue_call(record, args=("first",), pipeline=pipe)  # MULTI from here: the guard's path
    stall_server(connection, 500)
    with pytest.raises(redis.WatchError) as raised:
        children.enqueue_call(record, args=("child",), depends_on="parent-a", pipeline=pipe)
    assert isinstance(raised.value.__cause__, redis.TimeoutError)
    assert (pipe.watching, pipe.explicit_transaction, pipe.connection, pipe.command_stack) == (
        False,
        False,
        None,
        [],
    )
    assert connections_in_use(client) == 0
    assert any(pooled._sock is None for pooled in client.connection_pool._available_connections)  # dropped
    connection.ping()  # answered once the stall is over

    def batch(retry: Any) -> None:
        retry.incr("batches")
        children.enqueue_call(record, args=("first",), pipeline=retry)
        children.enqueue_call(record, args=("child",), depends_on="parent-a", pipeline=retry)

    client.transaction(batch)
    assert connection.get("batches") == b"1"
    assert_drained_cleanly(connection, client)
    order = executed(connection)
    assert order.count("child") == 1 and order.index("parent-a") < order.index("child")
    client.close()


# --- item 2: a parent the batch itself writes ---------------------------------------------------


def finished_parent(direct: redis.Redis) -> Job:
    parent = queue(direct, "parents").enqueue_call(record, args=("parent",), job_id="parent")
    drain(direct)
    direct.delete("executed")
    return Job.fetch(parent.id, connection=direct)


@pytest.mark.parametrize("how", ["save", "hset-without-status", "set_status"])
def test_finished_parent_rewritten_in_the_batch_lets_the_child_run(connection: redis.Redis, how: str) -> None:
    """A FINISHED parent re-saved in the same batch (e.g. its meta updated) is still finished:
    RQ alone queues the child, and so must the guard."""
    parent = finished_parent(connection)
    children = queue(connection, "children")
    with connection.pipeline() as pipe:
        pipe.incr("batches")
        parent.meta["seen"] = True
        if how == "save":
            parent.save(pipeline=pipe)
        elif how == "hset-without-status":  # e.g. what Job.save_meta() writes, here buffered
            pipe.hset(parent.key, "meta", parent.serializer.dumps(parent.meta))
        else:
            parent.set_status(JobStatus.FINISHED, pipeline=pipe)
        child = children.enqueue_call(record, args=("child",), depends_on=parent, pipeline=pipe)
        pipe.execute()
    assert status_of(connection, child.id) == JobStatus.QUEUED and children.job_ids == [child.id]
    assert_drained_cleanly(connection, connection)
    assert executed(connection) == ["child"]


@pytest.mark.parametrize(
    ("status", "child_waits"),
    [(JobStatus.FINISHED, False), (JobStatus.QUEUED, True), (JobStatus.FAILED, True)],
)
def test_status_the_batch_sets_on_the_parent_decides(
    connection: redis.Redis, other_client: redis.Redis, status: JobStatus, child_waits: bool
) -> None:
    """Judged by the status the batch leaves, whatever Redis holds: no WATCH, no read needed, and
    a change in Redis before EXEC cannot matter (the batch overwrites it)."""
    parent = queue(connection, "parents").enqueue_call(record, args=("parent",), job_id="parent")  # queued
    children = queue(connection, "children")
    with connection.pipeline() as pipe:
        pipe.incr("batches")
        parent.set_status(status, pipeline=pipe)
        child = children.enqueue_call(record, args=("child",), depends_on=parent, pipeline=pipe)
        other_client.hset(parent.key, "status", "started")  # a worker picks the parent up meanwhile
        pipe.execute()
    assert (status_of(connection, child.id) == JobStatus.DEFERRED) is child_waits
    assert (children.job_ids == [child.id]) is not child_waits


def test_parent_enqueued_in_the_batch_waits_even_if_redis_has_it_finished(connection: redis.Redis) -> None:
    """Re-enqueueing a finished job in the batch makes it unfinished again: its child waits for it."""
    parent = finished_parent(connection)
    children = queue(connection, "children")
    with connection.pipeline() as pipe:
        pipe.incr("batches")
        queue(connection, "parents").enqueue_job(parent, pipeline=pipe)
        child = children.enqueue_call(record, args=("child",), depends_on=parent, pipeline=pipe)
        pipe.execute()
    assert status_of(connection, child.id) == JobStatus.DEFERRED
    assert_drained_cleanly(connection, connection)
    assert executed(connection) == ["parent", "child"]


# --- item 4: allow_failure as the installed RQ decides it ---------------------------------------


def failed_parent(direct: redis.Redis) -> Job:
    parent = queue(direct, "parents").enqueue_call(fail, args=("parent",), job_id="failed-parent")
    drain(direct)
    assert status_of(direct, parent.id) == JobStatus.FAILED
    return parent


def rqs_own_answer(direct: redis.Redis, parent: Job, path: str) -> JobStatus:
    """What the installed RQ does with the child by itself: a fresh pipeline for enqueue (RQ's own
    code runs: the guard steps in only for pipelines under way), no pipeline for enqueue_many."""
    reference = queue(direct, "other")
    depends_on = Dependency(jobs=[parent], allow_failure=True)
    if path == "enqueue":
        with direct.pipeline() as fresh:
            job = reference.enqueue_call(record, args=("reference",), depends_on=depends_on, pipeline=fresh)
            fresh.execute()
    else:
        (job,) = reference.enqueue_many(
            [Queue.prepare_data(record, args=("reference",), depends_on=depends_on)]
        )
    return status_of(direct, job.id)


@pytest.mark.skipif(Dependency is None, reason="this RQ has no Dependency(allow_failure=...)")
@pytest.mark.parametrize("path", ["enqueue", "enqueue_many"])
@pytest.mark.parametrize("state", ["command-buffered", "multi"])
def test_allow_failure_on_a_failed_parent_gets_the_installed_rqs_answer(
    connection: redis.Redis, path: str, state: str
) -> None:
    """RQ 2.x defers such a child on a single enqueue (3.0 queues it); enqueue_many queues it on
    both. The guard gives the same answer in every pipeline state."""
    if path == "enqueue_many" and "depends_on" not in inspect.signature(Queue.prepare_data).parameters:
        pytest.skip("this RQ's enqueue_many takes no depends_on")
    parent = failed_parent(connection)
    expected = rqs_own_answer(connection, parent, path)
    children = queue(connection, "children")
    depends_on = Dependency(jobs=[parent], allow_failure=True)
    with connection.pipeline() as pipe:
        if state == "command-buffered":
            pipe.incr("batches")
        else:
            pipe.multi()
        if path == "enqueue":
            child = children.enqueue_call(record, args=("child",), depends_on=depends_on, pipeline=pipe)
        else:
            (child,) = children.enqueue_many(
                [Queue.prepare_data(record, args=("child",), depends_on=depends_on)], pipeline=pipe
            )
        pipe.execute()
    assert status_of(connection, child.id) == expected
    assert_drained_cleanly(connection, connection)
    assert ("child" in executed(connection)) is (expected != JobStatus.DEFERRED)


# --- the refusal's own bookkeeping ------------------------------------------------------------


def dependent_batch(client: redis.Redis, pipe: Any, parent: str = "parent-a") -> None:
    pipe.incr("batches")
    queue(client, "children").enqueue_call(record, args=("child",), depends_on=parent, pipeline=pipe)


def test_one_connect_callback_per_connection_however_many_batches(connection: redis.Redis) -> None:
    """redis-py 4.x cannot remove a connect callback and none prunes them before a reconnect:
    the guard registers one per connection, not one per transaction, and keeps no pipeline."""
    import gc

    from rq_pipeline_fix import pipelines

    seed_parents(connection)
    for _ in range(50):
        with connection.pipeline() as pipe:
            dependent_batch(connection, pipe)
            pipe.execute()
    pooled = connection.connection_pool._available_connections
    assert [len(pooled_connection._connect_callbacks) for pooled_connection in pooled] <= [1] * len(pooled)
    del pipe
    gc.collect()
    assert len(pipelines._notes_by_pipeline) == 0
    assert queue(connection, "children").count == 0 and connection.get("batches") == b"50"
    assert connections_in_use(connection) == 0


def test_refusal_survives_a_pubsub_that_used_the_same_connection(
    connection: redis.Redis, proxy: CuttingProxy
) -> None:
    """redis-py 4.x's PubSub.reset() clears every connect callback of the connection it hands
    back to the pool; the next transaction on that connection must be protected all the same."""
    seed_parents(connection)
    client = redis.Redis(host="127.0.0.1", port=proxy.port)
    with client.pipeline() as pipe:
        dependent_batch(client, pipe, parent="parent-b")
        used = pipe.connection  # the guard WATCHed on it: its refusal is registered there
        pipe.execute()
    pubsub = client.pubsub()  # takes the connection released last: the pipeline's
    pubsub.subscribe("news")
    assert pubsub.connection is used
    pubsub.close()
    attempts: list[Any] = []

    def batch(pipe: Any) -> None:
        dependent_batch(client, pipe)
        attempts.append(pipe.connection)
        if len(attempts) == 1:
            client.connection_pool.disconnect()
            finish(connection, "parent-a")

    client.transaction(batch)
    assert attempts[0] is used and len(attempts) == 2
    assert_drained_cleanly(connection, client)
    client.close()


def test_a_connection_class_without_connect_callbacks_is_named(connection: redis.Redis) -> None:
    """Never silent: where the guard cannot refuse a reconnect, it says so once."""
    import rq_pipeline_fix

    class NoCallbacks(redis.Connection):
        register_connect_callback = None  # type: ignore[assignment]

    seed_parents(connection)
    port = connection.connection_pool.connection_kwargs["port"]
    client = redis.Redis(connection_pool=redis.ConnectionPool(port=port, connection_class=NoCallbacks))
    with (
        pytest.warns(
            rq_pipeline_fix.RQPipelineFixWarning, match="NoCallbacks has no register_connect_callback"
        ),
        client.pipeline() as pipe,
    ):
        dependent_batch(client, pipe)
        pipe.execute()
    assert status_of(connection, queue(connection, "children").deferred_job_registry.get_job_ids()[0]) == (
        JobStatus.DEFERRED
    )
    client.close()
