"""The scenario families of DEFECTS.md that concern a server, as ``rq-pipeline-fix selftest`` runs
them against a real one: each enqueues through a caller's pipeline and judges RQ *and* the server.

Nothing of a batch may be visible to another connection before ``execute()``; a WATCHed key
changed by another connection must abort EXEC (``WatchError``) so that ``Redis.transaction``
retries; nothing of an aborted batch may land; and the final state must be exactly what it should
be (queue contents, job statuses, DEFERRED dependents and their parents' dependents sets,
scheduled-registry entries, the caller's own keys). A family raises ``Failed`` saying what differed,
or lets RQ's own error through.

Every name a scenario uses (queue names, job ids, the caller's keys) starts with its prefix, which
carries the run's mark, and is recorded in the run's ``Names``: the run deletes exactly what RQ
derives from them.
"""

from __future__ import annotations

import inspect
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, NamedTuple

from redis.exceptions import ResponseError
from rq import Queue
from rq.job import Job, JobStatus

MAX_ATTEMPTS = 3  # Redis.transaction retries forever on WatchError: a server that always aborts must not


def noop() -> None:
    """The families' job function: importable, and never run (no worker serves their queues)."""


class Failed(Exception):
    """A family's scenario did not end as it must: the message says what differed."""


class Names:
    """Queue names, job ids and the caller's keys written under, and every key RQ derives from them."""

    def __init__(self) -> None:
        self.queue_names: set[str] = set()
        self.job_ids: set[str] = set()
        self.own_keys: set[str] = set()

    def queue_keys(self) -> list[str]:
        return [f"{Queue.redis_queue_namespace_prefix}{name}" for name in sorted(self.queue_names)]

    def rq_keys(self, connection: Any) -> list[str]:
        """Every key RQ derives from the queue names and job ids (whether it exists or not):
        queues, their registries and side keys, job hashes, dependents and dependencies sets."""
        keys: list[Any] = []
        for name in sorted(self.queue_names):
            queue = Queue(name, connection=connection)
            keys.append(queue.key)
            keys += [getattr(queue, registry).key for registry in _REGISTRIES]
            keys += [
                getattr(queue, side)
                for side in _QUEUE_SIDE_KEYS
                if isinstance(getattr(Queue, side, None), property)
            ]
        for job_id in sorted(self.job_ids):
            job = Job(job_id, connection=connection)
            keys += [job.key, job.dependents_key, job.dependencies_key]
        return [as_text(key) for key in keys]  # some releases give bytes for some


_REGISTRIES = sorted(name for name in dir(Queue) if name.endswith("_job_registry"))  # by RQ release
_QUEUE_SIDE_KEYS = ("intermediate_queue_key", "registry_cleaning_key")  # where the release has them


