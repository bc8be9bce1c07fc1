"""One process with rq-pipeline-fix beside a real library that also patches RQ, for
tests/test_neighbours.py. ``python -m tests.peers NEIGHBOUR ORDER REDIS_URL`` prints one JSON object.

NEIGHBOUR is ``none``, ``opentelemetry`` (opentelemetry-instrumentation-rq, spans kept by the
SDK's in-memory exporter), ``sentry`` (sentry-sdk's RqIntegration with ``dsn=None``, envelopes kept
by a transport of ours) or ``ddtrace`` (``patch(rq=True)``, spans kept by a trace filter, which
drops them so that nothing is sent anywhere). ORDER is ``neighbour-first`` (the neighbour patches
RQ, then the package is imported: the guard goes on over it) or ``package-first``.

The process, on a flushed database:
1. status() and the chain of wrappers on the methods both may patch;
2. the same five enqueues twice, to queues ``high`` and ``low``: job ids ``shared-*`` through one
   pipeline after a command of the caller's own (every guard steps in: D2, D3, D4/D5, D7/D8 on the
   releases that have them), then ``own-*`` each through a pipeline of its own (RQ's own code
   throughout). What the neighbour saw of each must be the same;
3. a SimpleWorker in burst mode: parents before their children;
4. lifecycles: ``revert()`` (the neighbour's wrapper must keep working), ``apply()``, then the
   neighbour's own unpatch, where it has one (the guard must keep working, or status() say why).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

JOB = "tests.jobs.record"  # by name: importing tests.jobs would import rq before the order is set
METHODS = ("Queue.setup_dependencies", "Queue.schedule_job", "Queue.enqueue_job", "Queue._enqueue_job")


class Neighbour:
    """A library that patches RQ, with a way to see what it recorded."""

    name = "none"

    def instrument(self) -> str | None:
        """Patch RQ; returns the error the library raised, if any (its own loaders log it)."""
        return None

    def uninstrument(self) -> bool:
        """Its own unpatch; False when it has none."""
        return False

    @contextlib.contextmanager
    def producing(self) -> Iterator[None]:
        yield

    def observed(self) -> list[list[Any]]:
        """What it recorded, as [what, job id] pairs, in order."""
        return []


class OpenTelemetry(Neighbour):
    name = "opentelemetry"

    def __init__(self) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        trace.set_tracer_provider(provider)

    def instrument(self) -> str | None:
        from opentelemetry_instrumentation_rq import RQInstrumentor

        try:
            RQInstrumentor().instrument()
        except Exception as exc:  # rq 3.0: it stops half-way (a method it wraps is gone)
            return repr(exc)
        return None

    def uninstrument(self) -> bool:
        from opentelemetry_instrumentation_rq import RQInstrumentor

        RQInstrumentor().uninstrument()
        return True

    def observed(self) -> list[list[Any]]:
        return [
            [span.name, span.attributes.get("rq.job.id"), len(span.links)]
            for span in self.exporter.get_finished_spans()
        ]


class Sentry(Neighbour):
    name = "sentry"

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    def instrument(self) -> str | None:
        import sentry_sdk
        from sentry_sdk.integrations.rq import RqIntegration
        from sentry_sdk.transport import Transport

        envelopes = self.envelopes

        class Keep(Transport):  # no DSN, nothing sent: the client hands us what it would send
            def capture_envelope(self, envelope: Any) -> None:
                envelopes.append(envelope)

        sentry_sdk.init(
            dsn=None,
            integrations=[RqIntegration()],
            default_integrations=False,
            traces_sample_rate=1.0,
            transport=Keep(),
        )
        return None

    @contextlib.contextmanager
    def producing(self) -> Iterator[None]:
        import sentry_sdk

        with sentry_sdk.start_transaction(name="producer"):  # its trace headers go into job.meta
            yield

    def observed(self) -> list[list[Any]]:
        import sentry_sdk

        sentry_sdk.flush()
        seen = []
        for envelope in self.envelopes:
            for item in envelope.items:
                event = item.payload.json or {}
                job = event.get("extra", {}).get("rq-job", {})
                seen.append([f"{item.type} {event.get('transaction')}", job.get("job_id")])
        return seen


class Datadog(Neighbour):
    name = "ddtrace"

    def __init__(self) -> None:
        from ddtrace.trace import TraceFilter, tracer

        spans: list[list[Any]] = []

        class Keep(TraceFilter):
            def process_trace(self, trace: Any) -> None:
                spans.extend([span.name, span.get_tag("job.id")] for span in trace)
                return None  # dropped: nothing goes to an agent

        tracer.configure(trace_processors=[Keep()])
        self.spans = spans

    def instrument(self) -> str | None:
        import ddtrace

        ddtrace.patch(rq=True)
        return None

    def uninstrument(self) -> bool:
        from ddtrace.contrib.internal.rq.patch import unpatch  # no public unpatch in ddtrace 4

        unpatch()
        return True

    def observed(self) -> list[list[Any]]:
        return list(self.spans)


NEIGHBOURS = {cls.name: cls for cls in (Neighbour, OpenTelemetry, Sentry, Datadog)}


def enqueue(connection: Any, prefix: str, shared: bool) -> None:
    """parent (high); child and many-child (low) depending on it; later (scheduled)."""
    from rq import Queue

    high, low = Queue("high", connection=connection), Queue("low", connection=connection)

    @contextlib.contextmanager
    def pipeline(pipe: Any) -> Iterator[Any]:
        if shared:
            yield pipe
        else:
            with connection.pipeline() as own:
                yield own
                own.execute()

    with connection.pipeline() as pipe:
        if shared:
            pipe.incr("shared-batches")  # the caller's own command first: D2 on every release
        with pipeline(pipe) as p:
            high.enqueue_call(JOB, args=(f"{prefix}parent",), job_id=f"{prefix}parent", pipeline=p)
        with pipeline(pipe) as p:
            child = f"{prefix}child"
            low.enqueue_call(JOB, args=(child,), job_id=child, depends_on=f"{prefix}parent", pipeline=p)
        many = Queue.prepare_data(
            JOB, args=(f"{prefix}many-child",), job_id=f"{prefix}many-child", depends_on=f"{prefix}parent"
        )
        with pipeline(pipe) as p:
            low.enqueue_many([many], pipeline=p)
        later = datetime.now(timezone.utc) + timedelta(hours=1)
        with pipeline(pipe) as p:
            high.enqueue_at(later, JOB, f"{prefix}later", job_id=f"{prefix}later", pipeline=p)
        if shared:
            pipe.execute()


def redis_facts(connection: Any, prefix: str) -> dict[str, Any]:
    from rq.job import Job
    from rq.registry import ScheduledJobRegistry

    facts: dict[str, Any] = {}
    for name in ("parent", "child", "many-child", "later"):
        job = Job.fetch(f"{prefix}{name}", connection=connection)
        facts[name] = {"status": str(job.get_status().value), "meta": sorted(job.meta)}
    scheduled = ScheduledJobRegistry("high", connection=connection).get_job_ids()
    facts["scheduled"] = [job_id for job_id in scheduled if job_id.startswith(prefix)]
    return facts


def chains() -> dict[str, list[str]]:
    """Each method's wrappers, outermost first, down to RQ's own ("rq")."""
    from rq_pipeline_fix.neighbours import chain_of, describe, guard_of

    found = {}
    for label in METHODS:
        owner_name, name = label.split(".")
        owner = getattr(importlib.import_module("rq.queue"), owner_name)
        if name not in owner.__dict__:
            continue
        chain = chain_of(owner, name)
        layers = ["rq-pipeline-fix" if guard_of(layer.obj) else describe(layer.obj) for layer in chain.layers]
        found[label] = [*layers, "rq"] if chain.original is not None else layers
    return found


def status() -> dict[str, Any]:
    import rq_pipeline_fix
    from rq_pipeline_fix.report import to_json

    return to_json(rq_pipeline_fix.status())


def main(neighbour_name: str, order: str, url: str) -> dict[str, Any]:
    neighbour = NEIGHBOURS[neighbour_name]()
    if order == "neighbour-first":
        raised = neighbour.instrument()
        importlib.import_module("rq.queue")  # a neighbour that patches lazily does it now
        importlib.import_module("rq_pipeline_fix")  # the guard goes on at once, with theirs there
    else:
        importlib.import_module("rq_pipeline_fix")
        importlib.import_module("rq.queue")  # the guard goes on
        raised = neighbour.instrument()
    import redis
    import rq.queue
    from rq import SimpleWorker

    import rq_pipeline_fix

    connection = redis.Redis.from_url(url)
    connection.flushdb()
    result: dict[str, Any] = {"instrument_raised": raised, "status": status(), "chains": chains()}
    with neighbour.producing():
        enqueue(connection, "shared-", shared=True)
        enqueue(connection, "own-", shared=False)
    worker = SimpleWorker(["high", "low"], connection=connection)
    worker.work(burst=True, logging_level="WARNING")
    result["executed"] = [label.decode() for label in connection.lrange("executed", 0, -1)]
    result["redis"] = {prefix: redis_facts(connection, prefix) for prefix in ("shared-", "own-")}
    result["observed"] = neighbour.observed()

    # Our revert() with the neighbour's wrapper on the same methods: theirs keeps working.
    result["reverted"] = status_after(rq_pipeline_fix.revert)
    result["chains_reverted"] = chains()
    before = len(neighbour.observed())
    with neighbour.producing():
        rq.queue.Queue("high", connection=connection).enqueue(JOB, "after-revert", job_id="after-revert")
    result["observed_after_revert"] = neighbour.observed()[before:]

    # The neighbour's own unpatch after our apply(): the guard keeps working, or status() says why.
    rq_pipeline_fix.apply()
    result["unpatched_by_neighbour"] = neighbour.uninstrument()
    result["status_after_unpatch"] = status()
    result["chains_after_unpatch"] = chains()
    try:
        enqueue(connection, "after-unpatch-", shared=True)
        result["after_unpatch"] = redis_facts(connection, "after-unpatch-")
    except Exception as exc:
        result["after_unpatch"] = repr(exc)
    return result


def status_after(action: Any) -> dict[str, Any]:
    from rq_pipeline_fix.report import to_json

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = to_json(action())
    report["warnings"] = [str(w.message) for w in caught if "rq-pipeline-fix" in str(w.message)]
    return report


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
