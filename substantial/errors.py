"""
Every error substantial raises, under one root.

* SubstantialError
    * BackendError
        * BackendUnavailable (also ConnectionError): the storage could not be reached
        * BackendRefused: the storage answered but refused (full, out of memory,
          read-only, permission denied); retrying helps only once an operator acts
        * LeaseLost: another agent took over a run this agent was working on
    * CodecError (also ValueError): a value could not be encoded or decoded
        * EncryptedPayload: a value is encrypted with a key id this process lacks
    * InvalidAttribute (also ValueError): a search attribute that is not a small string
      or number, or a bad ``--where`` filter
    * InvalidArguments (also TypeError): arguments that do not fit the workflow's signature
    * InvalidRunId (also ValueError): a run id that breaks the run-id rule
    * InvalidName (also ValueError): a queue, limit or schedule name that breaks the rule
    * InvalidSchedule (also ValueError): a bad cron expression, time zone or catchup
    * ScheduleNotFound (also LookupError): no schedule of that id
    * RunError: about one run; carries ``run_id``
        * RunNotFound (also LookupError)
        * UnknownWorkflow (also LookupError)
        * NonDeterminismError: the code no longer replays the run's log
        * CorruptLog: a stored record does not parse, or belongs to another run
        * ChildRunIdTaken: raised inside a workflow at ``child``/``start_child`` when
          the id names a run that is not this run's child
        * ForkError (also ValueError): ``fork``/``retry`` cannot cut this run's log there
    * StepFailed: raised inside a workflow at ``save`` once a step has no attempts left
    * CompensationFailed: raised inside a workflow by ``revert()``
    * CompactionError (also ValueError): raised inside a workflow by ``compact()``
    * RunFailed, RunCancelled, RunReverted: raised by ``Handle.result()``
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendError",
    "BackendRefused",
    "BackendUnavailable",
    "ChildRunIdTaken",
    "CodecError",
    "CompactionError",
    "CompensationFailed",
    "CorruptLog",
    "EncryptedPayload",
    "ForkError",
    "InvalidArguments",
    "InvalidAttribute",
    "InvalidName",
    "InvalidRunId",
    "InvalidSchedule",
    "LeaseLost",
    "NonDeterminismError",
    "NotAWorkflow",
    "RunCancelled",
    "RunError",
    "RunFailed",
    "RunFinished",
    "RunNotFound",
    "RunReverted",
    "RunTerminated",
    "ScheduleNotFound",
    "StepFailed",
    "SubstantialError",
    "UnknownWorkflow",
]


class SubstantialError(Exception):
    """The root of every error raised by substantial."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.__dict__))


def _rebuild(cls: type[SubstantialError], state: dict[str, Any]) -> SubstantialError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


class BackendError(SubstantialError):
    """A storage operation failed."""


class BackendUnavailable(BackendError, ConnectionError):
    """The storage backend could not be reached; the operation may succeed if retried."""

    def __init__(self, backend: str, operation: str, detail: str) -> None:
        super().__init__(f"{backend} unavailable during {operation}: {detail}")
        self.backend = backend
        self.operation = operation
        self.detail = detail


class BackendRefused(BackendError):
    """
    The storage answered but refused the operation: it is full or out of memory,
    read-only, or this process may not write it (a permission or an S3 403). Unlike
    :class:`BackendUnavailable` this is not a passing outage: an agent logs it once,
    backs off and keeps trying, and ``substantial check`` reports it.
    """

    def __init__(self, backend: str, operation: str, detail: str) -> None:
        super().__init__(f"{backend} refused {operation}: {detail}")
        self.backend = backend
        self.operation = operation
        self.detail = detail


class LeaseLost(BackendError):
    """Another agent took over the run; this agent's work on it must stop."""

    def __init__(self, run_id: str, detail: str) -> None:
        super().__init__(f"lease on run {run_id!r} lost: {detail}")
        self.run_id = run_id
        self.detail = detail


class CodecError(SubstantialError, ValueError):
    """A value could not be encoded, or stored bytes could not be decoded."""


class EncryptedPayload(CodecError):
    """A stored value is encrypted with a key (``key_id``) this process does not have."""

    def __init__(self, key_id: str) -> None:
        self.key_id = key_id
        super().__init__(
            f"payload is encrypted with key id {key_id!r}, which this process does not have "
            "(give it to Conductor(codecs=[AESGCMCodec(...)]) or in $SUBSTANTIAL_KEYS)"
        )

    def __reduce__(self) -> tuple[type[EncryptedPayload], tuple[str]]:
        return type(self), (self.key_id,)


