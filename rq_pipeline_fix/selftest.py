"""``rq-pipeline-fix selftest``: the scenario families (``families.py``, which also says what each
judges of RQ and of the server) run for real against the server you name, first with RQ as
installed, then with the guard, and a table of the outcomes. Exit status 0 when every family
passes with the guard.

Safe on a production server. Every key and queue name the run writes contains a mark unique to
it (``rq-pipeline-fix-selftest-`` and 8 random hex digits). Before and after each family it
deletes the keys RQ derives from the run's queue names and job ids; at the end it also SCANs for
any key with the mark and removes the run's queues from RQ's shared set ``rq:queues`` (never the
set itself; never FLUSHDB). SIGINT, SIGTERM and SIGHUP stop it, but not its clean-up. It refuses a
cluster, a replica and a user without write permission before writing anything, each with an exit
status of its own (``EXIT_*`` below).
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, NamedTuple, TextIO

import redis
from redis.exceptions import ReadOnlyError, ResponseError
from rq import Queue

import rq_pipeline_fix

from . import families
from .families import Failed, Family, Names, Scenario, as_text
from .server import redact_url, remove_marked

EXIT_OK = 0  # every family passes with the guard
EXIT_FAILED = 1  # a family fails with the guard
EXIT_USAGE = 2  # no server named, or a URL redis-py cannot use
EXIT_UNREACHABLE = 3  # cannot connect or log in, or the connection was lost
EXIT_CLUSTER = 4  # refused: a cluster
EXIT_REPLICA = 5  # refused: a replica
EXIT_NO_PERMISSION = 6  # refused: the user may not run a command the selftest needs
EXIT_INTERRUPTED = 130  # SIGINT (128 + 2), after the clean-up; SIGTERM 143, SIGHUP 129 (128 + N)

MARK = "rq-pipeline-fix-selftest"
CLIENT_OPTIONS: dict[str, Any] = {"socket_connect_timeout": 10, "socket_timeout": 10}  # URL options win
# The table's columns, in the order they run: id (in the run's names), title, how the guard is set.
COLUMNS = (("rq", "RQ as installed", "revert"), ("guard", "with the guard", "apply"))
CELL_WIDTH = 48  # the table stays readable; the guard's failures are also printed whole


class Refused(Exception):
    """The selftest cannot run against this server, or stopped: the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised where the selftest is so that its clean-up runs, as SIGINT raises
    KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Outcome(NamedTuple):
    verdict: str  # "pass", "FAIL" or "n/a"
    detail: str = ""

    def cell(self) -> str:
        text = f"{self.verdict}: {self.detail}" if self.detail else self.verdict
        return text if len(text) <= CELL_WIDTH else text[: CELL_WIDTH - 3] + "..."


# --- one run: its names, its connections, its clean-up --------------------------------------------


class SelfTest:
    """One run: its mark, its connections, and every queue name, job id and key of its own."""

    def __init__(self, url: str, where: str) -> None:
        self.where = where  # the URL without its password, and where it came from
        self.mark = f"{MARK}-{secrets.token_hex(4)}"
        # Typed Any: redis-py's own annotations of replies and pipeline methods are partial.
        self.client: Any = redis.Redis.from_url(url, **CLIENT_OPTIONS)  # RQ's and the caller's pipelines
        # Another connection, as another process has: what it sees is what the server holds.
        self.observer: Any = redis.Redis.from_url(url, **CLIENT_OPTIONS)
        # Clean-up only, on a pool of its own: usable whatever an interruption did to the others'.
        self.cleaner: Any = redis.Redis.from_url(url, **CLIENT_OPTIONS)
        self.names = Names()  # every name the run has used, recorded before it is used
        self.began_writing = False
        self.finished = False
        self.missed: list[bytes] = []
        self.left_behind = ""

    def scenario(self, family: Family, column: str) -> Scenario:
        return Scenario(self.client, self.observer, f"{self.mark}-{family.slug}-{column}", self.names)

    def clean_up(self) -> None:
        """Delete the keys RQ derives from the run's names, and the caller's keys; nothing else."""
        with _signals_held():
            keys = [*self.names.own_keys, *self.names.rq_keys(self.cleaner)]
            for start in range(0, len(keys), 500):
                self.cleaner.delete(*keys[start : start + 500])
            queue_keys = self.names.queue_keys()
            if queue_keys:
                self.cleaner.srem(Queue.redis_queues_keys, *queue_keys)

    def finish(self) -> None:
        """The last clean-up, once the run wrote anything: ``clean_up``, then any key at all with
        the run's mark (SCAN) and the run's queues in ``rq:queues``. Never raises: what it could
        not do is kept in ``left_behind``, and keys the SCAN found (which ``clean_up`` should have
        deleted) in ``missed``."""
        if not self.began_writing or self.finished:
            return
        with _signals_held():
            try:
                self.clean_up()
                self.missed = remove_marked(self.cleaner, self.mark, Queue.redis_queues_keys)
                self.left_behind = ""
            except Exception as exc:
                self.left_behind = (
                    f"could not remove what this run wrote ({type(exc).__name__}: {exc}): delete the keys "
                    f"matching *{self.mark}* and the members of {Queue.redis_queues_keys} containing it"
                )
            self.finished = True


