"""How a failing step is retried: a value the workflow code, the engine and the agent share."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """
    How a failing ``save`` step is retried. Waits between attempts are durable: the run
    is released while it waits, and a crash does not reset the attempt count.

    :ivar max_attempts: attempts in all, the first one included (``1``: no retry)
    :ivar initial_interval: wait before the second attempt, in seconds
    :ivar backoff_coefficient: each further wait is this many times the previous one
    :ivar max_interval: the longest wait, in seconds
    :ivar non_retryable: exception types (or their names) that end the step at once
    """

    max_attempts: int = 3
    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    max_interval: float = 60.0
    non_retryable: tuple[type[BaseException] | str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1")
        if self.initial_interval < 0 or self.max_interval < 0:
            raise ValueError("RetryPolicy intervals cannot be negative")
        if self.backoff_coefficient < 1:
            raise ValueError("RetryPolicy.backoff_coefficient must be at least 1")

    def delay_after(self, attempt: int) -> float:
        """The wait in seconds after failed attempt number ``attempt`` (1-based)."""
        delay = self.initial_interval * self.backoff_coefficient ** (attempt - 1)
        return float(min(delay, self.max_interval))

    def retries(self, error: BaseException, attempt: int) -> bool:
        """Whether a step that failed with ``error`` on ``attempt`` gets another attempt."""
        if attempt >= self.max_attempts:
            return False
        for kind in self.non_retryable:
            if isinstance(kind, str):
                if kind in (type(error).__name__, type(error).__qualname__):
                    return False
            elif isinstance(error, kind):
                return False
        return True
