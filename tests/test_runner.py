"""``rq-pipeline-fix-run``: a real ``rq worker`` started under the runner has the guard, the
user's own ``sitecustomize`` still runs, and the kill switch still wins."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus

from rq_pipeline_fix import runner
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
    assert shown.stdout.strip() == "_WrappedAtFirstUse"


def test_user_sitecustomize_that_raises_is_reported_and_start_up_goes_on(tmp_path: Path) -> None:
    folder = user_sitecustomize(tmp_path, "import a_module_that_does_not_exist\n")
    shown = run([console_script("rq-pipeline-fix-run"), "python", "-c", SHOW_GUARD], PYTHONPATH=str(folder))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "_WrappedAtFirstUse"
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


def test_pythonpath_gets_the_bootstrap_first_and_once_and_keeps_every_other_entry(tmp_path: Path) -> None:
    other_copy = tmp_path / "other" / "_bootstrap"  # another install's bootstrap folder
    other_copy.mkdir(parents=True)
    (other_copy / runner.MARKER).write_text("")
    existing = os.pathsep.join(["/a", BOOTSTRAP_DIR, "", "/b", str(other_copy), "/a", ""])
    assert python_path_with_bootstrap(existing) == os.pathsep.join([BOOTSTRAP_DIR, "/a", "", "/b", "/a", ""])
    assert python_path_with_bootstrap(None) == BOOTSTRAP_DIR


def test_missing_command_exits_127_with_a_message() -> None:
    missing = run([console_script("rq-pipeline-fix-run"), "no-such-command-rq-pipeline-fix"])
    assert missing.returncode == 127
    assert "command not found: no-such-command-rq-pipeline-fix" in missing.stderr


def test_empty_pythonpath_entry_still_means_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "module_in_the_working_directory.py").write_text("VALUE = 'found'\n")
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "show.py"  # sys.path[0] is the script's folder, not the cwd
    script.write_text("import module_in_the_working_directory as m; print(m.VALUE)\n")
    env = child_environment(PYTHONPATH=os.pathsep + "/elsewhere")
    shown = subprocess.run(
        [console_script("rq-pipeline-fix-run"), "python", str(script)],
        cwd=tmp_path / "work",
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "found"


def signal_dispositions(command: list[str]) -> list[str]:
    """The ignored and blocked signal masks of ``cat /proc/self/status`` run as ``command``."""
    status = run([*command, "cat", "/proc/self/status"]).stdout.splitlines()
    return [line for line in status if line.startswith(("SigIgn:", "SigBlk:"))]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_command_gets_the_signal_dispositions_it_would_get_without_the_runner() -> None:
    assert signal_dispositions([console_script("rq-pipeline-fix-run")]) == signal_dispositions([])


def test_shell_pipeline_under_the_runner_ends_by_sigpipe_as_without_it() -> None:
    pipeline = ["bash", "-c", "set -o pipefail; seq 1 10000000 | head -1"]
    shown = run([console_script("rq-pipeline-fix-run"), *pipeline])
    assert (shown.returncode, shown.stdout) == (141, "1\n"), shown.stderr
    assert "Broken pipe" not in shown.stderr


@pytest.mark.parametrize(
    "locale",
    [
        {"LANG": "C", "LC_CTYPE": None},
        {"LANG": "C.UTF-8", "LC_CTYPE": "POSIX"},
        {"LANG": None, "LC_CTYPE": None},
    ],
    ids=["LANG=C", "LC_CTYPE=POSIX", "no-locale"],
)
def test_command_gets_the_environment_it_would_get_without_the_runner_plus_pythonpath(
    locale: dict[str, str | None],
) -> None:
    """Python coerces the C locale by setting LC_CTYPE in its own environment (PEP 538)."""
    settings = {"LC_ALL": None, "PYTHONCOERCECLOCALE": None, "PYTHONPATH": "/elsewhere", **locale}
    direct = run(["env", "-0"], **settings).stdout.split("\0")
    under_runner = run([console_script("rq-pipeline-fix-run"), "env", "-0"], **settings).stdout.split("\0")
    pythonpath = "PYTHONPATH=" + os.pathsep.join([BOOTSTRAP_DIR, "/elsewhere"])
    assert sorted(under_runner) == sorted(
        pythonpath if line.startswith("PYTHONPATH=") else line for line in direct
    )


def test_what_the_runners_own_start_up_changes_does_not_reach_the_command(tmp_path: Path) -> None:
    """The runner is a Python program: a sitecustomize on PYTHONPATH runs in it too, and may set
    variables; the command gets the environment the runner was started with."""
    Path(tmp_path, "sitecustomize.py").write_text("import os\nos.environ['SET_IN_THE_RUNNER'] = '1'\n")
    settings = {"PYTHONPATH": str(tmp_path)}
    direct = run(["env", "-0"], **settings).stdout.split("\0")
    under_runner = run([console_script("rq-pipeline-fix-run"), "env", "-0"], **settings).stdout.split("\0")
    assert not any(line.startswith("SET_IN_THE_RUNNER=") for line in under_runner)
    pythonpath = "PYTHONPATH=" + os.pathsep.join([BOOTSTRAP_DIR, str(tmp_path)])
    assert sorted(under_runner) == sorted(
        pythonpath if line.startswith("PYTHONPATH=") else line for line in direct
    )


def another_venv(tmp_path: Path, with_the_package: bool) -> Path:
    """A virtualenv of its own (no pip, no rq) whose site-packages has a sitecustomize, and, if
    asked, a copy of rq-pipeline-fix of its own (another install, as a pipx-style one is)."""
    venv = tmp_path / "other-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=TIMEOUT)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT,
    ).stdout.strip()
    Path(site, "sitecustomize.py").write_text(USER_SITECUSTOMIZE)
    if with_the_package:
        shutil.copytree(Path(REPOSITORY, "rq_pipeline_fix"), Path(site, "rq_pipeline_fix"))
    return python


@pytest.mark.parametrize("with_the_package", [False, True], ids=["without-the-package", "with-its-own-copy"])
def test_python_of_another_venv_runs_its_own_sitecustomize(tmp_path: Path, with_the_package: bool) -> None:
    python = another_venv(tmp_path, with_the_package)
    code = "import sys; print('rq_pipeline_fix' in sys.modules)"
    env = child_environment(MARKER=str(tmp_path / "marker"), PYTHONPATH=None)
    shown = subprocess.run(
        [console_script("rq-pipeline-fix-run"), str(python), "-c", code, "from-the-other-venv"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == str(with_the_package)  # armed where it has the package
    assert (tmp_path / "marker").read_text().split() == ["-c", "from-the-other-venv"]
    assert "rq-pipeline-fix" not in shown.stderr


def test_script_without_a_shebang_exits_126_with_a_message(tmp_path: Path) -> None:
    script = tmp_path / "no-shebang"
    script.write_bytes(b"\x7fELF-not-really\n")
    script.chmod(0o755)
    shown = run([console_script("rq-pipeline-fix-run"), str(script)])
    assert shown.returncode == 126
    assert shown.stderr.startswith(f"rq-pipeline-fix-run: {script}: Exec format error"), shown.stderr


def test_file_that_is_not_executable_exits_126_as_in_a_shell(tmp_path: Path) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\necho ran\n")
    shown = run([console_script("rq-pipeline-fix-run"), str(script)])
    assert shown.returncode == 126, shown.stderr
    assert "ran" not in shown.stdout


def test_help_survives_python_oo() -> None:
    shown = run([console_script("rq-pipeline-fix-run"), "--help"], PYTHONOPTIMIZE="2")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: rq-pipeline-fix-run") and "None" not in shown.stdout
