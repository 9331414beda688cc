"""One status request for many desktop flow runs watched in the same event loop.

Triggers in a triggerer share its event loop. Each requests its run's status from :class:`StatusBatcher`
instead of sending its own request. The batcher waits a moment for the others, then reads up to
:data:`BATCH_SIZE` runs per request. A thousand runs polled every 30 seconds so cost 20 requests per
tick instead of 1000, well under Dataverse's 6000 requests per 5 minutes per user.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from airflow_provider_pad.exceptions import DataverseApiError, DataverseThrottledError
from airflow_provider_pad.flowsession import FlowSession
from airflow_provider_pad.hooks.dataverse import DataverseHook
from airflow_provider_pad.hooks.dataverse_api import RetryPolicy

log = logging.getLogger(__name__)

BATCH_SIZE = 50
# How long the first read of a batch waits for others. Triggers wake at shared tick times (see
# the watcher), so their reads arrive within milliseconds of each other.
BATCH_WINDOW_SECONDS = 0.2


class StatusBatcher:
    """Gathers status reads for one connection in one event loop into batched requests."""

    def __init__(self, dataverse_conn_id: str) -> None:
        # No retries inside a batch: each trigger's watcher retries at its next check, within its
        # own deadline, which a shared request cannot know.
        self.hook = DataverseHook(dataverse_conn_id, retry_policy=RetryPolicy(max_attempts=1))
        self.users = 0
        self._throttled_until = 0.0
        self._throttle_error: DataverseThrottledError | None = None
        self._pending: dict[str, list[asyncio.Future[FlowSession]]] = {}
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def read(self, flow_session_id: str) -> FlowSession:
        """Return the run's status, read together with the other runs asked for at about the same time."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[FlowSession] = loop.create_future()
        self._pending.setdefault(flow_session_id, []).append(future)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_later(BATCH_WINDOW_SECONDS, self._start_flush)
        return await future

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, {}
        task = asyncio.get_running_loop().create_task(self._flush(pending))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, pending: dict[str, list[asyncio.Future[FlowSession]]]) -> None:
        ids = list(pending)
        chunks = [ids[start : start + BATCH_SIZE] for start in range(0, len(ids), BATCH_SIZE)]
        await asyncio.gather(*(self._read_chunk(chunk, pending) for chunk in chunks))

    async def _read_chunk(self, ids: list[str], pending: dict[str, list[asyncio.Future[FlowSession]]]) -> None:
        if self._throttle_error is not None and time.time() < self._throttled_until:
            # Dataverse asked for a pause (Retry-After); honour it for every run without a request.
            for flow_session_id in ids:
                _settle(pending[flow_session_id], error=self._throttle_error)
            return
        try:
            sessions = await self.hook.aget_flow_sessions(ids)
        except DataverseApiError as error:
            if isinstance(error, DataverseThrottledError) and error.retry_after_seconds:
                self._throttled_until = time.time() + error.retry_after_seconds
                self._throttle_error = error
            if error.is_transient:
                # Every run in the chunk reads again at its next check, as after a failed single read.
                for flow_session_id in ids:
                    _settle(pending[flow_session_id], error=error)
                return
            log.warning("Reading %d runs in one request failed; reading them one by one: %s", len(ids), error)
            sessions = {}
        except Exception as error:  # Settle every future, so no trigger waits forever.
            log.exception("Reading %d runs in one request failed unexpectedly.", len(ids))
            for flow_session_id in ids:
                _settle(pending[flow_session_id], error=error)
            return

        missing = [flow_session_id for flow_session_id in ids if flow_session_id not in sessions]
        for flow_session_id in ids:
            if flow_session_id in sessions:
                _settle(pending[flow_session_id], result=sessions[flow_session_id])
        # A run absent from the response is read alone, so its own error (a 404, say) reaches its trigger.
        await asyncio.gather(*(self._read_one(flow_session_id, pending[flow_session_id]) for flow_session_id in missing))

    async def _read_one(self, flow_session_id: str, futures: list[asyncio.Future[FlowSession]]) -> None:
        try:
            session = await self.hook.aget_flow_session(flow_session_id)
        except Exception as error:
            _settle(futures, error=error)
        else:
            _settle(futures, result=session)


def _settle(futures: list[asyncio.Future[Any]], *, result: Any = None, error: BaseException | None = None) -> None:
    for future in futures:
        if future.done():  # The waiting trigger was cancelled.
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


_batchers: dict[tuple[int, str], StatusBatcher] = {}


def acquire_status_batcher(dataverse_conn_id: str) -> StatusBatcher:
    """Return the batcher of this connection in the running event loop, counting one more user."""
    key = (id(asyncio.get_running_loop()), dataverse_conn_id)
    batcher = _batchers.get(key)
    if batcher is None:
        batcher = _batchers[key] = StatusBatcher(dataverse_conn_id)
    batcher.users += 1
    return batcher


async def release_status_batcher(dataverse_conn_id: str) -> None:
    """Count one user less; the last user closes the batcher's HTTP client."""
    key = (id(asyncio.get_running_loop()), dataverse_conn_id)
    batcher = _batchers.get(key)
    if batcher is None:
        return
    batcher.users -= 1
    if batcher.users <= 0:
        del _batchers[key]
        await batcher.hook.aclose()