def attempt(test: SelfTest, family: Family, column: str) -> Outcome:
    """Run one family in one column, cleaning up before and after. A failure of RQ or of the
    server is the family's outcome; what stops the whole run (no permission, connection lost,
    the server became a replica) is raised as ``Refused``."""
    why_not = family.unavailable()
    if why_not:
        return Outcome("n/a", why_not)
    test.clean_up()
    try:
        family.scenario(test.scenario(family, column))
    except Failed as failure:
        return Outcome("FAIL", str(failure))
    except Exception as exc:
        stop = _stops_the_run(exc, test, f"during '{family.title}'")
        if stop is not None:
            raise stop from exc
        return Outcome("FAIL", f"{type(exc).__name__}: {exc}")
    finally:
        test.clean_up()
    return Outcome("pass")


# --- the server: which one, and whether the selftest may run on it ------------------------------


def check_server(test: SelfTest) -> str:
    """The server's name and version, once it is known to be a standalone primary on which this
    user may write, WATCH and run MULTI/EXEC; else ``Refused`` says why. Writes nothing that stays."""
    client, where = test.client, test.where
    try:
        client.ping()
    except redis.RedisError as exc:  # refused, unknown host, wrong password, TLS, timeout
        raise Refused(EXIT_UNREACHABLE, f"cannot talk to {where}: {type(exc).__name__}: {exc}") from exc
    server = _info(client, "server")
    label = _server_label(server)
    if _info(client, "cluster").get("cluster_enabled") in (1, "1"):
        raise Refused(
            EXIT_CLUSTER,
            f"{where} is a node of a cluster (INFO cluster: cluster_enabled:1); the selftest does not "
            "run on a cluster: RQ's transactions span keys in different hash slots. Point --url at a "
            "standalone server or the primary of a replicated one.",
        )
    replica_of = _replica_of(client)
    if replica_of is not None:
        raise Refused(EXIT_REPLICA, _replica_message(where, replica_of, client))
    probe_keys = [f"rq:{test.mark}-probe", f"{test.mark}-probe"]
    try:
        with client.pipeline() as pipe:  # the commands every family needs: WATCH, MULTI/EXEC, writes
            pipe.watch(*probe_keys)
            pipe.multi()
            for key in probe_keys:
                pipe.set(key, 1, px=60_000)
            pipe.delete(*probe_keys)  # in the same transaction: the probe leaves nothing
            pipe.execute()
    except redis.RedisError as exc:
        refusal = _stops_the_run(exc, test, "while probing its write permission") or Refused(
            EXIT_FAILED,
            f"{where} refused the commands every family needs (WATCH, MULTI/EXEC, SET, DEL): "
            f"{type(exc).__name__}: {exc}",
        )
        raise refusal from exc
    return label


