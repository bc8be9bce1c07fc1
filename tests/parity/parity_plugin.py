"""pytest plugin for one run of RQ's own tests, loaded by run_upstream.py with ``-p parity_plugin``.

Environment (set by the runner):
  RQ_PARITY_MODE        "guard": rq-pipeline-fix is imported and must be active;
                        "bare": it must be absent: never imported, and no wrapt wrapper anywhere in rq.
  RQ_PARITY_REDIS_PORT  the port of the runner's server: redis_port.py sends redis-py's connections
                        to localhost:6379 (where RQ's tests connect) there, in this process and,
                        through site/sitecustomize.py, in every child Python.
  RQ_PARITY_REPORT      where to write the JSON report: the outcome of every test id, the versions,
                        the guard's status, and whether the mode was verified.

Not a conftest and not named test_*: the project's own test run never collects or loads it.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import sys
from typing import Any

import pytest
from redis_port import redirect_upstream_port_to

MODE = os.environ.get("RQ_PARITY_MODE", "")
_outcomes: dict[str, str] = {}
_messages: dict[str, str] = {}  # test id -> the error of its first failure
_problems: list[str] = []
_status: dict[str, Any] | None = None


def _is_wrapt_proxy(value: object) -> bool:
    # wrapt's C types say their module is "_wrappers", its pure-Python ones "wrapt.<module>"
    if type(value).__module__.split(".")[0] in ("wrapt", "_wrappers"):
        return True
    wrapt = sys.modules.get("wrapt")  # not imported: no proxy of its can exist
    return wrapt is not None and isinstance(value, wrapt.ObjectProxy)


def wrapt_wrappers_in_rq() -> list[str]:
    """Every attribute of a class in a loaded rq module that is a wrapt proxy."""
    found = []
    for name, module in list(sys.modules.items()):
        if not (name == "rq" or name.startswith("rq.")) or module is None:
            continue
        for cls in list(vars(module).values()):
            if not inspect.isclass(cls) or cls.__module__ != name:
                continue
            for attribute, value in vars(cls).items():
                if _is_wrapt_proxy(value):
                    found.append(f"{name}.{cls.__name__}.{attribute}")
    return found


def pytest_configure(config: pytest.Config) -> None:
    global _status
    try:
        redirect_upstream_port_to(int(os.environ["RQ_PARITY_REDIS_PORT"]))
    except RuntimeError as error:
        raise pytest.UsageError(str(error)) from None
    if MODE == "guard":
        import rq.queue  # noqa: F401  (the guard goes on when rq.queue is imported)

        import rq_pipeline_fix

        status = rq_pipeline_fix.status()
        if not status.active:
            raise pytest.UsageError(f"parity: the guard is not active: {status.note}")
        _status = status.to_dict()
    elif MODE == "bare":
        if "rq_pipeline_fix" in sys.modules:
            raise pytest.UsageError("parity: rq_pipeline_fix was imported in a run that must be without it")
    else:
        raise pytest.UsageError(f"parity: RQ_PARITY_MODE must be guard or bare, not {MODE!r}")


def _remember_message(report: pytest.CollectReport | pytest.TestReport) -> None:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None) or str(report.longrepr).strip().splitlines()[-1:]
    _messages.setdefault(report.nodeid, str(message)[:500])


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _outcomes[report.nodeid] = "error"
        _remember_message(report)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    previous = _outcomes.get(report.nodeid)
    if report.failed:
        outcome = "failed" if report.when == "call" else "error"
        _remember_message(report)
    elif report.skipped:
        outcome = "skipped"
    else:
        outcome = "passed"
    if previous in ("failed", "error") or (previous == "skipped" and outcome == "passed"):
        return  # keep the worst outcome of setup, call and teardown
    _outcomes[report.nodeid] = outcome


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if MODE == "bare":
        if "rq_pipeline_fix" in sys.modules:
            _problems.append("rq_pipeline_fix was imported during the run")
        _problems.extend(f"wrapt wrapper on {where}" for where in wrapt_wrappers_in_rq())
    else:
        import rq_pipeline_fix

        if not rq_pipeline_fix.status().active:
            _problems.append(f"the guard was no longer active at the end: {rq_pipeline_fix.status().note}")
    from importlib import metadata

    report = {
        "mode": MODE,
        "python": platform.python_version(),
        "rq": metadata.version("rq"),
        "redis": metadata.version("redis"),
        "status": _status,
        "wrapped": wrapt_wrappers_in_rq(),  # the rq methods the guard wraps (none when bare)
        "verified": not _problems,
        "problems": _problems,
        "exitstatus": int(exitstatus),
        "outcomes": _outcomes,
        "messages": _messages,
    }
    with open(os.environ["RQ_PARITY_REPORT"], "w", encoding="utf-8") as out:
        json.dump(report, out, indent=2, sort_keys=True)
