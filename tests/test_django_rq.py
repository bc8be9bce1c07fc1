"""django-rq's deferred commit modes with a caller's pipeline, on the real django-rq, Django and an
in-memory SQLite database (the ``test`` extra installs them).

django-rq defers ``enqueue_call`` in commit mode ``on_db_commit`` (the default since django-rq
4.0) inside ``transaction.atomic()``, and in ``request_finished`` mode (``autocommit=False``
before 4.0), and replays the call, ``pipeline=`` included, after the caller executed that
pipeline: the job never lands. With the package, an enqueue given ``pipeline=`` goes into the
pipeline at the call (and lands at the caller's ``execute()``), said once by a
``DjangoRQCommitWarning``; every other enqueue is django-rq's own.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import SimpleWorker

import rq_pipeline_fix
from tests.conftest import child_environment
from tests.jobs import record

django = pytest.importorskip("django")
if importlib.util.find_spec("django_rq") is None:  # importing it needs Django's settings configured
    pytest.skip("django-rq is not installed", allow_module_level=True)

REPOSITORY = str(Path(__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def django_settings(redis_url: str) -> Iterator[None]:
    """Django configured once for this process: SQLite in memory, the test server as RQ_QUEUES."""
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            RQ_QUEUES={"default": {"URL": redis_url}},
            INSTALLED_APPS=[],
            USE_TZ=True,
        )
        django.setup()
    yield


@pytest.fixture
def django_rq(django_settings: None, connection: redis.Redis) -> Iterator[Any]:
    """django_rq with the guard on DjangoRQ.enqueue_call, each warning to be seen afresh."""
    import django_rq
    from django_rq.queues import DjangoRQ

    from rq_pipeline_fix import djangorq

    wrapped = type(DjangoRQ.__dict__["enqueue_call"]).__name__ in ("FunctionWrapper", "_WrappedAtFirstUse")
    if rq_pipeline_fix.status().active and not wrapped:  # (not under the `unpatched` fixture)
        # An earlier test module cleared our import hook for django_rq.queues: put it on again.
        rq_pipeline_fix.revert()
        rq_pipeline_fix.apply()
    djangorq._said.clear()
    yield django_rq
    djangorq._said.clear()


def queue_in_mode(django_rq: Any, mode: str) -> Any:
    if "commit_mode" in inspect.signature(django_rq.get_queue).parameters:  # django-rq 4.0 on
        return django_rq.get_queue("default", commit_mode=mode)
    if mode == "on_db_commit":
        pytest.skip("commit mode on_db_commit arrived in django-rq 4.0")
    return django_rq.get_queue("default", autocommit=(mode == "auto"))


@contextmanager
def commit_mode_warnings() -> Iterator[list[str]]:
    """The DjangoRQCommitWarning messages issued in the block (filled in when it ends)."""
    from rq_pipeline_fix.djangorq import DjangoRQCommitWarning

    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield messages
    messages += [str(w.message) for w in caught if issubclass(w.category, DjangoRQCommitWarning)]


def test_on_db_commit_pipeline_executed_inside_atomic_lands_at_execute(
    django_rq: Any, connection: redis.Redis
) -> None:
    from django.db import transaction

    queue = queue_in_mode(django_rq, "on_db_commit")
    with commit_mode_warnings() as said, transaction.atomic():
        with connection.pipeline() as pipe:
            job = queue.enqueue(record, "a", pipeline=pipe)
            pipe.set("mine", 1)
            assert queue.count == 0  # buffered, not deferred
            pipe.execute()
        assert queue.job_ids == [job.id]  # at the caller's execute(), before the commit
    assert queue.job_ids == [job.id]  # the commit adds no second copy
    assert connection.get("mine") == b"1"
    (message,) = said
    assert "'on_db_commit'" in message and "transaction.on_commit()" in message
    SimpleWorker([queue], connection=connection).work(burst=True)
    assert connection.lrange("executed", 0, -1) == [b"a"]


def test_on_db_commit_warns_once_per_process(django_rq: Any, connection: redis.Redis) -> None:
    from django.db import transaction

    queue = queue_in_mode(django_rq, "on_db_commit")
    with commit_mode_warnings() as said:
        for label in ("a", "b"):
            with transaction.atomic(), connection.pipeline() as pipe:
                queue.enqueue(record, label, pipeline=pipe)
                pipe.execute()
    assert len(said) == 1
    assert queue.count == 2


def test_on_db_commit_pipeline_executed_after_the_atomic_block_lands_once(
    django_rq: Any, connection: redis.Redis
) -> None:
    from django.db import transaction

    from rq_pipeline_fix.djangorq import DjangoRQCommitWarning

    queue = queue_in_mode(django_rq, "on_db_commit")
    with connection.pipeline() as pipe:
        with transaction.atomic(), pytest.warns(DjangoRQCommitWarning):
            job = queue.enqueue(record, "a", pipeline=pipe)
        assert queue.count == 0
        pipe.execute()
    assert queue.job_ids == [job.id]


def test_on_db_commit_batch_built_in_on_commit_lands_after_the_commit_without_warning(
    django_rq: Any, connection: redis.Redis
) -> None:
    """The pattern the warning names: the whole batch in transaction.on_commit()."""
    from django.db import transaction

    queue = queue_in_mode(django_rq, "on_db_commit")

    def batch() -> None:
        with connection.pipeline() as pipe:
            queue.enqueue(record, "a", pipeline=pipe)
            queue.enqueue(record, "b", pipeline=pipe)
            pipe.execute()

    with commit_mode_warnings() as said:
        with transaction.atomic():
            transaction.on_commit(batch)
            assert queue.count == 0
        assert queue.count == 2
    assert said == []


def test_on_db_commit_without_pipeline_is_django_rqs_own(django_rq: Any, connection: redis.Redis) -> None:
    from django.db import transaction

    queue = queue_in_mode(django_rq, "on_db_commit")
    with transaction.atomic():
        queue.enqueue(record, "committed")
        assert queue.count == 0  # deferred to the commit, as django-rq does
    assert queue.count == 1
    with pytest.raises(RuntimeError), transaction.atomic():
        queue.enqueue(record, "rolled back")
        raise RuntimeError("roll back")
    assert queue.count == 1


def test_request_finished_pipeline_lands_at_execute_and_once(django_rq: Any, connection: redis.Redis) -> None:
    from django_rq import thread_queue

    queue = queue_in_mode(django_rq, "request_finished")
    with commit_mode_warnings() as said, connection.pipeline() as pipe:
        job = queue.enqueue(record, "a", pipeline=pipe)
        pipe.execute()
    assert queue.job_ids == [job.id]
    assert thread_queue.get_queue() == []
    thread_queue.commit()  # what django-rq runs when the request finishes
    assert queue.job_ids == [job.id]
    assert "'request_finished'" in said[0]


def test_request_finished_without_pipeline_is_django_rqs_own(django_rq: Any, connection: redis.Redis) -> None:
    from django_rq import thread_queue

    queue = queue_in_mode(django_rq, "request_finished")
    queue.enqueue(record, "a")
    assert queue.count == 0
    thread_queue.commit()
    assert queue.count == 1


def test_auto_mode_with_pipeline_lands_at_execute_without_warning(
    django_rq: Any, connection: redis.Redis
) -> None:
    from django.db import transaction

    queue = queue_in_mode(django_rq, "auto")
    with commit_mode_warnings() as said, transaction.atomic(), connection.pipeline() as pipe:
        queue.enqueue(record, "a", pipeline=pipe)
        assert queue.count == 0
        pipe.execute()
    assert queue.count == 1
    assert said == []


@pytest.mark.usefixtures("unpatched")
def test_without_guard_on_db_commit_loses_the_job_silently(django_rq: Any, connection: redis.Redis) -> None:
    """The defect, measured: 0 jobs and no error."""
    from django.db import transaction

    queue = queue_in_mode(django_rq, "on_db_commit")
    with transaction.atomic(), connection.pipeline() as pipe:
        queue.enqueue(record, "a", pipeline=pipe)
        pipe.set("mine", 1)
        pipe.execute()
    assert connection.get("mine") == b"1" and queue.count == 0


# --- when django-rq is imported relative to rq and the package (fresh interpreters) -------------

ORDERS = {
    # django.setup() imports django_rq (an installed app), which imports rq: the guard goes on
    # while django_rq.queues is still being executed, and DjangoRQ is wrapped once it is done.
    "django-rq-imports-rq": "import rq_pipeline_fix\nSETUP(['django_rq'])\n",
    "rq-first": "import rq_pipeline_fix, rq\nSETUP([])\nimport django_rq\n",
    "package-last": "SETUP([])\nimport django_rq\nimport rq_pipeline_fix\nrq_pipeline_fix.apply()\n",
}
SETUP = """
def SETUP(apps):
    import django
    from django.conf import settings
    settings.configure(DATABASES={'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': ':memory:'}},
                       RQ_QUEUES={'default': {'URL': 'redis://127.0.0.1:1/0'}}, INSTALLED_APPS=apps)
    django.setup()
"""
REPORT = """
from django_rq.queues import DjangoRQ
import json, rq_pipeline_fix
print(json.dumps([type(DjangoRQ.__dict__['enqueue_call']).__name__, rq_pipeline_fix.status().note]))
"""


@pytest.mark.parametrize("order", ORDERS)
def test_django_rq_is_wrapped_whatever_the_import_order(order: str) -> None:
    shown = subprocess.run(
        [sys.executable, "-c", SETUP + ORDERS[order] + REPORT],
        cwd=REPOSITORY,
        env=child_environment(PYTHONPATH=REPOSITORY),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    kind, note = json.loads(shown.stdout)
    assert kind == "_WrappedAtFirstUse" and "guard on DjangoRQ.enqueue_call" in note
