"""What we need to know about, and do to, a caller's redis-py pipeline.

Everything here reads or sets the attributes redis-py's ``Pipeline`` has had since 4.0
(``explicit_transaction``, ``watching``, ``transaction``, ``command_stack``, ``connection``),
so it works the same for fakeredis pipelines, which subclass it.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Sequence
from typing import Any


class PipelineState:
    """The states of a caller's pipeline that decide what RQ's code does to it. Plain strings,
    not an Enum: defining one costs a tenth of a millisecond at rq's import, and the guard looks
    them up on every call."""

    FRESH = "fresh: no WATCH, nothing buffered"
    WATCHING = "WATCHing, not yet MULTI (immediate mode)"
    MULTI = "already MULTI"
    BUFFERED_IN_TRANSACTION = "commands buffered, transaction=True"
    BUFFERED_OUTSIDE_TRANSACTION = "commands buffered, transaction=False or WATCH issued after them"


# The states as plain globals for pipeline_state, which runs on every guarded call.
_FRESH = PipelineState.FRESH
_WATCHING = PipelineState.WATCHING
_MULTI = PipelineState.MULTI
_BUFFERED_IN_TRANSACTION = PipelineState.BUFFERED_IN_TRANSACTION
_BUFFERED_OUTSIDE_TRANSACTION = PipelineState.BUFFERED_OUTSIDE_TRANSACTION


def pipeline_state(pipe: Any) -> str:
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


def watched_exists(pipe: Any, keys: Sequence[Any]) -> dict[Any, bool]:
    """``EXISTS key`` for each of ``keys``, each key WATCHed first on the connection that will run
    the pipeline's EXEC (as ``watched_field`` does): a key created or deleted before EXEC aborts
    the caller's transaction. One round trip."""
    replies = _watch_and_read(pipe, keys, [("EXISTS", key) for key in keys])
    found = {key: bool(reply) for key, reply in zip(keys, replies)}
    notes_on(pipe).existing.update(found)
    return found


def unwatch_one(pipe: Any, key: Any) -> None:
    """Take ``key`` out of the WATCHes of the transaction, where they are all ours. Redis can only
    UNWATCH everything, so the other keys we WATCHed are WATCHed again and read again in one round
    trip: a reading that changed meanwhile means the transaction would have aborted, and it ends
    now with WatchError (pipeline reset, as for a lost WATCH). Where the caller WATCHed keys of its
    own, the WATCH on ``key`` stays: those cannot be put back (a change to ``key`` then aborts)."""
    notes = notes_on(pipe)
    if notes.caller_watching or not pipe.watching:
        return
    fields = {k: v for k, v in notes.watched.items() if k != key}
    existing = {k: v for k, v in notes.existing.items() if k != key}
    unwatch(pipe)
    if not fields and not existing:
        return
    reads = [("HGET", k, "status") for k in fields] + [("EXISTS", k) for k in existing]
    replies = _watch_and_read(pipe, [*fields, *existing], reads)
    notes.watched.update(zip(fields, replies))
    notes.existing.update((k, bool(r)) for k, r in zip(existing, replies[len(fields) :]))
    if replies != [*fields.values(), *(int(v) for v in existing.values())]:
        from redis.exceptions import WatchError

        _abandon_transaction(pipe, pipe.connection)
        raise WatchError("a key this transaction depends on changed before it ran")


def unwatch(pipe: Any) -> None:
    """UNWATCH on the pipeline's connection and leave immediate mode: for when every key WATCHed
    in this transaction was WATCHed by us and none of them matters any more. A lost connection
    took its WATCHes with it, so it is only closed."""
    from redis.exceptions import ConnectionError, TimeoutError

    pipe.watching = False
    notes = notes_on(pipe)
    notes.watched.clear()
    notes.existing.clear()
    conn = pipe.connection
    if conn is None:
        return
    try:
        conn.send_command("UNWATCH")
        conn.read_response()
    except (ConnectionError, TimeoutError):
        conn.disconnect()


