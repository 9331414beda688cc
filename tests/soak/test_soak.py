"""Soak test: hundreds of RunDesktopFlowOperator runs against one Dataverse emulator, each meeting seeded faults.

Every run gets its own emulated flow, so its script (outcome, timing, faults) is independent of the
others. Runs go one after another, because the emulator hands out each endpoint's faults in order
to whichever request comes next. Set ``PAD_SOAK_SEED`` to replay a soak and ``PAD_SOAK_RUNS`` to
change the number of runs (default 200).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_provider_pad.emulator import DataverseEmulator, FlowSession, RequestRecord, SessionStatus
from airflow_provider_pad.exceptions import (
    DataverseApiError,
    DesktopFlowRunCancelledError,
    DesktopFlowRunError,
    DesktopFlowRunMayExistError,
    DesktopFlowRunTimeoutError,
)
from airflow_provider_pad.hooks import dataverse_api
from airflow_provider_pad.hooks.dataverse import DataverseHook
from airflow_provider_pad.hooks.dataverse_api import RetryPolicy
from airflow_provider_pad.operators.desktop_flow import RunDesktopFlowOperator
from airflow_provider_pad.triggers.desktop_flow import DesktopFlowRunTrigger
from tests.soak.scenarios import (
    CANCELLED,
    ENDINGS,
    FAILED,
    IN_PROGRESS_STATUSCODES,
    KIND_TOKEN_EXPIRY,
    OUTLASTING_RUN_TIMEOUT_SECONDS,
    START_REJECTED,
    START_UNKNOWN,
    SUCCESS,
    TIMEOUT,
    RunScript,
    ScriptedFault,
    make_script,
)
from tests.unit.helpers import MemoryTaskStateStore, collect_events, make_context

SEED_VARIABLE = "PAD_SOAK_SEED"
RUNS_VARIABLE = "PAD_SOAK_RUNS"
DEFAULT_RUNS = 200

# The default 5 attempts with a backoff of 10 to 200 ms instead of 0.5 to 30 s, so 200 runs with
# faults take about two minutes (measured on 2 cores). Retry-After values are still honoured as sent.
SOAK_BACKOFF = {"backoff_base_seconds": 0.02, "backoff_max_seconds": 0.2}
SOAK_RETRY_POLICY = RetryPolicy(**SOAK_BACKOFF)
# The hook waits this long between its lookups of a run whose RunDesktopFlow response was lost.
# The product waits 2 s, but the emulator makes a new run readable at once.
SOAK_LOST_RUN_LOOKUP_INTERVAL_SECONDS = 0.1

# How long a token-expiry thread waits for the operator to learn its run's id.
EXPIRY_WAIT_FOR_RUN_SECONDS = 30.0
# How long the soak waits at the end for runs whose cancel was rejected to time out in the emulator.
SETTLE_TIMEOUT_SECONDS = OUTLASTING_RUN_TIMEOUT_SECONDS + 5.0
MAX_MISMATCHES_SHOWN = 10
QUIETED_LOGGERS = ("airflow_provider_pad", "uvicorn.error")


@dataclass
class RunResult:
    """What one soak run did, as the task and the emulator report it."""

    script: RunScript
    returned: dict[str, Any] | None = None
    error: BaseException | None = None
    deferred: bool = False
    event: dict[str, Any] | None = None
    observed_session_id: str | None = None
    xcom_session_id: str | None = None
    new_sessions: dict[str, FlowSession] = field(default_factory=dict)
    records: list[RequestRecord] = field(default_factory=list)
    consumed_faults: list[ScriptedFault] = field(default_factory=list)
    token_expired: bool = False
    duration_seconds: float = 0.0

    def cancel_requests(self) -> list[RequestRecord]:
        """Return the cancel requests the emulator handled, leaving out those rejected for an expired token."""
        return [record for record in self.records if record.endpoint == "cancel" and record.status != 401]

    def actual_ending(self) -> str:
        """Classify what the task did, in the words of :data:`ENDINGS`, or describe the unexpected error."""
        error = self.error
        if error is None:
            return SUCCESS
        if isinstance(error, DesktopFlowRunCancelledError):
            return CANCELLED
        if isinstance(error, DesktopFlowRunError):
            return FAILED
        if isinstance(error, DesktopFlowRunTimeoutError):
            return TIMEOUT
        if isinstance(error, DesktopFlowRunMayExistError):
            return START_UNKNOWN
        if isinstance(error, DataverseApiError) and "RunDesktopFlow" in error.request:
            return START_REJECTED
        return f"unexpected {type(error).__name__}: {error}"


class TokenExpiry:
    """Expire every access token from a second thread, a set delay after the operator learns its run's id.

    Waiting for the run's id keeps the expiry off RunDesktopFlow itself. The emulator checks a
    request's token before a fault drops its response, so an expired token there would turn
    "response lost after creating the run" into a request that created nothing.
    """

    def __init__(self, emulator: DataverseEmulator, operator: RunDesktopFlowOperator, delay_seconds: float) -> None:
        self._emulator = emulator
        self._operator = operator
        self._delay_seconds = delay_seconds
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._expire, name="soak-token-expiry", daemon=True)
        self.fired = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)

    def _expire(self) -> None:
        give_up_at = time.monotonic() + EXPIRY_WAIT_FOR_RUN_SECONDS
        while self._operator.flow_session_id is None:
            if self._stopped.wait(0.01) or time.monotonic() > give_up_at:
                return
        if self._stopped.wait(self._delay_seconds):
            return
        self._emulator.expire_tokens()
        self.fired = True


def make_operator(script: RunScript) -> RunDesktopFlowOperator:
    """Build the run's operator the way a DAG would, with the soak's short retry backoff."""
    flow_argument = {"flow_name": script.flow_name} if script.by_name else {"flow_id": script.workflow_id}
    operator = RunDesktopFlowOperator(
        task_id=f"soak_run_{script.index:03d}",
        connection_name="soak-machine-group",
        inputs=script.inputs,
        run_timeout=script.run_timeout,
        check_interval=script.check_interval,
        timeout=script.operator_timeout,
        deferrable=script.deferrable,
        **flow_argument,
    )
    operator.hook.retry_policy = SOAK_RETRY_POLICY
    return operator


def run_task(operator: RunDesktopFlowOperator, script: RunScript, context: dict[str, Any], result: RunResult) -> None:
    """Run the task as Airflow would: execute, and for a deferral the trigger, then execute_complete."""
    try:
        result.returned = operator.execute(context)
        return
    except TaskDeferred as deferred:
        result.deferred = True
        _, trigger_arguments = deferred.trigger.serialize()

    # The triggerer rebuilds the trigger from its serialized arguments.
    trigger = DesktopFlowRunTrigger(**trigger_arguments)
    trigger_hook = trigger._get_hook()
    trigger_hook.retry_policy = replace(trigger_hook.retry_policy, **SOAK_BACKOFF)
    events = collect_events(trigger)
    if len(events) != 1:
        raise AssertionError(f"The trigger yielded {len(events)} events instead of one: {events}")
    result.event = events[0]

    # Airflow resumes a deferred task on a new operator instance.
    resumed = make_operator(script)
    try:
        result.returned = resumed.execute_complete(context, events[0])
    finally:
        resumed.hook.close()


def execute_run(emulator: DataverseEmulator, script: RunScript) -> RunResult:
    """Queue the run's flow and faults, run its task, and collect what the emulator saw."""
    first_record = len(emulator.requests)
    sessions_before = set(emulator.sessions)
    emulator.add_flow(script.flow())
    for endpoint, scripted_faults in script.faults_by_endpoint().items():
        emulator.inject(endpoint, *(scripted.fault for scripted in scripted_faults))

    result = RunResult(script)
    context = make_context(MemoryTaskStateStore())
    operator = make_operator(script)
    expiry = None
    if script.token_expiry_delay is not None:
        expiry = TokenExpiry(emulator, operator, script.token_expiry_delay)
        expiry.start()
    started = time.monotonic()
    try:
        run_task(operator, script, context, result)
    except Exception as error:  # Every ending but success raises, and find_mismatches checks which.
        result.error = error
    finally:
        result.duration_seconds = time.monotonic() - started
        if expiry is not None:
            expiry.stop()
        # Faults the run did not reach (a timeout run stops reading) must not hit the next run.
        emulator.clear_faults()
        operator.hook.close()

    result.observed_session_id = operator.flow_session_id
    result.xcom_session_id = context["ti"].xcom.get("flow_session_id")
    result.new_sessions = {key: value for key, value in emulator.sessions.items() if key not in sessions_before}
    result.records = emulator.requests[first_record:]
    result.consumed_faults = consumed_faults(script, result.records)
    result.token_expired = expiry is not None and expiry.fired
    if result.token_expired:
        refresh_shared_token()
    return result