def as_text(value: Any) -> str:
    """A reply or key as str (redis-py replies bytes; some RQ releases give some keys as bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


class Scenario:
    """One family in one column: names of its own (under the run's mark), and the checks, which
    read through another connection, as another process would see the server."""

    def __init__(self, client: Any, observer: Any, prefix: str, run_names: Names) -> None:
        self.client = client  # RQ's connection, and the caller's pipelines
        self.observer = observer  # another connection: another process's view of the server
        self.prefix = prefix  # the run's mark, the family, the column: no other scenario's names
        self.names = Names()
        self.run_names = run_names
        self.before: set[str] = set()

    # names: recorded in the run's names *before* they are used, so that a clean-up finds them
    def queue(self, label: str) -> Any:
        return Queue(
            self._record(self.names.queue_names, self.run_names.queue_names, label), connection=self.client
        )

    def job_id(self, label: str) -> str:
        return self._record(self.names.job_ids, self.run_names.job_ids, label)

    def key(self, label: str) -> str:
        return self._record(self.names.own_keys, self.run_names.own_keys, label)

    def _record(self, mine: set[str], runs: set[str], label: str) -> str:
        name = f"{self.prefix}-{label}"
        mine.add(name)
        runs.add(name)
        return name

    def short(self, text: str) -> str:
        return text.replace(f"{self.prefix}-", "")

    # checks
    def setup_done(self) -> None:
        """What the scenario's own setup put on the server; ``nothing_landed`` ignores it."""
        self.before = self._present()

    def nothing_landed(self, stage: str) -> None:
        landed = sorted(self._present() - self.before)
        if landed:
            shown = ", ".join(self.short(item) for item in landed)
            raise Failed(f"{stage}, already on the server: {shown}")

    def _present(self) -> set[str]:
        """RQ's keys for this scenario's names that exist, and its queues listed in rq:queues."""
        keys = self.names.rq_keys(self.observer)
        queue_keys = self.names.queue_keys()
        with self.observer.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(key)
            for queue_key in queue_keys:
                pipe.sismember(Queue.redis_queues_keys, queue_key)
            replies = pipe.execute()
        listed = [f"{Queue.redis_queues_keys} member {queue_key}" for queue_key in queue_keys]
        return {item for item, reply in zip([*keys, *listed], replies) if reply}

    def queue_holds(self, label: str, *job_labels: str) -> None:
        key = self.queue(label).key
        found = [self.short(as_text(item)) for item in self.observer.lrange(key, 0, -1)]
        if found != list(job_labels):
            raise Failed(f"queue {label} holds {found}, expected {list(job_labels)}")

    def status_is(self, job_label: str, status: Any) -> None:
        found = self.observer.hget(Job.key_for(self.job_id(job_label)), "status")
        expected = getattr(status, "value", status)
        if found is None or as_text(found) != expected:
            shown = "missing" if found is None else as_text(found)
            raise Failed(f"job {job_label} is {shown}, expected {expected}")

    def deferred_registry_holds(self, queue_label: str, *job_labels: str, also: tuple[str, ...] = ()) -> None:
        """Exactly ``job_labels``, give or take those of ``also``: RQ's own enqueue_many leaves a job
        whose parents are met in the deferred registry on some releases (2.2), pipeline or not."""
        key = self.queue(queue_label).deferred_job_registry.key
        members = {as_text(member) for member in self.observer.zrange(key, 0, -1)}
        members -= {self.job_id(label) for label in also}
        self._set_is(f"the deferred registry of {queue_label}", members, job_labels)

    def dependents_are(self, parent_label: str, *job_labels: str) -> None:
        key = Job.dependents_key_for(self.job_id(parent_label))
        self._set_is(f"the dependents of {parent_label}", self.observer.smembers(key), job_labels)

    def scheduled_at(self, queue_label: str, bounds: dict[str, tuple[float, float]]) -> None:
        """The queue's scheduled registry holds exactly these jobs, each at a time in its bounds."""
        key = self.queue(queue_label).scheduled_job_registry.key
        found = {self.short(as_text(m)): s for m, s in self.observer.zrange(key, 0, -1, withscores=True)}
        if sorted(found) != sorted(bounds):
            raise Failed(
                f"the scheduled registry of {queue_label} holds {sorted(found)}, expected {sorted(bounds)}"
            )
        for label, (low, high) in bounds.items():
            if not low <= found[label] <= high:
                raise Failed(f"{label} is scheduled at {found[label]}, expected {low}..{high}")

    # Replies compared as text: the URL may ask for decode_responses, which the observer gets too.
    def value_is(self, key_label: str, expected: str | None) -> None:
        found = self.observer.get(self.key(key_label))
        found = None if found is None else as_text(found)
        if found != expected:
            raise Failed(f"the caller's key {key_label} is {found!r}, expected {expected!r}")

    def list_is(self, key_label: str, *expected: str) -> None:
        found = [as_text(item) for item in self.observer.lrange(self.key(key_label), 0, -1)]
        if found != list(expected):
            raise Failed(f"the caller's list {key_label} is {found!r}, expected {list(expected)!r}")

    def _set_is(self, what: str, members: Any, job_labels: tuple[str, ...]) -> None:
        found = sorted(self.short(as_text(member)) for member in members)
        if found != sorted(job_labels):
            raise Failed(f"{what} holds {found}, expected {sorted(job_labels)}")


# --- the families ---------------------------------------------------------------------------------


def _later(**delta: float) -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0) + timedelta(**delta)


def _at(when: datetime) -> tuple[float, float]:
    return when.timestamp(), when.timestamp()


