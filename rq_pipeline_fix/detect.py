"""Which defects the installed RQ has: a behaviour probe per defect, checked against a version table.

A probe drives the *installed* RQ code with a real redis-py pipeline whose connections refuse to
connect, so it costs no I/O and sees exactly what RQ would do to a caller's pipeline. The version
table records what was measured on each release line; when the two disagree the probe wins (it
saw this very RQ), and the disagreement is recorded in the reason.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .versions import TableVerdict


class ProbeTouchedRedis(Exception):
    """The probed RQ code tried to talk to Redis, so the probe cannot tell what it would do."""


class _PipelineRanAtOnce(ProbeTouchedRedis):
    """The caller's pipeline sent a command instead of buffering it: what D6 and D7 look like."""


class Defect:  # plain classes, not NamedTuples: those compile code of their own at rq's import
    """One defect: its id, its title, the RQ releases where it was measured (a specifier), the
    RQ method that has it and that we wrap, and ``lazy``: probed at the first call that needs it
    (or for a report), not at rq's import; its guard goes on unprobed where the version table
    does not rule it out, and steps in only once the probe has confirmed it (the probes were a
    third of the package's cost at rq's import). One that is not lazy waits too where the table
    can tell, and is probed at rq's import only on a release newer than those measured."""

    __slots__ = ("affected", "id", "lazy", "method", "title")

    def __init__(
        self, id: str, title: str, affected: str, method: str = "Queue.setup_dependencies", lazy: bool = True
    ) -> None:
        self.id, self.title, self.affected, self.method, self.lazy = id, title, affected, method, lazy

    def __repr__(self) -> str:
        return f"Defect({self.id!r})"


_CHECK = "Dependency.get_jobs_with_met_dependencies"  # enqueue_many's dependency check
_SAVE_UNIQUE = "rq.queue.save_unique_job"  # the unique= script helpers, by the name rq.queue calls
_SINCE_1_9 = ">=1.9.0"  # pipeline= on enqueue calls arrived in 1.9.0
_SINCE_1_15 = ">=1.15.0"  # enqueue_many takes depends_on (rq.dependency appears)
_SINCE_2_0 = ">=2.0.0"  # rq.group appears
_SINCE_2_8 = ">=2.8.0"  # unique= appears (enqueue_call, enqueue_job, schedule_job)

# fmt: off
DEFECTS: tuple[Defect, ...] = (
    Defect("D1", "nested MULTI for jobs without dependencies", ">=1.9.0,<2.3.0"),
    Defect("D2", "MULTI after commands already buffered in the pipeline", _SINCE_1_9),
    Defect("D3", "dependent job into a pipeline in MULTI or holding commands", _SINCE_1_9),
    Defect("D4", "enqueue_many with depends_on into a pipeline in MULTI", _SINCE_1_15, _CHECK),
    Defect("D5", "enqueue_many with depends_on runs the caller's execute()", _SINCE_1_15, _CHECK),
    Defect("D6", "enqueue_many writes at once through a WATCHing pipeline", _SINCE_1_9, "Queue.enqueue_many"),
    Defect("D7", "enqueue_at/enqueue_in write at once through a WATCHing pipeline", _SINCE_1_9,
           "Queue.schedule_job"),
    Defect("D8", "enqueue_at/enqueue_in put the scheduled entry outside the caller's pipeline",
           ">=1.9.0,<3.0.0", "ScheduledJobRegistry.schedule"),
    Defect("D9", "Group.enqueue_many runs the caller's execute()", _SINCE_2_0, "Group.enqueue_many"),
    Defect("D10", "unique=True writes the job at once through the queue's own connection", _SINCE_2_8,
           _SAVE_UNIQUE),
    Defect("D11", "is_async=False: the caller's execute() writes the job that ran back as queued", _SINCE_1_9,
           "Queue.run_job"),
    # Not lazy: on a release the table cannot tell about, its guard would sit on every enqueue's
    # path (enqueue_job) unprobed, so there it is probed at rq's import instead.
    Defect("D12", "enqueue_job writes at once through a WATCHing pipeline", ">=1.9.0,<1.14.0",
           "Queue.enqueue_job", lazy=False),
)
# fmt: on
# Every release up to this one was measured; later ones are judged by the probes alone.
LAST_MEASURED_RQ = "3.0.0"

