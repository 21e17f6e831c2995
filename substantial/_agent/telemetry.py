"""
OpenTelemetry tracing and metrics for the agent, with the ``otel`` extra
(``pip install substantial[otel]``); without it every hook is a no-op.

Spans (tracer ``substantial``):

* ``substantial.run``: one wake-up of one run by this agent. Attributes
  ``substantial.run_id``, ``substantial._engine.workflow`` and ``substantial.outcome``: what the
  wake-up ended in (see :data:`OUTCOMES`).
* ``substantial._engine.replay``: re-running the workflow code over the stored log, inside the run
  span. Attribute ``substantial.events``: how many events were replayed.
* ``substantial.step``: one attempt of one ``save`` step, inside the run span. Attributes
  ``substantial.run_id``, ``substantial.position``, ``substantial.step`` (its name) and
  ``substantial.attempt`` (1, 2, ...); a failed attempt has status ERROR, the exception
  as an event and ``error.type``. A step function's own spans nest inside it.

Counters (meter ``substantial``), each with ``substantial._engine.workflow``:

* ``substantial.steps``: step attempts run, by ``substantial.outcome`` (``ok``, ``error``,
  or ``cancelled`` when the run ended or the agent stopped while it ran)
* ``substantial.retries``: failed attempts that will be retried
* ``substantial.replays``: wake-ups that replayed a log (every wake-up that runs code)
* ``substantial.lease_losses``: wake-ups that lost their lease to another agent

Spans and instruments come from the global providers unless :func:`configure` names
others. Without ``opentelemetry`` importable, :data:`ENABLED` is false and each hook
returns one shared :class:`contextlib.nullcontext` or does nothing, so the agent pays a
function call per hook and nothing else.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from substantial._core import logs
from substantial.errors import BackendUnavailable, LeaseLost

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from substantial._engine.commands import SaveCommand
    from substantial.protocol import substantial_pb2 as pb

try:
    from opentelemetry import context as _context
    from opentelemetry import metrics as _metrics
    from opentelemetry import trace as _trace
except ImportError:
    ENABLED = False
else:
    ENABLED = True

__all__ = [
    "ENABLED",
    "OUTCOMES",
    "configure",
    "replay_span",
    "run_ended",
    "run_outcome",
    "run_span",
    "step_retried",
    "step_span",
]

#: The values of a run span's ``substantial.outcome``.
OUTCOMES = {
    "completed": "the run ended with a result",
    "failed": "the run ended with an error, or its log is corrupt",
    "cancelled": "the run ended cancelled",
    "reverted": "the run's compensations ran and it ended reverted",
    "continued": "the run continued as a new run",
    "terminated": "the run was ended from outside (terminate), its code not run",
    "suspended": "the run waits for a timer, an event or a retry: a later wake-up goes on",
    "parked": "the code no longer replays the log, or the workflow is not registered",
    "skipped": "nothing to run: the run had already ended, or its start is not written yet",
    "lease_lost": "another agent took the run over; its work since the last commit is lost",
    "backend_unavailable": "the storage failed; the run is retried with backoff",
    "error": "an unexpected error; the run is retried later",
    "interrupted": "the agent stopped before the wake-up finished",
}

_NULL: AbstractContextManager[None] = nullcontext()
_END_KINDS = {"continued_as": "continued"}

RUN_ID = "substantial.run_id"
WORKFLOW = "substantial.workflow"
OUTCOME = "substantial.outcome"


def _workflow() -> dict[str, str]:
    name = logs.workflow_var.get()
    return {WORKFLOW: name} if name is not None else {}


if ENABLED:
    from opentelemetry.metrics import Counter
    from opentelemetry.trace import Status, StatusCode, Tracer

    @dataclass
    class _Instruments:
        tracer: Tracer
        steps: Counter
        retries: Counter
        replays: Counter
        lease_losses: Counter

    _state: _Instruments

    def configure(
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        """
        Take spans and instruments from these providers (default: the global ones, as
        set by :func:`opentelemetry.trace.set_tracer_provider` and its metrics twin,
        before or after this call).
        """
        tracer = (
            tracer_provider.get_tracer("substantial")
            if tracer_provider is not None
            else _trace.get_tracer("substantial")
        )
        meter = (
            meter_provider.get_meter("substantial")
            if meter_provider is not None
            else _metrics.get_meter("substantial")
        )
        global _state
        _state = _Instruments(
            tracer=tracer,
            steps=meter.create_counter(
                "substantial.steps", unit="{attempt}", description="Step attempts run"
            ),
            retries=meter.create_counter(
                "substantial.retries", unit="{attempt}", description="Failed attempts to retry"
            ),
            replays=meter.create_counter(
                "substantial.replays", unit="{replay}", description="Wake-ups that replayed a log"
            ),
            lease_losses=meter.create_counter(
                "substantial.lease_losses",
                unit="{wake-up}",
                description="Wake-ups that lost their lease to another agent",
            ),
        )

    _current_run: ContextVar[_RunSpan | None] = ContextVar("substantial_run_span", default=None)

    class _Span:
        """A span made current for the duration of a ``with`` block."""

        def __init__(self, name: str, attributes: dict[str, Any]) -> None:
            self.span = _state.tracer.start_span(name, attributes=attributes)
            self._token: Token[Any] | None = None

        def __enter__(self) -> None:
            self._token = _context.attach(_trace.set_span_in_context(self.span))

        def __exit__(
            self,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> None:
            try:
                if isinstance(exc, Exception):
                    self.span.record_exception(exc)
                    self.span.set_attribute("error.type", type(exc).__qualname__)
                    self.span.set_status(Status(StatusCode.ERROR, str(exc)))
                self.finish(exc)
            finally:
                if self._token is not None:
                    _context.detach(self._token)
                self.span.end()

        def finish(self, exc: BaseException | None) -> None:
            """Set the attributes known at the end."""

    class _RunSpan(_Span):
        def __init__(self, run_id: str) -> None:
            super().__init__("substantial.run", {RUN_ID: run_id})
            self.outcome = "skipped"
            self._outer: Token[_RunSpan | None] | None = None

        def __enter__(self) -> None:
            super().__enter__()
            self._outer = _current_run.set(self)

        def finish(self, exc: BaseException | None) -> None:
            if self._outer is not None:
                _current_run.reset(self._outer)
            attributes = _workflow()
            if isinstance(exc, LeaseLost):
                self.outcome = "lease_lost"
                _state.lease_losses.add(1, attributes)
            elif isinstance(exc, BackendUnavailable):
                self.outcome = "backend_unavailable"
            elif isinstance(exc, Exception):
                self.outcome = "error"
            elif exc is not None:
                self.outcome = "interrupted"
            self.span.set_attributes({**attributes, OUTCOME: self.outcome})

    class _StepSpan(_Span):
        def finish(self, exc: BaseException | None) -> None:
            if exc is None:
                outcome = "ok"
            else:
                outcome = "error" if isinstance(exc, Exception) else "cancelled"
            _state.steps.add(1, {**_workflow(), OUTCOME: outcome})

    class _ReplaySpan(_Span):
        def finish(self, exc: BaseException | None) -> None:
            _state.replays.add(1, _workflow())

    def run_span(run_id: str) -> AbstractContextManager[None]:
        """The span of one wake-up of ``run_id``; it ends with the wake-up's outcome."""
        return _RunSpan(run_id)

    def run_outcome(outcome: str) -> None:
        """Set the current wake-up's outcome (one of :data:`OUTCOMES`)."""
        run = _current_run.get()
        if run is not None:
            run.outcome = outcome

    def run_ended(end: pb.Event | None) -> None:
        """Set the outcome from the run's end event, or ``suspended`` if it goes on."""
        kind = end.WhichOneof("kind") if end is not None else None
        run_outcome(_END_KINDS.get(kind, kind) if kind else "suspended")

    def replay_span(events: int) -> AbstractContextManager[None]:
        """The span of a replay of ``events`` stored events."""
        return _ReplaySpan("substantial.replay", {"substantial.events": events})

    def step_span(command: SaveCommand, attempt: int) -> AbstractContextManager[None]:
        """The span of one attempt of a step."""
        attributes = {
            RUN_ID: logs.run_id_var.get() or "",
            "substantial.position": command.position,
            "substantial.step": command.name,
            "substantial.attempt": attempt,
        }
        return _StepSpan("substantial.step", attributes)

    def step_retried() -> None:
        """Count a failed step attempt that will be retried."""
        _state.retries.add(1, _workflow())

    configure()

else:

    def configure(
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        """Without ``opentelemetry`` there is nothing to configure."""
        raise RuntimeError("tracing needs opentelemetry: pip install 'substantial[otel]'")

    def run_span(run_id: str) -> AbstractContextManager[None]:
        """No-op: ``opentelemetry`` is not installed."""
        return _NULL

    def run_outcome(outcome: str) -> None:
        """No-op: ``opentelemetry`` is not installed."""

    def run_ended(end: pb.Event | None) -> None:
        """No-op: ``opentelemetry`` is not installed."""

    def replay_span(events: int) -> AbstractContextManager[None]:
        """No-op: ``opentelemetry`` is not installed."""
        return _NULL

    def step_span(command: SaveCommand, attempt: int) -> AbstractContextManager[None]:
        """No-op: ``opentelemetry`` is not installed."""
        return _NULL

    def step_retried() -> None:
        """No-op: ``opentelemetry`` is not installed."""
