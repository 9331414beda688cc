"""Trigger that watches a desktop flow run from the triggerer until it ends or its deadline passes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_pad.exceptions import DesktopFlowError
from airflow_provider_pad.flowsession import RunOutcome

if TYPE_CHECKING:
    from airflow_provider_pad.flowsession import FlowSession
    from airflow_provider_pad.hooks.dataverse import DataverseHook


class DesktopFlowRunTrigger(BaseTrigger):
    """Poll a flowsession until the run ends, then yield one event with its outcome.

    Every argument is a plain value, so the trigger can be stored and rebuilt in another triggerer
    process and resume watching the same run. A restart or hand-over never cancels the run; only a
    user killing the deferred task does, through :meth:`on_kill`.

    :param flow_session_id: id of the run's flowsession row.
    :param dataverse_conn_id: id of the ``dataverse`` connection.
    :param check_interval: seconds between two status reads.
    :param deadline: wall-clock time (epoch seconds, from ``time.time()``) after which the run is
        given up on. At the deadline the trigger reads the status once more: a run that ended is
        reported as such, otherwise the event has status ``timeout``.
    :param cancel_on_kill: cancel the run when the task is killed while deferred, and at the deadline.
    """

    def __init__(
        self,
        *,
        flow_session_id: str,
        dataverse_conn_id: str,
        check_interval: float,
        deadline: float,
        cancel_on_kill: bool = True,
    ) -> None:
        super().__init__()
        self.flow_session_id = flow_session_id
        self.dataverse_conn_id = dataverse_conn_id
        self.check_interval = check_interval
        self.deadline = deadline
        self.cancel_on_kill = cancel_on_kill
        self._hook: DataverseHook | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "flow_session_id": self.flow_session_id,
                "dataverse_conn_id": self.dataverse_conn_id,
                "check_interval": self.check_interval,
                "deadline": self.deadline,
                "cancel_on_kill": self.cancel_on_kill,
            },
        )

    def _get_hook(self) -> DataverseHook:
        if self._hook is None:
            from airflow_provider_pad.hooks.dataverse import DataverseHook

            self._hook = DataverseHook(dataverse_conn_id=self.dataverse_conn_id)
        return self._hook

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            payload = await self._watch()
        except DesktopFlowError as error:
            self.log.error("Watching desktop flow run %s failed: %s", self.flow_session_id, error)
            payload = run_event(RunOutcome.ERROR, self.flow_session_id, message=str(error))
        yield TriggerEvent(payload)

    async def _watch(self) -> dict[str, Any]:
        hook = self._get_hook()
        last_label = None
        while True:
            session = await hook.aget_flow_session(self.flow_session_id)
            if session.label != last_label:
                self.log.info("Desktop flow run %s is %s.", self.flow_session_id, session.label)
                last_label = session.label
            if session.has_ended:
                return session_event(session)

            remaining = self.deadline - time.time()
            if remaining <= 0:
                return await self._give_up(session)
            await asyncio.sleep(min(self.check_interval, remaining))

    async def _give_up(self, session: FlowSession) -> dict[str, Any]:
        """Cancel the run (when configured) after the deadline and describe the timeout."""
        cancelled = False
        if self.cancel_on_kill:
            cancelled = await self._cancel("the deadline passed")
        return run_event(
            RunOutcome.TIMEOUT,
            self.flow_session_id,
            statuscode=session.statuscode,
            status_label=session.label,
            message=f"Desktop flow run {self.flow_session_id} did not end before the deadline; "
            f"its last status was {session.label}.",
            cancelled=cancelled,
        )

    async def _cancel(self, reason: str) -> bool:
        """Send a cancel request, logging instead of raising when it fails."""
        try:
            await self._get_hook().acancel_run(self.flow_session_id)
        except DesktopFlowError as error:
            self.log.warning("Cancelling desktop flow run %s (%s) failed: %s", self.flow_session_id, reason, error)
            return False
        self.log.info("Cancelled desktop flow run %s because %s.", self.flow_session_id, reason)
        return True

    async def on_kill(self) -> None:
        """Cancel the run; the triggerer calls this only when a user kills the deferred task."""
        if self.cancel_on_kill:
            await self._cancel("the task was killed")

    async def cleanup(self) -> None:
        """Close the HTTP client. It never cancels: cleanup also runs on triggerer restarts."""
        if self._hook is not None:
            await self._hook.aclose()


def session_event(session: FlowSession) -> dict[str, Any]:
    """Build the event payload for a run that ended."""
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
    cancelled: bool = False,
) -> dict[str, Any]:
    """Build an event payload; its keys are the same for every outcome."""
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
