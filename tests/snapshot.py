"""A comparable picture of a whole Redis database, for tests that compare two runs or a before
and an after: every key with its type and content, without what differs run to run for the same
outcome (timestamps inside job hashes, scores of time-based sorted sets, exact TTLs)."""

from __future__ import annotations

from typing import Any

# Job hash fields whose values are the same for the same outcome; the others (created_at,
# enqueued_at, ...) carry clock readings, so only their presence is compared.
STABLE_JOB_FIELDS = frozenset(
    {b"status", b"origin", b"description", b"dependency_ids", b"allow_dependency_failures"}
)


def _is_job_hash(key: bytes) -> bool:
    return key.startswith(b"rq:job:") and key.count(b":") == 2


def describe(client: Any, key: bytes) -> tuple[Any, ...]:
    kind = client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    expiring = client.ttl(key) >= 0  # -1: persistent; the exact TTL is a clock reading
    if kind == "string":
        value: Any = client.get(key)
    elif kind == "list":
        value = tuple(client.lrange(key, 0, -1))
    elif kind == "set":
        value = tuple(sorted(client.smembers(key)))
    elif kind == "zset":
        value = tuple(sorted(client.zrange(key, 0, -1)))
    elif kind == "hash":
        fields = client.hgetall(key)
        if _is_job_hash(key):
            stable = {field: fields[field] if field in STABLE_JOB_FIELDS else None for field in fields}
            value = tuple(sorted(stable.items()))
        else:
            value = tuple(sorted(fields.items()))
    else:
        value = kind
    return kind, expiring, value


def snapshot(client: Any, ignore: tuple[bytes, ...] = ()) -> dict[bytes, tuple[Any, ...]]:
    """Every key of ``client``'s database (all nodes' keys for a cluster client)."""
    keys = sorted(set(client.keys("*")))
    return {key: describe(client, key) for key in keys if not key.startswith(ignore)}
