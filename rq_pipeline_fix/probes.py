"""The behaviour probes: one per defect, each driving the *installed* RQ code.

A probe gives RQ a real redis-py pipeline whose connections refuse to connect, so it costs no
I/O and sees exactly what RQ would do to a caller's pipeline. Loaded only when a probe runs (at
the first call that needs one, for a report, or at rq's import on a release newer than the
version table): most processes never load it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from .detect import DEPENDENCY_CHECK


class ProbeTouchedRedis(Exception):
    """The probed RQ code tried to talk to Redis, so the probe cannot tell what it would do."""


class _PipelineRanAtOnce(ProbeTouchedRedis):
    """The caller's pipeline sent a command instead of buffering it: what D6 and D7 look like."""


def _offline_pool(error: type[ProbeTouchedRedis] = ProbeTouchedRedis) -> Any:
    """A real redis-py connection pool that raises ``error`` instead of handing out a connection
    (none is ever made: building one can cost milliseconds, e.g. redis-py 8 looks up its own
    version in the package metadata)."""
    if not _offline_pool_class:  # made once: creating a class costs more than a client
        import redis

        class OfflinePool(redis.ConnectionPool):
            error: type[ProbeTouchedRedis] = ProbeTouchedRedis

            def get_connection(self, *args: Any, **kwargs: Any) -> Any:
                raise self.error("the probed code sent a command to Redis")

        _offline_pool_class.append(OfflinePool)
    pool = _offline_pool_class[0]()
    pool.error = error
    return pool


_offline_pool_class: list[Any] = []


def _offline_redis() -> Any:
    """A real redis-py client on an offline pool: any command it sends raises ProbeTouchedRedis."""
    import redis

    return redis.Redis(connection_pool=_offline_pool())


def _runs_at_once(run: Callable[[], object]) -> bool:
    """True when RQ's code sends a command through the caller's WATCHing pipeline at once."""
    try:
        run()
    except _PipelineRanAtOnce:
        return True
    return False


def _fails_on(run: Callable[[], object]) -> bool:
    """True when RQ's code raises redis-py's pipeline-state error, False when it completes."""
    from redis.exceptions import RedisError

    try:
        run()
    except ProbeTouchedRedis:
        raise
    except RedisError:
        return True
    return False


