"""The emulator's shared state: flows, runs, tokens, faults and the request log, used from two threads."""

from __future__ import annotations

import copy
import secrets
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from airflow_provider_pad.emulator.faults import Fault
from airflow_provider_pad.emulator.flows import (
    EmulatedFlow,
    FlowSession,
    normalize_guid,
)

ENDPOINT_NAMES = frozenset(
    {
        "token",
        "openid",
        "list_workflows",
        "get_workflow",
        "input_schema",
        "output_schema",
        "run",
        "list_sessions",
        "get_session",
        "session_outputs",
        "cancel",
        "whoami",
        "current_organization",
        "managed_identity",
        "federation_openid",
        "federation_keys",
    }
)

# Paths of the emulator's federation issuer (its ``iss``) and of its App Service managed identity endpoint.
FEDERATION_PATH = "/federation"
MANAGED_IDENTITY_PATH = "/msi/token"

# Each access token is this many random bytes, URL-safe base64 encoded.
ACCESS_TOKEN_BYTES = 48

# Row version of the first flow added, for its @odata.etag. Later flows count up from it.
FIRST_ROW_VERSION = 1000001


@dataclass(frozen=True)
class EmulatorSettings:
    """The emulator's fixed configuration, known once it listens on a port."""

    base_url: str
    tenant_id: str
    client_id: str
    client_secret: str
    token_lifetime_seconds: int
    queue_seconds: float
    run_seconds: float
    page_size: int
    max_url_length: int
    managed_identity_header: str

    @property
    def authority(self) -> str:
        return f"{self.base_url}/{self.tenant_id}"

    @property
    def token_endpoint(self) -> str:
        return f"{self.authority}/oauth2/v2.0/token"

    @property
    def federation_issuer(self) -> str:
        """The ``iss`` of the emulator's own OpenID Connect issuer for workload identity federation."""
        return f"{self.base_url}{FEDERATION_PATH}"

    @property
    def managed_identity_endpoint(self) -> str:
        return f"{self.base_url}{MANAGED_IDENTITY_PATH}"

    @property
    def web_api_url(self) -> str:
        return f"{self.base_url}/api/data/v9.2"


@dataclass(frozen=True)
class RequestRecord:
    """
    One request the emulator received.

    ``query`` is the raw, still percent-encoded query string. ``status`` is the HTTP status
    actually sent, 0 when the connection was dropped. ``endpoint`` is None for a path the
    emulator does not serve. ``time`` is when the request arrived, in epoch seconds.
    ``detail`` is the credential kind of a token request ("client_secret", "certificate",
    "federated" or "managed_identity"), None for other requests and for token requests
    rejected before their kind was known.
    """

    method: str
    path: str
    query: str
    status: int
    endpoint: str | None
    time: float
    detail: str | None = None


@dataclass(frozen=True)
class RunRequest:
    """The validated parameters of one RunDesktopFlow call."""

    run_mode: str
    run_priority: str
    connection_name: str
    connection_type: int
    timeout_seconds: int
    inputs: dict[str, Any]
    callback_url: str | None


class UnknownRecordError(KeyError):
    """No flow or flow session has the requested id."""


