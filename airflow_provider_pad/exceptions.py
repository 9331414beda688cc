"""Exceptions raised by the Power Automate Desktop provider.

Every error carries the ids a person needs to find the run or request again: the HTTP status and
Dataverse ``error.code`` for API errors, the flowsession id and status for run outcomes.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException, AirflowFailException


class DesktopFlowError(AirflowException):
    """Base class of every error this provider raises."""


class DesktopFlowConfigurationError(DesktopFlowError, AirflowFailException, ValueError):
    """An argument or connection field is invalid; nothing was sent to Dataverse.

    It fails the task without retries, because a retry would meet the same invalid value.
    """


class DesktopFlowInputsError(DesktopFlowConfigurationError):
    """The flow inputs cannot be sent: not a JSON object, not serializable, or too large."""


class DataverseApiError(DesktopFlowError):
    """Dataverse or a gateway in front of it returned an error status.

    :param status_code: HTTP status, or None when no response arrived.
    :param error_code: Dataverse ``error.code`` (for example ``0x80040220``), empty when the body had none.
    :param message: Dataverse ``error.message`` or the start of a non-JSON body.
    :param request: method and path of the request, without the query string's secrets (it has none).
    :param transient: whether the same request may succeed later; by default true for no response,
        HTTP 429 and 5xx.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None,
        error_code: str = "",
        request: str = "",
        transient: bool | None = None,
    ):
        self.status_code = status_code
        self._transient = transient
        self.error_code = error_code
        self.error_message = message
        self.request = request
        super().__init__(self._describe())

    def _describe(self) -> str:
        status = f" with HTTP {self.status_code}" if self.status_code is not None else ""
        code = f" (Dataverse error {self.error_code})" if self.error_code else ""
        hint = self.hint()
        return f"{self.request} failed{status}{code}: {self.error_message}" + (f" {hint}" if hint else "")

    def hint(self) -> str:
        """Return what a person should check next, or an empty string."""
        return ""

    @property
    def is_transient(self) -> bool:
        """Whether the same request may succeed later, so a poller should try again instead of failing."""
        if self._transient is not None:
            return self._transient
        return self.status_code is None or self.status_code == 429 or self.status_code >= 500

    def __str__(self) -> str:
        # Notes (for example "a retry would pass the deadline") belong to the message users see.
        notes = getattr(self, "__notes__", None) or []
        return " ".join([super().__str__(), *notes])


class DataverseAuthenticationError(DataverseApiError):
    """No access token could be acquired, or Dataverse rejected the token."""

    def hint(self) -> str:
        if self.is_transient:
            return "Check that this machine can reach the host (DNS, proxy, firewall) and that it is up."
        return (
            "Check the connection's tenant id, client id and credential (secret, certificate, federated "
            "token or managed identity), and that the identity is an application user in this Dataverse "
            "environment."
        )


class DataversePermissionError(DataverseApiError):
    """Dataverse refused the request for lack of privileges (HTTP 403)."""

    def hint(self) -> str:
        return (
            "Give the application user a security role with Owner-level privileges on flowsessions "
            "and read access to workflows; reading a run's status and cancelling it need Owner privileges."
        )


class DataverseNotFoundError(DataverseApiError):
    """The flow, flowsession or endpoint does not exist (HTTP 404)."""


class DataverseThrottledError(DataverseApiError):
    """Dataverse service protection limits rejected the request (HTTP 429).

    :param retry_after_seconds: the ``Retry-After`` header value, or None when absent.
    """

    def __init__(self, message: str, *, retry_after_seconds: float | None = None, **kwargs):
        self.retry_after_seconds = retry_after_seconds
        super().__init__(message, **kwargs)


class DesktopFlowRunMayExistError(DesktopFlowError, AirflowFailException):
    """RunDesktopFlow got no usable response, and whether it started a run is unknown.

    It fails the task without retries, because a retry could start a second run beside the first.
    """


class DesktopFlowNotFoundError(DesktopFlowError):
    """No desktop flow has the requested name."""


class AmbiguousDesktopFlowNameError(DesktopFlowError):
    """Several desktop flows share the requested name."""


class DesktopFlowRunError(DesktopFlowError):
    """A desktop flow run ended without succeeding.

    :param flow_session_id: id of the flowsession row of the run.
    :param statuscode: the flowsession ``statuscode`` the run ended with.
    :param status_label: the label of that statuscode, for example ``Failed``.
    :param errorcode: the flowsession ``errorcode`` column, if any.
    :param errormessage: the flowsession ``errormessage`` column, if any.
    """

    def __init__(
        self,
        *,
        flow_session_id: str,
        statuscode: int | None,
        status_label: str,
        errorcode: str | None = None,
        errormessage: str | None = None,
    ):
        self.flow_session_id = flow_session_id
        self.statuscode = statuscode
        self.status_label = status_label
        self.errorcode = errorcode
        self.errormessage = errormessage
        super().__init__(self._describe())

    def _describe(self) -> str:
        message = (
            f"Desktop flow run {self.flow_session_id} ended with status {self.status_label} "
            f"(statuscode {self.statuscode})"
        )
        if self.errorcode or self.errormessage:
            message += f": errorcode {self.errorcode or '-'}, errormessage {self.errormessage or '-'}"
        return message + "."


class DesktopFlowRunCancelledError(DesktopFlowRunError):
    """A desktop flow run was cancelled (statuscode 7) before it finished."""


class DesktopFlowOutputsTooLargeError(DesktopFlowError, AirflowFailException):
    """A run succeeded, but its outputs exceed the operator's ``max_output_bytes``.

    It fails the task without retries: a retry would reattach to the same run and its same outputs.
    """


class DesktopFlowRunTimeoutError(DesktopFlowError):
    """The run did not end before the operator's ``timeout``.

    :param flow_session_id: id of the flowsession row of the run.
    :param last_status_label: the label of the last status read before giving up.
    :param cancelled: True if the run was cancelled, False if cancelling it failed, None if no
        cancel was attempted.
    """

    def __init__(
        self, *, flow_session_id: str, timeout_seconds: float, last_status_label: str, cancelled: bool | None
    ):
        self.flow_session_id = flow_session_id
        self.last_status_label = last_status_label
        self.cancelled = cancelled
        if cancelled is None:
            action = "The run was left running."
        elif cancelled:
            action = "A cancel request was sent."
        else:
            action = "Cancelling it failed (see the warning above); cancel it in the Power Automate portal."
        super().__init__(
            f"Desktop flow run {flow_session_id} did not end within {timeout_seconds:g} seconds; "
            f"its last status was {last_status_label}. {action}"
        )