class InvalidAttribute(SubstantialError, ValueError):
    """A search attribute is not a small string or number, or its name is not allowed."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"bad search attribute {name!r}: {detail}")
        self.name = name
        self.detail = detail

    def __reduce__(self) -> tuple[type[InvalidAttribute], tuple[str, str]]:
        return type(self), (self.name, self.detail)


class InvalidArguments(SubstantialError, TypeError):
    """The arguments given to a workflow do not fit its signature."""

    def __init__(self, workflow: str, detail: str) -> None:
        super().__init__(f"bad arguments for workflow {workflow!r}: {detail}")
        self.workflow = workflow
        self.detail = detail


class NotAWorkflow(SubstantialError, TypeError):
    """
    Something other than a ``@workflow`` function (or a workflow name) was given to
    ``register`` or ``start``, or a second workflow was registered under a taken name.
    """


class InvalidRunId(SubstantialError, ValueError):
    """
    A run id that breaks the rule (see :mod:`substantial._core.runids`). Raised where the id
    enters: ``start``, ``handle``, and inside a workflow at ``child``/``start_child``.

    :ivar run_id: the id as given (a long one is shortened in the message only)
    :ivar rule: what a run id must be
    :ivar where: where the id came from, if the caller said (e.g. ``child of run 'p'``)
    """

    def __init__(self, run_id: object, rule: str, where: str = "") -> None:
        if isinstance(run_id, str) and len(run_id) > 60:
            shown = f"{run_id[:40]!r}... ({len(run_id)} characters)"
        else:
            shown = repr(run_id)
        at = f" ({where})" if where else ""
        super().__init__(f"invalid run id {shown}{at}: {rule}")
        self.run_id = run_id
        self.rule = rule
        self.where = where


class InvalidName(SubstantialError, ValueError):
    """
    A queue, limit or schedule name that breaks the rule: names become parts of keys.
    ``what`` says which (``queue``, ``limit``, ``schedule``), ``rule`` what a name must be.
    """

    def __init__(self, what: str, name: object, rule: str) -> None:
        super().__init__(f"invalid {what} name {name!r}: {rule}")
        self.what = what
        self.name = name
        self.rule = rule


class InvalidSchedule(SubstantialError, ValueError):
    """A cron schedule with a bad expression, time zone or ``catchup``; the message says which."""

    def __init__(self, schedule_id: str, problem: str) -> None:
        super().__init__(f"schedule {schedule_id!r}: {problem}")
        self.schedule_id = schedule_id
        self.problem = problem


class ScheduleNotFound(SubstantialError, LookupError):
    """No cron schedule has this id (never made, or deleted)."""

    def __init__(self, schedule_id: str) -> None:
        super().__init__(f"no schedule {schedule_id!r}")
        self.schedule_id = schedule_id


class RunError(SubstantialError):
    """An error about one run."""

    def __init__(self, run_id: str, message: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class RunNotFound(RunError, LookupError):
    """No run with this id exists on the backend."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id, f"no run {run_id!r} on this backend")


class RunFinished(RunError):
    """
    The run has ended, so it takes no more events or cancellation: raised by
    ``Handle.send()`` and ``Handle.cancel()`` instead of dropping what was sent.

    :ivar status: how it ended (``"completed"``, ``"failed"``, ...)
    """

    def __init__(self, run_id: str, status: str, what: str, continued_as: str = "") -> None:
        then = f"; it continued as run {continued_as!r}" if continued_as else ""
        super().__init__(
            run_id, f"run {run_id!r} has finished ({status}){then}: {what} was not delivered"
        )
        self.status = status
        self.continued_as = continued_as


class UnknownWorkflow(RunError, LookupError):
    """A workflow name that no one registered with this conductor."""

    def __init__(self, name: str, known: list[str], run_id: str = "") -> None:
        where = f" (run {run_id!r})" if run_id else ""
        listing = ", ".join(sorted(known)) or "none"
        super().__init__(
            run_id, f"unknown workflow {name!r}{where}; registered workflows: {listing}"
        )
        self.name = name
        self.known = sorted(known)


