"""The post-import hook that applies the guard when rq.queue is imported."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from rq_pipeline_fix import importhook
from rq_pipeline_fix.importhook import when_imported
from tests.conftest import child_environment


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [n for n in sys.modules if n.startswith("hooked_")]:
        del sys.modules[name]
    importhook._finder.waits[:] = [w for w in importhook._finder.waits if not w.name.startswith("hooked_")]


def recorder(seen: list[ModuleType]) -> importhook.Callback:
    def record(module: ModuleType) -> bool:
        seen.append(module)
        return True  # done

    return record


def hook_waits_for(name: str) -> bool:
    return any(wait.name == name for wait in importhook._finder.waits)


def test_callback_runs_after_the_module_is_imported_and_the_hook_leaves(module_dir: Path) -> None:
    (module_dir / "hooked_late.py").write_text("VALUE = 42\n")
    seen: list[ModuleType] = []
    when_imported("hooked_late", recorder(seen))
    assert seen == [] and "hooked_late" not in sys.modules
    import hooked_late  # type: ignore[import-not-found]

    assert seen == [hooked_late] and hooked_late.VALUE == 42
    assert type(hooked_late.__loader__).__name__ == "SourceFileLoader"  # the real loader is back
    assert not hook_waits_for("hooked_late")


def test_callback_runs_at_once_for_a_module_already_imported(module_dir: Path) -> None:
    (module_dir / "hooked_early.py").write_text("")
    import hooked_early  # type: ignore[import-not-found]

    seen: list[ModuleType] = []
    when_imported("hooked_early", recorder(seen))
    assert seen == [hooked_early]


def test_failed_import_keeps_the_hook_for_the_next_attempt(module_dir: Path) -> None:
    source = module_dir / "hooked_broken.py"
    source.write_text("raise ImportError('not yet')\n")
    seen: list[ModuleType] = []
    when_imported("hooked_broken", recorder(seen))
    with pytest.raises(ImportError, match="not yet"):
        import hooked_broken  # type: ignore[import-not-found]  # noqa: F401
    assert seen == []
    source.write_text("FIXED = True\n")
    sys.modules.pop("hooked_broken", None)
    import importlib

    importlib.invalidate_caches()
    fixed = importlib.import_module("hooked_broken")
    assert seen == [fixed] and fixed.FIXED


def test_callback_that_declines_is_tried_again_at_the_next_import_of_anything(module_dir: Path) -> None:
    (module_dir / "hooked_busy.py").write_text("")
    (module_dir / "hooked_other.py").write_text("")
    answers, seen = [False, True], []

    def busy_then_done(module: ModuleType) -> bool:
        seen.append(module.__name__)
        return answers.pop(0)

    when_imported("hooked_busy", busy_then_done)
    import hooked_busy  # type: ignore[import-not-found]  # noqa: F401
    import hooked_other  # type: ignore[import-not-found]  # noqa: F401

    assert seen == ["hooked_busy", "hooked_busy"] and not hook_waits_for("hooked_busy")


def test_the_hook_reads_rqs_version_without_the_package_metadata() -> None:
    """The hook fires while rq/__init__ is still importing rq.queue, before rq.version is: the
    version must still come from rq.version, not from reading the package metadata (about
    3 ms at every start-up where the guard goes on at rq's import: pytest, the runner)."""
    code = (
        "import importlib.metadata as metadata\n"
        "asked = []\n"
        "real = metadata.version\n"
        "metadata.version = lambda name: asked.append(name) or real(name)\n"
        "import rq_pipeline_fix\n"
        "import rq, rq.version\n"
        "status = rq_pipeline_fix.status()\n"
        "assert status.active and status.rq_version == rq.version.VERSION, status\n"
        "print(asked)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", code], env=child_environment(), capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr
    assert "'rq'" not in child.stdout, f"importlib.metadata.version was asked for: {child.stdout}"


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    repository = str(Path(__file__).resolve().parent.parent)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=repository,
        env=child_environment(PYTHONPATH=repository),
        capture_output=True,
        text=True,
        timeout=120,
    )


# The guard, read straight off the class (status() may notice and fix what the hook missed).
SHOW_GUARD = "from rq.queue import Queue; print(type(Queue.__dict__['setup_dependencies']).__name__)"

