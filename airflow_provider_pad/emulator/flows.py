"""Emulated desktop flows, the built-in sample flows, and the clock-driven life cycle of a flow session."""

from __future__ import annotations

import datetime
import enum
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("airflow_provider_pad.emulator")

DESKTOP_FLOW_CATEGORY = 6
POWER_AUTOMATE_DESKTOP_UIFLOWTYPE = 2

# Dataverse's default for the RunDesktopFlow ``timeout`` parameter (3 hours).
DEFAULT_RUN_TIMEOUT_SECONDS = 10800

TIMEOUT_ERROR_CODE = "DesktopFlowsActionTimeout"
OUTPUTS_ERROR_CODE = "EmulatorOutputsFunctionFailed"

# Fixed workflow ids of the default flows, so that example DAGs and docs can name them.
DESKTOP_FLOW_1_ID = "f0000000-0000-4000-8000-000000000001"
DESKTOP_FLOW_2_ID = "f0000000-0000-4000-8000-000000000002"
FAILING_FLOW_ID = "f0000000-0000-4000-8000-000000000003"
FLOW_WITHOUT_OUTPUTS_ID = "f0000000-0000-4000-8000-000000000004"
DRAFT_FLOW_ID = "f0000000-0000-4000-8000-000000000005"

NO_CANDIDATE_MACHINE_MESSAGE = (
    "No machine able to run the desktop flow has been found. "
    "Check that a machine or machine group is registered, online and assigned to the connection."
)


class SessionStatus(enum.IntEnum):
    """Values of the flowsession ``statuscode`` column."""

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


# Codes of a run that has ended, for which the emulator sets ``completedon``.
ENDED_STATUSES = frozenset(
    {
        SessionStatus.SUCCEEDED,
        SessionStatus.SKIPPED,
        SessionStatus.CANCELLED,
        SessionStatus.FAILED,
        SessionStatus.FAULTED,
        SessionStatus.TIMED_OUT,
        SessionStatus.ABORTED,
        SessionStatus.IGNORED,
        SessionStatus.DELETED,
        SessionStatus.TERMINATED,
    }
)

# Codes of a queued or running session, which CancelDesktopFlowRun accepts.
CANCELLABLE_STATUSES = frozenset(
    {SessionStatus.PAUSED, SessionStatus.RUNNING, SessionStatus.WAITING, SessionStatus.SUSPENDED}
)

# The only codes whose ``statecode`` is 1 (Inactive). Every other code has statecode 0.
INACTIVE_STATUSES = frozenset({SessionStatus.NOT_SPECIFIED, SessionStatus.DELETED, SessionStatus.TERMINATED})

RUN_MODE_CODES = {"attended": 1, "unattended": 2}

# flowsession.triggertype for a run started through the RunDesktopFlow action.
RUN_DESKTOP_FLOW_TRIGGER_TYPE = 3

SESSION_COLUMNS = (
    "flowsessionid",
    "statuscode",
    "statecode",
    "createdon",
    "modifiedon",
    "startedon",
    "completedon",
    "errorcode",
    "errormessage",
    "errordetails",
    "_regardingobjectid_value",
    "triggertype",
    "runmode",
)

OutputsFunction = Callable[[dict[str, Any]], dict[str, Any]]


def schema_property(
    title: str,
    type: str,  # noqa: A002 - the key is called "type" in the schema Dataverse returns
    *,
    default: Any = "",
    description: str = "",
    format: str | None = None,  # noqa: A002 - same as above
    value: Any = None,
) -> dict[str, Any]:
    """Build one entry of a flow's input or output schema ``properties`` map, in Dataverse's shape."""
    return {
        "default": default,
        "description": description,
        "format": format,
        "title": title,
        "type": type,
        "value": value,
    }