def consumed_faults(script: RunScript, records: list[RequestRecord]) -> list[ScriptedFault]:
    """Return the faults that requests reached. Each request to an endpoint takes the next fault queued for it."""
    requests_per_endpoint = Counter(record.endpoint for record in records)
    consumed = []
    for endpoint, scripted_faults in script.faults_by_endpoint().items():
        consumed += scripted_faults[: requests_per_endpoint[endpoint]]
    return consumed


def refresh_shared_token() -> None:
    """Replace the expired token every hook shares, so the next run starts with a valid one.

    The next run's first request might be a RunDesktopFlow whose response a fault drops after
    handling. The emulator would reject that request for its expired token, so no run would exist.
    """
    hook = DataverseHook()
    try:
        connected, message = hook.test_connection()
    finally:
        hook.close()
    if not connected:
        raise AssertionError(f"Refreshing the token after an expiry failed: {message}")


def find_mismatches(result: RunResult) -> list[str]:
    """Compare one run with its script and return each difference as a sentence."""
    script = result.script
    mismatches = []

    actual_ending = result.actual_ending()
    error = result.error
    if actual_ending != script.ending:
        mismatches.append(f"ended as {actual_ending}, expected {script.ending}")
    elif script.ending == SUCCESS:
        if result.returned != script.expected_outputs():
            mismatches.append(f"returned {result.returned!r}, expected {script.expected_outputs()!r}")
    elif script.ending == FAILED:
        if error.errorcode != script.errorcode:
            mismatches.append(f"raised errorcode {error.errorcode!r}, expected {script.errorcode!r}")
        if error.statuscode != SessionStatus.FAILED:
            mismatches.append(f"raised statuscode {error.statuscode}, expected 8 (Failed)")
    elif script.ending == TIMEOUT:
        expected_cancelled = not script.cancel_rejected
        if error.cancelled is not expected_cancelled:
            mismatches.append(f"raised a timeout with cancelled={error.cancelled}, expected {expected_cancelled}")
    elif script.ending == START_REJECTED:
        if error.status_code != script.start_status:
            mismatches.append(f"raised HTTP {error.status_code}, expected HTTP {script.start_status}")

    new_ids = set(result.new_sessions)
    if script.creates_run:
        if len(new_ids) != 1:
            mismatches.append(f"created {len(new_ids)} runs, expected 1: {sorted(new_ids)}")
        if result.observed_session_id not in new_ids:
            mismatches.append(
                f"the operator watched {result.observed_session_id}, but the runs created are {sorted(new_ids)}"
            )
        if result.xcom_session_id != result.observed_session_id:
            mismatches.append(f"pushed {result.xcom_session_id} to XCom but watched {result.observed_session_id}")
        reported_id = result.event["flow_session_id"] if result.event is not None else result.observed_session_id
        if reported_id != result.observed_session_id:
            mismatches.append(f"the trigger reported run {reported_id}, not {result.observed_session_id}")
    elif new_ids:
        mismatches.append(f"created runs {sorted(new_ids)}, expected none")

    session = result.new_sessions.get(result.observed_session_id or "")
    if session is not None:
        expected_statuscodes = script.expected_statuscodes_after_task()
        if session.statuscode not in expected_statuscodes:
            mismatches.append(
                f"left the run with statuscode {session.statuscode}, expected one of {sorted(expected_statuscodes)}"
            )
        if script.ending == FAILED and session.errorcode != script.errorcode:
            mismatches.append(f"the run's errorcode is {session.errorcode!r}, expected {script.errorcode!r}")

    cancels = result.cancel_requests()
    if len(cancels) != script.expected_cancel_requests:
        mismatches.append(f"sent {len(cancels)} cancel requests, expected {script.expected_cancel_requests}")
    return mismatches