class NonDeterminismError(RunError):
    """The workflow code no longer replays the run's log: the two disagree at a position."""

    def __init__(self, run_id: str, position: int | None, logged: str, code: str) -> None:
        where = f"at position {position}" if position is not None else "at the end of the log"
        super().__init__(
            run_id,
            f"run {run_id!r} does not replay {where}: the log holds {logged}, "
            f"but the code asked for {code}",
        )
        self.position = position
        self.logged = logged
        self.code = code


class CorruptLog(RunError):
    """A stored record could not be parsed, or does not belong where it was found."""

    def __init__(self, run_id: str, key: str, detail: str) -> None:
        super().__init__(run_id, f"corrupt record {key!r} in run {run_id!r}: {detail}")
        self.key = key
        self.detail = detail


class ForkError(RunError, ValueError):
    """
    ``Handle.fork()`` or ``Handle.retry()`` cannot make a fork of this run: the step is
    not in its log, its prefix cannot be copied soundly, the run has not failed (retry),
    or the fork's run id names another run.

    :ivar reason: what is wrong, and what to do instead
    """

    def __init__(self, run_id: str, reason: str) -> None:
        super().__init__(run_id, f"cannot fork run {run_id!r}: {reason}")
        self.reason = reason


class ChildRunIdTaken(RunError):
    """
    ``child``/``start_child`` named a run id that an existing run holds, and that run is
    not this run's child. The run is neither adopted nor cancelled. Raised inside the
    parent workflow at that call, live and on every replay (the refusal is in its log).

    :ivar run_id: the child id that is taken
    :ivar parent_run_id: the run that asked for the child
    :ivar owner: the parent of the run holding the id (``""``: a top-level run)
    """

    def __init__(self, run_id: str, parent_run_id: str, owner: str) -> None:
        whose = f"a child of run {owner!r}" if owner else "a top-level run"
        super().__init__(
            run_id,
            f"run {parent_run_id!r} cannot start child {run_id!r}: that id belongs to {whose}",
        )
        self.parent_run_id = parent_run_id
        self.owner = owner


class StepFailed(SubstantialError):
    """
    A ``save`` step failed and has no attempts left: raised inside the workflow at the
    ``save`` call, live and on every replay alike, describing the step's own exception.
    """

    def __init__(self, type_name: str, error_message: str, traceback: str = "") -> None:
        super().__init__(f"step failed with {type_name}: {error_message}")
        self.type_name = type_name
        self.error_message = error_message
        self.traceback = traceback


class RunFailed(RunError):
    """The run ended with an exception; raised by ``Handle.result()``."""

    def __init__(self, run_id: str, type_name: str, error_message: str, traceback: str) -> None:
        super().__init__(run_id, f"run {run_id!r} failed with {type_name}: {error_message}")
        self.type_name = type_name
        self.error_message = error_message
        self.traceback = traceback


class RunCancelled(RunError):
    """The run was cancelled; raised by ``Handle.result()``."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id, f"run {run_id!r} was cancelled")


class RunReverted(RunError):
    """The run undid its steps with ``revert()``; raised by ``Handle.result()``."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id, f"run {run_id!r} was reverted")


class RunTerminated(RunError):
    """The run was ended from outside with ``terminate()``; raised by ``Handle.result()``."""

    def __init__(self, run_id: str, reason: str = "") -> None:
        why = f": {reason}" if reason else ""
        super().__init__(run_id, f"run {run_id!r} was terminated{why}")
        self.reason = reason


class CompensationFailed(SubstantialError):
    """A compensation run by ``revert()`` failed for good."""

    def __init__(self, step: str, error: StepFailed, original: BaseException | None) -> None:
        cause = f"; while reverting after {type(original).__name__}: {original}" if original else ""
        super().__init__(
            f"compensation of step {step!r} failed with {error.type_name}: "
            f"{error.error_message}{cause}"
        )
        self.step = step
        self.type_name = error.type_name
        self.error_message = error.error_message
        self.original = repr(original) if original else ""


class CompactionError(SubstantialError, ValueError):
    """``compact()`` cannot drop history here: an unkeyed record follows a keyed one."""

    def __init__(self, run_id: str, what: str) -> None:
        super().__init__(
            f"run {run_id!r} cannot compact: a {what} with no key= comes after the first "
            "keyed record; give it key=, or move it before the keyed loop"
        )
        self.run_id = run_id
        self.what = what
