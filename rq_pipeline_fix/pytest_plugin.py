"""The pytest plugin (entry point ``rq_pipeline_fix``; ``-p no:rq_pipeline_fix`` turns it off).

Importing this module is what arms the guard: pytest imports entry-point plugins before it reads
any ``conftest.py`` or test module, so suites that import rq at module level are covered. The
guard itself goes on when ``rq.queue`` is imported; ``RQ_PIPELINE_FIX_DISABLE=1`` keeps it off.

The report-header line applies the guard at session start, which imports rq at that point if
nothing has yet: the line exists to say what was patched, which needs rq. With ``-q`` or
``--no-header`` pytest asks for no header and rq is imported only when the tests import it.
"""

from __future__ import annotations

import pytest

import rq_pipeline_fix  # noqa: F401  (registers the import hook: the guard goes on with rq.queue)

from . import report


def pytest_report_header(config: pytest.Config) -> str:
    # Under the kill switch, say so without importing or probing rq: the switch means hands off.
    try:
        return report.header_line(report.observed_status(probe_when_disabled=False))
    except Exception as exc:  # a warning turned error (-W error) in rq's import, say: never INTERNALERROR
        return f"rq-pipeline-fix: no report: {exc!r}"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rq-pipeline-fix")
    group.addoption(
        "--rq-pipeline-fix-strict",
        action="store_true",
        default=False,
        help="stop the session at start (usage error) when a defect present in the installed RQ "
        "is unpatched or undecided, e.g. under RQ_PIPELINE_FIX_DISABLE",
    )
    parser.addini(
        "rq_pipeline_fix_strict",
        type="bool",
        default=False,
        help="as --rq-pipeline-fix-strict (-o rq_pipeline_fix_strict=false turns it off for a run)",
    )


@pytest.hookimpl(tryfirst=True)  # before other plugins spend time (xdist starting its workers)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Strict mode: the verdict of ``rq-pipeline-fix status``, as a usage error (exit status 4).
    At session start, not at configure: ``pytest --help`` must still work. Under the kill switch
    the defects are probed in a child interpreter, as ``status`` does: this one stays hands off."""
    config = session.config
    if not (config.getoption("rq_pipeline_fix_strict") or config.getini("rq_pipeline_fix_strict")):
        return
    try:
        problems = report.verdict(report.observed_status())
    except Exception as exc:  # strict means: no verdict, no session
        problems = (f"the check itself failed: {exc!r}",)
    if problems:
        raise pytest.UsageError(report.strict_message(problems))
