"""Statuses of a desktop flow run, as stored in the Dataverse ``flowsession`` table."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class FlowSessionStatus(IntEnum):
    """Values of the flowsession ``statuscode`` column (Dataverse table reference "flowsession")."""

    NOT_SPECIFIED = 0
    PAUSED = 1
    RUNNING = 2
    WAITING = 3
    SUCCEEDED = 4
    SKIPPED = 5
    SUSPENDED = 6
    CANCELLED = 7
    FAILED = 8
    FAULTED = 9
    TIMED_OUT = 10
    ABORTED = 11
    IGNORED = 12
    DELETED = 13
    TERMINATED = 14

    @property
    def label(self) -> str:
        """The label Dataverse shows for this status, for example ``TimedOut``."""
        return self.name.title().replace("_", "")


# Microsoft does not publish which codes are terminal. NotSpecified (0) is treated as not yet
# decided, so a run reading 0 keeps being polled until it changes or the deadline passes.
IN_PROGRESS_STATUSES = frozenset(
    {
        FlowSessionStatus.NOT_SPECIFIED,
        FlowSessionStatus.PAUSED,
        FlowSessionStatus.RUNNING,
        FlowSessionStatus.WAITING,
        FlowSessionStatus.SUSPENDED,
    }
)
SUCCESS_STATUSES = frozenset({FlowSessionStatus.SUCCEEDED})
# Skipped and Ignored ended without running the flow, so they produced no outputs either.
FAILURE_STATUSES = frozenset(FlowSessionStatus) - IN_PROGRESS_STATUSES - SUCCESS_STATUSES


class RunOutcome:
    """The state of a run as carried in trigger events. The values are stable strings."""

    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    ERROR = "error"


def status_label(statuscode: int | None) -> str:
    """Return the label of a statuscode, or ``unknown status N`` for a code outside the table."""
    try:
        return FlowSessionStatus(statuscode).label
    except ValueError:
        return f"unknown status {statuscode}"


@dataclass(frozen=True)
class FlowSession:
    """The columns of one flowsession row that this provider reads."""

    flow_session_id: str
    statuscode: int | None
    statecode: int | None = None
    startedon: str | None = None
    completedon: str | None = None
    errorcode: str | None = None
    errormessage: str | None = None

    @classmethod
    def from_row(cls, flow_session_id: str, row: dict[str, Any]) -> FlowSession:
        return cls(
            flow_session_id=row.get("flowsessionid") or flow_session_id,
            statuscode=row.get("statuscode"),
            statecode=row.get("statecode"),
            startedon=row.get("startedon"),
            completedon=row.get("completedon"),
            errorcode=row.get("errorcode") or None,
            errormessage=row.get("errormessage") or None,
        )

    @property
    def label(self) -> str:
        return status_label(self.statuscode)

    @property
    def outcome(self) -> str:
        """Classify the status as one of the :class:`RunOutcome` values.

        A code outside the table is an error, never success and never "still running".
        """
        try:
            status = FlowSessionStatus(self.statuscode)
        except ValueError:
            return RunOutcome.ERROR
        if status in IN_PROGRESS_STATUSES:
            return RunOutcome.RUNNING
        if status in SUCCESS_STATUSES:
            return RunOutcome.SUCCESS
        if status == FlowSessionStatus.CANCELLED:
            return RunOutcome.CANCELLED
        return RunOutcome.FAILED

    @property
    def has_ended(self) -> bool:
        return self.outcome != RunOutcome.RUNNING
