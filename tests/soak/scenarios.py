"""Seeded scripts for the soak test: each run's flow, the faults it meets, and the end state they dictate.

Nothing here does I/O. :func:`make_script` draws one run from a ``random.Random``, so one seed
reproduces every script of a soak.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from airflow_provider_pad.emulator import EmulatedFlow, Fault, SessionStatus, schema_property
from airflow_provider_pad.emulator.flows import reverse_and_increment, upper_case_and_double

# How a run ends, as its script dictates.
SUCCESS = "success"
FAILED = "failed"
CANCELLED = "cancelled"
TIMEOUT = "timeout"
# RunDesktopFlow gets 500 or 503 before a run exists, so the task fails and no run is created.
START_REJECTED = "start rejected"
# RunDesktopFlow gets 502 or 504 before a run exists, so the lookup finds no run and the task fails.
START_UNKNOWN = "start unknown"
ENDINGS = (SUCCESS, FAILED, CANCELLED, TIMEOUT, START_REJECTED, START_UNKNOWN)

# How RunDesktopFlow responds, as its script dictates.
START_NORMAL = "normal"
START_LOST_RESPONSE = "response lost after creating the run"
START_GATEWAY_AFTER_CREATION = "502/504 after creating the run"
START_KIND_WEIGHTS = {
    START_NORMAL: 68,
    START_LOST_RESPONSE: 10,
    START_GATEWAY_AFTER_CREATION: 8,
    START_REJECTED: 8,
    START_UNKNOWN: 6,
}
STARTED_ENDING_WEIGHTS = {SUCCESS: 40, FAILED: 20, CANCELLED: 15, TIMEOUT: 25}

# Fault kinds, as the summary table names them.
KIND_THROTTLED_RETRY_AFTER = "429 with Retry-After"
KIND_THROTTLED = "429 without Retry-After"
KIND_SERVER_ERROR_HTML = "5xx with an HTML body"
KIND_SERVER_ERROR_EMPTY = "5xx with an empty body"
KIND_SLOW = "slow 429/5xx (delayed response)"
KIND_DROP = "dropped connection"
KIND_NOT_FOUND_AFTER_START = "404 on the first status read"
KIND_CANCEL_FORBIDDEN = "403 on cancel"
KIND_LOST_RESPONSE = "RunDesktopFlow response lost after creating the run"
KIND_GATEWAY_AFTER_CREATION = "502/504 on RunDesktopFlow after creating the run"
KIND_REJECTED = "500/503 on RunDesktopFlow before creating a run"
KIND_GATEWAY_BEFORE_CREATION = "502/504 on RunDesktopFlow before creating a run"
KIND_TOKEN_EXPIRY = "token expiry mid-run"

# Faults that the hook retries on a GET. When its attempts run out, the watcher reads again at the next check.
TRANSIENT_GET_KINDS = (
    KIND_THROTTLED_RETRY_AFTER,
    KIND_THROTTLED,
    KIND_SERVER_ERROR_HTML,
    KIND_SERVER_ERROR_EMPTY,
    KIND_SLOW,
    KIND_DROP,
)
# Faults that the hook retries on the non-idempotent RunDesktopFlow POST, which is only throttling.
THROTTLE_KINDS = (KIND_THROTTLED_RETRY_AFTER, KIND_THROTTLED, KIND_SLOW)

SERVER_ERROR_STATUSES = (500, 502, 503, 504)
GATEWAY_STATUSES = (502, 504)
NOT_AMBIGUOUS_STATUSES = (500, 503)
# Retry-After values in seconds, kept at 0 and 1 so throttled runs stay short.
RETRY_AFTER_VALUES = ("0", "0", "0", "1")
HTML_HEADERS = {"Content-Type": "text/html"}
GATEWAY_HTML = "<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"
FORBIDDEN_CANCEL_BODY = json.dumps(
    {
        "error": {
            "code": "0x80040220",
            "message": "Principal user (Id=5d3f1a10-0000-4000-8000-000000000001, type=8) is missing "
            "prvWriteflowsession privilege",
        }
    }
)

# Operator timeout of runs that end on their own: far above the longest fault delays a run meets.
ENDING_RUN_TIMEOUT_SECONDS = 30.0
# RunDesktopFlow ``timeout`` of runs scripted to outlast the operator. A run whose cancel is
# rejected ends as TimedOut (10) this long after it starts running.
OUTLASTING_RUN_TIMEOUT_SECONDS = 3
# A run that outlasts the operator runs or waits in the queue this long.
OUTLASTING_SECONDS = 60.0

ERROR_CODES = (
    "NoCandidateMachine",
    "MachineNotFound",
    "SessionExistsForTheUserWhenUnattended",
    "AttendedUserSessionNotActive",
    "UIFlowAlreadyRunning",
    "NoListenerConnected",
)
# Characters for text inputs: quotes, backslashes, non-ASCII letters and an emoji, so the
# inputs' JSON string and the outputs' JSON both need escaping.
INPUT_ALPHABET = "abcXYZ 09'\"\\{}äöüßÉ中文😀"

OutputsRule = Callable[[dict[str, Any]], dict[str, Any]]
OUTPUT_RULES: dict[str, OutputsRule | None] = {
    "upper-case and double": upper_case_and_double,
    "reverse and increment": reverse_and_increment,
    "no outputs": None,
}

IN_PROGRESS_STATUSCODES = frozenset(
    {SessionStatus.PAUSED, SessionStatus.RUNNING, SessionStatus.WAITING, SessionStatus.SUSPENDED}
)


@dataclass(frozen=True)
class ScriptedFault:
    """One fault queued for one endpoint, with the kind the summary counts it under."""

    endpoint: str
    kind: str
    fault: Fault


@dataclass(frozen=True)
class RunScript:
    """Everything one soak run does and meets, drawn from the seeded generator.

    :param ending: how the run ends, one of :data:`ENDINGS`.
    :param start_kind: how RunDesktopFlow responds, a key of :data:`START_KIND_WEIGHTS`.
    :param queue_seconds: seconds the emulated run waits in the queue (statuscode 3).
    :param run_seconds: seconds the emulated run stays Running (statuscode 2) before its outcome.
    :param run_timeout: the RunDesktopFlow ``timeout`` in seconds, or None for Dataverse's default.
    :param operator_timeout: the operator's ``timeout`` in seconds.
    :param cancel_rejected: the cancel at the deadline gets 403, so the run keeps running.
    :param token_expiry_delay: seconds after the run's id is known at which every token expires,
        or None for no expiry.
    """

    index: int
    deferrable: bool
    by_name: bool
    ending: str
    start_kind: str
    workflow_id: str
    inputs: dict[str, Any]
    output_rule_name: str
    errorcode: str | None
    queue_seconds: float
    run_seconds: float
    run_timeout: int | None
    operator_timeout: float
    check_interval: float
    cancel_rejected: bool
    faults: tuple[ScriptedFault, ...]
    token_expiry_delay: float | None

    @property
    def flow_name(self) -> str:
        return f"Soak flow {self.index:03d}"

    @property
    def creates_run(self) -> bool:
        return self.ending not in (START_REJECTED, START_UNKNOWN)

    @property
    def receives_start_response(self) -> bool:
        """Whether RunDesktopFlow returns 200 with the new run's id; otherwise it fails, with or without a run."""
        return self.start_kind == START_NORMAL

    @property
    def start_status(self) -> int | None:
        """The HTTP status of the RunDesktopFlow fault that fails the start, if the script has one."""
        for scripted in self.faults:
            if scripted.kind in (KIND_REJECTED, KIND_GATEWAY_BEFORE_CREATION):
                return scripted.fault.status
        return None

    @property
    def expected_cancel_requests(self) -> int:
        """Cancel requests Dataverse handles for this run: one at the deadline of a timeout run, else none."""
        return 1 if self.ending == TIMEOUT else 0

    @property
    def expects_cancelled_session(self) -> bool:
        """Whether the run's session ends as Cancelled (7), by the flow itself or by the task's cancel."""
        return self.ending == CANCELLED or (self.ending == TIMEOUT and not self.cancel_rejected)

    def flow(self) -> EmulatedFlow:
        """Build the emulated flow that only this run starts, with its scripted outcome and timing."""
        outcome = {
            SUCCESS: SessionStatus.SUCCEEDED,
            FAILED: SessionStatus.FAILED,
            CANCELLED: SessionStatus.CANCELLED,
        }.get(self.ending, SessionStatus.SUCCEEDED)
        return EmulatedFlow(
            name=self.flow_name,
            workflow_id=self.workflow_id,
            inputs_schema={
                "inputText": schema_property("inputText", "string"),
                "inputInteger": schema_property("inputInteger", "number"),
            },
            outputs_schema={
                "outputText": schema_property("outputText", "string"),
                "outputInteger": schema_property("outputInteger", "number"),
            },
            outcome=outcome,
            errorcode=self.errorcode,
            errormessage=f"The soak script ended run {self.index} with {self.errorcode}." if self.errorcode else None,
            outputs=OUTPUT_RULES[self.output_rule_name],
            queue_seconds=self.queue_seconds,
            run_seconds=self.run_seconds,
        )

    def expected_outputs(self) -> dict[str, Any]:
        """Return what a successful run returns: the flow's rule applied to the inputs as JSON carried them."""
        rule = OUTPUT_RULES[self.output_rule_name]
        if rule is None:
            return {}
        return rule(json.loads(json.dumps(self.inputs)))

    def expected_statuscodes_after_task(self) -> frozenset[int]:
        """Return the statuscodes the run's session may have right after the task ends."""
        if self.ending == SUCCESS:
            return frozenset({SessionStatus.SUCCEEDED})
        if self.ending == FAILED:
            return frozenset({SessionStatus.FAILED})
        if self.ending == TIMEOUT and self.cancel_rejected:
            # The run started long before the deadline and its Dataverse timeout is still ahead.
            return frozenset({SessionStatus.RUNNING})
        if self.expects_cancelled_session:
            return frozenset({SessionStatus.CANCELLED})
        return frozenset()

    def expected_final_statuscode(self) -> int | None:
        """Return the statuscode the session has once every run has settled, or None if no run exists."""
        if not self.creates_run:
            return None
        if self.ending == SUCCESS:
            return SessionStatus.SUCCEEDED
        if self.ending == FAILED:
            return SessionStatus.FAILED
        if self.ending == TIMEOUT and self.cancel_rejected:
            return SessionStatus.TIMED_OUT
        return SessionStatus.CANCELLED

    def faults_by_endpoint(self) -> dict[str, list[ScriptedFault]]:
        grouped: dict[str, list[ScriptedFault]] = {}
        for scripted in self.faults:
            grouped.setdefault(scripted.endpoint, []).append(scripted)
        return grouped

    def describe(self) -> str:
        """Return the script in one line, for failure messages."""
        path = "deferrable" if self.deferrable else "synchronous"
        flow = f"flow_name {self.flow_name!r}" if self.by_name else f"flow_id {self.workflow_id}"
        ending = self.ending + (" (cancel rejected with 403)" if self.cancel_rejected else "")
        faults = ", ".join(f"{scripted.endpoint}: {describe_fault(scripted)}" for scripted in self.faults) or "none"
        expiry = (
            f"; tokens expire {self.token_expiry_delay:.2f} s after the start"
            if self.token_expiry_delay is not None
            else ""
        )
        return (
            f"run {self.index}: {path}, {flow}, ending {ending}, start {self.start_kind}, "
            f"queue {self.queue_seconds:.2f} s, run {self.run_seconds:.2f} s, operator timeout "
            f"{self.operator_timeout:.2f} s, check interval {self.check_interval:.2f} s, "
            f"outputs {self.output_rule_name}, inputs {json.dumps(self.inputs, ensure_ascii=False)}; "
            f"faults: {faults}{expiry}"
        )