class EmulatorState:
    """
    The emulator's mutable state, guarded by one lock.

    Route handlers run in uvicorn's event loop thread while tests read from their own thread.
    Every method takes the lock and returns copies of the sessions and lists it reads, so that
    callers never see a half-made change. Flows are returned as the live objects.
    """

    def __init__(self, flows: list[EmulatedFlow]) -> None:
        self._lock = threading.Lock()
        self._flows: dict[str, EmulatedFlow] = {}
        self._flow_versions: dict[str, int] = {}
        self._next_version = FIRST_ROW_VERSION
        self._sessions: dict[str, FlowSession] = {}
        self._token_expiry: dict[str, float] = {}
        # Every token ever issued, kept so leak tests can search logs for expired ones too.
        self._issued_tokens: list[str] = []
        self._faults: dict[str, deque[Fault]] = {}
        self._log: list[RequestRecord] = []
        self._session_reads: Counter[str] = Counter()
        for flow in flows:
            self.add_flow(flow)

    # Flows

    def add_flow(self, flow: EmulatedFlow) -> None:
        with self._lock:
            self._flows[flow.workflow_id] = flow
            self._flow_versions[flow.workflow_id] = self._next_version
            self._next_version += 1

    def flows(self) -> dict[str, EmulatedFlow]:
        with self._lock:
            return dict(self._flows)

    def flow_rows(self) -> list[tuple[EmulatedFlow, int]]:
        """Return every flow with its row version, in the order the flows were added."""
        with self._lock:
            return [(flow, self._flow_versions[flow_id]) for flow_id, flow in self._flows.items()]

    def get_flow(self, workflow_id: str) -> tuple[EmulatedFlow, int]:
        """Return the flow and its row version, or raise UnknownRecordError."""
        with self._lock:
            if workflow_id not in self._flows:
                raise UnknownRecordError(workflow_id)
            return self._flows[workflow_id], self._flow_versions[workflow_id]

    # Flow sessions

    def create_session(self, flow: EmulatedFlow, run: RunRequest, defaults: EmulatorSettings) -> FlowSession:
        """Queue a run of ``flow`` and return a copy of its new session."""
        session = FlowSession(
            flowsession_id=str(uuid.uuid4()),
            workflow_id=flow.workflow_id,
            inputs=copy.deepcopy(run.inputs),
            run_mode=run.run_mode,
            run_priority=run.run_priority,
            connection_name=run.connection_name,
            connection_type=run.connection_type,
            timeout_seconds=run.timeout_seconds,
            callback_url=run.callback_url,
            created_at=time.time(),
            queue_seconds=defaults.queue_seconds if flow.queue_seconds is None else flow.queue_seconds,
            run_seconds=defaults.run_seconds if flow.run_seconds is None else flow.run_seconds,
            outcome=flow.outcome,
            outcome_errorcode=flow.errorcode,
            outcome_errormessage=flow.errormessage,
            outputs_function=flow.outputs,
        )
        session.modified_at = session.created_at
        with self._lock:
            self._sessions[session.flowsession_id] = session
            return copy.deepcopy(session)

    def get_session(self, flowsession_id: str) -> FlowSession:
        """Return a copy of the session brought up to date, or raise UnknownRecordError."""
        with self._lock:
            session = self._find_session(flowsession_id)
            session.advance(time.time())
            return copy.deepcopy(session)

    def sessions(self) -> dict[str, FlowSession]:
        now = time.time()
        with self._lock:
            for session in self._sessions.values():
                session.advance(now)
            return {flowsession_id: copy.deepcopy(session) for flowsession_id, session in self._sessions.items()}

    def cancel_session(self, flowsession_id: str) -> tuple[bool, FlowSession]:
        """Cancel a queued or running session, and return whether it was cancelled and a copy of it."""
        with self._lock:
            session = self._find_session(flowsession_id)
            cancelled = session.cancel(time.time())
            return cancelled, copy.deepcopy(session)

    def set_session_status(
        self,
        flowsession_id: str,
        statuscode: int,
        errorcode: str | None = None,
        errormessage: str | None = None,
    ) -> None:
        # Codes outside 0 to 14 are allowed, so that tests can check how a client treats an unknown code.
        if not isinstance(statuscode, int) or isinstance(statuscode, bool):
            raise TypeError(f"statuscode must be an int, got {statuscode!r}.")
        with self._lock:
            session = self._find_session(flowsession_id)
            session.pin_status(statuscode, time.time(), errorcode, errormessage)

    def record_session_reads(self, flowsession_ids: Iterable[str]) -> None:
        """Count one status read for each flow session in ``flowsession_ids``."""
        with self._lock:
            self._session_reads.update(flowsession_ids)

    def count_session_reads(self, flowsession_id: str) -> int:
        """Return how many status reads included the session, or raise UnknownRecordError."""
        with self._lock:
            session = self._find_session(flowsession_id)
            return self._session_reads[session.flowsession_id]

    def session_read_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._session_reads)

    def _find_session(self, flowsession_id: str) -> FlowSession:
        try:
            key = normalize_guid(flowsession_id, what="flowsession_id")
        except ValueError:
            raise UnknownRecordError(flowsession_id) from None
        if key not in self._sessions:
            raise UnknownRecordError(flowsession_id)
        return self._sessions[key]

    # Access tokens

    def issue_token(self, lifetime_seconds: float) -> str:
        """Create a random opaque access token valid for ``lifetime_seconds``."""
        token = secrets.token_urlsafe(ACCESS_TOKEN_BYTES)
        now = time.monotonic()
        with self._lock:
            self._token_expiry = {known: expiry for known, expiry in self._token_expiry.items() if expiry > now}
            self._token_expiry[token] = now + lifetime_seconds
            self._issued_tokens.append(token)
        return token

    def issued_tokens(self) -> list[str]:
        """Return every access token issued so far, for tests that look for leaks."""
        with self._lock:
            return list(self._issued_tokens)

    def is_token_valid(self, token: str) -> bool:
        with self._lock:
            expiry = self._token_expiry.get(token)
        return expiry is not None and time.monotonic() < expiry

    def expire_tokens(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._token_expiry = dict.fromkeys(self._token_expiry, now)

    # Faults

    def add_faults(self, endpoint: str, faults: tuple[Fault, ...]) -> None:
        with self._lock:
            self._faults.setdefault(endpoint, deque()).extend(faults)

    def take_fault(self, endpoint: str) -> Fault | None:
        """Remove and return the next scripted fault for ``endpoint``, if there is one."""
        with self._lock:
            queue = self._faults.get(endpoint)
            return queue.popleft() if queue else None

    def clear_faults(self, endpoint: str | None = None) -> None:
        with self._lock:
            if endpoint is None:
                self._faults.clear()
            else:
                self._faults.pop(endpoint, None)

    # Request log

    def record(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)

    def records(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    def count(self, endpoint: str | None, status: int | None = None) -> int:
        with self._lock:
            return sum(
                1
                for record in self._log
                if record.endpoint == endpoint and (status is None or record.status == status)
            )

    def reset_log(self) -> None:
        """Empty the request log and the status read counts of the flow sessions."""
        with self._lock:
            self._log.clear()
            self._session_reads.clear()
