"""Sensor that waits for a desktop flow run started elsewhere, such as by a cloud flow."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue, conf

from airflow_provider_pad.watch import raise_for_event, session_event

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_pad.hooks.dataverse import DataverseHook


MIN_TRIGGER_CHECK_INTERVAL_SECONDS = 1.0


class DesktopFlowRunSensor(BaseSensorOperator):
    """Wait until a desktop flow run ends; succeed when it succeeded, fail otherwise.

    A run that ends with any status other than Succeeded raises :class:`DesktopFlowRunError`
    (:class:`DesktopFlowRunCancelledError` when cancelled) instead of poking on.

    :param flow_session_id: id of the run's flowsession row. Templated.
    :param push_outputs: return the run's outputs so they land in XCom (default False).
    :param dataverse_conn_id: id of the ``dataverse`` connection (default ``dataverse_default``).
    :param deferrable: wait in the triggerer; ``poke_interval`` becomes the trigger's check interval
        and ``timeout`` its deadline. Defaults to ``[operators] default_deferrable``.
    """

    template_fields: Sequence[str] = ("flow_session_id",)

    def __init__(
        self,
        *,
        flow_session_id: str,
        push_outputs: bool = False,
        dataverse_conn_id: str = "dataverse_default",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.flow_session_id = flow_session_id
        self.push_outputs = push_outputs
        self.dataverse_conn_id = dataverse_conn_id
        self.deferrable = deferrable
        self._hook: DataverseHook | None = None

    @property
    def hook(self) -> DataverseHook:
        if self._hook is None:
            from airflow_provider_pad.hooks.dataverse import DataverseHook

            self._hook = DataverseHook(dataverse_conn_id=self.dataverse_conn_id)
        return self._hook

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        if self.poke(context):
            return self._outputs() if self.push_outputs else None

        from airflow_provider_pad.triggers.desktop_flow import DesktopFlowRunTrigger

        self.defer(
            trigger=DesktopFlowRunTrigger(
                flow_session_id=str(self.flow_session_id),
                dataverse_conn_id=self.dataverse_conn_id,
                # A poke_interval of 0 is valid for poking but would make the trigger spin.
                check_interval=max(float(self.poke_interval), MIN_TRIGGER_CHECK_INTERVAL_SECONDS),
                deadline=time.time() + float(self.timeout),
                cancel_on_kill=False,
            ),
            method_name="execute_complete",
        )

    def poke(self, context: Context) -> bool | PokeReturnValue:
        session = self.hook.get_flow_session(str(self.flow_session_id))
        self.log.info("Desktop flow run %s is %s.", session.flow_session_id, session.label)
        if not session.has_ended:
            return False
        raise_for_event(session_event(session), timeout_seconds=float(self.timeout))
        if self.push_outputs and not self.deferrable:
            return PokeReturnValue(is_done=True, xcom_value=self._outputs())
        return True

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Finish from the trigger's event: return the outputs (when asked) or raise the run's error."""
        raise_for_event(event, timeout_seconds=float(self.timeout))
        return self._outputs() if self.push_outputs else None

    def _outputs(self) -> dict[str, Any]:
        return self.hook.get_run_outputs(str(self.flow_session_id))