def describe_fault(scripted: ScriptedFault) -> str:
    fault = scripted.fault
    parts = ["drop" if fault.drop else f"HTTP {fault.status}"]
    if fault.headers.get("Retry-After") is not None:
        parts.append(f"Retry-After {fault.headers['Retry-After']}")
    if fault.delay_seconds:
        parts.append(f"after {fault.delay_seconds:.2f} s")
    if fault.after_handling:
        parts.append("after handling")
    if fault.body == b"":
        parts.append("empty body")
    return f"{scripted.kind} ({', '.join(parts)})"


def make_script(rng: random.Random, index: int) -> RunScript:
    """Draw the script of run ``index``; the same generator state always gives the same script."""
    deferrable = rng.random() < 0.5
    by_name = rng.random() < 0.5
    start_kind = weighted_choice(rng, START_KIND_WEIGHTS)
    if start_kind in (START_REJECTED, START_UNKNOWN):
        ending = start_kind
    else:
        ending = weighted_choice(rng, STARTED_ENDING_WEIGHTS)

    queue_seconds = round(rng.uniform(0.02, 0.1), 3)
    run_seconds = round(rng.uniform(0.03, 0.2), 3)
    run_timeout = None
    operator_timeout = ENDING_RUN_TIMEOUT_SECONDS
    cancel_rejected = False
    if ending == TIMEOUT:
        operator_timeout = round(rng.uniform(0.3, 0.7), 3)
        run_timeout = OUTLASTING_RUN_TIMEOUT_SECONDS
        run_seconds = OUTLASTING_SECONDS
        if rng.random() < 0.3:
            # Still queued at the deadline. A queued run never times out in the emulator, so this
            # variant always gets a cancel that works.
            queue_seconds = OUTLASTING_SECONDS
        else:
            cancel_rejected = rng.random() < 0.35

    faults: list[ScriptedFault] = []
    if by_name:
        faults += transient_faults(rng, "list_workflows", rng.choice((0, 0, 1, 2)))
    faults += start_faults(rng, start_kind)
    if start_kind != START_NORMAL and start_kind != START_REJECTED:
        # The hook looks the run up with GET flowsessions after an ambiguous start.
        faults += transient_faults(rng, "list_sessions", rng.choice((0, 0, 1, 2)))
    if ending not in (START_REJECTED, START_UNKNOWN):
        if rng.random() < 0.25:
            faults.append(ScriptedFault("get_session", KIND_NOT_FOUND_AFTER_START, Fault(status=404)))
        # More than the hook's 5 attempts now and then, so the watcher's own retry is exercised.
        faults += transient_faults(rng, "get_session", rng.choice((0, 0, 0, 0, 1, 1, 2, 3, 4, 6)))
    if ending == SUCCESS:
        # At most 3, fewer than the hook's 5 attempts, because an outputs read that fails every
        # attempt fails the task.
        faults += transient_faults(rng, "session_outputs", rng.choice((0, 0, 1, 2, 3)))
    if cancel_rejected:
        faults.append(
            ScriptedFault(
                "cancel",
                KIND_CANCEL_FORBIDDEN,
                Fault(status=403, headers={"Content-Type": "application/json"}, body=FORBIDDEN_CANCEL_BODY),
            )
        )

    token_expiry_delay = None
    if ending not in (START_REJECTED, START_UNKNOWN) and rng.random() < 0.2:
        token_expiry_delay = round(rng.uniform(0.0, 0.3), 3)

    text = "".join(rng.choice(INPUT_ALPHABET) for _ in range(rng.randint(0, 12)))
    return RunScript(
        index=index,
        deferrable=deferrable,
        by_name=by_name,
        ending=ending,
        start_kind=start_kind,
        workflow_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        inputs={"inputText": text, "inputInteger": rng.randint(-1_000_000, 1_000_000)},
        output_rule_name=rng.choice(list(OUTPUT_RULES)),
        errorcode=rng.choice(ERROR_CODES) if ending == FAILED else None,
        queue_seconds=queue_seconds,
        run_seconds=run_seconds,
        run_timeout=run_timeout,
        operator_timeout=operator_timeout,
        check_interval=round(rng.uniform(0.05, 0.2), 3),
        cancel_rejected=cancel_rejected,
        faults=tuple(faults),
        token_expiry_delay=token_expiry_delay,
    )


