"""Watch a desktop flow run until it ends or its deadline passes, for the worker and the triggerer alike.

:func:`watch_run` decides what to do next (read the status, wait, cancel, stop) and does no I/O. The
operator drives it with the synchronous hook and ``time.sleep``, the trigger with the asynchronous
hook and ``asyncio.sleep``, so both apply the same deadline, retry and cancellation rules and return
the same event payload.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Union

from airflow_provider_pad.exceptions import (
    DataverseApiError,
    DataverseNotFoundError,
    DesktopFlowError,
    DesktopFlowRunCancelledError,
    DesktopFlowRunError,
    DesktopFlowRunTimeoutError,
)
from airflow_provider_pad.flowsession import FlowSession, RunOutcome

if TYPE_CHECKING:
    from airflow_provider_pad.hooks.dataverse import DataverseHook

# How long after a run starts a 404 on its flowsession is read as "not readable yet". Dataverse
# documents no delay; this bounds the wait for a row that a replica has not seen yet.
NOT_FOUND_GRACE_SECONDS = 60.0
# How long a cancel may keep retrying throttled or failed requests. The triggerer gives on_kill
# 30 seconds by default ([triggerer] on_kill_timeout), so this stays below it.
CANCEL_BUDGET_SECONDS = 20.0


@dataclass(frozen=True)
class ReadStatus:
    """Read the run's flowsession row and send back a :class:`FlowSession`."""


@dataclass(frozen=True)
class Wait:
    """Wait this many seconds before the next instruction."""

    seconds: float


@dataclass(frozen=True)
class CancelRun:
    """Cancel the run and send back whether the cancel request succeeded."""

    reason: str


Instruction = Union[ReadStatus, Wait, CancelRun]
Watcher = Generator[Instruction, Any, dict[str, Any]]


def watch_run(
    flow_session_id: str,
    *,
    check_interval: float,
    deadline: float,
    cancel_at_deadline: bool,
    not_found_grace_until: float = 0.0,
    log: logging.Logger | Any,
) -> Watcher:
    """Yield the steps of watching one run and return its event payload.

    Transient read failures (no response, throttling, 5xx) are logged and retried at the next check,
    so an outage that ends before the deadline does not fail the task. A 404 before ``not_found_grace_until``
    is read the same way. Once ``deadline`` (epoch seconds) passes, the status is read one last time:
    a run that ended is reported as it ended, otherwise the run is cancelled (with
    ``cancel_at_deadline``) and a ``timeout`` payload is returned.
    """
    last_session: FlowSession | None = None
    while True:
        session = None
        try:
            session = yield ReadStatus()
        except DataverseNotFoundError:
            if time.time() >= not_found_grace_until:
                raise
            log.info("Desktop flow run %s is not readable yet (HTTP 404); reading it again shortly.", flow_session_id)
        except DataverseApiError as error:
            if not error.is_transient:
                raise
            log.warning("Reading desktop flow run %s failed; reading it again at the next check: %s", flow_session_id, error)

        if session is not None:
            if last_session is None or session.label != last_session.label:
                log.info("Desktop flow run %s is %s.", flow_session_id, session.label)
            last_session = session
            if session.has_ended:
                return session_event(session)

        remaining = deadline - time.time()
        if remaining <= 0:
            cancelled = None
            if cancel_at_deadline:
                cancelled = yield CancelRun("the deadline passed")
            label = last_session.label if last_session is not None else "unknown"
            return run_event(
                RunOutcome.TIMEOUT,
                flow_session_id,
                statuscode=last_session.statuscode if last_session is not None else None,
                status_label=label,
                message=f"Desktop flow run {flow_session_id} did not end before the deadline; its last status was {label}.",
                cancelled=cancelled,
            )
        yield Wait(min(seconds_to_next_tick(check_interval), remaining))


def seconds_to_next_tick(check_interval: float) -> float:
    """Return the time until the next multiple of ``check_interval`` in epoch seconds.

    Every watcher with the same interval wakes at the same instants, so the status reads of many
    runs in one triggerer fall into the same batch. The wait is never longer than the interval.
    """
    now = time.time()
    return (math.floor(now / check_interval) + 1) * check_interval - now


def drive(watcher: Watcher, hook: DataverseHook, flow_session_id: str, log: logging.Logger | Any) -> dict[str, Any]:
    """Run a watcher with the synchronous hook and return its payload."""
    reply: Any = None
    error: Exception | None = None
    while True:
        try:
            instruction = watcher.throw(error) if error is not None else watcher.send(reply)
        except StopIteration as stop:
            return stop.value
        reply, error = None, None
        if isinstance(instruction, Wait):
            time.sleep(instruction.seconds)
        elif isinstance(instruction, ReadStatus):
            try:
                reply = hook.get_flow_session(flow_session_id)
            except DataverseApiError as raised:
                error = raised
        else:
            reply = cancel_quietly(hook, flow_session_id, instruction.reason, log)