def _stops_the_run(exc: BaseException, test: SelfTest, when: str = "") -> Refused | None:
    """The ``Refused`` an error of the server means for the whole run, or None for an error of
    the family's own (RQ's, or the server's verdict on a transaction)."""
    at = f"{test.where}{f' {when}' if when else ''}"
    message, name = str(exc), type(exc).__name__
    if name == "NoPermissionError" or message.startswith("NOPERM") or "no permissions" in message:
        user = test.client.connection_pool.connection_kwargs.get("username") or "default"
        return Refused(
            EXIT_NO_PERMISSION,
            f"{at}: the server refused user {user!r} a command: {message}. The selftest needs a user that "
            f"may read and write keys rq:* and {MARK}-*, and run WATCH, MULTI, EXEC and INFO",
        )
    if isinstance(exc, ReadOnlyError):
        return Refused(EXIT_REPLICA, f"{at}: the server refused a write: {message} (a replica?)")
    if name in ("MovedError", "AskError", "ClusterDownError", "ClusterCrossSlotError", "TryAgainError"):
        return Refused(EXIT_CLUSTER, f"{at}: the server answered as a cluster does ({name}: {message})")
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return Refused(EXIT_UNREACHABLE, f"{at}: lost the server: {name}: {message}")
    return None


def _info(client: Any, section: str) -> dict[str, Any]:
    try:
        return dict(client.info(section))
    except ResponseError:  # INFO denied by an ACL or renamed: the other checks still hold
        return {}


def _server_label(server: dict[str, Any]) -> str:
    for field, name in (("valkey_version", "Valkey"), ("dragonfly_version", "Dragonfly")):
        if field in server:
            return f"{name} {server[field]}"
    if "redis_version" in server:
        return f"Redis {server['redis_version']}"
    return "a server that does not say its version (INFO denied)"


def _replica_of(client: Any) -> str | None:
    """'host:port' of the primary when the server is a replica, else None."""
    try:
        role = client.execute_command("ROLE")
        if as_text(role[0]) in ("slave", "replica"):
            return f"{as_text(role[1])}:{role[2]}"
        return None
    except ResponseError:  # ROLE denied or unknown: ask INFO
        replication = _info(client, "replication")
        if replication.get("role") in ("slave", "replica"):
            return f"{replication.get('master_host')}:{replication.get('master_port')}"
        return None


def _replica_message(where: str, replica_of: str, client: Any) -> str:
    setting = ""
    with suppress(Exception):  # CONFIG is often denied or renamed on managed services
        setting = str(client.config_get("replica-read-only").get("replica-read-only"))
    kind, why = {
        "yes": ("a read-only replica", "writes there fail"),
        "no": ("a writable replica", "writes there are not replicated and are lost at the next sync"),
    }.get(setting, ("a replica", "writes there fail, or are lost at the next sync"))
    return f"{where} is {kind} of {replica_of}: {why}. Point --url at the primary."


def _names_a_cluster(url: str) -> bool:
    scheme = url.partition("://")[0].lower()
    return "cluster" in scheme


# --- signals and the guard: the process as it was found -------------------------------------------


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


# SIGINT raises KeyboardInterrupt already; these raise Terminated (SIGHUP: the terminal or ssh
# session went away), so that the clean-up in ``finally`` runs.
_TERMINATING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextmanager
def _termination_raises() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``Terminated`` where the selftest is, for as long as it runs, where
    they would otherwise kill the process (a handler of the host's, or SIG_IGN, stays in charge);
    the previous handlers are back afterwards."""
    if not _in_main_thread():  # only the main thread may set handlers
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated(signum)

    replaced = {number: signal.getsignal(number) for number in _TERMINATING}
    replaced = {number: handler for number, handler in replaced.items() if handler == signal.SIG_DFL}
    for number in replaced:
        signal.signal(number, terminate)
    try:
        yield
    finally:
        for number, handler in replaced.items():
            signal.signal(number, handler)


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP wait until the block is done (a clean-up must not stop
    half-way), then act as usual."""
    if not (hasattr(signal, "pthread_sigmask") and _in_main_thread()):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, *_TERMINATING})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def _guard_state_kept() -> Iterator[None]:
    """The selftest reverts and applies the guard; afterwards it is as it was found."""
    was_active = rq_pipeline_fix.status().active
    try:
        yield
    finally:
        with _signals_held():  # not left half-way by a signal either
            if was_active:
                rq_pipeline_fix.apply()
            else:
                rq_pipeline_fix.revert()


# --- the command ----------------------------------------------------------------------------------