def count_duplicates(results: list[RunResult]) -> int:
    """Count runs created beyond the one each task may start."""
    return sum(max(0, len(result.new_sessions) - int(result.script.creates_run)) for result in results)


def find_lost_runs(results: list[RunResult], sessions: dict[str, FlowSession]) -> list[str]:
    """Return the ids of runs in the emulator that no task watched."""
    watched = {result.observed_session_id for result in results if result.observed_session_id in result.new_sessions}
    return sorted(set(sessions) - watched)


def count_wrong_cancels(results: list[RunResult], sessions: dict[str, FlowSession]) -> int:
    """Count cancel requests and Cancelled runs that no script called for."""
    wrong = 0
    for result in results:
        if result.script.ending != TIMEOUT:
            wrong += len(result.cancel_requests())
        for session_id in result.new_sessions:
            cancelled = sessions[session_id].statuscode == SessionStatus.CANCELLED
            if cancelled and not result.script.expects_cancelled_session:
                wrong += 1
    return wrong


def find_wrong_final_statuses(
    results: list[RunResult], sessions: dict[str, FlowSession]
) -> list[tuple[int, int, int | None]]:
    """Return (run index, statuscode, expected statuscode) for each watched run that settled wrongly."""
    wrong = []
    for result in results:
        session = sessions.get(result.observed_session_id or "")
        expected = result.script.expected_final_statuscode()
        if session is not None and session.statuscode != expected:
            wrong.append((result.script.index, session.statuscode, expected))
    return wrong


