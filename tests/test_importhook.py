"""The post-import hook that applies the guard when rq.queue is imported."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from rq_pipeline_fix.importhook import _PostImportFinder, when_imported
from tests.conftest import child_environment


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [n for n in sys.modules if n.startswith("hooked_")]:
        del sys.modules[name]
    sys.meta_path[:] = [
        f for f in sys.meta_path if not (isinstance(f, _PostImportFinder) and f.name.startswith("hooked_"))
    ]


def test_callback_runs_after_the_module_is_imported_and_the_hook_leaves(module_dir: Path) -> None:
    (module_dir / "hooked_late.py").write_text("VALUE = 42\n")
    seen: list[ModuleType] = []
    when_imported("hooked_late", seen.append)
    assert seen == [] and "hooked_late" not in sys.modules
    import hooked_late  # type: ignore[import-not-found]

    assert seen == [hooked_late] and hooked_late.VALUE == 42
    assert type(hooked_late.__loader__).__name__ == "SourceFileLoader"  # the real loader is back
    assert not any(isinstance(f, _PostImportFinder) and f.name == "hooked_late" for f in sys.meta_path)


def test_callback_runs_at_once_for_a_module_already_imported(module_dir: Path) -> None:
    (module_dir / "hooked_early.py").write_text("")
    import hooked_early  # type: ignore[import-not-found]

    seen: list[ModuleType] = []
    when_imported("hooked_early", seen.append)
    assert seen == [hooked_early]


def test_failed_import_keeps_the_hook_for_the_next_attempt(module_dir: Path) -> None:
    source = module_dir / "hooked_broken.py"
    source.write_text("raise ImportError('not yet')\n")
    seen: list[ModuleType] = []
    when_imported("hooked_broken", seen.append)
    with pytest.raises(ImportError, match="not yet"):
        import hooked_broken  # type: ignore[import-not-found]  # noqa: F401
    assert seen == []
    source.write_text("FIXED = True\n")
    sys.modules.pop("hooked_broken", None)
    import importlib

    importlib.invalidate_caches()
    fixed = importlib.import_module("hooked_broken")
    assert seen == [fixed] and fixed.FIXED


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