CONCURRENT_FIRST_IMPORTS = f"""
import threading
import rq_pipeline_fix

barrier = threading.Barrier(2)
errors = []

def first_import(name):  # lazy imports in a threaded server: both threads import rq at once
    barrier.wait()
    try:
        __import__(name)
    except Exception as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=first_import, args=(name,)) for name in ("rq.queue", "rq.registry")]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(errors)
{SHOW_GUARD}
report = rq_pipeline_fix.status()
print(report.active, [defect.id for defect in report.unpatched])
"""
RUNS = 8  # each run is one process's first import; every one deadlocked the hook before


@pytest.mark.skipif(
    importlib.metadata.version("rq").startswith("1.9."),
    reason="RQ 1.9's own modules deadlock when two threads import rq.queue and rq.registry at once, "
    "without the package too (7 of 24 plain runs hung on Python 3.9, 3.11 and 3.13)",
)
def test_first_imports_of_rq_in_two_threads_at_once_put_the_guard_on() -> None:
    outcomes = [run_python(CONCURRENT_FIRST_IMPORTS) for _ in range(RUNS)]
    assert [(shown.stdout.split(), shown.returncode) for shown in outcomes] == [
        (["[]", "_WrappedAtFirstUse", "True", "[]"], 0)
    ] * RUNS, "\n".join(shown.stderr for shown in outcomes)


ANOTHER_FINDER_FINDS_RQ = f"""
import importlib.machinery, sys
import rq_pipeline_fix

class InstrumentingLoader(importlib.machinery.SourceFileLoader):
    pass

class InstrumentingFinder:  # as typeguard's and beartype's hooks: finds rq.* itself, loader of its own
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "rq" and not fullname.startswith("rq."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            spec.loader = InstrumentingLoader(spec.loader.name, spec.loader.path)
        return spec

sys.meta_path.insert(0, InstrumentingFinder())  # installed after rq-pipeline-fix
import rq
assert type(sys.modules["rq.queue"].__loader__) is InstrumentingLoader
{SHOW_GUARD}
print(rq_pipeline_fix.status().active)
"""


def test_another_finder_that_finds_rq_itself_does_not_keep_the_guard_off() -> None:
    shown = run_python(ANOTHER_FINDER_FINDS_RQ)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["_WrappedAtFirstUse", "True"]


RELOAD_RQ_QUEUE = f"""
import importlib
import rq, rq.queue, rq_pipeline_fix

old = rq.queue.Queue
importlib.reload(rq.queue)  # a development server's auto-reload
assert rq.queue.Queue is not old
{SHOW_GUARD}
print(rq_pipeline_fix.status().active)
"""


def test_reload_of_rq_queue_guards_the_new_queue_class() -> None:
    shown = run_python(RELOAD_RQ_QUEUE)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["_WrappedAtFirstUse", "True"]


RELOAD_BEHIND_ANOTHER_FINDER = f"""
import importlib, sys
import rq, rq.queue, rq_pipeline_fix

class FindsRqQueue:  # first in sys.meta_path: the reload's find_spec does not reach ours
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "rq.queue":
            return importlib.machinery.PathFinder.find_spec(fullname, path, target)
        return None

sys.meta_path.insert(0, FindsRqQueue())
importlib.reload(rq.queue)
report = rq_pipeline_fix.status()
print(report.active, "|", report.note)
from rq_pipeline_fix.report import is_ok
print(sorted(d.id for d in report.defects if d.detected and not d.patched), is_ok(report))
rq_pipeline_fix.apply()
{SHOW_GUARD}
print(sorted(d.id for d in rq_pipeline_fix.status().defects if d.detected and not d.patched))
"""


def test_after_a_reload_the_hook_missed_status_says_so_and_apply_guards_the_new_class() -> None:
    shown = run_python(RELOAD_BEHIND_ANOTHER_FINDER)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    first, unpatched_after_reload, second, unpatched_after_apply = lines[0].split("|"), *lines[1:4]
    assert first[0].strip() == "False" and "reloaded" in first[1]
    # the new Queue's defects are reported unpatched, not the old class's guard counted
    assert "'D2'" in unpatched_after_reload and unpatched_after_reload.endswith("False")
    assert second == "_WrappedAtFirstUse"
    assert unpatched_after_apply == "[]"
