"""What we need to know about, and do to, a caller's redis-py pipeline.

Everything here reads or sets the attributes redis-py's ``Pipeline`` has had since 4.0
(``explicit_transaction``, ``watching``, ``transaction``, ``command_stack``, ``connection``),
so it works the same for fakeredis pipelines, which subclass it.
"""

from __future__ import annotations

import enum
import weakref
from collections.abc import Sequence
from typing import Any


class PipelineState(enum.Enum):
    FRESH = "fresh: no WATCH, nothing buffered"
    WATCHING = "WATCHing, not yet MULTI (immediate mode)"
    MULTI = "already MULTI"
    BUFFERED_IN_TRANSACTION = "commands buffered, transaction=True"
    BUFFERED_OUTSIDE_TRANSACTION = "commands buffered, transaction=False or WATCH issued after them"


def pipeline_state(pipe: Any) -> PipelineState:
    if pipe.explicit_transaction:
        return PipelineState.MULTI
    if not pipe.command_stack:
        return PipelineState.WATCHING if pipe.watching else PipelineState.FRESH
    if pipe.transaction and not pipe.watching:
        return PipelineState.BUFFERED_IN_TRANSACTION
    # transaction=False would send them without MULTI/EXEC; after a WATCH, RQ's writes would
    # even run at once instead of being buffered.
    return PipelineState.BUFFERED_OUTSIDE_TRANSACTION


def start_transaction(pipe: Any) -> None:
    """Make the pipeline buffer everything and run it as one MULTI/EXEC, as ``multi()`` does,
    without ``multi()``'s refusal when commands are already buffered: they join the transaction."""
    pipe.explicit_transaction = True


def watch_and_read(pipe: Any, watch_keys: Sequence[str], reads: Sequence[tuple[Any, ...]]) -> list[Any]:
    """WATCH ``watch_keys`` on the connection that will run the pipeline's EXEC, then run the
    read commands, in one round trip; returns the reads' replies.

    WATCH goes first so that any change to those keys after the reads aborts the caller's EXEC.
    The pipeline is flagged ``watching`` so that redis-py's ``reset()`` UNWATCHes before the
    connection goes back to the pool, even if the caller never executes.
    """
    from redis.exceptions import ConnectionError, ResponseError, TimeoutError

    conn = pipe.connection
    if conn is None:
        conn = pipe.connection = _get_connection(pipe.connection_pool)
    pipe.watching = True
    commands = [("WATCH", *watch_keys), *reads]
    try:
        conn.send_packed_command(conn.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:  # read every reply, even after an error one, to keep the connection in step
            try:
                replies.append(conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
    except (ConnectionError, TimeoutError):
        conn.disconnect()  # a dropped connection also dropped the WATCH: the caller must not EXEC on it
        raise
    errors = [reply for reply in replies if isinstance(reply, ResponseError)]
    if errors:
        raise errors[0]
    return replies[1:]


def _get_connection(pool: Any) -> Any:
    try:
        return pool.get_connection()  # redis-py >= 5.3 deprecates the command name argument
    except TypeError:
        return pool.get_connection("WATCH")


class _BufferedHashes:
    """Keys of the hashes written so far by one pipeline's buffered commands."""

    __slots__ = ("keys", "scanned", "stack")

    def __init__(self, stack: list[Any]) -> None:
        self.stack = stack
        self.scanned = 0
        self.keys: set[Any] = set()


# Per pipeline, weakly: the bookkeeping goes when the caller's pipeline goes.
_buffered_by_pipeline: weakref.WeakKeyDictionary[Any, _BufferedHashes] = weakref.WeakKeyDictionary()
_HASH_WRITES = frozenset({"HSET", "HMSET", b"HSET", b"HMSET"})


def buffered_hash_keys(pipe: Any) -> set[Any]:
    """Keys written by HSET/HMSET among the pipeline's buffered commands (e.g. job hashes saved
    earlier in the same batch). Only commands added since the last call are scanned, so a batch
    of n dependent jobs costs O(total commands), not O(n x commands)."""
    stack = pipe.command_stack
    seen = _buffered_by_pipeline.get(pipe)
    if seen is None or seen.stack is not stack or len(stack) < seen.scanned:  # new, or reset since
        seen = _buffered_by_pipeline[pipe] = _BufferedHashes(stack)
    for args, _options in stack[seen.scanned :]:
        if args and args[0] in _HASH_WRITES:
            seen.keys.add(args[1])
    seen.scanned = len(stack)
    return seen.keys
