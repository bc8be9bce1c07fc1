"""Bad input and unusual environments: whatever is passed as ``pipeline=``, the outcome is RQ's
own (the same call with the guard reverted, on a fresh database: same exception type, same
final keys) or, where RQ itself would write part of the call and then fail, a TypeError naming
the problem before anything is written; never a partial write. An RQ newer than the version table,
or one whose probes cannot decide, or no rq at all, is reported as it is; the kill switch's
other spellings.

The ``pipeline=`` kinds: a ``Redis`` client, a string, pipelines that were already used
(executed, reset, aborted by WatchError, closed by ``with``, failed by a command error, reset
out of MULTI), a fakeredis pipeline handed to a queue on the real server, and redis-py
``ClusterPipeline`` objects of a real three-node cluster started on loopback ports.
"""

from __future__ import annotations

import inspect
import json
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import product
from pathlib import Path
from typing import Any, Callable

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue

import rq_pipeline_fix
from rq_pipeline_fix import detect
from rq_pipeline_fix.versions import TableVerdict
from tests.conftest import REDIS_SERVER, child_environment, detected
from tests.jobs import record
from tests.snapshot import snapshot

pytestmark = [
    pytest.mark.reliability,
    # RQ itself calls WATCH on a client passed as pipeline=; redis-py deprecates that.
    pytest.mark.filterwarnings("ignore:Call WATCH from a Pipeline object:DeprecationWarning"),
]

REPOSITORY = str(Path(__file__).resolve().parent.parent)
TIMEOUT = 120  # seconds: a safety bound on subprocesses and the cluster's start, never asserted on
WHEN = datetime(2100, 1, 1, tzinfo=timezone.utc)
PARENT = "parent"

Operation = Callable[[Queue, Any], Any]

# One call each, alone in its pipeline: upstream RQ handles each of them on a fresh pipeline, so
# a difference can only come from the input, not from the defects the guard fixes.
OPERATIONS: dict[str, Operation] = {
    "enqueue": lambda q, pipe: q.enqueue_call(record, job_id="a", pipeline=pipe),
    "enqueue-dependent": lambda q, pipe: q.enqueue_call(record, job_id="a", depends_on=PARENT, pipeline=pipe),
    "enqueue_many": lambda q, pipe: q.enqueue_many(
        [Queue.prepare_data(record, job_id="a"), Queue.prepare_data(record, job_id="b")], pipeline=pipe
    ),
    "enqueue_many-dependent": lambda q, pipe: q.enqueue_many(
        [Queue.prepare_data(record, job_id="a"), Queue.prepare_data(record, job_id="b", depends_on=PARENT)],
        pipeline=pipe,
    ),
    "enqueue_at": lambda q, pipe: q.enqueue_at(WHEN, record, job_id="a", pipeline=pipe),
}
if "depends_on" not in inspect.signature(Queue.prepare_data).parameters:  # RQ < 1.15
    del OPERATIONS["enqueue_many-dependent"]


# --- the pipeline= kinds -----------------------------------------------------------------------


def executed(connection: redis.Redis) -> Any:
    pipe = connection.pipeline()
    pipe.set("used", 1)
    pipe.execute()
    return pipe


def reset_with_commands(connection: redis.Redis) -> Any:
    pipe = connection.pipeline()
    pipe.set("used", 1)
    pipe.reset()
    return pipe


def aborted_by_watch_error(connection: redis.Redis) -> Any:
    pipe: Any = connection.pipeline()
    pipe.watch("watched")
    connection.set("watched", 1)
    pipe.multi()
    pipe.set("used", 1)
    with pytest.raises(redis.WatchError):
        pipe.execute()
    return pipe


def closed_by_with(connection: redis.Redis) -> Any:
    with connection.pipeline() as pipe:
        pipe.set("used", 1)
    return pipe


def failed_by_a_command_error(connection: redis.Redis) -> Any:
    connection.set("text", "not a number")
    pipe = connection.pipeline()
    pipe.incr("text")
    with pytest.raises(redis.ResponseError):
        pipe.execute()
    return pipe


def reset_out_of_multi(connection: redis.Redis) -> Any:
    pipe = connection.pipeline()
    pipe.multi()
    pipe.set("used", 1)
    pipe.reset()
    return pipe


KINDS: dict[str, Callable[[redis.Redis], Any]] = {
    "redis-client": lambda connection: connection,
    "string": lambda connection: "pipeline",
    "executed": executed,
    "reset-with-commands": reset_with_commands,
    "aborted-by-watch-error": aborted_by_watch_error,
    "closed-by-with": closed_by_with,
    "failed-by-a-command-error": failed_by_a_command_error,
    "reset-out-of-multi": reset_out_of_multi,
}

