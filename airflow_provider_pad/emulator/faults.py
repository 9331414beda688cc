"""Scripted faults that the emulator sends in place of, or after, the normal handling of a request."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Fault:
    """
    One scripted response to one request of an endpoint.

    :param status: HTTP status to send. The default, 500, is an unexpected server error.
    :param headers: response headers to send, such as ``{"Retry-After": "2"}`` for a 429.
        For a generated body, the emulator adds ``Content-Type``, plus ``OData-Version`` on
        Dataverse endpoints. It adds no other headers.
    :param body: response body to send. None sends an error body in the endpoint's own format
        (Dataverse or identity platform) when ``status`` is 400 or more, and an empty body otherwise.
        A given body is sent as it is, with no ``Content-Type`` unless ``headers`` has one.
    :param delay_seconds: seconds to wait before responding or dropping the connection.
    :param after_handling: if True, the request is first handled normally (a run is created,
        a run is cancelled) and the fault then replaces the real response.
    :param drop: if True, close the connection without any HTTP response. ``status``,
        ``headers`` and ``body`` are then ignored, and the request log records status 0.
    """

    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: str | bytes | None = None
    delay_seconds: float = 0.0
    after_handling: bool = False
    drop: bool = False

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 599:
            raise ValueError(f"Fault status must be an HTTP status from 100 to 599, got {self.status!r}.")
        if self.delay_seconds < 0:
            raise ValueError(f"Fault delay_seconds must be zero or more, got {self.delay_seconds!r}.")
