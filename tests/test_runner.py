"""``rq-pipeline-fix-run``: a real ``rq worker`` started under the runner has the guard, the
user's own ``sitecustomize`` still runs, and the kill switch still wins."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import redis
from rq import Queue
from rq.job import Job, JobStatus

from rq_pipeline_fix.runner import BOOTSTRAP_DIR, python_path_with_bootstrap
from tests.conftest import child_environment, console_script
from tests.jobs import enqueue_children_after_a_command

REPOSITORY = str(Path(__file__).resolve().parent.parent)  # rq worker imports tests.jobs from its cwd
CHILD_QUEUES = ["high", "low"]
TIMEOUT = 120  # seconds: only a safety net against a hung subprocess, never asserted on
USER_SITECUSTOMIZE = """\
import os, sys
with open(os.environ["MARKER"], "a") as marker:
    marker.write(" ".join(sys.argv) + "\\n")
"""
SHOW_GUARD = "from rq.queue import Queue; print(type(Queue.__dict__['setup_dependencies']).__name__)"


def user_sitecustomize(tmp_path: Path, source: str = USER_SITECUSTOMIZE) -> Path:
    folder = tmp_path / "user-site"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(source)
    return folder


def run(command: list[str], **environment: str | None) -> subprocess.CompletedProcess[str]:
    env = child_environment(**environment)
    return subprocess.run(command, cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def run_worker(redis_url: str, tmp_path: Path, **environment: str | None) -> subprocess.CompletedProcess[str]:
    """``rq-pipeline-fix-run rq worker --burst`` on the parents' queue and the children's."""
    folder = user_sitecustomize(tmp_path)
    command = [console_script("rq-pipeline-fix-run"), "rq", "worker", "--burst", "--url", redis_url]
    return run(
        [*command, "parents", *CHILD_QUEUES],
        PYTHONPATH=str(folder),
        MARKER=str(tmp_path / "marker"),
        **environment,
    )


def error_of(job: Job) -> str:
    """The job's traceback: from its latest Result (RQ >= 1.12), else ``exc_info`` (older RQ)."""
    if not hasattr(job, "latest_result"):
        return job.exc_info or ""
    result = job.latest_result()
    return (result.exc_string if result is not None else None) or ""


def worker_ran_user_sitecustomize(tmp_path: Path) -> bool:
    lines = (tmp_path / "marker").read_text().splitlines()
    return any("worker" in line.split() and "--burst" in line.split() for line in lines)


def test_worker_under_runner_enqueues_across_queues_through_one_pipeline(
    connection: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    parent = Queue("parents", connection=connection).enqueue(enqueue_children_after_a_command, CHILD_QUEUES)
    worker = run_worker(redis_url, tmp_path)
    assert worker.returncode == 0, worker.stderr
    parent = Job.fetch(parent.id, connection=connection)
    assert parent.get_status() == JobStatus.FINISHED, error_of(parent)
    assert connection.get("children-batches") == b"1"
    assert sorted(connection.lrange("executed", 0, -1)) == [b"child-high", b"child-low"]  # the burst ran them
    assert worker_ran_user_sitecustomize(tmp_path)


def test_kill_switch_leaves_rq_untouched_in_the_worker(
    connection: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    parent = Queue("parents", connection=connection).enqueue(enqueue_children_after_a_command, CHILD_QUEUES)
    worker = run_worker(redis_url, tmp_path, RQ_PIPELINE_FIX_DISABLE="1")
    assert worker.returncode == 0, worker.stderr
    parent = Job.fetch(parent.id, connection=connection)
    assert parent.get_status() == JobStatus.FAILED
    assert "Commands without an initial WATCH" in error_of(parent)
    assert connection.get("children-batches") is None
    assert all(Queue(name, connection=connection).count == 0 for name in CHILD_QUEUES)
    assert connection.lrange("executed", 0, -1) == []
    assert worker_ran_user_sitecustomize(tmp_path)  # the chain does not depend on the switch


def test_guard_is_armed_in_any_python_the_command_starts() -> None:
    shown = run([console_script("rq-pipeline-fix-run"), "python", "-c", SHOW_GUARD])
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "FunctionWrapper"


def test_user_sitecustomize_that_raises_is_reported_and_start_up_goes_on(tmp_path: Path) -> None:
    folder = user_sitecustomize(tmp_path, "import a_module_that_does_not_exist\n")
    shown = run([console_script("rq-pipeline-fix-run"), "python", "-c", SHOW_GUARD], PYTHONPATH=str(folder))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "FunctionWrapper"
    assert f"the sitecustomize at {folder / 'sitecustomize.py'} raised ModuleNotFoundError" in shown.stderr


def test_without_a_user_sitecustomize_ours_stays_and_says_nothing() -> None:
    code = "import sys; print(sys.modules['sitecustomize'].__file__)"
    shown = run([console_script("rq-pipeline-fix-run"), "python", "-c", code])
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == os.path.join(BOOTSTRAP_DIR, "sitecustomize.py")
    assert "rq-pipeline-fix" not in shown.stderr


def test_nested_runners_put_the_bootstrap_on_pythonpath_once() -> None:
    code = "import os; print(os.environ['PYTHONPATH'])"
    runner = console_script("rq-pipeline-fix-run")
    shown = run([runner, runner, "python", "-c", code], PYTHONPATH="/elsewhere")
    assert shown.stdout.strip() == os.pathsep.join([BOOTSTRAP_DIR, "/elsewhere"])


def test_pythonpath_gets_the_bootstrap_first_and_once() -> None:
    existing = os.pathsep.join(["/a", BOOTSTRAP_DIR, "/b", "/a", ""])
    assert python_path_with_bootstrap(existing) == os.pathsep.join([BOOTSTRAP_DIR, "/a", "/b"])
    assert python_path_with_bootstrap(None) == BOOTSTRAP_DIR


def test_missing_command_exits_127_with_a_message() -> None:
    missing = run([console_script("rq-pipeline-fix-run"), "no-such-command-rq-pipeline-fix"])
    assert missing.returncode == 127
    assert "command not found: no-such-command-rq-pipeline-fix" in missing.stderr
