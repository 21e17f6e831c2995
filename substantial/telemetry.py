"""
OpenTelemetry for the agent, with the ``otel`` extra: spans and counters through the
providers the process configures (docs/operating.md, "Tracing and metrics"). Without
``opentelemetry`` importable, :data:`ENABLED` is false and every hook is a no-op.
"""

from __future__ import annotations

from substantial._agent.telemetry import ENABLED, OUTCOMES, configure

__all__ = ["ENABLED", "OUTCOMES", "configure"]