DEFECTS_BY_ID = {defect.id: defect for defect in DEFECTS}


def table_expects(defect: Defect, rq_version: str | None) -> bool | None:
    """What the version table says of ``defect`` in ``rq_version``: True affected, False not,
    None unknown (newer than measured, or a version other than plain numbers). Read without
    ``packaging`` (a few milliseconds to import): the specifiers above are ``>=``/``<`` clauses
    of plain releases, and at rq's import it decides which methods get a guard; reports use
    ``versions.table_verdict``."""
    version = _release(rq_version or "")
    if version is None or version > (_release(LAST_MEASURED_RQ) or ()):
        return None
    for clause in defect.affected.split(","):
        clause = clause.strip()
        bound = _release(clause.lstrip("<>="))
        if bound is None or not clause.startswith((">=", "<")) or clause.startswith("<="):
            return None
        if (version < bound) if clause.startswith(">=") else (version >= bound):
            return False
    return True


def _release(text: str) -> tuple[int, ...] | None:
    try:
        return _releases[text]  # the same dozen strings, read for every defect at rq's import
    except KeyError:
        release = _releases[text] = _parse_release(text)
        return release


_releases: dict[str, tuple[int, ...] | None] = {}


def _parse_release(text: str) -> tuple[int, ...] | None:
    parts = text.strip().split(".")
    if not all(part.isdigit() for part in parts):
        return None
    numbers = [int(part) for part in parts]
    while len(numbers) > 1 and numbers[-1] == 0:  # 2.3 is 2.3.0
        numbers.pop()
    return tuple(numbers)


class Finding:
    """What is known about one defect in the installed RQ: ``probe`` None: the probe could not
    decide; ``note``: why, or why there was nothing to probe."""

    __slots__ = ("defect", "note", "probe", "rq_version")

    def __init__(self, defect: Defect, probe: bool | None, rq_version: str | None, note: str = "") -> None:
        self.defect, self.probe, self.rq_version, self.note = defect, probe, rq_version, note

    def __repr__(self) -> str:
        return f"Finding({self.defect.id!r}, probe={self.probe!r}, note={self.note!r})"

    def _replace(self, **changes: Any) -> Finding:
        """A copy with ``changes`` (as a NamedTuple's)."""
        now = {"defect": self.defect, "probe": self.probe, "rq_version": self.rq_version, "note": self.note}
        return Finding(**{**now, **changes})

    @property
    def table(self) -> TableVerdict:
        from .versions import table_verdict  # only reports need the version table

        return table_verdict(self.defect.affected, self.rq_version)

    @property
    def reason(self) -> str:
        if self.note:
            return self.note
        seen = "the probe reproduced it" if self.probe else "the probe found RQ correct"
        table = self.table
        if table == "unknown":
            return f"{seen}; rq {self.rq_version} is newer than the releases measured"
        if (table == "affected") == self.probe:
            return f"{seen}, as the version table expects"
        says = f"the version table says rq {self.rq_version} is {table.value}"
        return f"{seen}, although {says}; trusting the probe"

    @property
    def present(self) -> bool | None:
        if self.probe is not None:
            return self.probe
        table = self.table
        return None if table == "unknown" else table == "affected"


# --- the probes -------------------------------------------------------------------------------


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


class _ProbeKit:
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
        self.get_jobs_with_met_dependencies = originals.get(_CHECK)
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


def _probe_d1(kit: _ProbeKit) -> bool:
    return _fails_on(lambda: kit.setup(kit.job(), kit.pipeline_in_multi()))


def _probe_d2(kit: _ProbeKit) -> bool:
    return _fails_on(lambda: kit.setup(kit.job(), kit.pipeline_with_buffered_command()))


def _probe_d3(kit: _ProbeKit) -> bool:
    return _fails_on(lambda: kit.setup(kit.child(), kit.pipeline_in_multi()))