# Where RQ itself writes before it fails: RQ's enqueue_many saves the jobs and registers their
# dependencies through the client at once, then calls execute(), which a client does not have.
# The guard refuses it with a TypeError instead (test_refused_before_anything_is_written).
UPSTREAM_WRITES_THEN_FAILS = {("redis-client", "enqueue_many-dependent")}


@dataclass(frozen=True)
class Outcome:
    error: str | None  # the exception's type, None when the call and execute() went through
    before: dict[str, Any]  # every database involved, right before the call
    after: dict[str, Any]  # and after it (and after execute(), for a pipeline)


def is_pipeline(candidate: Any) -> bool:
    return hasattr(candidate, "command_stack") and callable(getattr(candidate, "execute", None))


Databases = dict[str, Callable[[], dict[bytes, Any]]]  # name -> a snapshot of it


def call(
    queue_connection: Any, make_pipeline: Callable[[], Any], operation: str, databases: Databases
) -> Outcome:
    """Seed a queued parent, make the pipeline, call ``operation`` with it, execute it."""
    Queue("parents", connection=queue_connection).enqueue_call(record, job_id=PARENT)
    pipe = make_pipeline()
    before = {name: take() for name, take in databases.items()}
    error = None
    try:
        OPERATIONS[operation](Queue("default", connection=queue_connection), pipe)
        if is_pipeline(pipe):
            pipe.execute()
    except Exception as exc:
        error = type(exc).__name__
    return Outcome(error, before, {name: take() for name, take in databases.items()})


def redis_only(connection: redis.Redis) -> Databases:
    return {"redis": lambda: snapshot(connection)}


