"""Faults mid-batch: the redis-server killed before ``execute()``, and the connection cut (or the
server killed) after exactly N bytes of the batch's MULTI/EXEC request. The caller gets
ConnectionError or WatchError, Redis holds nothing of the batch, and the same process (same
client, same pool) enqueues fine afterwards with the guard still on.

Each test has its own redis-server. Those that kill it run with ``appendonly yes`` and
``appendfsync always`` and compare the database after the restart with the one before the batch:
everything written before the batch survives, so the absence of the batch's keys is meaningful.
Those that only cut the connection check the live server through a direct connection.

The batch needs the guard on every supported RQ (a caller command first, two queues, dependents
of a parent in Redis and of a parent in the same batch, ``enqueue_many`` with ``depends_on``):
it is the one the guard reads the parents' statuses for on the connection that will run EXEC.

Clients are built as ``redis.Redis(host, port)``: redis-py 6+ then retries a failed
``execute()`` on a new connection (``from_url`` clients do not), which the tests take into
account rather than switch off.
"""

from __future__ import annotations

import contextlib
import inspect
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from packaging.version import Version
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue
from rq.job import Job, JobStatus

import rq_pipeline_fix
from tests.conftest import REDIS_SERVER
from tests.jobs import record
from tests.proxy import CuttingProxy
from tests.snapshot import snapshot

pytestmark = pytest.mark.reliability

PARENT = "parent-in-redis"
STARTUP_TIMEOUT = 10.0  # seconds; a safety bound, never asserted on


class RedisProcess:
    """A redis-server of this test's own, on a fixed port and folder, that can be SIGKILLed and
    started again on the same port with the same append-only file."""

    def __init__(self, directory: Path, port: int) -> None:
        assert REDIS_SERVER is not None
        self.directory = directory
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        arguments = [
            str(REDIS_SERVER),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",  # every acknowledged write is on disk before the reply
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(arguments, stdin=subprocess.DEVNULL)
        probe = self.direct()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        try:
            while True:
                try:
                    if probe.ping():
                        return
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        log = (self.directory / "redis.log").read_text(errors="replace")[-1000:]
                        raise RuntimeError(f"redis-server did not start: {log}") from None
                    time.sleep(0.02)
        finally:
            probe.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save; only what was fsynced survives."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.kills += 1

    def direct(self) -> redis.Redis:
        """A client of the test's own, straight to the server, that does not retry."""
        return redis.Redis(host="127.0.0.1", port=self.port, retry=Retry(NoBackoff(), 0))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path, record_property: Any) -> Iterator[RedisProcess]:
    if REDIS_SERVER is None:
        pytest.skip("no redis-server executable to start a server of the test's own")
    process = RedisProcess(tmp_path, free_port())
    process.start()
    yield process
    record_property("server_kills", process.kills)  # counted for the run's report (--junitxml)
    process.kill()


@pytest.fixture
def proxy(server: RedisProcess, record_property: Any) -> Iterator[CuttingProxy]:
    cutting = CuttingProxy(server.port)
    yield cutting
    record_property("connection_faults", cutting.faults)
    cutting.close()


def seed(client: redis.Redis) -> None:
    """What Redis holds before the batch: a queued parent and an unrelated key."""
    Queue("parents", connection=client).enqueue_call(record, args=("parent",), job_id=PARENT)
    client.set("unrelated", "kept")


ENQUEUE_MANY_TAKES_DEPENDS_ON = "depends_on" in inspect.signature(Queue.prepare_data).parameters


def buffer_batch(client: redis.Redis, pipe: Any, tag: str, dependents: bool = True) -> None:
    """One atomic batch; with ``dependents`` the guard WATCHes and reads the parents' statuses
    through the pipeline's own connection (the pipeline is then "watching")."""
    pipe.incr(f"{tag}:counter")  # the caller's own command first: every RQ release needs the guard (D2)
    Queue("high", connection=client).enqueue_call(record, job_id=f"{tag}-high", pipeline=pipe)
    low = Queue("low", connection=client)
    low.enqueue_call(record, job_id=f"{tag}-low", pipeline=pipe)
    if dependents:
        low.enqueue_call(record, job_id=f"{tag}-child", depends_on=PARENT, pipeline=pipe)
        low.enqueue_call(record, job_id=f"{tag}-grandchild", depends_on=f"{tag}-high", pipeline=pipe)
        many = Queue("many", connection=client)
        if ENQUEUE_MANY_TAKES_DEPENDS_ON:
            many.enqueue_many(
                [Queue.prepare_data(record, job_id=f"{tag}-many", depends_on=PARENT)], pipeline=pipe
            )
        else:  # RQ < 1.15
            many.enqueue_call(record, job_id=f"{tag}-many", depends_on=PARENT, pipeline=pipe)
    pipe.rpush(f"{tag}:log", "batch")


