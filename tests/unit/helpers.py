"""Helpers shared by operator, sensor and trigger tests."""

from __future__ import annotations

import asyncio
from typing import Any


class RecordingTaskInstance:
    """Stands in for the task instance in a context: records what the operator pushes to XCom."""

    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


def make_context() -> dict[str, Any]:
    return {"ti": RecordingTaskInstance()}


def collect_events(trigger) -> list[dict[str, Any]]:
    """Run a trigger to its end in a fresh event loop and return every event payload."""

    async def collect():
        events = []
        try:
            async for event in trigger.run():
                events.append(event.payload)
        finally:
            await trigger.cleanup()
        return events

    return asyncio.run(collect())


def flow_id_named(emulator, name: str) -> str:
    return next(flow.workflow_id for flow in emulator.flows.values() if flow.name == name)