def shared_pipeline_across_queues(s: Scenario) -> None:
    """RQ issue #2211: one enqueue_call per queue into one pipeline (D1 on RQ 1.9-2.2)."""
    labels = ("high", "default", "low")
    with s.client.pipeline() as pipe:
        for label in labels:
            s.queue(label).enqueue_call(noop, job_id=s.job_id(f"job-{label}"), pipeline=pipe)
        s.nothing_landed("before execute()")
        pipe.execute()
    for label in labels:
        s.queue_holds(label, f"job-{label}")
        s.status_is(f"job-{label}", JobStatus.QUEUED)
    listed = {as_text(member) for member in s.observer.smembers(Queue.redis_queues_keys)}
    missing = [label for label in labels if as_text(s.queue(label).key) not in listed]
    if missing:
        raise Failed(f"queues {missing} are not in {Queue.redis_queues_keys}")


def callers_commands_in_the_pipeline(s: Scenario) -> None:
    """The caller's commands before, between and after enqueues, same queue twice (D2)."""
    a, b = s.queue("a"), s.queue("b")
    with s.client.pipeline() as pipe:
        pipe.incr(s.key("counter"))
        a.enqueue_call(noop, job_id=s.job_id("first"), pipeline=pipe)
        pipe.rpush(s.key("log"), "between")
        b.enqueue_call(noop, job_id=s.job_id("second"), pipeline=pipe)
        a.enqueue_call(noop, job_id=s.job_id("third"), pipeline=pipe)
        pipe.rpush(s.key("log"), "after")
        s.nothing_landed("before execute()")
        pipe.execute()
    s.value_is("counter", "1")
    s.list_is("log", "between", "after")
    s.queue_holds("a", "first", "third")
    s.queue_holds("b", "second")
    for label in ("first", "second", "third"):
        s.status_is(label, JobStatus.QUEUED)


def _finished_job(s: Scenario, queue: Any, label: str) -> str:
    """A job of ``queue`` that a worker has finished (in Redis, in no queue)."""
    job = queue.create_job(noop, job_id=s.job_id(label))
    with s.client.pipeline() as pipe:
        job.set_status(JobStatus.FINISHED, pipeline=pipe)
        job.save(pipeline=pipe)
        pipe.execute()
    return str(job.id)


def dependents_in_multi(s: Scenario) -> None:
    """Dependent jobs into a pipeline already in MULTI: on a parent enqueued earlier in it
    (DEFERRED), on a finished parent (queued at once), on both (DEFERRED) (D3)."""
    a, b = s.queue("a"), s.queue("b")
    done = _finished_job(s, a, "done")
    s.setup_done()
    with s.client.pipeline() as pipe:
        parent = a.enqueue_call(noop, job_id=s.job_id("parent"), pipeline=pipe)
        b.enqueue_call(noop, job_id=s.job_id("child"), depends_on=parent, pipeline=pipe)
        b.enqueue_call(noop, job_id=s.job_id("after-done"), depends_on=done, pipeline=pipe)
        b.enqueue_call(noop, job_id=s.job_id("after-both"), depends_on=[done, parent], pipeline=pipe)
        s.nothing_landed("before execute()")
        pipe.execute()
    s.queue_holds("a", "parent")
    s.queue_holds("b", "after-done")
    s.status_is("parent", JobStatus.QUEUED)
    s.status_is("after-done", JobStatus.QUEUED)
    s.status_is("child", JobStatus.DEFERRED)
    s.status_is("after-both", JobStatus.DEFERRED)
    s.deferred_registry_holds("b", "child", "after-both")
    s.dependents_are("parent", "child", "after-both")


def _enqueue_many_takes_depends_on() -> str | None:
    if "depends_on" in inspect.signature(Queue.prepare_data).parameters:
        return None
    return "enqueue_many: no depends_on before RQ 1.15"


