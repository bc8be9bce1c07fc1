"""rq-pipeline-fix: any mix of RQ enqueues can share one atomic redis-py pipeline.

Importing the package puts the guards on RQ as soon as ``rq.queue`` is imported (at once if it
already is), for the defects the installed RQ has. ``RQ_PIPELINE_FIX_DISABLE=1`` leaves RQ
untouched. The import itself is nearly free: the rest of the package loads when rq does, or on
first use of the API below.

PYTEST_DONT_REWRITE: the runner may import this package before pytest's assertion rewriting starts.
"""

from __future__ import annotations

from .importhook import when_imported

__version__ = "0.1.0"  # the one source of the version (pyproject reads it: [tool.hatch.version])

TYPE_CHECKING = False  # not typing's: importing typing would double the cost of importing us
if TYPE_CHECKING:
    from typing import Any

    from .patcher import RQPipelineFixWarning, apply, revert, status
    from .report import DefectStatus, Status

__all__ = ["DefectStatus", "RQPipelineFixWarning", "Status", "apply", "revert", "status"]
_STATUS_RECORDS = ("DefectStatus", "Status")  # in report: only a report needs them


def __getattr__(name: str) -> Any:  # PEP 562: load the API on first use
    if name in _STATUS_RECORDS:
        from . import report

        return getattr(report, name)
    if name in __all__:
        from . import patcher

        return getattr(patcher, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _apply_when_rq_is_imported(module: object) -> bool:
    """The import hook's callback; False: try again at the next import (see importhook)."""
    try:
        from .patcher import apply_from_hook

        return apply_from_hook(module)
    except Exception:  # an exception here would fail the host's own `import rq`
        return True  # apply_from_hook reports its own failures; this only guards importing it


try:  # noqa: SIM105  (contextlib.suppress would mean importing contextlib at start-up)
    when_imported("rq.queue", _apply_when_rq_is_imported, every_load=True)  # reloads too
except Exception:  # never break the host's start-up
    pass