class _RecordingPipeline:
    """Stands for a caller's pipeline holding one buffered command, where a real pipeline would
    need a server: it answers reads with nothing and records whether RQ executes it (D5)."""

    explicit_transaction = False
    watching = False
    transaction = True

    def __init__(self) -> None:
        self.command_stack: list[Any] = [(("SET", "rq-pipeline-fix-probe", 1), {})]
        self.executed = False

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        self.executed = True
        return []

    def smembers(self, key: str) -> set[bytes]:
        return set()

    def pipeline(self, *args: Any, **kwargs: Any) -> _RecordingPipeline:
        return _RecordingPipeline()

    def __enter__(self) -> _RecordingPipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def __getattr__(self, command: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None  # watch, multi, sadd, zadd, hset, ...


class _CurrentServer(tuple):  # type: ignore[type-arg]
    """Redis 7.0.0 as RQ compares server versions: a tuple (2.x, 3.x), and newer than any
    ``distutils`` StrictVersion RQ 1.x compares it with before writing a job hash."""

    def __ge__(self, other: Any) -> bool:
        return tuple.__ge__(self, other) if isinstance(other, tuple) else True

    def __lt__(self, other: Any) -> bool:
        return tuple.__lt__(self, other) if isinstance(other, tuple) else False


def _known_server(queue_or_job: Any) -> Any:
    """Some releases (1.x, 2.0, 2.1) ask the server's version before writing; answer for them as
    a current server would, so that asking is not taken for a write."""
    if hasattr(queue_or_job, "redis_server_version"):
        queue_or_job.redis_server_version = _CurrentServer((7, 0, 0))
    return queue_or_job


class ProbeKit:
    """What every probe needs: an offline client, a queue on it, a job factory, and RQ's original
    methods bound as RQ would call them (None where this RQ does not have the method)."""

    def __init__(self, originals: Mapping[str, Callable[..., Any] | None], rq_own: bool = False) -> None:
        from rq.job import Job
        from rq.queue import Queue

        queue_class: Any = Queue
        job_class: Any = Job
        if rq_own:  # RQ's own methods throughout, beneath other libraries' wrappers
            from .neighbours import rq_own_class

            queue_class, job_class = rq_own_class(Queue), rq_own_class(Job)
        self.connection = _offline_redis()
        self.queue = queue_class("rq-pipeline-fix-probe", connection=self.connection, job_class=job_class)
        _known_server(self.queue)
        for label, method in originals.items():
            owner, _, name = label.rpartition(".")
            if owner == "Queue" and method is not None:
                # The probes' queue calls RQ's own for each method we guard, even from within
                # another: a guard already on, of this copy or another (D12's on enqueue_job),
                # would make enqueue_many's writes look buffered to the D6 probe.
                setattr(self.queue, name, method.__get__(self.queue))
        self.originals = originals
        self.setup_dependencies = originals["Queue.setup_dependencies"]
        self.get_jobs_with_met_dependencies = originals.get(DEPENDENCY_CHECK)
        self.callers_pool = _offline_pool(_PipelineRanAtOnce)  # tells the caller's pipeline apart

    def callers_pipeline(self) -> Any:
        """A caller's pipeline: a command it sends at once raises _PipelineRanAtOnce (a pool of its
        own, not a second client: a client costs ten times more to build)."""
        pipe = self.connection.pipeline()
        pipe.connection_pool = self.callers_pool
        return pipe

    def watching_pipeline(self) -> Any:
        """A caller's pipeline after WATCH (immediate mode), reached without sending the WATCH."""
        pipe = self.callers_pipeline()
        pipe.watching = True
        return pipe

    def original(self, label: str) -> Callable[..., Any]:
        method = self.originals.get(label)
        assert method is not None
        return method

    def job(self, depends_on: str | None = None, job_id: str | None = None) -> Any:
        return _known_server(self.queue.create_job("os.getpid", depends_on=depends_on, job_id=job_id))

    def child(self) -> Any:
        return self.job(depends_on="rq-pipeline-fix-probe-parent")

    def pipeline_in_multi(self) -> Any:
        pipe = self.connection.pipeline()
        pipe.multi()
        return pipe

    def pipeline_with_buffered_command(self) -> Any:
        pipe = self.connection.pipeline()
        pipe.set("rq-pipeline-fix-probe", 1)
        return pipe

    def setup(self, job: Any, pipe: Any) -> Any:
        assert self.setup_dependencies is not None
        return self.setup_dependencies(self.queue, job, pipeline=pipe)


def _probe_d1(kit: ProbeKit) -> bool:
    return _fails_on(lambda: kit.setup(kit.job(), kit.pipeline_in_multi()))


def _probe_d2(kit: ProbeKit) -> bool:
    return _fails_on(lambda: kit.setup(kit.job(), kit.pipeline_with_buffered_command()))


def _probe_d3(kit: ProbeKit) -> bool:
    return _fails_on(lambda: kit.setup(kit.child(), kit.pipeline_in_multi()))


def _probe_d4(kit: ProbeKit) -> bool:
    check = kit.get_jobs_with_met_dependencies
    assert check is not None
    return _fails_on(lambda: check([kit.child()], pipeline=kit.pipeline_in_multi()))


def _probe_d5(kit: ProbeKit) -> bool:
    check = kit.get_jobs_with_met_dependencies
    assert check is not None
    pipe = _RecordingPipeline()
    check([kit.child()], pipeline=pipe)
    return pipe.executed


def _probe_d6(kit: ProbeKit) -> bool:
    from rq.queue import Queue

    enqueue_many = kit.original("Queue.enqueue_many")
    job_datas = [Queue.prepare_data("os.getpid")]
    return _runs_at_once(lambda: enqueue_many(kit.queue, job_datas, pipeline=kit.watching_pipeline()))


def _probe_d7(kit: ProbeKit) -> bool:
    from datetime import datetime, timezone

    schedule_job = kit.original("Queue.schedule_job")
    when = datetime.now(timezone.utc)
    return _runs_at_once(lambda: schedule_job(kit.queue, kit.job(), when, pipeline=kit.watching_pipeline()))


def _probe_d8(kit: ProbeKit) -> bool:
    from datetime import datetime, timezone

    from rq.registry import ScheduledJobRegistry

    schedule = kit.original("ScheduledJobRegistry.schedule")
    registry_class: Any = ScheduledJobRegistry
    registry = registry_class(queue=kit.queue)
    pipe = kit.callers_pipeline()
    pipe.multi()
    try:
        schedule(registry, kit.job(), datetime.now(timezone.utc), pipeline=pipe)
    except _PipelineRanAtOnce:
        raise
    except ProbeTouchedRedis:  # written through the registry's own connection, not the pipeline
        return True
    return False


def _probe_d9(kit: ProbeKit) -> bool:
    from rq.group import Group
    from rq.queue import Queue

    enqueue_many = kit.original("Group.enqueue_many")
    group = Group(kit.connection, name="rq-pipeline-fix-probe")
    pipe = _RecordingPipeline()
    enqueue_many(group, kit.queue, [Queue.prepare_data("os.getpid")], pipeline=pipe)
    return pipe.executed


def _probe_d10(kit: ProbeKit) -> bool:
    """RQ's own unique enqueue and unique schedule, each given a caller's pipeline (a stand-in,
    which the guards leave to RQ): does either run its script on the queue's connection?"""
    from datetime import datetime, timezone

    from .unique import forget_scripts_registered_on

    def writes_around(run: Callable[[], object]) -> bool:
        try:
            run()
        except ProbeTouchedRedis:  # the script ran on the queue's connection, not the pipeline
            return True
        finally:
            forget_scripts_registered_on(kit.connection)  # RQ caches the script per connection
        return False

    def job() -> Any:
        return kit.job(job_id="rq-pipeline-fix-probe")

    enqueue_job: Any = type(kit.queue).enqueue_job  # RQ's own, where the kit is built on RQ's own
    schedule_job = kit.original("Queue.schedule_job")
    when = datetime.now(timezone.utc)
    return writes_around(
        lambda: enqueue_job(kit.queue, job(), pipeline=_RecordingPipeline(), unique=True)
    ) or (
        writes_around(
            lambda: schedule_job(kit.queue, job(), when, pipeline=_RecordingPipeline(), unique=True)
        )
    )


class _SwitchedToMulti(Exception):
    """RQ called multi() on the caller's WATCHing pipeline before writing: its writes buffer."""


def _probe_d12(kit: ProbeKit) -> bool:
    """enqueue_job given a WATCHing pipeline: a write at once, or multi() first? Stopping at
    multi() spares the probe the rest of an enqueue (RQ >= 1.14 calls it first, at rq's import)."""
    enqueue_job = kit.original("Queue.enqueue_job")
    pipe = kit.watching_pipeline()

    def switched(*args: Any, **kwargs: Any) -> None:
        raise _SwitchedToMulti

    pipe.multi = switched
    try:
        return _runs_at_once(lambda: enqueue_job(kit.queue, kit.job(), pipeline=pipe))
    except _SwitchedToMulti:
        return False


def _probe_d11(kit: ProbeKit) -> bool:
    """A queue with is_async=False given a caller's pipeline (a stand-in): does RQ run the job
    through the queue's own connection before the caller executes the pipeline?"""

    def own_pipeline(*args: Any, **kwargs: Any) -> Any:  # the run's first write (RQ >= 1.13)
        raise ProbeTouchedRedis("the sync run made a pipeline of its own")

    connection = _offline_redis()
    connection.pipeline = own_pipeline  # raising here, not in its try block: no traceback formatting
    queue_class = type(kit.queue)  # RQ's own methods, as the kit was built
    queue = _known_server(
        queue_class(
            "rq-pipeline-fix-probe", connection=connection, is_async=False, job_class=kit.queue.job_class
        )
    )
    try:
        queue.enqueue_job(_known_server(queue.create_job("os.getpid")), pipeline=_RecordingPipeline())
    except ProbeTouchedRedis:  # the run wrote through the queue's connection
        return True
    return False


PROBES: dict[str, Callable[[ProbeKit], bool]] = {
    "D1": _probe_d1,
    "D2": _probe_d2,
    "D3": _probe_d3,
    "D4": _probe_d4,
    "D5": _probe_d5,
    "D6": _probe_d6,
    "D7": _probe_d7,
    "D8": _probe_d8,
    "D9": _probe_d9,
    "D10": _probe_d10,
    "D11": _probe_d11,
    "D12": _probe_d12,
}
