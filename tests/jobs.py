"""Job functions the tests enqueue; importable by in-process and subprocess workers alike."""

from __future__ import annotations

from rq import get_current_job


def record(label: str) -> str:
    """Append ``label`` to the list ``executed``, so tests can check the order jobs ran in."""
    job = get_current_job()
    assert job is not None
    job.connection.rpush("executed", label)
    return label


def fail(label: str) -> None:
    raise RuntimeError(f"job {label} fails on purpose")


def enqueue_children_in_one_pipeline(queue_names: list[str]) -> int:
    """A job that itself enqueues one child per queue through one shared pipeline."""
    from rq import Queue

    job = get_current_job()
    assert job is not None
    connection = job.connection
    with connection.pipeline() as pipe:
        for name in queue_names:
            Queue(name, connection=connection).enqueue_call(record, args=(f"child-{name}",), pipeline=pipe)
        pipe.execute()
    return len(queue_names)


def enqueue_children_after_a_command(queue_names: list[str]) -> int:
    """Like ``enqueue_children_in_one_pipeline``, with a command of the job's own buffered first:
    without the guard this fails on every RQ release (D2)."""
    from rq import Queue

    job = get_current_job()
    assert job is not None
    connection = job.connection
    with connection.pipeline() as pipe:
        pipe.incr("children-batches")
        for name in queue_names:
            Queue(name, connection=connection).enqueue_call(record, args=(f"child-{name}",), pipeline=pipe)
        pipe.execute()
    return len(queue_names)
