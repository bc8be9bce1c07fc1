"""Which defects the installed RQ has: a behaviour probe per defect, checked against a version table.

A probe drives the *installed* RQ code with a real redis-py pipeline whose connections refuse to
connect, so it costs no I/O and sees exactly what RQ would do to a caller's pipeline. The version
table records what was measured on each release line; when the two disagree the probe wins (it
saw this very RQ), and the disagreement is recorded in the reason.
"""

from __future__ import annotations

import enum
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version


class ProbeTouchedRedis(Exception):
    """The probed RQ code tried to talk to Redis, so the probe cannot tell what it would do."""


class TableVerdict(str, enum.Enum):
    AFFECTED = "affected"
    UNAFFECTED = "unaffected"
    UNKNOWN = "unknown"  # newer than the last release measured


@dataclass(frozen=True)
class Defect:
    id: str
    title: str
    affected: SpecifierSet  # RQ releases where the defect was measured


# Every release up to this one was measured; later ones are judged by the probes alone.
LAST_MEASURED_RQ = Version("3.0.0")

DEFECTS: tuple[Defect, ...] = (
    Defect("D1", "nested MULTI for jobs without dependencies", SpecifierSet(">=1.9.0,<2.3.0")),
    Defect("D2", "MULTI after commands already buffered in the pipeline", SpecifierSet(">=1.9.0")),
    Defect(
        "D3", "dependent job into a pipeline already in MULTI or holding commands", SpecifierSet(">=1.9.0")
    ),
)
DEFECTS_BY_ID = {defect.id: defect for defect in DEFECTS}


def table_verdict(defect: Defect, rq_version: str | None) -> TableVerdict:
    try:
        version = Version(rq_version or "")
    except InvalidVersion:
        return TableVerdict.UNKNOWN
    if version > LAST_MEASURED_RQ:
        return TableVerdict.UNKNOWN
    return TableVerdict.AFFECTED if version in defect.affected else TableVerdict.UNAFFECTED


@dataclass(frozen=True)
class Finding:
    """What is known about one defect in the installed RQ."""

    defect: Defect
    probe: bool | None  # None: the probe could not decide
    table: TableVerdict
    reason: str

    @property
    def present(self) -> bool | None:
        if self.probe is not None:
            return self.probe
        if self.table is TableVerdict.UNKNOWN:
            return None
        return self.table is TableVerdict.AFFECTED


# --- the probes -------------------------------------------------------------------------------


def _offline_redis() -> Any:
    """A real redis-py client whose connections raise instead of connecting."""
    import redis

    class OfflineConnection(redis.Connection):
        def connect(self, *args: Any, **kwargs: Any) -> None:
            raise ProbeTouchedRedis("the probed code sent a command to Redis")

    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=OfflineConnection))


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


class _ProbeKit:
    """The objects every probe needs: an offline client, a queue on it and a job factory."""

    def __init__(self, queue_class: type, setup_dependencies: Callable[..., Any]) -> None:
        self.connection = _offline_redis()
        self.queue = queue_class("rq-pipeline-fix-probe", connection=self.connection)
        self.setup_dependencies = setup_dependencies

    def job(self, depends_on: str | None = None) -> Any:
        return self.queue.create_job("os.getpid", depends_on=depends_on)

    def pipeline_in_multi(self) -> Any:
        pipe = self.connection.pipeline()
        pipe.multi()
        return pipe

    def pipeline_with_buffered_command(self) -> Any:
        pipe = self.connection.pipeline()
        pipe.set("rq-pipeline-fix-probe", 1)
        return pipe


def _probe_d1(kit: _ProbeKit) -> bool:
    return _fails_on(lambda: kit.setup_dependencies(kit.queue, kit.job(), pipeline=kit.pipeline_in_multi()))


def _probe_d2(kit: _ProbeKit) -> bool:
    pipe = kit.pipeline_with_buffered_command()
    return _fails_on(lambda: kit.setup_dependencies(kit.queue, kit.job(), pipeline=pipe))


def _probe_d3(kit: _ProbeKit) -> bool:
    child = kit.job(depends_on="rq-pipeline-fix-probe-parent")
    return _fails_on(lambda: kit.setup_dependencies(kit.queue, child, pipeline=kit.pipeline_in_multi()))


PROBES: dict[str, Callable[[_ProbeKit], bool]] = {"D1": _probe_d1, "D2": _probe_d2, "D3": _probe_d3}


# --- putting both together ----------------------------------------------------------------------

EXPECTED_PARAMETERS = ["self", "job", "pipeline"]


def check_shape(setup_dependencies: object) -> str | None:
    """Why the method cannot be wrapped safely, or None when its shape is the one we know."""
    if not inspect.isfunction(setup_dependencies):
        return f"Queue.setup_dependencies is a {type(setup_dependencies).__name__}, not a plain function"
    names = list(inspect.signature(setup_dependencies).parameters)
    if names != EXPECTED_PARAMETERS:
        return f"Queue.setup_dependencies has parameters {names}, expected {EXPECTED_PARAMETERS}"
    return None


def detect(
    queue_class: type, setup_dependencies: Callable[..., Any], rq_version: str | None
) -> list[Finding]:
    """Probe every defect of ``DEFECTS`` in the installed RQ; never raises."""
    try:
        kit: _ProbeKit | None = _ProbeKit(queue_class, setup_dependencies)
        kit_error = ""
    except Exception as exc:
        kit, kit_error = None, f"the probe could not set up: {exc!r}"
    return [_finding(defect, kit, kit_error, rq_version) for defect in DEFECTS]


def _finding(defect: Defect, kit: _ProbeKit | None, kit_error: str, rq_version: str | None) -> Finding:
    table = table_verdict(defect, rq_version)
    if kit is None:
        return Finding(defect, None, table, kit_error)
    try:
        probe: bool | None = PROBES[defect.id](kit)
    except Exception as exc:
        return Finding(defect, None, table, f"the probe failed: {exc!r}")
    seen = "the probe reproduced it" if probe else "the probe found RQ correct"
    if table is TableVerdict.UNKNOWN:
        reason = f"{seen}; rq {rq_version} is newer than the releases measured"
    elif (table is TableVerdict.AFFECTED) == probe:
        reason = f"{seen}, as the version table expects"
    else:
        reason = (
            f"{seen}, although the version table says rq {rq_version} is {table.value}; trusting the probe"
        )
    return Finding(defect, probe, table, reason)