def start_faults(rng: random.Random, start_kind: str) -> list[ScriptedFault]:
    """Return the RunDesktopFlow faults: some throttling, then the fault the start kind names."""
    faults = [
        transient_fault(rng, "run", rng.choice(THROTTLE_KINDS)) for _ in range(rng.choice((0, 0, 0, 1, 2)))
    ]
    if start_kind == START_LOST_RESPONSE:
        fault = Fault(after_handling=True, drop=True, delay_seconds=rng.choice((0.0, 0.1)))
        faults.append(ScriptedFault("run", KIND_LOST_RESPONSE, fault))
    elif start_kind == START_GATEWAY_AFTER_CREATION:
        fault = server_error_fault(rng, rng.choice(GATEWAY_STATUSES), after_handling=True)
        faults.append(ScriptedFault("run", KIND_GATEWAY_AFTER_CREATION, fault))
    elif start_kind == START_REJECTED:
        fault = server_error_fault(rng, rng.choice(NOT_AMBIGUOUS_STATUSES), after_handling=False)
        faults.append(ScriptedFault("run", KIND_REJECTED, fault))
    elif start_kind == START_UNKNOWN:
        fault = server_error_fault(rng, rng.choice(GATEWAY_STATUSES), after_handling=False)
        faults.append(ScriptedFault("run", KIND_GATEWAY_BEFORE_CREATION, fault))
    return faults


