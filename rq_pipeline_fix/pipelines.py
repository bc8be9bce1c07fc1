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


class PipelineState(str, enum.Enum):
    __hash__ = str.__hash__  # Enum's own hash runs in Python; the guard looks states up per call

    FRESH = "fresh: no WATCH, nothing buffered"
    WATCHING = "WATCHing, not yet MULTI (immediate mode)"
    MULTI = "already MULTI"
    BUFFERED_IN_TRANSACTION = "commands buffered, transaction=True"
    BUFFERED_OUTSIDE_TRANSACTION = "commands buffered, transaction=False or WATCH issued after them"


# The members as plain globals for pipeline_state, which runs on every guarded call: on Python
# 3.11 reading a member off its Enum class goes through a descriptor, 3x slower than a global.
_FRESH = PipelineState.FRESH
_WATCHING = PipelineState.WATCHING
_MULTI = PipelineState.MULTI
_BUFFERED_IN_TRANSACTION = PipelineState.BUFFERED_IN_TRANSACTION
_BUFFERED_OUTSIDE_TRANSACTION = PipelineState.BUFFERED_OUTSIDE_TRANSACTION


def pipeline_state(pipe: Any) -> PipelineState:
    if pipe.explicit_transaction:
        return _MULTI
    if not pipe.command_stack:
        return _WATCHING if pipe.watching else _FRESH
    if pipe.transaction and not pipe.watching:
        return _BUFFERED_IN_TRANSACTION
    # transaction=False would send them without MULTI/EXEC; after a WATCH, RQ's writes would
    # even run at once instead of being buffered.
    return _BUFFERED_OUTSIDE_TRANSACTION


def start_transaction(pipe: Any) -> None:
    """Make the pipeline buffer everything and run it as one MULTI/EXEC, as ``multi()`` does,
    without ``multi()``'s refusal when commands are already buffered: they join the transaction."""
    pipe.explicit_transaction = True


def watched_field(pipe: Any, keys: Sequence[Any], field: str) -> dict[Any, Any]:
    """``HGET key field`` for each of ``keys``, each key WATCHed on the connection that will run
    the pipeline's EXEC before it is read, so that a change to any of them before EXEC aborts
    the caller's transaction. Keys already WATCHed and read in this transaction are not sent
    again: their value cannot change without aborting it. At most one round trip."""
    notes = notes_on(pipe)
    missing = [key for key in dict.fromkeys(keys) if key not in notes.watched]
    if missing:
        replies = _watch_and_read(pipe, missing, [("HGET", key, field) for key in missing])
        notes.watched.update(zip(missing, replies))
    return {key: notes.watched[key] for key in keys}


def _watch_and_read(pipe: Any, watch_keys: Sequence[Any], reads: Sequence[tuple[Any, ...]]) -> list[Any]:
    """WATCH, then the reads, pipelined in one round trip on the pipeline's own connection.

    The pipeline is flagged ``watching`` so that redis-py's ``reset()`` UNWATCHes before the
    connection goes back to the pool, even if the caller never executes. A lost connection
    loses the WATCH too: as redis-py does for its own WATCH, the pipeline is reset and
    WatchError raised, so the batch is retried rather than committed unwatched.
    """
    from redis.exceptions import ConnectionError, ResponseError, TimeoutError, WatchError

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
    except (ConnectionError, TimeoutError) as exc:
        conn.disconnect()
        pipe.reset()
        raise WatchError(f"the connection was lost while WATCHing the dependencies: {exc}") from exc
    errors = [reply for reply in replies if isinstance(reply, ResponseError)]
    if errors:
        raise errors[0]
    return replies[1:]


def _get_connection(pool: Any) -> Any:
    try:
        return pool.get_connection()  # redis-py >= 5.3 deprecates the command name argument
    except TypeError:
        return pool.get_connection("WATCH")


class _Notes:
    """What we know about one transaction of one pipeline: the hashes its buffered commands
    write (e.g. job hashes saved earlier in the batch) and the keys we WATCHed, with the value
    read right after."""

    __slots__ = ("buffered", "scanned", "stack", "watched")

    def __init__(self, stack: list[Any]) -> None:
        self.stack = stack  # redis-py replaces the list on execute()/reset(): a new transaction
        self.scanned = 0
        self.buffered: set[Any] = set()
        self.watched: dict[Any, Any] = {}


# Per pipeline, weakly: the notes go when the caller's pipeline goes.
_notes_by_pipeline: weakref.WeakKeyDictionary[Any, _Notes] = weakref.WeakKeyDictionary()
_HASH_WRITES = frozenset({"HSET", "HMSET", b"HSET", b"HMSET"})


def notes_on(pipe: Any) -> _Notes:
    """The notes on the pipeline's current transaction, with the commands buffered since the
    last call scanned (only those: a batch of n dependent jobs costs O(commands), not O(n x
    commands))."""
    stack = pipe.command_stack
    notes = _notes_by_pipeline.get(pipe)
    if notes is None or notes.stack is not stack or len(stack) < notes.scanned:
        notes = _notes_by_pipeline[pipe] = _Notes(stack)
    for args, _options in stack[notes.scanned :]:
        if args and args[0] in _HASH_WRITES:
            notes.buffered.add(args[1])
    notes.scanned = len(stack)
    return notes


def buffered_hash_keys(pipe: Any) -> set[Any]:
    """Keys written by HSET/HMSET among the pipeline's buffered commands."""
    return notes_on(pipe).buffered
