"""A TCP delay line on 127.0.0.1 in front of Redis, to add network latency to a loopback server.

Every chunk of bytes is forwarded ``delay`` seconds after it arrived, in each direction, so a
request/reply round trip gains ``2 x delay`` while pipelined traffic keeps flowing (chunks are
queued, not serialised behind each other's delays). It runs as its own process
(``python -m benchmarks.proxy TARGET_PORT DELAY_MS``): in the benchmark's process, its threads
would wait for the GIL behind the code being measured. Threads + ``time.sleep`` rather than
asyncio, whose timers round sub-millisecond sleeps up to whole milliseconds.
"""

from __future__ import annotations

import queue
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Optional

from .interpreters import REPO

_Chunk = Optional[tuple[float, bytes]]


def _forward(source: socket.socket, target: socket.socket, delay: float) -> None:
    """Read from ``source`` and hand each chunk to a sender that writes it to ``target`` when due."""
    pending: queue.SimpleQueue[_Chunk] = queue.SimpleQueue()

    def send() -> None:
        while True:
            item = pending.get()
            if item is None:
                break
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                target.sendall(data)
            except OSError:
                break
        _close(target)

    threading.Thread(target=send, daemon=True).start()
    try:
        while True:
            data = source.recv(1 << 20)
            if not data:
                break
            pending.put((time.monotonic() + delay, data))
    except OSError:
        pass
    pending.put(None)


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _handle(client: socket.socket, target_port: int, delay: float) -> None:
    server = socket.create_connection(("127.0.0.1", target_port))
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle wait on top of ours
    threading.Thread(target=_forward, args=(server, client, delay), daemon=True).start()
    _forward(client, server, delay)


def serve(target_port: int, delay_ms: float) -> None:
    """Listen on a free port of 127.0.0.1, print it, forward until stdin closes."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    delay = delay_ms / 1000

    def accept() -> None:
        while True:
            client, _address = listener.accept()
            threading.Thread(target=_handle, args=(client, target_port, delay), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    print(listener.getsockname()[1], flush=True)
    sys.stdin.read()  # the parent closes our stdin to stop us


@contextmanager
def latency_proxy(redis_url: str, delay_each_way_ms: float) -> Iterator[str]:
    """Yield a Redis URL that reaches ``redis_url``'s server through the delay line."""
    host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    target_port = int(host_port.rsplit(":", 1)[1])
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.proxy", str(target_port), str(delay_each_way_ms)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def added_round_trip(redis_url: str, target_ms: float, attempts: int = 4) -> Iterator[tuple[str, float]]:
    """Yield (proxied URL, delay each way in ms) such that the median PING round trip through the
    proxy is ``target_ms`` above the direct one: thread wake-ups add their own fraction of a
    millisecond on top of the sleeps, so the delay is corrected from what was measured."""
    direct = statistics.median(round_trip_ms(redis_url))
    delay = target_ms / 2
    for attempt in range(attempts):
        with latency_proxy(redis_url, delay) as url:
            added = statistics.median(round_trip_ms(url)) - direct
            if abs(added - target_ms) <= 0.05 * target_ms or attempt == attempts - 1:
                yield url, delay
                return
        delay = max(0.0, delay + (target_ms - added) / 2)


def round_trip_ms(url: str, pings: int = 200) -> list[float]:
    """Milliseconds per PING on a warm connection: what one round trip costs through ``url``."""
    import redis

    client = redis.Redis.from_url(url)
    client.ping()
    samples = []
    for _ in range(pings):
        start = time.perf_counter()
        client.ping()
        samples.append((time.perf_counter() - start) * 1000)
    client.close()
    return samples


if __name__ == "__main__":
    serve(int(sys.argv[1]), float(sys.argv[2]))