def _watch_and_read(pipe: Any, watch_keys: Sequence[Any], reads: Sequence[tuple[Any, ...]]) -> list[Any]:
    """WATCH, then the reads, pipelined in one round trip on the pipeline's own connection.

    The pipeline is flagged ``watching`` so that redis-py's ``reset()`` UNWATCHes before the
    connection goes back to the pool, even if the caller never executes. From then until the
    transaction ends, a (re)connect of that connection is refused (``_ReconnectRefusal``): a
    WATCH does not survive its connection, and redis-py would otherwise reconnect silently (a
    health check, a retry) and EXEC unwatched. A connection lost, re-established or timing out
    here ends the same way as redis-py's own lost WATCH: WatchError, which ``Redis.transaction``
    retries, with the pipeline reset and its connection dropped and back in the pool.
    """
    from redis.exceptions import ConnectionError, ResponseError, TimeoutError, WatchError

    conn = pipe.connection
    if conn is None:
        conn = pipe.connection = _get_connection(pipe.connection_pool)
    notes = notes_on(pipe)
    if notes.caller_watching is None:  # our first WATCH in this transaction: was the caller's first?
        notes.caller_watching = bool(pipe.watching)
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
    except (ConnectionError, TimeoutError, WatchError) as exc:
        _abandon_transaction(pipe, conn)
        raise WatchError(f"the connection was lost while WATCHing the dependencies: {exc}") from exc
    _refuse_reconnects(pipe, conn)
    errors = [reply for reply in replies if isinstance(reply, ResponseError)]
    if errors:
        raise errors[0]
    return replies[1:]


def _abandon_transaction(pipe: Any, conn: Any) -> None:
    """Drop the connection (the WATCH and any reply still on its way go with the socket) and
    reset the pipeline without the UNWATCH that ``reset()`` would send while ``watching``: there is
    nothing left to unwatch, and on a stalled server it would time out too, and redis-py's
    ``reset()`` would then leave the pipeline half reset with its connection checked out."""
    conn.disconnect()
    pipe.watching = False
    pipe.reset()


def _get_connection(pool: Any) -> Any:
    try:
        return pool.get_connection()  # redis-py >= 5.3 deprecates the command name argument
    except TypeError:
        return pool.get_connection("WATCH")


# --- refusing a reconnect while our WATCH is pending -------------------------------------------


class _ReconnectRefusal:
    """One per connection the guard has WATCHed on, registered once as its connect callback.

    redis-py runs a connection's connect callbacks after every (re)connect, including the silent
    ones inside a health check or a retry, and keeps them as weak methods; it has no way to
    remove one in 4.x and never prunes them until a reconnect, so registering one per
    transaction would pile them up on a pooled connection. Hence one per connection, pointing
    weakly at the notes of the transaction whose WATCH it guards: once that transaction ends
    (``execute()``, ``reset()``, ``discard`` or the pipeline going away) it does nothing.
    """

    __slots__ = ("__weakref__", "transaction")

    def __init__(self) -> None:
        self.transaction: weakref.ReferenceType[_Notes] | None = None

    def on_connect(self, connection: Any) -> None:
        ref, self.transaction = self.transaction, None  # at most once per transaction
        notes = ref() if ref is not None else None
        pipe = notes.watch_pending() if notes is not None else None
        if pipe is None:
            return
        from redis.exceptions import WatchError

        # The new connection holds no WATCH: EXEC on it would commit whatever changed meanwhile.
        connection.disconnect()
        pipe.watching = False  # nothing to UNWATCH in reset() now
        raise WatchError(
            "the connection was re-established after rq-pipeline-fix WATCHed the dependencies "
            "of a job in this transaction; the WATCH is gone, so the transaction is aborted"
        )


_refusals: weakref.WeakKeyDictionary[Any, _ReconnectRefusal] = weakref.WeakKeyDictionary()


def _refuse_reconnects(pipe: Any, conn: Any) -> None:
    """Arm ``conn``'s refusal for the pipeline's current transaction (once per transaction)."""
    notes = _notes_for(pipe)
    if notes.pipe is not None:
        return
    refusal = _refusals.get(conn)
    if refusal is None:
        refusal = _refusals[conn] = _ReconnectRefusal()
    if not _is_registered(conn, refusal):
        register = getattr(conn, "register_connect_callback", None)
        if register is None:
            _say_cannot_refuse(type(conn))
            return
        register(refusal.on_connect)
    notes.pipe = weakref.ref(pipe)
    refusal.transaction = weakref.ref(notes)


def _is_registered(conn: Any, refusal: _ReconnectRefusal) -> bool:
    # redis-py 4.x's PubSub.reset() clears every callback of a connection it returns to the pool;
    # where the list is not there to look at (a cache proxy), registering again is deduplicated.
    callbacks = getattr(conn, "_connect_callbacks", None)
    if callbacks is None:
        return False
    method = refusal.on_connect
    return any(ref() == method for ref in callbacks)


def _say_cannot_refuse(connection_class: type) -> None:
    say_once(
        f"{connection_class.__qualname__} has no register_connect_callback: if it reconnects between "
        "the guard's WATCH and your EXEC, the transaction commits unwatched",
        key=connection_class,
    )


_said: set[Any] = set()