def server_error_fault(rng: random.Random, status: int, *, after_handling: bool) -> Fault:
    """Return a 5xx with an HTML, empty or Dataverse JSON body, as a gateway or Dataverse sends it."""
    body_kind = rng.choice(("html", "empty", "dataverse"))
    if body_kind == "html":
        return Fault(status=status, headers=HTML_HEADERS, body=GATEWAY_HTML, after_handling=after_handling)
    if body_kind == "empty":
        return Fault(status=status, body=b"", after_handling=after_handling)
    return Fault(status=status, after_handling=after_handling)


def transient_faults(rng: random.Random, endpoint: str, count: int) -> list[ScriptedFault]:
    return [transient_fault(rng, endpoint, rng.choice(TRANSIENT_GET_KINDS)) for _ in range(count)]


def transient_fault(rng: random.Random, endpoint: str, kind: str) -> ScriptedFault:
    """Build one fault of ``kind``, which the hook retries on any GET and on a throttled POST."""
    if kind == KIND_THROTTLED_RETRY_AFTER:
        fault = Fault(status=429, headers={"Retry-After": rng.choice(RETRY_AFTER_VALUES)})
    elif kind == KIND_THROTTLED:
        fault = Fault(status=429)
    elif kind == KIND_SERVER_ERROR_HTML:
        fault = Fault(status=rng.choice(SERVER_ERROR_STATUSES), headers=HTML_HEADERS, body=GATEWAY_HTML)
    elif kind == KIND_SERVER_ERROR_EMPTY:
        fault = Fault(status=rng.choice(SERVER_ERROR_STATUSES), body=b"")
    elif kind == KIND_SLOW:
        # A POST is retried only when throttled, so a slow RunDesktopFlow fault is a slow 429.
        status = 429 if endpoint == "run" else rng.choice((429, 503, 504))
        fault = Fault(status=status, delay_seconds=round(rng.uniform(0.05, 0.25), 3))
    elif kind == KIND_DROP:
        fault = Fault(drop=True, delay_seconds=rng.choice((0.0, 0.1)))
    else:
        raise ValueError(f"Unknown transient fault kind {kind!r}.")
    return ScriptedFault(endpoint, kind, fault)


def weighted_choice(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]