@dataclass
class EmulatedFlow:
    """
    A desktop flow that the emulator lists, describes and runs.

    ``outcome`` is the ``statuscode`` the run ends with. An in-progress code keeps the run in
    that state: 3 (Waiting) never leaves the queue, and 2 (Running), 1 (Paused) or
    6 (Suspended) stay there until the run's ``timeout`` ends it as 10 (TimedOut).
    ``outputs`` computes the run's outputs from its inputs once the run has succeeded.
    None means that the flow writes no outputs file.
    ``queue_seconds`` and ``run_seconds`` of None take the emulator's defaults.
    """

    name: str
    workflow_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    inputs_schema: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs_schema: dict[str, dict[str, Any]] = field(default_factory=dict)
    outcome: int = SessionStatus.SUCCEEDED
    errorcode: str | None = None
    errormessage: str | None = None
    outputs: OutputsFunction | None = None
    queue_seconds: float | None = None
    run_seconds: float | None = None
    published: bool = True
    category: int = DESKTOP_FLOW_CATEGORY
    # The licenseCheck RunDesktopFlow returns for this flow's runs; None means ValidLicenseCoverage.
    license_check: dict[str, str] | None = None

    def __post_init__(self) -> None:
        self.workflow_id = normalize_guid(self.workflow_id, what="workflow_id")
        # Codes outside 0-14 are allowed on purpose: clients must be tested against undocumented codes.
        if isinstance(self.outcome, bool) or not isinstance(self.outcome, int):
            raise ValueError(f"outcome must be an integer statuscode, got {self.outcome!r}.")
        for name in ("queue_seconds", "run_seconds"):
            seconds = getattr(self, name)
            if seconds is not None and seconds < 0:
                raise ValueError(f"{name} must be zero or more, got {seconds!r}.")