def dependents_in_enqueue_many(s: Scenario) -> None:
    """enqueue_many with depends_on into a pipeline in MULTI, on a parent enqueued earlier in it
    and on a finished one (D4: RQ would WATCH after MULTI); then into a pipeline holding the
    caller's command, on that parent now in Redis (D5: RQ would execute() the caller's pipeline
    early, splitting the batch)."""
    a, b = s.queue("a"), s.queue("b")
    done = _finished_job(s, a, "done")
    s.setup_done()
    with s.client.pipeline() as pipe:
        parent = a.enqueue_call(noop, job_id=s.job_id("parent"), pipeline=pipe)
        datas = [  # RQ queues those without dependencies first, then those whose parents are met
            Queue.prepare_data(noop, job_id=s.job_id("free")),
            Queue.prepare_data(noop, job_id=s.job_id("child"), depends_on=parent),
            Queue.prepare_data(noop, job_id=s.job_id("after-done"), depends_on=done),
        ]
        b.enqueue_many(datas, pipeline=pipe)
        pipe.incr(s.key("counter"))
        s.nothing_landed("before execute()")
        pipe.execute()
    s.setup_done()
    with s.client.pipeline() as pipe:
        pipe.incr(s.key("counter"))
        b.enqueue_many(
            [Queue.prepare_data(noop, job_id=s.job_id("second-child"), depends_on=parent)], pipeline=pipe
        )
        s.nothing_landed("before execute() of a pipeline holding the caller's command")
        pipe.execute()
    s.value_is("counter", "2")
    s.queue_holds("a", "parent")
    s.queue_holds("b", "free", "after-done")
    s.status_is("after-done", JobStatus.QUEUED)
    for label in ("child", "second-child"):
        s.status_is(label, JobStatus.DEFERRED)
    s.deferred_registry_holds("b", "child", "second-child", also=("after-done",))
    s.dependents_are("parent", "child", "second-child")


def watch_and_watch_error(s: Scenario) -> None:
    """The caller WATCHes a key, reads it, enqueues (enqueue_many and enqueue_at first: D6, D7);
    another connection changes the key: EXEC must abort with nothing landed, and
    Redis.transaction's retry lands the batch once. Then a parent that finishes between the
    dependency check and EXEC must abort the batch too, and the retry queue the child (D3)."""
    a, b, c = s.queue("a"), s.queue("b"), s.queue("c")
    s.client.set(s.key("balance"), 10)
    when = _later(days=1)
    attempts: list[int] = []

    def transfer(pipe: Any) -> None:
        _count(attempts)
        if len(attempts) > 1:
            s.nothing_landed("after EXEC aborted")
        value = int(pipe.get(s.key("balance")))
        a.enqueue_many([Queue.prepare_data(noop, job_id=s.job_id("many"))], pipeline=pipe)
        a.enqueue_at(when, noop, job_id=s.job_id("at"), pipeline=pipe)
        b.enqueue_call(noop, job_id=s.job_id("call"), pipeline=pipe)
        pipe.set(s.key("balance"), value - 1)
        if len(attempts) == 1:
            s.nothing_landed("before execute()")
            s.observer.set(s.key("balance"), 20)  # another client writes the WATCHed key

    s.client.transaction(transfer, s.key("balance"))
    if len(attempts) != 2:
        raise Failed("the server ran EXEC although another connection had changed a WATCHed key")
    s.value_is("balance", "19")
    s.queue_holds("a", "many")
    s.queue_holds("b", "call")
    s.scheduled_at("a", {"at": _at(when)})
    s.status_is("at", JobStatus.SCHEDULED)

    parent = c.enqueue_call(noop, job_id=s.job_id("parent"))
    s.setup_done()
    tries: list[int] = []

    def enqueue_child(pipe: Any) -> None:
        _count(tries)
        pipe.incr(s.key("counter"))
        b.enqueue_call(noop, job_id=s.job_id("child"), depends_on=parent.id, pipeline=pipe)
        if len(tries) == 1:
            s.nothing_landed("before execute()")
            s.observer.hset(parent.key, "status", JobStatus.FINISHED.value)  # a worker finishes it

    s.client.transaction(enqueue_child)
    if len(tries) != 2:
        raise Failed("the batch committed although its dependency changed between the check and EXEC")
    s.value_is("counter", "1")
    s.queue_holds("b", "call", "child")
    s.status_is("child", JobStatus.QUEUED)
    s.deferred_registry_holds("b")
    s.dependents_are("parent")


def _count(attempts: list[int]) -> None:
    attempts.append(1)
    if len(attempts) > MAX_ATTEMPTS:
        raise Failed(f"EXEC aborted {MAX_ATTEMPTS} times in a row with no concurrent write")


