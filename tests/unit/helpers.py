"""Helpers shared by operator, sensor and trigger tests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from airflow_provider_pad.hooks.dataverse import DataverseHook
from airflow_provider_pad.hooks.dataverse_api import build_run_body


class RecordingTaskInstance:
    """Stands in for the task instance in a context: records what the operator pushes to XCom."""

    def __init__(self, max_tries: int = 0) -> None:
        self.xcom: dict[str, Any] = {}
        self.max_tries = max_tries

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


class MemoryTaskStateStore:
    """Stands in for ``context["task_state_store"]``: keeps values in a dict shared across tries."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


def make_context(store: MemoryTaskStateStore | None = None, max_tries: int = 0) -> dict[str, Any]:
    context: dict[str, Any] = {"ti": RecordingTaskInstance(max_tries)}
    if store is not None:
        context["task_state_store"] = store
    return context


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


def start_run(emulator, flow_name: str, inputs: dict | None = None) -> str:
    """Start a run of the named emulated flow through the hook and return its flowsession id."""
    body = build_run_body(
        connection_name="machine-group",
        connection_type=1,
        run_mode="unattended",
        run_priority="normal",
        inputs_json=json.dumps(inputs) if inputs else None,
        run_timeout_seconds=None,
        callback_url=None,
    )
    return DataverseHook().run_desktop_flow(flow_id_named(emulator, flow_name), body).flow_session_id