def assert_landed_once(client: redis.Redis, tag: str, dependents: bool = True) -> None:
    assert client.get(f"{tag}:counter") == b"1"
    assert client.lrange(f"{tag}:log", 0, -1) == [b"batch"]
    assert Queue("high", connection=client).job_ids.count(f"{tag}-high") == 1
    assert Queue("low", connection=client).job_ids.count(f"{tag}-low") == 1
    if dependents:
        deferred = [f"{tag}-child", f"{tag}-grandchild", f"{tag}-many"]
        statuses = [Job.fetch(job_id, connection=client).get_status() for job_id in deferred]
        assert statuses == [JobStatus.DEFERRED] * 3


def assert_guard_still_on() -> None:
    assert rq_pipeline_fix.status().active


def batch_request_size(pipe: Any) -> int:
    """Bytes redis-py will send for the pipeline's MULTI ... EXEC."""
    commands = [("MULTI",), *(args for args, _options in pipe.command_stack), ("EXEC",)]
    packer: Any = redis.Connection()  # type: ignore[no-untyped-call]  # packs only: never connects
    chunks: list[bytes] = packer.pack_commands(commands)
    return sum(len(chunk) for chunk in chunks)


def request_size(client: redis.Redis, dependents: bool = True) -> int:
    """The size of the batch's request, found by buffering it and throwing it away."""
    with client.pipeline() as pipe:
        buffer_batch(client, pipe, "batch", dependents)
        return batch_request_size(pipe)


def client_of(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port)