def _probe_d4(kit: _ProbeKit) -> bool:
    check = kit.get_jobs_with_met_dependencies
    assert check is not None
    return _fails_on(lambda: check([kit.child()], pipeline=kit.pipeline_in_multi()))


def _probe_d5(kit: _ProbeKit) -> bool:
    check = kit.get_jobs_with_met_dependencies
    assert check is not None
    pipe = _RecordingPipeline()
    check([kit.child()], pipeline=pipe)
    return pipe.executed


def _probe_d6(kit: _ProbeKit) -> bool:
    from rq.queue import Queue

    enqueue_many = kit.original("Queue.enqueue_many")
    job_datas = [Queue.prepare_data("os.getpid")]
    return _runs_at_once(lambda: enqueue_many(kit.queue, job_datas, pipeline=kit.watching_pipeline()))


def _probe_d7(kit: _ProbeKit) -> bool:
    from datetime import datetime, timezone

    schedule_job = kit.original("Queue.schedule_job")
    when = datetime.now(timezone.utc)
    return _runs_at_once(lambda: schedule_job(kit.queue, kit.job(), when, pipeline=kit.watching_pipeline()))


def _probe_d8(kit: _ProbeKit) -> bool:
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


def _probe_d9(kit: _ProbeKit) -> bool:
    from rq.group import Group
    from rq.queue import Queue

    enqueue_many = kit.original("Group.enqueue_many")
    group = Group(kit.connection, name="rq-pipeline-fix-probe")
    pipe = _RecordingPipeline()
    enqueue_many(group, kit.queue, [Queue.prepare_data("os.getpid")], pipeline=pipe)
    return pipe.executed


def _probe_d10(kit: _ProbeKit) -> bool:
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


def _probe_d12(kit: _ProbeKit) -> bool:
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


def _probe_d11(kit: _ProbeKit) -> bool:
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


