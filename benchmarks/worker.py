"""A measuring process for another interpreter (e.g. a virtualenv with RQ 2.2.x): reads one JSON
request per line on stdin, runs the named task from ``tasks``, writes one JSON reply per line.

Run from the repository root (``python -m benchmarks.worker``) so that this checkout's
``rq_pipeline_fix`` and ``benchmarks`` are the ones imported.
"""

from __future__ import annotations

import json
import sys
import traceback

import rq_pipeline_fix  # noqa: F401  (arms the guard as a user's import would)

from .tasks import TASKS


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"result": TASKS[request["task"]](**request["arguments"])}
        except Exception:
            reply = {"error": traceback.format_exc()}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
