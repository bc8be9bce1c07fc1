"""rq-pipeline-fix: any mix of RQ enqueues can share one atomic redis-py pipeline.

Importing the package puts the guard on ``rq.queue.Queue.setup_dependencies`` as soon as
``rq.queue`` is imported (at once if it already is), for the defects the installed RQ has.
``RQ_PIPELINE_FIX_DISABLE=1`` leaves RQ untouched.
"""

from .patcher import DefectStatus, RQPipelineFixWarning, Status, apply, revert, status

__all__ = ["DefectStatus", "RQPipelineFixWarning", "Status", "apply", "revert", "status"]

from .patcher import activate_when_rq_is_imported as _activate

_activate()