PROBES: dict[str, Callable[[_ProbeKit], bool]] = {
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


# --- putting both together ----------------------------------------------------------------------


def check_shape(label: str, attribute: object, expected: Sequence[str], more_ok: bool = False) -> str | None:
    """Why ``attribute`` (as found in its class's ``__dict__``) cannot be wrapped safely, or None
    when it is a plain function or classmethod with the parameters we know (followed by others,
    with ``more_ok``)."""
    function = attribute.__func__ if isinstance(attribute, classmethod) else attribute
    if not inspect.isfunction(function):
        return f"{label} is a {type(attribute).__name__}, not a plain function"
    if hasattr(function, "__wrapped__"):  # a decorated function: its signature is the wrapped one's
        names = list(inspect.signature(function).parameters)
    else:
        names = _parameter_names(function.__code__)
    if (names[: len(expected)] if more_ok else names) != list(expected):
        return f"{label} has parameters {names}, expected {list(expected)}"
    return None


def _parameter_names(code: Any) -> list[str]:
    """What ``inspect.signature(function).parameters`` lists, read off the code object: a tenth
    of the cost, and these checks run at rq's import."""
    positional = code.co_argcount  # positional-only ones included
    count = positional + code.co_kwonlyargcount
    names = list(code.co_varnames[:positional])
    if code.co_flags & inspect.CO_VARARGS:
        names.append(code.co_varnames[count])
        count += 1
    names += code.co_varnames[positional : positional + code.co_kwonlyargcount]
    if code.co_flags & inspect.CO_VARKEYWORDS:
        names.append(code.co_varnames[count])
    return names


NOT_IMPORTED_YET = "not probed yet"  # the start of a Finding's note while its module is awaited
AT_FIRST_USE = "to be probed at the first call that needs it"  # a lazy defect's note until then


def is_pending(finding: Finding) -> bool:
    """A lazy defect not probed yet: its guard goes on, and asks at its first call."""
    return finding.probe is None and finding.note.startswith(AT_FIRST_USE)


def detect(
    originals: Mapping[str, Callable[..., Any] | None],
    rq_version: str | None,
    only: Collection[str] | None = None,
    awaited: Mapping[str, str] | None = None,
    now: bool = False,
) -> list[Finding]:
    """Probe every defect of ``DEFECTS`` (or those whose ids are in ``only``) in the installed
    RQ; never raises.

    ``originals`` maps "Class.method" to RQ's original, bound as RQ calls it (a plain function
    for ``Queue.setup_dependencies``), or to None where the installed RQ lacks the method.
    ``awaited`` maps the label of a method whose module is not imported yet (rq imports it later
    in its own ``import rq``) to that module: its defect is probed once it is. A defect that
    waits for its first use (``_at_first_use``) is probed only ``now``.
    """
    awaited = awaited or {}
    defects = [defect for defect in DEFECTS if only is None or defect.id in only]
    if now:  # a lazy defect at the first use of its path: on RQ's own methods from the start
        return _probe_all(defects, originals, rq_version, awaited, now, rq_own=True)
    findings = _probe_all(defects, originals, rq_version, awaited, now, rq_own=False)
    if any(f.probe is None and not f.note.startswith((NOT_IMPORTED_YET, AT_FIRST_USE)) for f in findings):
        # Another library's wrapper on a method the probes use (Queue.create_job, Job.save, ...)
        # may have touched Redis: probe again on RQ's own methods beneath such wrappers. Only
        # then: walking Queue's and Job's ~200 attributes costs more than every probe together.
        findings = _probe_all(defects, originals, rq_version, awaited, now, rq_own=True)
    return findings


def _probe_all(
    defects: list[Defect],
    originals: Mapping[str, Callable[..., Any] | None],
    rq_version: str | None,
    awaited: Mapping[str, str],
    now: bool,
    rq_own: bool,
) -> list[Finding]:
    kit: _ProbeKit | None = None
    kit_error = ""
    later = {defect.id: not now and _at_first_use(defect, rq_version) for defect in defects}
    if any(not later[defect.id] and defect.method not in awaited for defect in defects):
        try:  # only when something is probed now: a kit costs a few hundred thousand instructions
            kit = _ProbeKit(originals, rq_own)
        except Exception as exc:
            _reraise_if_not_ours(exc)
            kit_error = f"the probe could not set up: {exc!r}"
    return [
        _finding(defect, kit, kit_error, originals, rq_version, awaited.get(defect.method), later[defect.id])
        for defect in defects
    ]


def _at_first_use(defect: Defect, rq_version: str | None) -> bool:
    """Whether ``defect`` waits for its first use: a lazy one always; another only where the
    version table can tell (a release newer than those measured gets it probed at rq's import)."""
    return defect.lazy or table_expects(defect, rq_version) is not None


def _finding(
    defect: Defect,
    kit: _ProbeKit | None,
    kit_error: str,
    originals: Mapping[str, Callable[..., Any] | None],
    rq_version: str | None,
    awaited: str | None,
    later: bool = False,
) -> Finding:
    if awaited is not None:
        return Finding(defect, None, rq_version, f"{NOT_IMPORTED_YET}: {awaited} has not been imported")
    if originals.get(defect.method) is None:
        return Finding(defect, False, rq_version, f"rq {rq_version} has no {defect.method}")
    if later:
        return Finding(defect, None, rq_version, f"{AT_FIRST_USE} ({defect.method})")
    if kit is None:
        return Finding(defect, None, rq_version, kit_error)
    try:
        return Finding(defect, PROBES[defect.id](kit), rq_version)
    except Exception as exc:
        _reraise_if_not_ours(exc)
        return Finding(defect, None, rq_version, f"the probe failed: {exc!r}")


def _reraise_if_not_ours(exc: Exception) -> None:
    """A job's timeout (RQ raises it from SIGALRM wherever the job is, here inside a probe run at
    the job's first enqueue) belongs to the job: it goes on up, and the defect stays unprobed."""
    timeouts = sys.modules.get("rq.timeouts")
    if timeouts is not None and isinstance(exc, getattr(timeouts, "BaseTimeoutException", ())):
        raise exc