def run(url: str | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``rq-pipeline-fix selftest [--url URL]``: the server is ``url``, else ``$REDIS_URL``; the
    first line printed says which. Returns the exit status (``EXIT_*``)."""
    source = "--url" if url else "REDIS_URL"
    url = url or os.environ.get("REDIS_URL") or None
    if url is None:
        print(
            "rq-pipeline-fix selftest: name the server to test: --url redis://[[USER]:PASSWORD@]HOST:PORT/DB "
            "(or set REDIS_URL)",
            file=err,
        )
        return EXIT_USAGE
    started = time.monotonic()
    test: SelfTest | None = None
    try:
        with _termination_raises(), _guard_state_kept():
            if _names_a_cluster(url):
                raise Refused(
                    EXIT_CLUSTER, f"{redact_url(url)} names a cluster; the selftest does not run on one"
                )
            try:
                test = SelfTest(url, f"{redact_url(url)} ({source})")
            except ValueError as exc:
                raise Refused(EXIT_USAGE, f"cannot use {redact_url(url)}: {exc}") from exc
            return _run(test, out, started)
    except KeyboardInterrupt:
        stopped = "interrupted (SIGINT)", EXIT_INTERRUPTED
    except Terminated as terminated:
        stopped = f"stopped by {signal.Signals(terminated.signum).name}", 128 + terminated.signum
    except Exception as exc:
        refusal = exc if isinstance(exc, Refused) else _stops_the_run(exc, test) if test else None
        if refusal is None:
            raise  # a bug of ours: the traceback says where (the clean-up has run)
        stopped = str(refusal), refusal.status
    message, status = stopped
    print(f"rq-pipeline-fix selftest: {message}{_what_is_left(test)}", file=err)
    return status


def _run(test: SelfTest, out: TextIO, started: float) -> int:
    echo = out.write
    server = check_server(test)
    status = rq_pipeline_fix.apply()
    patched = [d.id for d in status.defects if d.patched]
    guard = f"on for {', '.join(patched)}" if status.active and patched else f"off ({status.note})"
    echo(f"rq-pipeline-fix selftest on {server} at {test.where}\n")
    echo(f"rq {status.rq_version}, redis-py {status.redis_version}; the guard: {guard}\n")
    echo(f"every key and queue name of this run contains {test.mark}; all are removed at the end\n\n")
    out.flush()
    outcomes: dict[str, list[Outcome]] = {}
    test.began_writing = True
    try:
        for column, _title, switch in COLUMNS:
            with _signals_held():  # a signal must not leave the guard half on
                getattr(rq_pipeline_fix, switch)()
            outcomes[column] = [attempt(test, family, column) for family in families.FAMILIES]
    finally:
        test.finish()
    echo(_table(outcomes) + "\n\n")
    echo("RQ as installed is for information: it fails where this RQ has the defects (see `status`).\n")
    if test.missed:
        shown = ", ".join(as_text(key) for key in test.missed[:10])
        echo(
            f"note: the final SCAN found {len(test.missed)} keys of this run that the clean-up had missed "
            f"(removed now): {shown}\n"
        )
    failures = [(f, o) for f, o in zip(families.FAMILIES, outcomes["guard"]) if o.verdict == "FAIL"]
    for family, outcome in failures:
        echo(f"with the guard, {family.title}: {outcome.detail}\n")
    left = test.left_behind or "nothing of this run is left"
    elapsed = f"{time.monotonic() - started:.1f} s"
    if failures:
        failing = f"{len(failures)} of {len(families.FAMILIES)} families fail"
        echo(f"NOT OK: {failing} with the guard on {server}; {left} ({elapsed}).\n")
        return EXIT_FAILED
    if test.left_behind:
        echo(f"NOT OK: every family passes with the guard on {server}, but {left} ({elapsed}).\n")
        return EXIT_UNREACHABLE
    echo(f"OK: every family passes with the guard on {server}; {left} ({elapsed}).\n")
    return EXIT_OK


def _table(outcomes: dict[str, list[Outcome]]) -> str:
    rows = [("family", *(title for _column, title, _switch in COLUMNS))]
    for index, family in enumerate(families.FAMILIES):
        rows.append((family.title, *(outcomes[column][index].cell() for column, _title, _switch in COLUMNS)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]).rstrip()
        for row in rows
    )


def _what_is_left(test: SelfTest | None) -> str:
    """For a run that stopped early: whether what it wrote is gone."""
    if test is None or not test.began_writing:
        return ""
    test.finish()  # has run already, in _run's finally; here for a stop before that
    return f"; {test.left_behind or 'nothing of this run is left on the server'}"
