"""A TCP proxy on 127.0.0.1 in front of a Redis server, for the fault tests: it forwards bytes
both ways until told to cut, then drops every connection after exactly N more bytes in one
direction and stays down (accepting and closing at once) until ``restore()``.

Down rather than merely dropping: redis-py retries a failed ``execute()`` on a new connection,
and a server that is really gone must not answer those retries. No Redis behaviour is faked:
everything that reaches the server is what the client sent, cut at a byte boundary -- unless a
``rewrite`` is given, which changes the bytes forwarded to stand for a server or proxy that
behaves differently (e.g. one that ignores WATCH).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Callable, Literal

Direction = Literal["request", "reply"]
CHUNK = 65536


class CuttingProxy:
    def __init__(
        self, upstream_port: int, rewrite: Callable[[Direction, bytes], bytes] | None = None
    ) -> None:
        self.upstream_port = upstream_port
        self.rewrite = rewrite
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._armed: dict[Direction, int] = {}  # bytes still allowed through, per direction
        self._on_cut: Callable[[], None] | None = None
        self._down = False
        self._closed = False
        self.cut = threading.Event()  # set once a cut has happened
        self.faults = 0  # cuts and drops so far
        self.forwarded: dict[Direction, int] = {"request": 0, "reply": 0}
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut_after(
        self, n_bytes: int, direction: Direction = "request", on_cut: Callable[[], None] | None = None
    ) -> None:
        """Let ``n_bytes`` more bytes through in ``direction`` (over all connections); when that
        many have passed (for 0: when the next data arrives), run ``on_cut`` (e.g. kill the
        server), drop every connection and stay down."""
        with self._lock:
            self.cut.clear()
            self._armed = {direction: n_bytes}
            self._on_cut = on_cut

    def drop_connections(self) -> None:
        """Close every live connection now, staying up for new ones (a network blip)."""
        self.faults += 1
        self._drop()

    def _drop(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)

    def restore(self) -> None:
        with self._lock:
            self._down = False
            self._armed = {}
            self._on_cut = None

    def close(self) -> None:
        self._closed = True
        self._down = True
        _close(self._listener)
        self._drop()

    # --- internals ------------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                down = self._down
            if down:
                _close(client)
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets.update((client, server))
            threading.Thread(target=self._pump, args=(client, server, "request"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "reply"), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, direction: Direction) -> None:
        try:
            while True:
                data = source.recv(CHUNK)
                if not data:
                    break
                if self.rewrite is not None:
                    data = self.rewrite(direction, data)
                with self._lock:
                    allowed = self._armed.get(direction)
                    if allowed is not None:
                        data = data[:allowed]
                        self._armed[direction] = allowed - len(data)
                    self.forwarded[direction] += len(data)
                if data:
                    target.sendall(data)
                if allowed is not None and self._armed.get(direction) == 0:
                    self._cut_now()
                    break
        except OSError:
            pass
        finally:
            _close(source)
            _close(target)

    def _cut_now(self) -> None:
        with self._lock:
            if self.cut.is_set():
                return
            self._down = True
            self._armed = {}
            on_cut, self._on_cut = self._on_cut, None
        if on_cut is not None:
            on_cut()  # before the client sees the drop: a killed server gets no more bytes either
        self.faults += 1
        self.cut.set()  # before the drop, so that a client woken by it sees the cut as done
        self._drop()


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the other pump, or never connected
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