def in_progress_ids(sessions: dict[str, FlowSession]) -> set[str]:
    return {session_id for session_id, session in sessions.items() if session.statuscode in IN_PROGRESS_STATUSCODES}


def wait_for_runs_to_end(emulator: DataverseEmulator) -> dict[str, FlowSession]:
    """Wait until no run is queued or running, or the settle timeout passes; return every session."""
    give_up_at = time.monotonic() + SETTLE_TIMEOUT_SECONDS
    while True:
        sessions = emulator.sessions
        if not in_progress_ids(sessions) or time.monotonic() > give_up_at:
            return sessions
        time.sleep(0.1)


def format_table(title: str, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = [title, "  ".join(str(cell).ljust(width) for cell, width in zip(header, widths))]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def format_fault_table(results: list[RunResult]) -> str:
    injected = Counter(scripted.kind for result in results for scripted in result.script.faults)
    reached = Counter(scripted.kind for result in results for scripted in result.consumed_faults)
    injected[KIND_TOKEN_EXPIRY] = sum(result.script.token_expiry_delay is not None for result in results)
    reached[KIND_TOKEN_EXPIRY] = sum(result.token_expired for result in results)

    rows = [(kind, injected[kind], reached[kind]) for kind in sorted(injected)]
    rows.append(("total", sum(injected.values()), sum(reached.values())))
    return format_table("Faults by kind", ("kind", "injected", "reached"), rows)


def format_outcome_table(results: list[RunResult]) -> str:
    rows = []
    for ending in ENDINGS:
        matching = [result for result in results if result.script.ending == ending]
        synchronous = sum(not result.script.deferrable for result in matching)
        deferred = sum(result.deferred for result in matching)
        not_deferred = len(matching) - synchronous - deferred
        rows.append((ending, len(matching), synchronous, deferred, not_deferred, format_mean_seconds(matching)))
    column_totals = [sum(row[column] for row in rows) for column in (1, 2, 3, 4)]
    rows.append(("total", *column_totals, format_mean_seconds(results)))
    header = ("outcome", "runs", "synchronous", "deferred", "deferrable, not deferred", "mean seconds")
    return format_table("Runs by outcome", header, rows)


def format_mean_seconds(results: list[RunResult]) -> str:
    if not results:
        return "-"
    return f"{sum(result.duration_seconds for result in results) / len(results):.2f}"


def read_seed() -> int:
    configured = os.environ.get(SEED_VARIABLE, "").strip()
    if configured:
        return int(configured)
    return random.SystemRandom().randrange(2**32)


@pytest.mark.soak
def test_soak_runs_end_as_scripted(dataverse, monkeypatch, caplog):
    # The emulator's request lines and the hook's retry warnings would bury the summary; errors still
    # show. The operator's own lines go through Airflow's structlog setup and still print.
    for logger_name in QUIETED_LOGGERS:
        caplog.set_level(logging.ERROR, logger=logger_name)
    monkeypatch.setattr(dataverse_api, "LOST_RUN_LOOKUP_INTERVAL_SECONDS", SOAK_LOST_RUN_LOOKUP_INTERVAL_SECONDS)
    seed = read_seed()
    run_count = int(os.environ.get(RUNS_VARIABLE, DEFAULT_RUNS))
    replay = f"(seed {seed}; replay with {SEED_VARIABLE}={seed})"
    print(f"\nSoak of {run_count} runs {replay}")
    rng = random.Random(seed)
    scripts = [make_script(rng, index) for index in range(run_count)]

    started = time.monotonic()
    results = [execute_run(dataverse, script) for script in scripts]
    runs_seconds = time.monotonic() - started
    in_progress_after_runs = in_progress_ids(dataverse.sessions)
    sessions = wait_for_runs_to_end(dataverse)
    wall_seconds = time.monotonic() - started

    mismatches = [(result, find_mismatches(result)) for result in results]
    mismatches = [(result, problems) for result, problems in mismatches if problems]
    scripted_runs = sum(script.creates_run for script in scripts)
    scripted_start_responses = sum(script.receives_start_response for script in scripts)
    start_responses = dataverse.count("run", status=200)
    duplicates = count_duplicates(results)
    lost = find_lost_runs(results, sessions)
    wrongly_cancelled = count_wrong_cancels(results, sessions)
    cancel_rejected_ids = {result.observed_session_id for result in results if result.script.cancel_rejected}
    left_in_progress = sorted(in_progress_ids(sessions))
    wrong_final_statuses = find_wrong_final_statuses(results, sessions)
    injected_count = sum(len(script.faults) for script in scripts)
    reached_count = sum(len(result.consumed_faults) for result in results)

    invariants = [
        ("runs", len(results)),
        ("runs that ended as scripted", len(results) - len(mismatches)),
        ("runs scripted to create a run", scripted_runs),
        ("runs in the emulator", len(sessions)),
        ("RunDesktopFlow responses with the run's id (200)", start_responses),
        ("starts scripted to get that response", scripted_start_responses),
        ("duplicate runs", duplicates),
        ("lost runs (never watched by their task)", len(lost)),
        ("wrongly cancelled runs", wrongly_cancelled),
        ("runs queued or running right after the last task", len(in_progress_after_runs)),
        ("runs queued or running after settling", len(left_in_progress)),
        ("runs with a wrong final status", len(wrong_final_statuses)),
        ("time for the runs (s)", f"{runs_seconds:.1f}"),
        ("wall time with settling (s)", f"{wall_seconds:.1f}"),
    ]
    print(f"Soak summary {replay}", end="\n\n")
    print(format_fault_table(results), format_outcome_table(results), sep="\n\n", end="\n\n")
    print(format_table("Invariants", ("check", "value"), invariants))

    details = "\n".join(
        f"- {result.script.describe()}\n  observed: {'; '.join(problems)}"
        for result, problems in mismatches[:MAX_MISMATCHES_SHOWN]
    )
    assert not mismatches, f"{len(mismatches)} runs did not end as scripted {replay}:\n{details}"
    assert len(sessions) == scripted_runs, f"the emulator has {len(sessions)} runs, expected {scripted_runs} {replay}"
    assert start_responses == scripted_start_responses, (
        f"RunDesktopFlow returned a run id {start_responses} times, expected {scripted_start_responses} {replay}"
    )
    assert duplicates == 0, f"{duplicates} duplicate runs {replay}"
    assert lost == [], f"runs that no task watched: {lost} {replay}"
    assert wrongly_cancelled == 0, f"{wrongly_cancelled} runs were cancelled though no script called for it {replay}"
    # Runs whose cancel was rejected time out in the emulator a few seconds later, so early ones have ended.
    assert in_progress_after_runs <= cancel_rejected_ids, (
        f"runs still queued or running after the last task: {sorted(in_progress_after_runs - cancel_rejected_ids)}, "
        f"though only runs whose cancel was rejected may be {replay}"
    )
    assert left_in_progress == [], f"runs still queued or running after settling: {left_in_progress} {replay}"
    assert wrong_final_statuses == [], (
        f"runs with a wrong final status as (index, statuscode, expected): {wrong_final_statuses} {replay}"
    )
    assert reached_count >= 0.8 * injected_count, (
        f"only {reached_count} of {injected_count} injected faults were reached, so the soak no longer "
        f"exercises the endpoints it scripts faults for {replay}"
    )
