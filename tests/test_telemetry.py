"""
Tracing and metrics (``substantial._agent.telemetry``, the ``otel`` extra): the spans and
counters an agent emits, read back through the OpenTelemetry SDK's in-memory exporters;
and a subprocess without ``opentelemetry`` still runs workflows, with telemetry off.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.context import Context as OtelContext
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from substantial import Context, RetryPolicy, RunFailed, workflow
from substantial._agent import telemetry
from substantial._store.runs import RunStore
from substantial.backends import Backend
from substantial.codec import encode_payload
from substantial.protocol import substantial_pb2 as pb
from substantial.testing import WorkflowEnvironment

ROOT = Path(__file__).resolve().parent.parent
calls: Counter[str] = Counter()
backends: dict[str, Backend] = {}
tracers: dict[str, trace.Tracer] = {}


async def fetch() -> str:
    """Fails on its first attempt; opens a span of its own, as instrumented code would."""
    calls["fetch"] += 1
    with tracers["test"].start_as_current_span("fetch.request"):
        if calls["fetch"] == 1:
            raise ConnectionError("connection reset")
    return "fetched"


async def charge() -> str:
    raise ValueError("card declined")


@workflow(name="telemetry.order")
async def order(c: Context) -> str:
    fetched = await c.save(fetch, retry=RetryPolicy(max_attempts=3, initial_interval=5))
    await c.save(charge, retry=RetryPolicy(max_attempts=1))
    return fetched


async def overtaken() -> str:
    """
    The first time, writes this step's outcome as the log's next segment, as another
    agent that took the run over would: this agent's commit then fails.
    """
    calls["overtaken"] += 1
    if calls["overtaken"] == 1:
        store = RunStore(backends["stolen"])
        stored = await store.read_log("stolen-1")
        done = pb.StepCompleted(position=0, name="overtaken", result=encode_payload("theirs"))
        event = pb.Event(at_ms=stored.events[-1].at_ms, step_completed=done)
        assert await store.append("stolen-1", stored.last_seq + 1, [event])
    return "ours"


@workflow(name="telemetry.stolen")
async def stolen(c: Context) -> str:
    return await c.save(overtaken)


class _RunEnded(SpanProcessor):
    """Sets an event when a run span with a given outcome ends (no polling, no sleeps)."""

    def __init__(self) -> None:
        self.waiting: dict[str, anyio.Event] = {}

    def expect(self, outcome: str) -> anyio.Event:
        return self.waiting.setdefault(outcome, anyio.Event())

    def on_start(self, span: Span, parent_context: OtelContext | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if span.name == "substantial.run":
            outcome = str((span.attributes or {}).get("substantial.outcome"))
            self.expect(outcome).set()


@dataclass
class Otel:
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    ended: _RunEnded

    def spans(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.name == name]

    def counts(self, name: str) -> dict[frozenset[tuple[str, Any]], int]:
        """A counter's values by attribute set."""
        data = self.reader.get_metrics_data()
        found: dict[frozenset[tuple[str, Any]], int] = {}
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            attributes = frozenset((point.attributes or {}).items())
                            found[attributes] = point.value  # type: ignore[union-attr]
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    exporter = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    ended = _RunEnded()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer_provider.add_span_processor(ended)
    meter_provider = MeterProvider(metric_readers=[reader])
    # not the global providers (settable once per process): this test's own
    tracers["test"] = tracer_provider.get_tracer("test")
    telemetry.configure(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        yield Otel(exporter, reader, ended)
    finally:
        telemetry.configure()
        tracers.clear()
        tracer_provider.shutdown()
        meter_provider.shutdown()


def _attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def _parent(span: ReadableSpan, spans: list[ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None, f"{span.name} has no parent"
    (parent,) = [s for s in spans if s.context is not None and s.context == span.parent]
    return parent


async def test_spans_and_counters_of_a_run_with_a_retry_and_a_failing_step(otel: Otel) -> None:
    calls.clear()
    failed = otel.ended.expect("failed")
    async with WorkflowEnvironment(order) as env:
        handle = await env.start(order, run_id="order-1")
        with pytest.raises(RunFailed):
            await handle.result()
        await failed.wait()  # the wake-up that failed the run has ended its span
        log = await RunStore(env.backend).read_log("order-1")
    everything = list(otel.exporter.get_finished_spans())

    steps = otel.spans("substantial.step")
    assert [
        (a["substantial.step"], a["substantial.attempt"], a["substantial.position"])
        for a in map(_attributes, steps)
    ] == [("fetch", 1, 0), ("fetch", 2, 0), ("charge", 1, 1)]
    assert all(_attributes(s)["substantial.run_id"] == "order-1" for s in steps)
    first, second, charged = steps
    assert first.status.status_code is StatusCode.ERROR
    assert _attributes(first)["error.type"] == "ConnectionError"
    assert [event.name for event in first.events] == ["exception"]
    assert second.status.status_code is StatusCode.UNSET
    assert charged.status.status_code is StatusCode.ERROR
    assert _attributes(charged)["error.type"] == "ValueError"
    assert "card declined" in (charged.status.description or "")

    # each step span is inside the run span of its wake-up; the retry was a new wake-up
    first_run = _parent(first, everything)
    last_run = _parent(second, everything)
    assert first_run.name == last_run.name == "substantial.run"
    assert _parent(charged, everything) is last_run
    assert first_run is not last_run
    for run in (first_run, last_run):
        assert _attributes(run)["substantial.run_id"] == "order-1"
        assert _attributes(run)["substantial.workflow"] == "telemetry.order"
        assert run.parent is None
    assert _attributes(first_run)["substantial.outcome"] == "suspended"
    assert _attributes(last_run)["substantial.outcome"] == "failed"
    # a span the step function opens is a child of that attempt's step span
    requests = otel.spans("fetch.request")
    assert [_parent(span, everything) for span in requests] == [first, second]

    # every wake-up that ran code replayed the log first, inside its run span
    replays = otel.spans("substantial.replay")
    by_run = {_id(_parent(span, everything)): _attributes(span) for span in replays}
    assert len(by_run) == len(replays)
    assert by_run[_id(first_run)]["substantial.events"] == 1  # a fresh run: its start
    assert by_run[_id(last_run)]["substantial.events"] == 2  # the start, the failed attempt
    assert len(log.events) == 5

    wf = ("substantial.workflow", "telemetry.order")
    assert otel.counts("substantial.steps") == {
        frozenset({wf, ("substantial.outcome", "error")}): 2,
        frozenset({wf, ("substantial.outcome", "ok")}): 1,
    }
    assert otel.counts("substantial.retries") == {frozenset({wf}): 1}
    assert otel.counts("substantial.replays") == {frozenset({wf}): len(replays)}
    assert otel.counts("substantial.lease_losses") == {}


async def test_a_lost_lease_ends_the_run_span_as_lease_lost_and_is_counted(otel: Otel) -> None:
    calls.clear()
    async with WorkflowEnvironment(stolen) as env:
        backends["stolen"] = env.backend
        handle = await env.start(stolen, run_id="stolen-1")
        assert await handle.result() == "theirs"  # the other agent's outcome stands
        await otel.ended.expect("completed").wait()
    runs = [_attributes(span) for span in otel.spans("substantial.run")]
    assert [run["substantial.outcome"] for run in runs] == ["lease_lost", "completed"]
    assert all(run["substantial.workflow"] == "telemetry.stolen" for run in runs)
    assert all(run["substantial.run_id"] == "stolen-1" for run in runs)
    wf = ("substantial.workflow", "telemetry.stolen")
    assert otel.counts("substantial.lease_losses") == {frozenset({wf}): 1}
    assert otel.counts("substantial.steps") == {frozenset({wf, ("substantial.outcome", "ok")}): 1}


def test_telemetry_is_on_with_opentelemetry_installed() -> None:
    assert telemetry.ENABLED


def _run_without_opentelemetry(code: str) -> subprocess.CompletedProcess[str]:
    prelude = (
        'import sys\nsys.modules["opentelemetry"] = None  # unimportable, as without the extra\n'
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_without_opentelemetry_workflows_run_and_telemetry_is_off() -> None:
    result = _run_without_opentelemetry(
        """
        import anyio
        from substantial import Context, RetryPolicy, workflow
        from substantial._agent import telemetry
        from substantial.testing import WorkflowEnvironment

        tries = []

        async def flaky() -> int:
            tries.append(1)
            if len(tries) == 1:
                raise ConnectionError("once")
            return len(tries)

        @workflow(name="plain")
        async def plain(c: Context, x: int) -> int:
            return x + await c.save(flaky, retry=RetryPolicy(initial_interval=1))

        async def main() -> None:
            async with WorkflowEnvironment(plain) as env:
                handle = await env.start(plain, 40)
                print("result", await handle.result())

        anyio.run(main)
        print("enabled", telemetry.ENABLED)
        print("shared", telemetry.step_span(None, 1) is telemetry.run_span("r"))
        try:
            telemetry.configure()
        except RuntimeError as exc:
            print("configure", exc)
        print("imported", any(name.startswith("opentelemetry.") for name in sys.modules))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "result 42",
        "enabled False",
        "shared True",
        "configure tracing needs opentelemetry: pip install 'substantial[otel]'",
        "imported False",
    ]
