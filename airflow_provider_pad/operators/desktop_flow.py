"""Operator that starts a Power Automate Desktop flow run and waits for its outputs."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf

from airflow_provider_pad.exceptions import (
    DataverseApiError,
    DataverseNotFoundError,
    DesktopFlowConfigurationError,
    DesktopFlowError,
    DesktopFlowOutputsTooLargeError,
)
from airflow_provider_pad.flowsession import RunOutcome
from airflow_provider_pad.inputs import serialize_inputs, validate_against_schema
from airflow_provider_pad.watch import (
    NOT_FOUND_GRACE_SECONDS,
    cancel_quietly,
    drive,
    raise_for_event,
    session_event,
    watch_run,
)
from airflow_provider_pad.links.desktop_flow import (
    DesktopFlowLink,
    DesktopFlowRunLink,
    flow_details_url,
    flow_run_url,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_pad.flowsession import FlowSession
    from airflow_provider_pad.hooks.dataverse import DataverseHook

DEFAULT_CHECK_INTERVAL_SECONDS = 30
DEFAULT_TIMEOUT_SECONDS = 7 * 24 * 60 * 60
MAX_RUN_TIMEOUT_SECONDS = 86400
RUN_MODES = ("unattended", "attended")
RUN_PRIORITIES = ("normal", "high")
CONNECTION_TYPE_CONNECTION = 1
CONNECTION_TYPE_REFERENCE = 2
DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
# Airflow sends SIGKILL about 5 seconds after asking a task to stop; the cancel must fit before it.
ON_KILL_CANCEL_BUDGET_SECONDS = 4.0
FLOW_SESSION_ID_XCOM_KEY = "flow_session_id"
# Task state store key of the run this task instance started; retries read it to reattach.
RUN_STATE_KEY = "desktop_flow_run"


class RunDesktopFlowOperator(BaseOperator):
    """Start a desktop flow run through Dataverse, wait for it, and return its outputs.

    The flowsession id is pushed to XCom under ``flow_session_id`` as soon as the run starts. A run
    that succeeds returns its outputs as a dict (``{}`` when the flow has none), so they land in
    XCom under ``return_value``. Any other ending raises :class:`DesktopFlowRunError`
    (:class:`DesktopFlowRunCancelledError` for a cancelled run).

    :param flow_id: workflow id of the desktop flow. Pass exactly one of ``flow_id`` and ``flow_name``.
    :param flow_name: exact name of a desktop flow, resolved to its id when the task runs.
    :param include_unpublished: let ``flow_name`` match draft (unpublished) flows too (default False).
    :param connection_name: name of the desktop-flow connection (the machine or machine group) to run on.
        Pass exactly one of ``connection_name`` and ``connection_reference``.
    :param connection_reference: logical name of a connection reference (sent with ``connectionType`` 2).
    :param inputs: the flow's inputs, a dict or a string holding a JSON object; at most 2 MB of UTF-8.
        Datetimes are sent as ISO 8601 strings. Templated.
    :param run_mode: ``"unattended"`` (default) or ``"attended"``.
    :param run_priority: ``"normal"`` (default) or ``"high"``.
    :param run_timeout: seconds the desktop flow itself may run, 1 to 86400; Dataverse's default
        (3 hours) applies when None.
    :param callback_url: optional HTTPS URL that Dataverse calls when the run ends.
    :param wait_for_termination: wait for the run to end (default True); otherwise return None once it starts.
    :param check_interval: seconds between two status reads (default 30).
    :param timeout: seconds Airflow waits for the run to end (default 7 days). Past it the task fails
        and, with ``cancel_on_kill``, the run is cancelled.
    :param deferrable: wait in the triggerer instead of holding a worker slot. Defaults to the
        ``[operators] default_deferrable`` option.
    :param cancel_on_kill: cancel the run when the task is killed or times out (default True).
    :param validate_inputs: read the flow's input schema before starting the run and reject input
        names it does not declare and values whose JSON type differs from the declared one (default False).
    :param max_output_bytes: the largest outputs, in bytes of JSON, returned to XCom (default 1 MiB).
        Larger outputs fail the task with :class:`DesktopFlowOutputsTooLargeError` instead of filling
        the metadata database; None removes the limit.
    :param dataverse_conn_id: id of the ``dataverse`` connection (default ``dataverse_default``).
    """

    template_fields: Sequence[str] = (
        "flow_id",
        "flow_name",
        "connection_name",
        "connection_reference",
        "inputs",
        "callback_url",
    )
    template_fields_renderers = {"inputs": "json"}
    operator_extra_links = (DesktopFlowLink(), DesktopFlowRunLink())
    ui_color = "#0066ff"
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        flow_id: str | None = None,
        flow_name: str | None = None,
        connection_name: str | None = None,
        connection_reference: str | None = None,
        inputs: Mapping[str, Any] | str | None = None,
        run_mode: str = "unattended",
        run_priority: str = "normal",
        run_timeout: int | None = None,
        callback_url: str | None = None,
        wait_for_termination: bool = True,
        check_interval: float = DEFAULT_CHECK_INTERVAL_SECONDS,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        cancel_on_kill: bool = True,
        include_unpublished: bool = False,
        validate_inputs: bool = False,
        max_output_bytes: int | None = DEFAULT_MAX_OUTPUT_BYTES,
        dataverse_conn_id: str = "dataverse_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.flow_id = flow_id
        self.flow_name = flow_name
        self.connection_name = connection_name
        self.connection_reference = connection_reference
        self.inputs = inputs
        self.run_mode = run_mode
        self.run_priority = run_priority
        self.run_timeout = run_timeout
        self.callback_url = callback_url
        self.wait_for_termination = wait_for_termination
        self.check_interval = check_interval
        self.timeout = timeout
        self.deferrable = deferrable
        self.cancel_on_kill = cancel_on_kill
        self.include_unpublished = include_unpublished
        self.validate_inputs = validate_inputs
        self.max_output_bytes = max_output_bytes
        self.dataverse_conn_id = dataverse_conn_id
        self.flow_session_id: str | None = None
        self._run_ended = False
        self._task_state_store: Any = None
        self._hook: DataverseHook | None = None
        self._check_static_arguments()

    def _check_static_arguments(self) -> None:
        """Reject invalid arguments when the DAG is parsed; templated ones are checked in ``execute``."""
        if (self.flow_id is None) == (self.flow_name is None):
            raise DesktopFlowConfigurationError("Pass exactly one of flow_id and flow_name.")
        if (self.connection_name is None) == (self.connection_reference is None):
            raise DesktopFlowConfigurationError(
                "Pass exactly one of connection_name (a desktop-flow connection) and connection_reference "
                "(a connection reference's logical name)."
            )
        if self.run_mode not in RUN_MODES:
            raise DesktopFlowConfigurationError(f"run_mode must be one of {RUN_MODES}, not {self.run_mode!r}.")
        if self.run_priority not in RUN_PRIORITIES:
            raise DesktopFlowConfigurationError(
                f"run_priority must be one of {RUN_PRIORITIES}, not {self.run_priority!r}."
            )
        if self.run_timeout is not None and (
            isinstance(self.run_timeout, bool)
            or not isinstance(self.run_timeout, int)
            or not 1 <= self.run_timeout <= MAX_RUN_TIMEOUT_SECONDS
        ):
            raise DesktopFlowConfigurationError(
                f"run_timeout must be a whole number of seconds from 1 to {MAX_RUN_TIMEOUT_SECONDS}, "
                f"not {self.run_timeout!r}."
            )
        if self.max_output_bytes is not None and (
            isinstance(self.max_output_bytes, bool)
            or not isinstance(self.max_output_bytes, int)
            or self.max_output_bytes <= 0
        ):
            raise DesktopFlowConfigurationError(
                f"max_output_bytes must be a positive number of bytes or None, not {self.max_output_bytes!r}."
            )
        for name in ("check_interval", "timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise DesktopFlowConfigurationError(f"{name} must be a positive number of seconds, not {value!r}.")

    @property
    def hook(self) -> DataverseHook:
        if self._hook is None:
            from airflow_provider_pad.hooks.dataverse import DataverseHook

            self._hook = DataverseHook(dataverse_conn_id=self.dataverse_conn_id)
        return self._hook

    # Lifecycle -----------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any] | None:
        body = self._build_run_body()
        self._task_state_store = context.get("task_state_store")

        previous = self._find_previous_run(context)
        if previous is not None:
            self.flow_session_id = previous.flow_session_id
            if previous.outcome == RunOutcome.SUCCESS:
                return self._finish(session_event(previous))
            not_found_grace_until = 0.0
        else:
            self.flow_session_id = self._start_new_run(body, context)
            not_found_grace_until = time.time() + NOT_FOUND_GRACE_SECONDS
        if not self.wait_for_termination:
            return None

        # Each try waits up to `timeout`, a reattached one included.
        deadline = time.time() + self.timeout
        self.hook.retry_policy = replace(self.hook.retry_policy, deadline=deadline)
        if self.deferrable:
            session = self._read_status_before_deferring(not_found_grace_until)
            if session is not None and session.has_ended:
                return self._finish(session_event(session))
            self._defer(deadline, not_found_grace_until)

        watcher = watch_run(
            self.flow_session_id,
            check_interval=self.check_interval,
            deadline=deadline,
            cancel_at_deadline=self.cancel_on_kill,
            not_found_grace_until=not_found_grace_until,
            log=self.log,
        )
        return self._finish(drive(watcher, self.hook, self.flow_session_id, self.log))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Finish the task from the trigger's event; safe to call more than once for one event."""
        self.flow_session_id = event["flow_session_id"]
        return self._finish(event)

    def on_kill(self) -> None:
        """Cancel the run when the task is killed while it waits on the worker.

        The stored run is forgotten too, so the next try (after a clear, say) starts a new run instead
        of reattaching to the one being cancelled. Airflow kills the task a few seconds after asking
        it to stop, so the cancel retries for at most :data:`ON_KILL_CANCEL_BUDGET_SECONDS`.
        """
        if not self.cancel_on_kill or self.flow_session_id is None or self._run_ended:
            return
        flow_session_id = str(self.flow_session_id)
        cancelled = cancel_quietly(
            self.hook, flow_session_id, "the task was killed", self.log, budget_seconds=ON_KILL_CANCEL_BUDGET_SECONDS
        )
        # A run whose cancel failed may still be going, so the next try must find and reattach to it.
        if cancelled and self._task_state_store is not None:
            self._task_state_store.delete(RUN_STATE_KEY)

    # Steps ---------------------------------------------------------------------------------------

    def _build_run_body(self) -> dict[str, Any]:
        from airflow_provider_pad.hooks.dataverse_api import build_run_body

        self._check_static_arguments()
        if self.connection_reference is not None:
            connection_name, connection_type = self.connection_reference, CONNECTION_TYPE_REFERENCE
        else:
            connection_name, connection_type = self.connection_name, CONNECTION_TYPE_CONNECTION
        if not str(connection_name or "").strip():
            raise DesktopFlowConfigurationError("connection_name or connection_reference rendered to an empty string.")
        return build_run_body(
            connection_name=str(connection_name).strip(),
            connection_type=connection_type,
            run_mode=self.run_mode,
            run_priority=self.run_priority,
            inputs_json=serialize_inputs(self.inputs),
            run_timeout_seconds=self.run_timeout,
            callback_url=self.callback_url or None,
        )

    def _start_new_run(self, body: dict[str, Any], context: Context) -> str:
        """Resolve the flow, check the inputs if asked, start the run and record it for retries."""
        flow_id = self._resolve_flow_id()
        if self.validate_inputs:
            schema = self.hook.get_input_schema(flow_id)
            validate_against_schema(body.get("inputs"), schema, self.flow_name or flow_id)
        flow_session_id = self._start_run(flow_id, body, context)
        self._remember_run(context, flow_id, flow_session_id)
        return flow_session_id

    def _resolve_flow_id(self) -> str:
        from airflow_provider_pad.hooks.dataverse_api import check_guid

        if self.flow_id is not None:
            return check_guid(self.flow_id, "flow_id")
        flow_id = self.hook.resolve_flow_id(str(self.flow_name), include_unpublished=self.include_unpublished)
        self.log.info("Desktop flow %r has workflow id %s.", self.flow_name, flow_id)
        return flow_id

    def _start_run(self, flow_id: str, body: dict[str, Any], context: Context) -> str:
        started = self.hook.run_desktop_flow(flow_id, body)
        self.log.info(
            "Started desktop flow run %s of flow %s on %s (%s, priority %s).",
            started.flow_session_id,
            flow_id,
            body["connectionName"],
            body["runMode"],
            body["runPriority"],
        )
        context["ti"].xcom_push(key=FLOW_SESSION_ID_XCOM_KEY, value=started.flow_session_id)
        self._store_links(context, flow_id, started.flow_session_id)
        if started.license_code and started.license_code != "ValidLicenseCoverage":
            self.log.warning(
                "Dataverse's license check for run %s returned %s: %s. The run may stay queued or fail.",
                started.flow_session_id,
                started.license_code,
                started.license_message or "no message",
            )
        return started.flow_session_id

    def _store_links(self, context: Context, flow_id: str, flow_session_id: str) -> None:
        """Store the portal URLs for the extra links. A failure to read the environment id is logged and does not fail the task."""
        try:
            environment_id = self.hook.get_environment_id()
        except DesktopFlowError as error:
            self.log.warning("No portal links for run %s: reading the environment id failed: %s", flow_session_id, error)
            return
        portal = self.hook.get_portal_url()
        run_url = flow_run_url(portal, environment_id, flow_id, flow_session_id)
        context["ti"].xcom_push(key=DesktopFlowLink().xcom_key, value=flow_details_url(portal, environment_id, flow_id))
        context["ti"].xcom_push(key=DesktopFlowRunLink().xcom_key, value=run_url)
        self.log.info("Desktop flow run %s in the Power Automate portal: %s", flow_session_id, run_url)

    def _remember_run(self, context: Context, flow_id: str, flow_session_id: str) -> None:
        """Record the run in the task state store, so a retry of this try reattaches to it."""
        store = context.get("task_state_store")
        if store is None:
            self.log.info(
                "This Airflow version has no task state store, so a retry of this task starts a new run."
            )
            return
        store.set(
            RUN_STATE_KEY,
            {
                "flow_session_id": flow_session_id,
                "flow_id": flow_id,
                "max_tries": context["ti"].max_tries,
            },
        )

    def _find_previous_run(self, context: Context) -> FlowSession | None:
        """Return the run an earlier try of this task instance started, if a retry should reuse it.

        A retry reuses a run that is still queued or running, or that succeeded. Clearing a task that
        is not running raises ``max_tries`` (Airflow sets it to the try number plus ``retries``), so
        the stored run no longer matches and a new run starts. Clearing a running task kills it, and
        :meth:`on_kill` deletes the stored run. A read that fails for a passing reason raises, so the task
        retries later instead of starting a second run beside a live one.
        """
        store = context.get("task_state_store")
        stored = store.get(RUN_STATE_KEY) if store is not None else None
        if not isinstance(stored, dict) or stored.get("max_tries") != context["ti"].max_tries:
            return None

        flow_session_id = str(stored["flow_session_id"])
        try:
            session = self.hook.get_flow_session(flow_session_id)
        except DataverseNotFoundError as error:
            self.log.warning("The earlier try's run %s was not found, so a new run starts: %s", flow_session_id, error)
            return None
        if session.outcome not in (RunOutcome.RUNNING, RunOutcome.SUCCESS):
            self.log.info(
                "The earlier try's run %s ended as %s, so a new run starts.", flow_session_id, session.label
            )
            return None

        self.log.info("Reattaching to run %s of an earlier try; it is %s.", flow_session_id, session.label)
        context["ti"].xcom_push(key=FLOW_SESSION_ID_XCOM_KEY, value=flow_session_id)
        self._store_links(context, str(stored["flow_id"]), flow_session_id)
        return session

    def _defer(self, deadline: float, not_found_grace_until: float) -> None:
        from airflow_provider_pad.triggers.desktop_flow import DesktopFlowRunTrigger

        self.log.info(
            "Deferring until desktop flow run %s ends (checking every %s s, for at most %s s).",
            self.flow_session_id,
            self.check_interval,
            self.timeout,
        )
        self.defer(
            trigger=DesktopFlowRunTrigger(
                flow_session_id=str(self.flow_session_id),
                dataverse_conn_id=self.dataverse_conn_id,
                check_interval=self.check_interval,
                deadline=deadline,
                cancel_on_kill=self.cancel_on_kill,
                not_found_grace_until=not_found_grace_until,
            ),
            method_name="execute_complete",
        )

    def _read_status_before_deferring(self, not_found_grace_until: float) -> FlowSession | None:
        """Read the status once, so a run that already ended needs no trigger; None if unreadable now."""
        try:
            return self.hook.get_flow_session(str(self.flow_session_id))
        except DataverseNotFoundError:
            if time.time() >= not_found_grace_until:
                raise
        except DataverseApiError as error:
            if not error.is_transient:
                raise
            self.log.warning("Reading desktop flow run %s failed; the trigger reads it again: %s", self.flow_session_id, error)
        return None

    def _finish(self, event: dict[str, Any]) -> dict[str, Any]:
        """Return the outputs of a successful run or raise the error that matches its outcome."""
        self._run_ended = True
        raise_for_event(event, timeout_seconds=self.timeout)

        outputs = self.hook.get_run_outputs(str(self.flow_session_id))
        size = len(json.dumps(outputs, ensure_ascii=False).encode("utf-8"))
        if self.max_output_bytes is not None and size > self.max_output_bytes:
            raise DesktopFlowOutputsTooLargeError(
                f"Desktop flow run {self.flow_session_id} succeeded, but its outputs are {size} bytes of JSON, "
                f"more than max_output_bytes={self.max_output_bytes}, so they were not pushed to XCom. Have the "
                "flow write large data to storage and output a reference, or raise max_output_bytes."
            )
        self.log.info("Desktop flow run %s succeeded with outputs %s.", self.flow_session_id, sorted(outputs))
        return outputs
