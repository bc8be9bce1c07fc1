"""Upstream parity: RQ's own tests, with and without rq-pipeline-fix, for each given RQ release.

For every release it
  1. downloads the release's sdist (``pip download rq==X --no-deps --no-binary rq``) into the cache
     (default ``.rq-sdists/``, git-ignored) and copies its ``tests/`` to a fresh work folder. The
     sdists of RQ 1.9 ... 1.15 ship no tests: for those, ``--rq-git DIR`` (or RQ_PARITY_RQ_GIT)
     names a git clone of RQ whose release tag supplies ``tests/``; without one the release is
     reported as not testable and left out;
  2. adds ``test_seed_regression.py``: ``test_enqueue_different_queues_with_passed_pipeline``, the
     regression test for the seed issue, cut out of the RQ 2.3.0 sdist's ``tests/test_queue.py``;
  3. makes a venv (uv) with that RQ release, a redis-py of its time, pytest, and this package;
  4. runs ``tests/test_queue.py``, ``tests/test_dependencies.py`` (where the release has one),
     ``tests/test_job.py`` and the seed test twice, against a redis-server of its own on a free port:
       bare:  RQ_PIPELINE_FIX_DISABLE=1, PYTEST_DISABLE_PLUGIN_AUTOLOAD=1, -p no:rq_pipeline_fix,
              and parity_plugin.py checks that rq_pipeline_fix was never imported and that no
              wrapt wrapper sits anywhere in rq;
       guard: the package's pytest plugin loads as users get it, and parity_plugin.py imports the
              package too and checks the guard is active, start to end;
  5. compares the failing test ids of the two runs.

Fails (exit 1) when, for any release, the guard adds a failure, the seed test does not pass with
the guard, or a run could not be verified to be what it claims. Writes a JSON summary next to the
work folders (``<cache>/parity.json``). Needs pip, uv and a redis-server (PATH, or
RQ_PARITY_REDIS_SERVER); run it as ``tools/tox.sh -e parity`` or directly with any Python >= 3.9.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# Defective lines: 1.9 ... 2.2 have D1-D3, 2.3 ... 3.0 still D2/D3 (DEFECTS.md), so the guard is
# active on all of them. 1.9.0 needs --rq-git (its sdist has no tests).
DEFAULT_RELEASES = ("1.9.0", "1.16.2", "2.0.0", "2.1.0", "2.2.0", "2.3.3", "2.12.0", "3.0.0")
SEED_RELEASE = "2.3.0"
SEED_TEST = "test_enqueue_different_queues_with_passed_pipeline"
SEED_MODULE = "test_seed_regression.py"
UPSTREAM_FILES = ("tests/test_queue.py", "tests/test_dependencies.py", "tests/test_job.py")
TEST_REQUIREMENTS = ("pytest", "psutil", "mock")  # RQ 1.x's tests import mock


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


@dataclass
class ReleaseResult:
    release: str
    python: str = ""
    redis: str = ""
    tests_from: str = ""
    seed_test: str = ""
    skipped: str = ""  # why the release could not be tested
    runs: dict[str, RunResult] = field(default_factory=dict)
    flaky: list[str] = field(default_factory=list)  # failed with the guard, then passed on a re-run

    @property
    def added_by_guard(self) -> list[str]:
        return sorted(set(self.runs["guard"].failing) - set(self.runs["bare"].failing) - set(self.flaky))

    @property
    def fixed_by_guard(self) -> list[str]:
        return sorted(set(self.runs["bare"].failing) - set(self.runs["guard"].failing))

    def seed_outcome(self, mode: str) -> str:
        outcome = self.runs[mode].outcomes.get(self.seed_test, "not run")
        return "passed" if mode == "guard" and self.seed_test in self.flaky else outcome

    def problems(self) -> list[str]:
        if self.skipped:
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


def redis_server_executable() -> str:
    found = os.environ.get("RQ_PARITY_REDIS_SERVER") or shutil.which("redis-server")
    if not found:
        raise SystemExit("parity: no redis-server: install one or set RQ_PARITY_REDIS_SERVER")
    return found


class RedisServer:
    """A throw-away redis-server on a free loopback port, no persistence."""

    def __init__(self, executable: str, directory: Path) -> None:
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

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

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
            *TEST_REQUIREMENTS,
            str(REPO),
            "--reinstall-package",
            "rq-pipeline-fix",
        ],
        env=environment,
    )
    return venv


def run_tests(
    release: str,
    mode: str,
    venv: Path,
    work: Path,
    files: list[str],
    port: int,
    reports: Path,
    label: str = "",
) -> RunResult:
    label = label or mode
    report = reports / f"rq-{release}-{label}.json"
    report.unlink(missing_ok=True)
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RQ_PIPELINE_FIX_", "PYTEST_", "REDIS_"))
    }
    environment.update(
        RQ_PARITY_MODE=mode,
        RQ_PARITY_REDIS_PORT=str(port),
        RQ_PARITY_REPORT=str(report),
        PYTHONPATH=str(HERE),
        PYTHONDONTWRITEBYTECODE="1",
    )
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
    completed = subprocess.run([*command, *files], cwd=work, env=environment, text=True, capture_output=True)
    seconds = time.monotonic() - started
    (reports / f"rq-{release}-{label}.log").write_text(completed.stdout + completed.stderr)
    tail = (completed.stdout.strip().splitlines() or ["(no output)"])[-1]
    log(f"rq {release}: {label}: {tail} [{seconds:.0f}s]")
    if not report.exists():
        return RunResult(
            mode,
            seconds,
            completed.returncode,
            False,
            [f"pytest exited {completed.returncode} without a report: {completed.stderr[-2000:]}"],
            [],
            {},
            None,
        )
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
    )


PYTEST_INI = "[pytest]\nmarkers =\n    slow\n    ssl_test\n"


def test_release(release: str, cache: Path, seed: str, port: int, git_dir: Path | None) -> ReleaseResult:
    python, redis_requirement = environment_for(release)
    result = ReleaseResult(release, python=python, redis=redis_requirement)
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
    (work / "tests" / SEED_MODULE).write_text(seed)
    files = [name for name in UPSTREAM_FILES if (work / name).exists()] + [f"tests/{SEED_MODULE}"]
    result.seed_test = f"tests/{SEED_MODULE}::TestSeedRegression::{SEED_TEST}"
    venv = make_venv(release, python, redis_requirement, cache)
    reports = cache / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    for mode in ("bare", "guard"):
        result.runs[mode] = run_tests(release, mode, venv, work, files, port, reports)
    # A test that fails only with the guard is run again (with the guard) before it counts: RQ's
    # suite has timing-dependent tests. Passing on a re-run (up to two) marks it flaky, not added.
    suspects = sorted(set(result.runs["guard"].failing) - set(result.runs["bare"].failing))
    if result.seed_test in result.runs["guard"].failing:
        suspects = sorted({*suspects, result.seed_test})
    for attempt in (1, 2):
        if not suspects:
            break
        rerun = run_tests(release, "guard", venv, work, suspects, port, reports, f"guard-rerun{attempt}")
        suspects = [test_id for test_id in suspects if rerun.outcomes.get(test_id) != "passed"]
    result.flaky = sorted(
        {*result.runs["guard"].failing} - set(result.runs["bare"].failing) - set(suspects)
        | ({result.seed_test} - set(suspects) if result.seed_test in result.runs["guard"].failing else set())
    )
    return result


def summarize(results: list[ReleaseResult]) -> list[str]:
    lines = []
    for r in results:
        if r.skipped:
            lines.append(f"rq {r.release}: NOT TESTED: {r.skipped}")
            continue
        bare, guard = r.runs["bare"], r.runs["guard"]
        patched = sorted(d["id"] for d in (guard.status or {}).get("defects", []) if d.get("patched"))
        lines.append(
            f"rq {r.release} (tests from {r.tests_from}; Python {r.python}, "
            f"redis-py {(guard.status or {}).get('redis_version')}): "
            f"failing bare {len(bare.failing)}, with guard {len(guard.failing)} "
            f"(of {len(guard.outcomes)}); added by guard {len(r.added_by_guard)}, fixed by guard "
            f"{len(r.fixed_by_guard)}; "
            f"seed test bare {r.seed_outcome('bare')}, guard {r.seed_outcome('guard')}; "
            f"patched {','.join(patched) or '-'}; {bare.seconds:.0f}s + {guard.seconds:.0f}s"
        )
        lines.extend(f"    added by guard: {t}: {guard.messages.get(t, '')}" for t in r.added_by_guard)
        lines.extend(f"    fixed by guard: {t}: {bare.messages.get(t, '')}" for t in r.fixed_by_guard)
        lines.extend(f"    flaky (failed with the guard, passed on a re-run with it): {t}" for t in r.flaky)
        lines.extend(
            f"    failing in both: {t}: {bare.messages.get(t, '')}"
            for t in sorted(set(bare.failing) & set(guard.failing))
        )
    return lines


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
    args = parser.parse_args(argv)
    cache: Path = args.cache.resolve()
    git_dir: Path | None = args.rq_git
    if git_dir is not None and (git_dir / ".git").exists():
        git_dir = git_dir / ".git"
    seed = seed_source(cache)
    server = RedisServer(redis_server_executable(), cache / "redis")
    log(f"redis-server on 127.0.0.1:{server.port}")
    results: list[ReleaseResult] = []
    try:
        for release in args.releases:
            results.append(test_release(release, cache, seed, server.port, git_dir))
    finally:
        server.stop()
    summary = summarize(results)
    problems = [problem for r in results for problem in r.problems()]
    (cache / "parity.json").write_text(
        json.dumps(
            {"results": [asdict(r) for r in results], "summary": summary, "problems": problems}, indent=2
        )
    )
    print("\n".join(["", "=== upstream parity ===", *summary]))
    if problems:
        print("\n".join(["", "PARITY FAILED:", *problems]))
        return 1
    tested = [r.release for r in results if not r.skipped]
    print(
        f"\nparity OK for rq {', '.join(tested) or '(none)'}: the guard adds no failure, the seed test passes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
