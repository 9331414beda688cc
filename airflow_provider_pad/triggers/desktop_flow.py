"""Trigger that watches a desktop flow run from the triggerer until it ends or its deadline passes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_pad.exceptions import DesktopFlowError
from airflow_provider_pad.flowsession import RunOutcome
from airflow_provider_pad.watch import acancel_quietly, adrive, run_event, watch_run

if TYPE_CHECKING:
    from airflow_provider_pad.hooks.dataverse import DataverseHook
    from airflow_provider_pad.hooks.status_batcher import StatusBatcher


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
    :param not_found_grace_until: wall-clock time (epoch seconds) before which a 404 on the run means
        "not readable yet" rather than "not found". The operator sets it for a run it just started.
    """

    def __init__(
        self,
        *,
        flow_session_id: str,
        dataverse_conn_id: str,
        check_interval: float,
        deadline: float,
        cancel_on_kill: bool = True,
        not_found_grace_until: float = 0.0,
    ) -> None:
        super().__init__()
        self.flow_session_id = flow_session_id
        self.dataverse_conn_id = dataverse_conn_id
        self.check_interval = check_interval
        self.deadline = deadline
        self.cancel_on_kill = cancel_on_kill
        self.not_found_grace_until = not_found_grace_until
        self._hook: DataverseHook | None = None
        self._batcher: StatusBatcher | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "flow_session_id": self.flow_session_id,
                "dataverse_conn_id": self.dataverse_conn_id,
                "check_interval": self.check_interval,
                "deadline": self.deadline,
                "cancel_on_kill": self.cancel_on_kill,
                "not_found_grace_until": self.not_found_grace_until,
            },
        )

    def _get_hook(self) -> DataverseHook:
        if self._hook is None:
            from airflow_provider_pad.hooks.dataverse import DataverseHook
            from airflow_provider_pad.hooks.dataverse_api import RetryPolicy

            # No retry may wait past the deadline: the run is then cancelled and reported instead.
            self._hook = DataverseHook(self.dataverse_conn_id, retry_policy=RetryPolicy(deadline=self.deadline))
        return self._hook

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_provider_pad.hooks.status_batcher import acquire_status_batcher

        hook = self._get_hook()
        if self._batcher is None:
            self._batcher = acquire_status_batcher(self.dataverse_conn_id)
        watcher = watch_run(
            self.flow_session_id,
            check_interval=self.check_interval,
            deadline=self.deadline,
            cancel_at_deadline=self.cancel_on_kill,
            not_found_grace_until=self.not_found_grace_until,
            log=self.log,
        )
        try:
            payload = await adrive(watcher, hook, self.flow_session_id, self.log, read_status=self._batcher.read)
        except DesktopFlowError as error:
            self.log.error("Watching desktop flow run %s failed: %s", self.flow_session_id, error)
            payload = run_event(RunOutcome.ERROR, self.flow_session_id, message=str(error))
        yield TriggerEvent(payload)

    async def on_kill(self) -> None:
        """Cancel the run; the triggerer calls this only when a user kills the deferred task."""
        if self.cancel_on_kill:
            await acancel_quietly(self._get_hook(), self.flow_session_id, "the task was killed", self.log)

    async def cleanup(self) -> None:
        """Release the HTTP client and status batcher. It never cancels: cleanup also runs on restarts."""
        if self._batcher is not None:
            from airflow_provider_pad.hooks.status_batcher import release_status_batcher

            self._batcher = None
            await release_status_batcher(self.dataverse_conn_id)
        if self._hook is not None:
            await self._hook.aclose()