def cut_points(total: int, stress: bool) -> list[int]:
    """Where to cut a request of ``total`` bytes: before anything, inside, just before the last
    byte of EXEC; under --stress, every 7th byte as well."""
    points = {0, 1, total // 3, total // 2, (2 * total) // 3, total - 1}
    if stress:
        points.update(range(0, total, 7))
    return sorted(points)


# --- the server killed before execute() --------------------------------------------------------


@pytest.mark.parametrize("dependents", [True, False], ids=["with-dependents", "without-dependents"])
def test_server_killed_before_execute_leaves_nothing_and_the_process_recovers(
    server: RedisProcess, dependents: bool
) -> None:
    client = client_of(server.port)
    seed(client)
    before = snapshot(server.direct())
    pipe = client.pipeline()
    buffer_batch(client, pipe, "batch", dependents)
    server.kill()
    # Watching (dependents): redis-py raises WatchError at the first failure, the WATCH is gone.
    # Not watching: redis-py retries, finds no server, raises ConnectionError.
    expected = redis.WatchError if dependents else redis.ConnectionError
    with pytest.raises(expected):
        pipe.execute()
    server.start()
    assert snapshot(server.direct()) == before  # the earlier writes survived; nothing of the batch
    assert_guard_still_on()
    with client.pipeline() as again:  # the same client: its pool reconnects
        buffer_batch(client, again, "again", dependents)
        again.execute()
    assert_landed_once(client, "again", dependents)
    assert not client.exists("batch:counter")


# --- the connection cut after N bytes of the MULTI/EXEC request ---------------------------------


def run_cut_batch(
    client: redis.Redis, proxy: CuttingProxy, cut_at: int, dependents: bool, on_cut: Any = None
) -> tuple[int, Exception | None]:
    """Buffer the batch, arm the proxy to cut ``cut_at`` bytes into execute()'s request, run
    execute(); return (the request's size, the error the caller got)."""
    client.ping()  # a live pooled connection: no connection handshake inside the counted bytes
    pipe = client.pipeline()
    buffer_batch(client, pipe, "batch", dependents)
    total = batch_request_size(pipe)
    start = proxy.forwarded["request"]
    proxy.cut_after(cut_at, "request", on_cut=on_cut)
    error: Exception | None = None
    try:
        pipe.execute()
    except (redis.ConnectionError, redis.WatchError) as exc:
        error = exc
    finally:
        pipe.reset()
    assert proxy.cut.wait(STARTUP_TIMEOUT), (cut_at, total, error)  # on_cut may still be killing the server
    assert proxy.forwarded["request"] - start >= min(cut_at, total)
    return total, error


def test_request_size_is_what_redis_py_sends(server: RedisProcess, proxy: CuttingProxy) -> None:
    """The byte counts the cut points are computed from are the real ones."""
    client = client_of(proxy.port)
    seed(client)
    client.ping()
    pipe = client.pipeline()
    buffer_batch(client, pipe, "batch")
    total, start = batch_request_size(pipe), proxy.forwarded["request"]
    pipe.execute()
    assert proxy.forwarded["request"] - start == total


@pytest.mark.parametrize("outage", ["down", "blip"])
@pytest.mark.parametrize("dependents", [True, False], ids=["with-dependents", "without-dependents"])
def test_connection_cut_mid_request_writes_nothing_and_the_process_recovers(
    server: RedisProcess, proxy: CuttingProxy, dependents: bool, outage: str, stress: bool
) -> None:
    """``down``: the server stays unreachable until the test restores it. ``blip``: reachable
    again at once, so redis-py's retry of a batch that was not WATCHing re-sends it whole."""
    client = client_of(proxy.port)
    seed(client)
    before = snapshot(server.direct())
    points = cut_points(request_size(client, dependents), stress)
    if outage == "down" and not dependents:  # each costs redis-py's whole retry schedule (~4 s)
        points = points[:: max(1, len(points) // 10)] if stress else points[-1:]
    # redis-py >= 6 re-sends a batch that was not WATCHing after a connection error; older
    # releases raise it (nothing landed either way: checked below)
    resent = outage == "blip" and not dependents and Version(redis.__version__) >= Version("6")
    for cut_at in points:
        on_cut = proxy.restore if outage == "blip" else None
        _total, error = run_cut_batch(client, proxy, cut_at, dependents, on_cut)
        proxy.restore()
        if resent:  # the server dropped the partial MULTI; redis-py's resend landed
            assert error is None, f"cut at byte {cut_at}"
            assert_landed_once(server.direct(), "batch", dependents)
            server.direct().flushdb()
            seed(server.direct())
        else:
            assert isinstance(error, redis.WatchError if dependents else redis.ConnectionError), cut_at
            assert snapshot(server.direct()) == before, f"cut at byte {cut_at}"
    assert_guard_still_on()
    with client.pipeline() as again:
        buffer_batch(client, again, "again", dependents)
        again.execute()
    assert_landed_once(server.direct(), "again", dependents)


def test_connection_cut_after_the_whole_request_is_all_or_nothing(
    server: RedisProcess, proxy: CuttingProxy
) -> None:
    """The reply is lost after EXEC arrived: the caller cannot know, but Redis holds the whole
    batch exactly once (a WATCHing pipeline is not re-sent by redis-py)."""
    client = client_of(proxy.port)
    seed(client)
    client.ping()
    pipe = client.pipeline()
    buffer_batch(client, pipe, "batch")
    proxy.cut_after(0, "reply")
    with pytest.raises(redis.WatchError):
        pipe.execute()
    proxy.restore()
    assert_landed_once(server.direct(), "batch")


# --- the server killed after N bytes of the request ----------------------------------------------


def test_server_killed_mid_request_writes_nothing_after_restart(
    server: RedisProcess, proxy: CuttingProxy, stress: bool
) -> None:
    client = client_of(proxy.port)
    seed(client)
    before = snapshot(server.direct())
    total = request_size(client)
    points = [total // 2, total - 1] if not stress else cut_points(total, stress)[::5]
    for cut_at in points:
        _total, error = run_cut_batch(client, proxy, cut_at, dependents=True, on_cut=server.kill)
        assert isinstance(error, redis.WatchError), cut_at
        server.start()
        proxy.restore()
        assert snapshot(server.direct()) == before, f"killed after byte {cut_at}"
    assert_guard_still_on()
    with client.pipeline() as again:
        buffer_batch(client, again, "again")
        again.execute()
    assert_landed_once(server.direct(), "again")


def test_server_killed_right_after_the_whole_request_is_all_or_nothing(
    server: RedisProcess, proxy: CuttingProxy
) -> None:
    client = client_of(proxy.port)
    seed(client)
    before = snapshot(server.direct())
    total = request_size(client)
    _total, error = run_cut_batch(client, proxy, total, dependents=True, on_cut=server.kill)
    assert isinstance(error, redis.WatchError)
    server.start()
    proxy.restore()
    after = server.direct()
    if snapshot(after) != before:  # EXEC ran and was fsynced before the kill: then all of it
        assert_landed_once(after, "batch")


# --- the connection lost between the guard's WATCH and EXEC ------------------------------------


def test_connection_lost_after_the_dependency_check_aborts_the_batch(
    server: RedisProcess, proxy: CuttingProxy
) -> None:
    """The guard WATCHed the parent on the pipeline's connection; the connection drops; the
    parent finishes meanwhile. EXEC on a new connection would no longer be watching, so the
    child would stay deferred on a finished parent: redis-py must refuse with WatchError."""
    client = client_of(proxy.port)
    seed(client)
    before = snapshot(server.direct())
    pipe = client.pipeline()
    buffer_batch(client, pipe, "batch")
    proxy.drop_connections()  # a blip: the server and the proxy stay up
    finish_parent(server.direct())
    with pytest.raises(redis.WatchError):
        pipe.execute()
    assert snapshot(server.direct()) == {**before, **parent_finished_keys(server.direct(), before)}


def as_bytes(key: str | bytes) -> bytes:
    return key if isinstance(key, bytes) else key.encode()  # Job.key_for: bytes before RQ 3


def finish_parent(direct: redis.Redis) -> None:
    direct.hset(Job.key_for(PARENT), "status", JobStatus.FINISHED.value)


def parent_finished_keys(direct: redis.Redis, before: dict[bytes, Any]) -> dict[bytes, Any]:
    parent_key = as_bytes(Job.key_for(PARENT))
    return {parent_key: snapshot(direct)[parent_key]} if parent_key in before else {}


def test_connection_lost_between_two_dependency_checks_never_executes_unwatched(
    server: RedisProcess, proxy: CuttingProxy
) -> None:
    """Two dependents in one batch; the connection drops between the guard's two WATCHes. The
    second enqueue fails; if the caller goes on (e.g. a retry decorator around that one call),
    nothing buffered before the drop may commit: the first child, checked under a WATCH that is
    gone, would stay deferred forever on a parent that finished in between. As redis-py does for
    its own WATCH, the guard raises WatchError and resets the pipeline: the retried call then
    stands alone, and the caller's ``Redis.transaction`` would redo the whole batch."""
    client = client_of(proxy.port)
    seed(client)
    Queue("parents", connection=client).enqueue_call(record, job_id="other-parent")
    low = Queue("low", connection=client)
    pipe = client.pipeline()
    pipe.incr("batch:counter")
    low.enqueue_call(record, job_id="first-child", depends_on=PARENT, pipeline=pipe)
    proxy.drop_connections()
    with pytest.raises(redis.WatchError):
        low.enqueue_call(record, job_id="second-child", depends_on="other-parent", pipeline=pipe)
    low.enqueue_call(record, job_id="second-child", depends_on="other-parent", pipeline=pipe)  # a retry
    finish_parent(server.direct())
    with contextlib.suppress(redis.WatchError):
        pipe.execute()
    direct = server.direct()
    assert not direct.exists(Job.key_for("first-child")), "first child committed unwatched"
    assert not direct.exists("batch:counter")
    assert b"first-child" not in direct.smembers(Job.dependents_key_for(PARENT))


# --- a parent finishing while the connection is cut ----------------------------------------------


def test_worker_finishing_the_parent_during_an_outage_cannot_strand_the_child(
    server: RedisProcess, proxy: CuttingProxy
) -> None:
    """Redis.transaction(fn) retries the batch after the outage; the retry sees the finished
    parent and queues the child at once instead of deferring it."""
    client = client_of(proxy.port)
    seed(client)
    attempts: list[int] = []

    def batch(pipe: Any) -> None:
        attempts.append(1)
        pipe.incr("counter")
        Queue("low", connection=client).enqueue_call(record, job_id="child", depends_on=PARENT, pipeline=pipe)
        if len(attempts) == 1:
            proxy.drop_connections()
            finish_parent(server.direct())

    client.transaction(batch)
    assert len(attempts) == 2
    direct = server.direct()
    assert Job.fetch("child", connection=direct).get_status() == JobStatus.QUEUED
    assert Queue("low", connection=direct).job_ids == ["child"] and direct.get("counter") == b"1"


# --- sanity of the helpers themselves ------------------------------------------------------------


def test_killed_server_keeps_what_was_acknowledged(server: RedisProcess) -> None:
    """Without this, 'nothing of the batch after the restart' would prove nothing."""
    direct = server.direct()
    seed(direct)
    before = snapshot(direct)
    server.kill()
    server.start()
    assert snapshot(server.direct()) == before != {}
