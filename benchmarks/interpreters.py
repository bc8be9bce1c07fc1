"""Where tasks run: in this process (the RQ installed here), or in a worker process of another
interpreter, both behind the same ``call(task, **arguments)``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from . import tasks

REPO = Path(__file__).resolve().parent.parent


class ThisProcess:
    label = "this interpreter"

    def call(self, task: str, **arguments: Any) -> Any:
        return tasks.TASKS[task](**arguments)

    def close(self) -> None:
        pass


class WorkerProcess:
    """``python -m benchmarks.worker`` under ``python``, kept running for the whole benchmark so
    its rounds can alternate with this process's rounds."""

    def __init__(self, python: str, label: str) -> None:
        self.label = label
        env = {k: v for k, v in os.environ.items() if not k.startswith("RQ_PIPELINE_FIX_")}
        self.process = subprocess.Popen(
            [python, "-m", "benchmarks.worker"],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def call(self, task: str, **arguments: Any) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"task": task, "arguments": arguments}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.label}: worker exited with {self.process.wait()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.label}: {task} failed:\n{reply['error']}")
        return reply["result"]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