async def adrive(
    watcher: Watcher,
    hook: DataverseHook,
    flow_session_id: str,
    log: logging.Logger | Any,
    read_status: Callable[[str], Awaitable[FlowSession]] | None = None,
) -> dict[str, Any]:
    """Run a watcher with the asynchronous hook and return its payload.

    :param read_status: reads the run's status; defaults to the hook's own single-run read.
    """
    read_status = read_status or hook.aget_flow_session
    reply: Any = None
    error: Exception | None = None
    while True:
        try:
            instruction = watcher.throw(error) if error is not None else watcher.send(reply)
        except StopIteration as stop:
            return stop.value
        reply, error = None, None
        if isinstance(instruction, Wait):
            await asyncio.sleep(instruction.seconds)
        elif isinstance(instruction, ReadStatus):
            try:
                reply = await read_status(flow_session_id)
            except DataverseApiError as raised:
                error = raised
        else:
            reply = await acancel_quietly(hook, flow_session_id, instruction.reason, log)


def cancel_quietly(
    hook: DataverseHook, flow_session_id: str, reason: str, log: logging.Logger | Any,
    *, budget_seconds: float = CANCEL_BUDGET_SECONDS,
) -> bool:
    """Cancel a run, retrying within ``budget_seconds``; log a failure instead of raising.

    The budget replaces the hook's deadline, which has often passed when a cancel is due.
    Returns whether the cancel request succeeded.
    """
    hook.retry_policy = replace(hook.retry_policy, deadline=time.time() + budget_seconds)
    try:
        hook.cancel_run(flow_session_id)
    except DesktopFlowError as error:
        log.warning("Cancelling desktop flow run %s (%s) failed: %s", flow_session_id, reason, error)
        return False
    log.info("Cancelled desktop flow run %s because %s.", flow_session_id, reason)
    return True


async def acancel_quietly(
    hook: DataverseHook, flow_session_id: str, reason: str, log: logging.Logger | Any,
    *, budget_seconds: float = CANCEL_BUDGET_SECONDS,
) -> bool:
    """Cancel a run with the asynchronous hook, as :func:`cancel_quietly` does."""
    hook.retry_policy = replace(hook.retry_policy, deadline=time.time() + budget_seconds)
    try:
        await hook.acancel_run(flow_session_id)
    except DesktopFlowError as error:
        log.warning("Cancelling desktop flow run %s (%s) failed: %s", flow_session_id, reason, error)
        return False
    log.info("Cancelled desktop flow run %s because %s.", flow_session_id, reason)
    return True


def session_event(session: FlowSession) -> dict[str, Any]:
    """Build the payload for a run that ended."""
    return run_event(
        session.outcome,
        session.flow_session_id,
        statuscode=session.statuscode,
        status_label=session.label,
        errorcode=session.errorcode,
        errormessage=session.errormessage,
        message=f"Desktop flow run {session.flow_session_id} ended with status {session.label}.",
    )


def run_event(
    status: str,
    flow_session_id: str,
    *,
    statuscode: int | None = None,
    status_label: str | None = None,
    errorcode: str | None = None,
    errormessage: str | None = None,
    message: str = "",
    cancelled: bool | None = None,
) -> dict[str, Any]:
    """Build a payload; its keys are the same for every outcome, so ``execute_complete`` reads them all."""
    return {
        "status": status,
        "flow_session_id": flow_session_id,
        "statuscode": statuscode,
        "status_label": status_label,
        "errorcode": errorcode,
        "errormessage": errormessage,
        "message": message,
        "cancelled": cancelled,
    }


def raise_for_event(event: dict[str, Any], *, timeout_seconds: float) -> None:
    """Return if the payload describes a successful run; raise the matching error otherwise."""
    status = event["status"]
    if status == RunOutcome.SUCCESS:
        return
    details = {
        "flow_session_id": event["flow_session_id"],
        "statuscode": event.get("statuscode"),
        "status_label": event.get("status_label") or "unknown",
        "errorcode": event.get("errorcode"),
        "errormessage": event.get("errormessage"),
    }
    if status == RunOutcome.CANCELLED:
        raise DesktopFlowRunCancelledError(**details)
    if status == RunOutcome.TIMEOUT:
        raise DesktopFlowRunTimeoutError(
            flow_session_id=details["flow_session_id"],
            timeout_seconds=timeout_seconds,
            last_status_label=details["status_label"],
            cancelled=event.get("cancelled"),
        )
    if status == RunOutcome.FAILED or event.get("statuscode") is not None:
        # A status code outside the documented table also lands here: it is never success.
        raise DesktopFlowRunError(**details)
    raise DesktopFlowError(event.get("message") or f"Watching desktop flow run {details['flow_session_id']} failed.")