def say_once(message: str, key: Any = None) -> None:
    """Tell the user, once per ``key`` (default: the message), on the ``rq_pipeline_fix`` logger
    and as an ``RQPipelineFixWarning``; this runs inside the caller's enqueue, so a warnings
    filter set to "error" must not turn it into an exception there."""
    key = message if key is None else key
    if key in _said:
        return
    _said.add(key)
    from .patcher import RQPipelineFixWarning, log  # only on this rare path: patcher imports us

    log.warning(message)
    with contextlib.suppress(Warning):
        warnings.warn(f"rq-pipeline-fix: {message}", RQPipelineFixWarning, stacklevel=3)


# --- what we know about the transaction under way ------------------------------------------------


class _Notes:
    """What we know about one transaction of one pipeline: the job hashes its buffered commands
    write, with the last status they give each; the keys we WATCHed, with the value read right
    after; and, once we WATCH, the pipeline (weakly) for the reconnect refusal."""

    __slots__ = (
        "__weakref__",
        "caller_watching",
        "existing",
        "pipe",
        "scanned",
        "stack",
        "watched",
        "written",
    )

    def __init__(self, stack: list[Any]) -> None:
        self.stack = stack  # redis-py replaces the list on execute()/reset(): a new transaction
        self.scanned = 0
        self.written: dict[Any, Any] = {}  # hash key -> last status written, NO_STATUS or DELETED
        self.watched: dict[Any, Any] = {}  # key -> its status read under our WATCH
        self.existing: dict[Any, bool] = {}  # key -> whether it existed, read under our WATCH
        self.caller_watching: bool | None = None  # at our first WATCH: had the caller WATCHed?
        self.pipe: weakref.ReferenceType[Any] | None = None

    def watch_pending(self) -> Any:
        """The pipeline, while it is still in this transaction and WATCHing; else None.
        (``reset()`` replaces the command stack before it UNWATCHes, so its own reconnect for
        that UNWATCH is not refused.)"""
        pipe = self.pipe() if self.pipe is not None else None
        if pipe is None or pipe.command_stack is not self.stack or not pipe.watching:
            return None
        return pipe


class _NoStatus:
    def __repr__(self) -> str:
        return "NO_STATUS"


NO_STATUS: Any = _NoStatus()  # the batch writes the hash but sets no status in it


class _Deleted:
    def __repr__(self) -> str:
        return "DELETED"


DELETED: Any = _Deleted()  # the batch deletes the key (and does not write it again)

# Per pipeline, weakly: the notes go when the caller's pipeline goes.
_notes_by_pipeline: weakref.WeakKeyDictionary[Any, _Notes] = weakref.WeakKeyDictionary()
_HASH_WRITES = frozenset({"HSET", "HMSET", b"HSET", b"HMSET"})
_DELETES = frozenset({"DEL", "UNLINK", b"DEL", b"UNLINK"})  # e.g. Job.delete(pipeline=)


def _notes_for(pipe: Any) -> _Notes:
    stack = pipe.command_stack
    notes = _notes_by_pipeline.get(pipe)
    if notes is None or notes.stack is not stack or len(stack) < notes.scanned:
        notes = _notes_by_pipeline[pipe] = _Notes(stack)
    return notes


def notes_on(pipe: Any) -> _Notes:
    """The notes on the pipeline's current transaction, with the commands buffered since the
    last call scanned (only those: a batch of n dependent jobs costs O(commands), not O(n x
    commands))."""
    notes = _notes_for(pipe)
    stack = notes.stack
    written = notes.written
    for args, _options in stack[notes.scanned :]:
        if args and args[0] in _HASH_WRITES:
            written[args[1]] = _status_set(args, written.get(args[1], NO_STATUS))
        elif args and args[0] in _DELETES:
            written.update(dict.fromkeys(args[1:], DELETED))
    notes.scanned = len(stack)
    return notes


def _status_set(args: tuple[Any, ...], before: Any) -> Any:
    """The status an HSET/HMSET (``args``: command, key, field, value, ...) leaves in the hash."""
    last_fields_first = args[-2:1:-2]  # args[-2] is the last field name, args[-1] its value
    for name in ("status", b"status"):
        if name in last_fields_first:
            return args[-1 - 2 * last_fields_first.index(name)]
    return None if before is DELETED else before  # a hash the batch re-creates without a status


def statuses_written(pipe: Any) -> dict[Any, Any]:
    """Hash keys written by the pipeline's buffered commands, each with the last status the
    batch sets in it (``NO_STATUS`` when it writes the hash without one, ``DELETED`` when the
    batch deletes it last)."""
    return notes_on(pipe).written


def note_written(pipe: Any, key: Any, status: Any) -> None:
    """Count hash ``key`` as written by this transaction with ``status``, for a write that is not
    a plain HSET (a Lua script buffered in the pipeline)."""
    notes_on(pipe).written[key] = status