@contextmanager
def guard(on: bool) -> Iterator[None]:
    """The guard on, or RQ as installed; the autouse fixture re-applies it after the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rq_pipeline_fix.RQPipelineFixWarning)
        if on:
            rq_pipeline_fix.apply()
        else:
            rq_pipeline_fix.revert()
        try:
            yield
        finally:
            rq_pipeline_fix.apply()


def with_and_without_guard(
    run: Callable[[], Outcome], flush: Callable[[], object]
) -> tuple[Outcome, Outcome]:
    outcomes = []
    for on in (True, False):
        flush()
        with guard(on):
            outcomes.append(run())
    return outcomes[0], outcomes[1]


@pytest.mark.parametrize(
    ("kind", "operation"),
    [(k, o) for k in KINDS for o in OPERATIONS if (k, o) not in UPSTREAM_WRITES_THEN_FAILS],
)
def test_same_outcome_as_rq_without_the_guard(connection: redis.Redis, kind: str, operation: str) -> None:
    ours, upstream = with_and_without_guard(
        lambda: call(connection, lambda: KINDS[kind](connection), operation, redis_only(connection)),
        connection.flushdb,
    )
    assert ours == upstream


@pytest.mark.parametrize(
    ("kind", "operation"), sorted(UPSTREAM_WRITES_THEN_FAILS & set(product(KINDS, OPERATIONS)))
)
def test_refused_before_anything_is_written_where_rq_writes_then_fails(
    connection: redis.Redis, kind: str, operation: str
) -> None:
    ours, upstream = with_and_without_guard(
        lambda: call(connection, lambda: KINDS[kind](connection), operation, redis_only(connection)),
        connection.flushdb,
    )
    assert upstream.error is not None and upstream.after != upstream.before  # RQ's own half-write
    assert ours.error == "TypeError" and ours.after == ours.before


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_call_that_fails_writes_nothing(connection: redis.Redis, kind: str, operation: str) -> None:
    outcome = call(connection, lambda: KINDS[kind](connection), operation, redis_only(connection))
    if outcome.error is not None:
        assert outcome.after == outcome.before, f"{kind} {operation}: {outcome.error} after a partial write"


def test_a_client_for_enqueue_many_with_dependencies_is_refused_with_a_message_naming_it(
    connection: redis.Redis,
) -> None:
    if "enqueue_many-dependent" not in OPERATIONS:
        pytest.skip("enqueue_many takes depends_on from RQ 1.15")
    job_datas = (Queue.prepare_data(record, job_id=name, depends_on=PARENT) for name in "ab")  # one-shot
    with pytest.raises(TypeError, match=r"pipeline= must be a pipeline .*not a Redis"):
        Queue("default", connection=connection).enqueue_many(job_datas, pipeline=connection)
    assert connection.keys("*") == []


def test_a_client_for_enqueue_many_without_dependencies_writes_at_once_as_in_rq(
    connection: redis.Redis,
) -> None:
    """No depends_on: RQ writes every job through the client and does not fail, so the guard
    does not refuse it (a one-shot iterable of job datas still works)."""
    job_datas = (Queue.prepare_data(record, job_id=name) for name in "ab")
    jobs = Queue("default", connection=connection).enqueue_many(job_datas, pipeline=connection)
    assert [job.id for job in jobs] == ["a", "b"]
    assert Queue("default", connection=connection).job_ids == ["a", "b"]


def test_used_pipelines_take_a_whole_batch_that_needs_the_guard(connection: redis.Redis) -> None:
    """The used kinds above, each reused for a batch upstream RQ cannot take (a command first,
    two queues, a dependent): all of it lands, once."""
    for name, make in KINDS.items():
        if name in ("redis-client", "string"):
            continue
        connection.flushdb()
        Queue("parents", connection=connection).enqueue_call(record, job_id=PARENT)
        pipe = make(connection)
        pipe.incr("batch")
        Queue("high", connection=connection).enqueue_call(record, job_id="a", pipeline=pipe)
        Queue("low", connection=connection).enqueue_call(record, job_id="b", depends_on=PARENT, pipeline=pipe)
        pipe.execute()
        assert connection.get("batch") == b"1", name
        assert Queue("high", connection=connection).job_ids == ["a"], name
        assert Queue("low", connection=connection).deferred_job_registry.get_job_ids() == ["b"], name


# --- a fakeredis pipeline for a queue on the real server ---------------------------------------


@pytest.mark.parametrize("operation", OPERATIONS)
def test_fakeredis_pipeline_for_a_real_queue_leaves_the_real_server_alone(
    connection: redis.Redis, operation: str
) -> None:
    """Everything the call buffers goes where the caller's pipeline goes (the fake server), as
    in RQ, except where RQ < 3 writes the scheduled entry around the pipeline (D8, fixed)."""
    fakeredis = pytest.importorskip("fakeredis")
    fake = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    databases: Databases = {"real": lambda: snapshot(connection), "fake": lambda: snapshot(fake)}

    def flush() -> None:
        connection.flushdb()
        fake.flushdb()

    ours, upstream = with_and_without_guard(
        lambda: call(connection, fake.pipeline, operation, databases), flush
    )
    assert ours.error is None and ours.after["real"] == ours.before["real"]
    assert ours.error == upstream.error
    if operation == "enqueue_at" and detected("D8"):  # RQ's own split: the entry on the wrong server
        scheduled = b"rq:scheduled:default"
        assert set(upstream.after["real"]) - set(upstream.before["real"]) == {scheduled}
        assert {**upstream.after["fake"], scheduled: ours.after["fake"][scheduled]} == ours.after["fake"]
    else:
        assert upstream.after == ours.after


# --- redis-py ClusterPipeline --------------------------------------------------------------------


@dataclass
class Cluster:
    client: Any  # redis.cluster.RedisCluster
    nodes: list[redis.Redis]
    processes: list[subprocess.Popen[bytes]]

    def flush(self) -> None:
        for node in self.nodes:
            node.flushall()

    def snapshot(self) -> dict[bytes, Any]:
        return {key: value for node in self.nodes for key, value in snapshot(node).items()}


def _cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster bus ports (port + 10000) are free too: at most 55535."""
    import random

    found: list[int] = []
    for candidate in random.sample(range(20000, 55536), 2000):
        if len(found) == count:
            break
        try:
            for port in (candidate, candidate + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        found.append(candidate)
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three redis-server primaries with cluster mode on, slots split between them."""
    if REDIS_SERVER is None:
        pytest.skip("no redis-server executable to start a cluster with")
    from redis.cluster import RedisCluster

    directory = tmp_path_factory.mktemp("cluster")
    ports = _cluster_ports(3)
    processes = [
        subprocess.Popen(
            [str(REDIS_SERVER), *_cluster_node_arguments(port, directory)], stdin=subprocess.DEVNULL
        )
        for port in ports
    ]
    nodes: list[Any] = [
        redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0)) for port in ports
    ]
    try:
        deadline = time.monotonic() + TIMEOUT
        formed = _form_cluster(nodes, ports, deadline)
        if not formed:
            pytest.skip(f"a three-node cluster did not form within {TIMEOUT} s on this machine")
        client = RedisCluster(host="127.0.0.1", port=ports[0])
        yield Cluster(client, nodes, processes)
        client.close()
    finally:
        for process in processes:
            process.kill()
            process.wait()


def _cluster_node_arguments(port: int, directory: Path) -> list[str]:
    return [
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--cluster-enabled", "yes",
        "--cluster-config-file", f"nodes-{port}.conf",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
        "--logfile", f"redis-{port}.log",
    ]  # fmt: skip


def _form_cluster(nodes: list[Any], ports: list[int], deadline: float) -> bool:
    for node in nodes:
        while True:
            try:
                node.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
    slots = 16384
    for index, node in enumerate(nodes):
        first, last = index * slots // len(nodes), (index + 1) * slots // len(nodes) - 1
        node.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
    for port in ports[1:]:
        nodes[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
    while time.monotonic() < deadline:
        states = [node.execute_command("CLUSTER", "INFO") for node in nodes]
        if all("cluster_state:ok" in (s.decode() if isinstance(s, bytes) else str(s)) for s in states):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("transaction", [False, True], ids=["plain", "transaction"])
def test_cluster_pipeline_behaves_as_in_rq_and_a_failure_writes_nothing(
    connection: redis.Redis,
    cluster: Cluster,
    transaction: bool,
    operation: str,
) -> None:
    """A ClusterPipeline is not a redis-py Pipeline: the guard steps aside and RQ's own outcome
    comes out: an error (no explicit_transaction / multi() or WATCH refused / cross-slot
    transaction) or, for what needs no MULTI, the writes on the cluster. Except enqueue_at where
    D8 is patched: a TypeError before anything is written."""
    databases: Databases = {"redis": lambda: snapshot(connection), "cluster": cluster.snapshot}
    if transaction:
        try:
            cluster.client.pipeline(transaction=True)
        except redis.exceptions.RedisClusterException as exc:  # redis-py < 6
            pytest.skip(f"this redis-py has no transactional ClusterPipeline: {exc}")

    def run() -> Outcome:
        return call(
            connection, lambda: cluster.client.pipeline(transaction=transaction), operation, databases
        )

    def flush() -> None:
        connection.flushdb()
        cluster.flush()

    ours, upstream = with_and_without_guard(run, flush)
    if operation == "enqueue_at" and detected("D8"):
        # RQ < 3 writes the scheduled entry with the queue's connection (D8), which the guard can
        # move into a redis-py Pipeline only: any other pipeline is refused before anything is
        # written, where RQ puts the entry on the queue's server and the job on the cluster (or
        # nowhere, when the ClusterPipeline then fails).
        assert upstream.after["redis"] != upstream.before["redis"]
        assert ours.error == "TypeError" and ours.after == ours.before
        return
    assert ours == upstream
    if ours.error is None:  # a non-transactional ClusterPipeline takes what needs no MULTI, as in RQ
        return
    assert ours.after == ours.before


# --- an RQ the version table does not know, one whose probes cannot decide, no rq at all --------

FAKE_RQ_VERSION = """
import importlib.metadata as metadata
real_version = metadata.version
def version(name):
    if name == "rq":
        if VERSION is None:
            raise metadata.PackageNotFoundError(name)
        return VERSION
    return real_version(name)
metadata.version = version
if VERSION is not None:  # once rq is imported, its own version attributes are read instead
    import rq, rq.version
    rq.version.VERSION = rq.__version__ = VERSION
"""

STAND_INS = {
    "installed": "",
    # A release that fixed D1-D3: never switches the caller's pipeline.
    "fixed": "def setup_dependencies(self, job, pipeline=None):\n    return job\n",
    # A release whose setup_dependencies talks to Redis at once: the probes cannot tell.
    "opaque": (
        "def setup_dependencies(self, job, pipeline=None):\n    self.connection.ping()\n    return job\n"
    ),
}


def status_json(version: str | None, stand_in: str = "installed", block_rq: bool = False) -> tuple[int, Any]:
    """``rq-pipeline-fix status --json`` in a fresh interpreter where importlib.metadata reports
    ``version`` for rq, Queue.setup_dependencies is ``stand_in``, and rq may be unimportable."""
    lines = [f"VERSION = {version!r}", FAKE_RQ_VERSION, "import sys"]
    if block_rq:
        lines.append("sys.modules['rq'] = None  # import rq fails as if it were not installed")
    if STAND_INS[stand_in]:
        lines += [
            "from rq.queue import Queue",
            STAND_INS[stand_in],
            "Queue.setup_dependencies = setup_dependencies",
        ]
    lines += ["from rq_pipeline_fix.cli import main", "sys.exit(main(['status', '--json']))"]
    shown = subprocess.run(
        [sys.executable, "-c", "\n".join(lines)],
        cwd=REPOSITORY,
        env=child_environment(PYTHONPATH=REPOSITORY),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert shown.stdout, shown.stderr
    return shown.returncode, json.loads(shown.stdout)


def by_id(document: Any) -> dict[str, Any]:
    return {defect["id"]: defect for defect in document["defects"]}


def test_future_rq_is_judged_by_the_probes_and_status_says_why() -> None:
    code, document = status_json("99.0.0")
    defects = by_id(document)
    assert code == 0 and document["ok"] and document["active"]
    assert all(d["version_table"] == "unknown" for d in defects.values())
    probed = [d for d in defects.values() if " has no " not in d["reason"]]  # D4/D5 before RQ 1.15
    assert all("newer than the releases measured" in d["reason"] for d in probed)
    assert defects["D2"]["detected"] and defects["D2"]["patched"]
    assert defects["D3"]["detected"] and defects["D3"]["patched"]


def test_future_rq_that_fixed_the_defects_is_left_alone_and_status_says_why() -> None:
    code, document = status_json("99.0.0", "fixed")
    defects = by_id(document)
    assert code == 0 and document["ok"]
    assert "Queue.setup_dependencies" not in document["note"]  # not wrapped: nothing to fix there
    for defect_id in ("D1", "D2", "D3"):
        assert defects[defect_id]["detected"] is False and not defects[defect_id]["patched"]
        assert "the probe found RQ correct; rq 99.0.0 is newer" in defects[defect_id]["reason"]


def test_known_rq_whose_code_was_fixed_is_left_alone_although_the_table_says_affected() -> None:
    installed = rq_pipeline_fix.status().rq_version
    code, document = status_json(installed, "fixed")
    d2 = by_id(document)["D2"]
    assert code == 0 and d2["version_table"] == "affected" and d2["detected"] is False
    assert "trusting the probe" in d2["reason"] and not d2["patched"]


def test_future_rq_whose_probes_cannot_tell_is_not_reported_ok() -> None:
    code, document = status_json("99.0.0", "opaque")
    defects = by_id(document)
    assert defects["D2"]["detected"] is None and not defects["D2"]["patched"]
    assert code == 1 and not document["ok"] and "D2" in document["unpatched"]


def test_probe_sees_a_defect_the_version_table_says_is_fixed() -> None:
    """The reverse of test_detect's probe-over-table case: the table says unaffected, the code
    has the defect (say, a fork or a backport gone wrong): the probe wins and says so."""

    def like_rq_1_9(self: Any, job: Any, pipeline: Any = None) -> Any:
        if job._dependency_ids:
            pipeline.watch(job.dependencies_key)
        pipeline.multi()
        return job

    originals: dict[str, Any] = {"Queue.setup_dependencies": like_rq_1_9}
    findings = {finding.defect.id: finding for finding in detect.detect(originals, "2.3.0", now=True)}
    d1 = findings["D1"]
    assert d1.table is TableVerdict.UNAFFECTED and d1.probe is True and d1.present is True
    assert "trusting the probe" in d1.reason


def test_cli_status_without_rq_says_so_and_exits_1() -> None:
    code, document = status_json(None, block_rq=True)
    assert code == 1 and not document["ok"] and not document["active"]
    assert document["rq_version"] is None and document["defects"] == []
    assert "rq cannot be imported" in document["note"]


# --- the kill switch: spellings beyond tests/test_patching.py's ----------------------------------


@pytest.mark.parametrize(
    ("value", "patched", "complaint"),
    [("TRUE", False, False), (" on ", False, False), ("Yes", False, False), ("OFF", True, False),
     ("no", True, False), ("2", False, True), ("disable", False, True)],
)  # fmt: skip
def test_kill_switch_spellings(value: str, patched: bool, complaint: bool) -> None:
    code = (
        "import json, rq_pipeline_fix\n"
        "from rq.queue import Queue\n"
        "kind = type(Queue.__dict__['setup_dependencies']).__name__\n"
        "print(json.dumps([kind, rq_pipeline_fix.status().note]))\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPOSITORY,
        env=child_environment(PYTHONPATH=REPOSITORY, RQ_PIPELINE_FIX_DISABLE=value),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert shown.returncode == 0, shown.stderr
    kind, note = json.loads(shown.stdout)
    assert (kind == "_WrappedAtFirstUse") is patched
    assert ("RQ_PIPELINE_FIX_DISABLE" in note) is not patched
    assert ("is not one of" in shown.stderr) is complaint