def enqueue_many_and_enqueue_at_mixed(s: Scenario) -> None:
    """enqueue_many, enqueue_at, the caller's command, enqueue_call, enqueue_in in one pipeline
    (D2; D8: RQ < 3.0 writes the scheduled entry outside the pipeline)."""
    a, b = s.queue("a"), s.queue("b")
    when, delay = _later(days=1), timedelta(hours=1)
    with s.client.pipeline() as pipe:
        a.enqueue_many(
            [Queue.prepare_data(noop, job_id=s.job_id(label)) for label in ("many-1", "many-2")],
            pipeline=pipe,
        )
        a.enqueue_at(when, noop, job_id=s.job_id("at"), pipeline=pipe)
        pipe.incr(s.key("counter"))
        b.enqueue_call(noop, job_id=s.job_id("call"), pipeline=pipe)
        earliest = time.time()
        b.enqueue_in(delay, noop, job_id=s.job_id("in"), pipeline=pipe)
        latest = time.time()
        s.nothing_landed("before execute()")
        pipe.execute()
    s.value_is("counter", "1")
    s.queue_holds("a", "many-1", "many-2")
    s.queue_holds("b", "call")
    s.scheduled_at("a", {"at": _at(when)})
    seconds = delay.total_seconds()
    s.scheduled_at("b", {"in": (int(earliest + seconds), latest + seconds)})
    for label in ("many-1", "many-2", "call"):
        s.status_is(label, JobStatus.QUEUED)
    for label in ("at", "in"):
        s.status_is(label, JobStatus.SCHEDULED)


class _Abandoned(Exception):
    """The caller's own code failing before ``execute()``."""


def an_aborted_batch(s: Scenario) -> None:
    """A batch abandoned before execute() (the caller's exception, or RQ's: the pipeline is reset),
    and a batch the server rejects (a command it refuses while queueing: EXECABORT). Nothing of
    either may land (D8, D5 would leave parts behind)."""
    a, b = s.queue("a"), s.queue("b")
    when = _later(days=1)
    try:
        with s.client.pipeline() as pipe:
            a.enqueue_at(when, noop, job_id=s.job_id("at"), pipeline=pipe)
            pipe.incr(s.key("counter"))
            parent = a.enqueue_call(noop, job_id=s.job_id("parent"), pipeline=pipe)
            b.enqueue_call(noop, job_id=s.job_id("child"), depends_on=parent, pipeline=pipe)
            if _enqueue_many_takes_depends_on() is None:
                datas = [Queue.prepare_data(noop, job_id=s.job_id("many-child"), depends_on=parent)]
                b.enqueue_many(datas, pipeline=pipe)
            raise _Abandoned
    except Exception as exc:  # RQ's own error aborts the batch too: then RQ failed, but after this
        s.nothing_landed("after the batch was abandoned")
        if not isinstance(exc, _Abandoned):
            raise
    s.value_is("counter", None)

    with s.client.pipeline() as pipe:
        b.enqueue_call(noop, job_id=s.job_id("rejected"), pipeline=pipe)
        a.enqueue_at(when, noop, job_id=s.job_id("rejected-at"), pipeline=pipe)
        pipe.incr(s.key("counter"))
        pipe.execute_command("SET", s.key("counter"))  # wrong number of arguments
        try:
            pipe.execute()
        except ResponseError:
            pass
        else:
            raise Failed("the server ran a transaction holding a command it had rejected (no EXECABORT)")
    s.nothing_landed("after EXECABORT")
    s.value_is("counter", None)


def _always_available() -> str | None:
    return None


class Family(NamedTuple):
    slug: str  # in the run's names: short, [a-z-] (job ids allow [A-Za-z0-9_-])
    title: str
    scenario: Callable[[Scenario], None]
    unavailable: Callable[[], str | None] = _always_available  # why this RQ cannot run it


FAMILIES: tuple[Family, ...] = (
    Family("queues", "shared pipeline across queues", shared_pipeline_across_queues),
    Family("commands", "caller's commands buffered", callers_commands_in_the_pipeline),
    Family("deps", "dependents in MULTI", dependents_in_multi),
    Family(
        "many-deps", "dependents via enqueue_many", dependents_in_enqueue_many, _enqueue_many_takes_depends_on
    ),
    Family("watch", "WATCH + WatchError, retried", watch_and_watch_error),
    Family("mixed", "enqueue_many/enqueue_at mixed", enqueue_many_and_enqueue_at_mixed),
    Family("abort", "an aborted batch", an_aborted_batch),
)