def normalize_guid(value: str, *, what: str) -> str:
    """Return ``value`` as a lower-case hyphenated GUID, or raise ValueError naming ``what``."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"{what} must be a GUID such as {uuid.UUID(int=0)}, got {value!r}.") from None


def format_timestamp(epoch_seconds: float | None) -> str | None:
    """Format a time as Dataverse does: ISO 8601 in UTC, whole seconds, with a ``Z`` suffix."""
    if epoch_seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(epoch_seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FlowSession:
    """
    One run of a flow: a row of the flowsession table.

    The session has no timer of its own. :meth:`advance` moves it along the flow's schedule
    (Waiting for ``queue_seconds``, Running for ``run_seconds``, then the outcome) each time
    it is read. A session that was cancelled or given a status by hand is ``pinned`` and
    stays as it is.
    """

    flowsession_id: str
    workflow_id: str
    inputs: dict[str, Any]
    run_mode: str
    run_priority: str
    connection_name: str
    connection_type: int
    timeout_seconds: int
    callback_url: str | None
    created_at: float
    queue_seconds: float
    run_seconds: float
    outcome: int
    outcome_errorcode: str | None
    outcome_errormessage: str | None
    outputs_function: OutputsFunction | None = field(default=None, repr=False)
    statuscode: int = SessionStatus.WAITING
    started_at: float | None = None
    completed_at: float | None = None
    modified_at: float = 0.0
    errorcode: str | None = None
    errormessage: str | None = None
    outputs: dict[str, Any] | None = None
    pinned: bool = False

    @property
    def statecode(self) -> int:
        return 1 if self.statuscode in INACTIVE_STATUSES else 0

    def advance(self, now: float) -> None:
        """Bring ``statuscode`` and the timestamps up to date with the schedule at time ``now``."""
        if self.pinned or self.completed_at is not None:
            return

        started_at = self.created_at + self.queue_seconds
        if self.outcome == SessionStatus.WAITING or now < started_at:
            self.statuscode = SessionStatus.WAITING
            self.modified_at = self.created_at
            return

        self.started_at = started_at
        if now < started_at + min(self.run_seconds, self.timeout_seconds):
            self._set_status(SessionStatus.RUNNING, at=started_at)
            return

        run_never_ends = self.outcome not in ENDED_STATUSES
        timed_out_at = started_at + self.timeout_seconds
        if self.timeout_seconds < self.run_seconds or (run_never_ends and now >= timed_out_at):
            message = f"The desktop flow run exceeded its timeout of {self.timeout_seconds} seconds and was stopped."
            self._set_status(
                SessionStatus.TIMED_OUT, at=timed_out_at, errorcode=TIMEOUT_ERROR_CODE, errormessage=message
            )
            return

        self._set_status(
            self.outcome,
            at=started_at + self.run_seconds,
            errorcode=self.outcome_errorcode,
            errormessage=self.outcome_errormessage,
        )

    def cancel(self, now: float) -> bool:
        """Cancel a queued or running session at time ``now``, and return False when it has already ended."""
        self.advance(now)
        if self.statuscode not in CANCELLABLE_STATUSES:
            return False
        self.pinned = True
        self._set_status(SessionStatus.CANCELLED, at=now)
        return True

    def pin_status(
        self, statuscode: int, now: float, errorcode: str | None = None, errormessage: str | None = None
    ) -> None:
        """Give the session ``statuscode`` from time ``now`` on, ignoring the schedule from then on."""
        self.advance(now)
        self.pinned = True
        if statuscode == SessionStatus.RUNNING and self.started_at is None:
            self.started_at = now
        if statuscode not in ENDED_STATUSES:
            self.completed_at = None
        self._set_status(statuscode, at=now, errorcode=errorcode, errormessage=errormessage)

    def to_row(self) -> dict[str, Any]:
        """Return the session as a flowsession row with every column :data:`SESSION_COLUMNS` lists."""
        return {
            "flowsessionid": self.flowsession_id,
            "statuscode": int(self.statuscode),
            "statecode": self.statecode,
            "createdon": format_timestamp(self.created_at),
            "modifiedon": format_timestamp(self.modified_at),
            "startedon": format_timestamp(self.started_at),
            "completedon": format_timestamp(self.completed_at),
            "errorcode": self.errorcode,
            "errormessage": self.errormessage,
            "errordetails": None,
            "_regardingobjectid_value": self.workflow_id,
            "triggertype": RUN_DESKTOP_FLOW_TRIGGER_TYPE,
            "runmode": RUN_MODE_CODES[self.run_mode],
        }

    def _set_status(
        self, statuscode: int, *, at: float, errorcode: str | None = None, errormessage: str | None = None
    ) -> None:
        self.statuscode = statuscode
        self.errorcode = errorcode
        self.errormessage = errormessage
        self.modified_at = max(self.modified_at, at)
        if statuscode in ENDED_STATUSES and self.completed_at is None:
            self.completed_at = at
        if statuscode == SessionStatus.SUCCEEDED and self.outputs is None:
            self._compute_outputs(at)

    def _compute_outputs(self, at: float) -> None:
        if self.outputs_function is None:
            return
        try:
            self.outputs = dict(self.outputs_function(dict(self.inputs)))
        except Exception as error:
            # The flow's outputs function is test code, so its bug becomes a failed run that
            # the test finds in the session row, not a server error.
            logger.exception(
                "The outputs function of flow %s raised for flow session %s.", self.workflow_id, self.flowsession_id
            )
            self.statuscode = SessionStatus.FAILED
            self.errorcode = OUTPUTS_ERROR_CODE
            self.errormessage = f"The emulated flow's outputs function raised {type(error).__name__}: {error}"
            self.modified_at = max(self.modified_at, at)


def default_flows() -> list[EmulatedFlow]:
    """Build the sample flows an emulator serves when it is given no flows."""
    sample_inputs = {
        "inputText": schema_property("inputText", "string", value=""),
        "inputInteger": schema_property("inputInteger", "number", value="0"),
    }
    sample_outputs = {
        "outputText": schema_property("outputText", "string"),
        "outputInteger": schema_property("outputInteger", "number"),
    }
    return [
        EmulatedFlow(
            name="Desktop flow 1",
            workflow_id=DESKTOP_FLOW_1_ID,
            inputs_schema=dict(sample_inputs),
            outputs_schema=dict(sample_outputs),
            outputs=upper_case_and_double,
        ),
        EmulatedFlow(
            name="Desktop flow 2",
            workflow_id=DESKTOP_FLOW_2_ID,
            inputs_schema=dict(sample_inputs),
            outputs_schema=dict(sample_outputs),
            outputs=reverse_and_increment,
        ),
        EmulatedFlow(
            name="Failing desktop flow",
            workflow_id=FAILING_FLOW_ID,
            outcome=SessionStatus.FAILED,
            errorcode="NoCandidateMachine",
            errormessage=NO_CANDIDATE_MACHINE_MESSAGE,
        ),
        EmulatedFlow(name="Flow without outputs", workflow_id=FLOW_WITHOUT_OUTPUTS_ID),
        EmulatedFlow(name="Draft desktop flow", workflow_id=DRAFT_FLOW_ID, published=False),
    ]


def upper_case_and_double(inputs: dict[str, Any]) -> dict[str, Any]:
    """Compute the outputs of "Desktop flow 1": the text upper-cased and the number doubled."""
    return {
        "outputText": str(inputs.get("inputText", "")).upper(),
        "outputInteger": _as_number(inputs.get("inputInteger")) * 2,
    }


def reverse_and_increment(inputs: dict[str, Any]) -> dict[str, Any]:
    """Compute the outputs of "Desktop flow 2": the text reversed and the number plus one."""
    return {
        "outputText": str(inputs.get("inputText", ""))[::-1],
        "outputInteger": _as_number(inputs.get("inputInteger")) + 1,
    }


def _as_number(value: Any) -> int | float:
    """Read a flow input of type number. A missing or unreadable value counts as 0."""
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else 0
    try:
        number = float(str(value))
    except ValueError:
        return 0
    if not math.isfinite(number):
        return 0
    return int(number) if number.is_integer() else number
