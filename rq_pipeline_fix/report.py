"""What rq-pipeline-fix does to the installed RQ: the ``Status`` record ``status()`` returns, and
the same in words, for ``rq-pipeline-fix status`` and the pytest header. Loaded on the first
report, not when the guard goes on at rq's import (defining dataclasses costs milliseconds).

``rq-pipeline-fix status --json`` prints one object (``schema`` is bumped on any incompatible
change; keys may be added)::

    {
      "schema": 1,
      "ok": true,                 # exit status 0 exactly when true: the defects were probed and
                                  # none detected (or expected) is left unpatched
      "disabled": false,          # RQ_PIPELINE_FIX_DISABLE is set: nothing patched here (the defects are
                                  # probed in a child interpreter, so "unpatched" lists what is left broken)
      "rq_version": "3.0.0",      # null when rq is not installed
      "redis_version": "8.1.0",   # redis-py; null when not installed
      "active": true,             # the guard is in place and enabled in this process
      "note": "guard on rq.queue.Queue.setup_dependencies for D2, D3",
      "neighbours": [],           # other libraries' wrappers on the guarded methods, and where ours sits
      "unpatched": [],            # ids detected (or not ruled out by probe or table) but not patched
      "undecided": [],            # those of them the probe could not tell (detected null)
      "verdict": [],              # why not ok, one line per defect ("D2 unpatched: disabled by ..."),
                                  # as `status --strict` and `pytest --rq-pipeline-fix-strict` say it
      "defects": [
        {
          "id": "D2",                         # as in DEFECTS.md
          "title": "MULTI after commands already buffered in the pipeline",
          "detected": true,                   # what the behaviour probe saw; null: it could not tell
          "version_table": "affected",        # "affected" | "unaffected" | "unknown" (newer than measured)
          "patched": true,
          "reason": "the probe reproduced it, as the version table expects",
          "stepped_in": 3                     # calls in this process the guard answered itself
        }                                     # for it, where RQ's own code would have run (0: none)
      ]
    }
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import subprocess
import sys
from typing import Any

from . import patcher
from .config import DISABLE_VARIABLE, patching_disabled

SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class DefectStatus:
    """One defect of DEFECTS.md in the installed RQ.

    ``detected``: what the behaviour probe saw (None: it could not tell). ``version_table``:
    "affected", "unaffected" or "unknown" (a release newer than those measured). ``patched``:
    the guard fixes it in this process. ``reason``: how the verdict was reached. ``stepped_in``:
    how many calls in this process the guard answered itself for it instead of RQ's own code.
    """

    id: str
    title: str
    detected: bool | None
    version_table: str
    patched: bool
    reason: str
    stepped_in: int = 0


@dataclasses.dataclass(frozen=True)
class Status:
    """What rq-pipeline-fix did in this process. ``active``: the guard is in place and enabled;
    ``note``: why it is not, or what happened last (and what changed since, e.g. a guard another
    library's unpatch took off); ``neighbours``: other libraries' wrappers on the guarded methods."""

    rq_version: str | None
    redis_version: str | None
    active: bool
    note: str
    defects: tuple[DefectStatus, ...] = dataclasses.field(default=())
    # Other libraries' wrappers on the methods we guard (OpenTelemetry, ...), and where the guard
    # sits among them; also a method replaced without keeping RQ's own. Empty: none.
    neighbours: tuple[str, ...] = dataclasses.field(default=())

    @property
    def unpatched(self) -> tuple[DefectStatus, ...]:
        """Defects detected, or not ruled out (the probe could not tell and the version table
        does not say unaffected), but left unpatched."""
        return tuple(
            d
            for d in self.defects
            if not d.patched and (d.detected or (d.detected is None and d.version_table != "unaffected"))
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def observed_status(probe_when_disabled: bool = True) -> Status:
    """What importing the package does to the installed RQ, as this process now has it.

    Applies the guard, unless the kill switch is set: then this process leaves RQ untouched (it
    does not even import rq) and, with ``probe_when_disabled``, the defects are probed by a child
    interpreter without the switch, so the report still says what the switch leaves broken.
    """
    if patching_disabled()[0]:
        status = patcher.apply()  # only records "disabled by ..."; imports nothing
        return _probed_elsewhere(status) if probe_when_disabled else status
    # Import rq.queue first so that the import hook applies the guard and apply() below only
    # reports: apply() importing rq.queue itself would run the hook inside apply().
    with contextlib.suppress(Exception):  # apply() says why rq is unusable
        importlib.import_module("rq.queue")
    return patcher.apply()


_CHILD_MARK = "rq-pipeline-fix report: "


def _probed_elsewhere(status: Status) -> Status:
    """``status`` with the defects a fresh interpreter without the kill switch finds, all marked
    unpatched. Only the public API is used, and only the child's RQ is ever touched."""
    environment = {key: value for key, value in os.environ.items() if key != DISABLE_VARIABLE}
    # The report is the child's last line, after a mark: its start-up (a sitecustomize, a .pth
    # file) may print too.
    code = (
        "import json, rq_pipeline_fix.report as r; "
        f"print({_CHILD_MARK!r} + json.dumps(r.to_json(r.observed_status())))"
    )
    try:  # the child's RQ gets patched and dies with it
        command = [sys.executable, "-c", code]
        child = subprocess.run(command, env=environment, capture_output=True, text=True, check=True)
        line = next(line for line in reversed(child.stdout.splitlines()) if line.startswith(_CHILD_MARK))
        found = json.loads(line[len(_CHILD_MARK) :])["defects"]
        defects = tuple(DefectStatus(**{**defect, "patched": False, "stepped_in": 0}) for defect in found)
    except Exception as exc:
        return dataclasses.replace(status, note=f"{status.note}; the defects could not be probed: {exc!r}")
    return dataclasses.replace(status, defects=defects)


def verdict(status: Status) -> tuple[str, ...]:
    """Why RQ is not known to be correct or fully patched, one line per defect, each starting with
    its id: "unpatched" (present, no guard of ours fixes it here, e.g. under the kill switch) or
    "undecided" (the probe could not tell and the version table does not rule it out). A line
    also when nothing could be probed (rq not importable, or a ``setup_dependencies`` of a shape
    we do not know): then we cannot say RQ is fine. Empty: OK.

    The one verdict behind ``status``'s ``ok`` and exit status, ``status --strict`` and
    ``pytest --rq-pipeline-fix-strict``, so that they cannot disagree.
    """
    if not status.defects:
        return (f"no defect could be probed: {status.note}",)
    disabled = is_disabled(status)
    lines = []
    for d in status.unpatched:
        if d.detected is None:
            table = (
                f"rq {status.rq_version} is newer than the version table"
                if d.version_table == "unknown"
                else f"the version table says rq {status.rq_version} has it"
            )
            lines.append(f"{d.id} undecided: {d.reason}; {table}")
        elif disabled:
            lines.append(f"{d.id} unpatched: disabled by {DISABLE_VARIABLE}")
        else:
            lines.append(f"{d.id} unpatched: present, but no guard of ours fixes it here ({status.note})")
    return tuple(lines)


def strict_message(problems: tuple[str, ...]) -> str:
    """What strict mode says when ``verdict`` found ``problems`` (pytest's usage error, stderr of
    ``status --strict``)."""
    lines = "".join(f"\n  {line}" for line in problems)
    return f"rq-pipeline-fix strict: RQ is not known to be fully patched:{lines}"


def undecided(status: Status) -> tuple[DefectStatus, ...]:
    """The unpatched defects that the probe could not tell and the version table does not rule out."""
    return tuple(d for d in status.unpatched if d.detected is None)


def is_ok(status: Status) -> bool:
    """RQ is correct or fully patched: ``verdict`` finds nothing."""
    return not verdict(status)


def is_disabled(status: Status) -> bool:
    return patching_disabled()[0] and not status.active


def header_line(status: Status) -> str:
    """One line: the RQ version and what was patched (pytest's report header)."""
    versions = f"rq {status.rq_version or 'missing'}, redis-py {status.redis_version or 'missing'}"
    if is_disabled(status):
        return f"rq-pipeline-fix: {versions}; off ({DISABLE_VARIABLE} is set), RQ untouched"
    patched = [d.id for d in status.defects if d.patched]
    parts = [f"guard on for {', '.join(patched)}" if status.active and patched else status.note]
    if status.unpatched:
        unpatched = ", ".join(d.id for d in status.unpatched)
        parts.append(f"NOT patched: {unpatched} (see `rq-pipeline-fix status`)")
    return f"rq-pipeline-fix: {versions}; {'; '.join(parts)}"


def to_json(status: Status) -> dict[str, Any]:
    """The ``status --json`` object documented in this module's docstring."""
    return {
        "schema": SCHEMA_VERSION,
        "ok": is_ok(status),
        "disabled": is_disabled(status),
        **{key: value for key, value in status.to_dict().items() if key != "defects"},
        "unpatched": [d.id for d in status.unpatched],
        "undecided": [d.id for d in undecided(status)],
        "verdict": list(verdict(status)),
        "defects": [dataclasses.asdict(d) for d in status.defects],
    }


def table(status: Status) -> str:
    """The readable form of ``status``: versions, the guard, one row per defect, a verdict."""
    rows = [("defect", "present", "patched", "stepped in", "title", "why")]
    for d in status.defects:
        present = {True: "yes", False: "no", None: f"unknown ({d.version_table})"}[d.detected]
        patched = "yes" if d.patched else ("-" if d.detected is False else "no")
        rows.append((d.id, present, patched, str(d.stepped_in), d.title, d.reason))
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    lines = [
        f"rq {status.rq_version or 'not installed'} · redis-py {status.redis_version or 'not installed'}",
        f"guard: {'on' if status.active else 'off'} ({status.note})",
        *(f"alongside: {line}" for line in status.neighbours),
        "",
    ]
    lines += ["  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[5]]) for row in rows]
    lines.append("")
    if status.unpatched:
        lines.append(f"NOT OK: left unpatched: {', '.join(d.id for d in status.unpatched)}")
    elif not status.defects:
        lines.append("NOT OK: the defects could not be probed (see the note above)")
    else:
        verdict = "every defect present in this RQ is patched" if status.active else "RQ needs no guard"
        lines.append(f"OK: {verdict}")
    return "\n".join(lines)
