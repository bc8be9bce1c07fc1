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
    return report.header_line(report.observed_status(probe_when_disabled=False))
