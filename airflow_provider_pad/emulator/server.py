"""DataverseEmulator: the emulator's life cycle, serving HTTPS with uvicorn in a background thread."""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from airflow_provider_pad.emulator.credential_registry import (
    DEFAULT_FEDERATION_AUDIENCE,
    CredentialRegistry,
    FederatedCredential,
    ManagedIdentity,
    RegisteredCertificate,
    TrustedIssuer,
)
from airflow_provider_pad.emulator.faults import Fault
from airflow_provider_pad.emulator.flows import EmulatedFlow, FlowSession, default_flows
from airflow_provider_pad.emulator.identifiers import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_TENANT_ID
from airflow_provider_pad.emulator.state import ENDPOINT_NAMES, EmulatorSettings, EmulatorState, RequestRecord

if TYPE_CHECKING:
    import uvicorn

    from airflow_provider_pad.emulator.certificates import CertificateFiles, ClientCertificate
    from airflow_provider_pad.emulator.federation import FederationIssuer

    CertificateSource = bytes | str | os.PathLike[str] | ClientCertificate

logger = logging.getLogger("airflow_provider_pad.emulator")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_TOKEN_LIFETIME_SECONDS = 3600
DEFAULT_QUEUE_SECONDS = 1.0
DEFAULT_RUN_SECONDS = 2.0
DEFAULT_PAGE_SIZE = 50
# Microsoft's page "Compose HTTP requests and handle errors" (section "Maximum URL length",
# added in September 2023) gives 32 KB (32768 characters) as the longest URL Dataverse accepts,
# and 64 KB for a request sent inside a $batch body.
DEFAULT_MAX_URL_LENGTH = 32768
# h11, which uvicorn uses, sends a plain-text 400 without calling the application once more than
# its buffer limit (16 KiB by default) of a request head has arrived without the head's end.
# The emulator sets that limit this many bytes above max_url_length. That leaves room for the
# headers, and URLs up to this much too long get the emulator's 414 with a Dataverse error body.
REQUEST_HEAD_ALLOWANCE_BYTES = 1024 * 1024

STARTUP_TIMEOUT_SECONDS = 10.0
SHUTDOWN_TIMEOUT_SECONDS = 10.0
# uvicorn gives requests still in progress, such as a delayed fault, this long to finish on stop.
GRACEFUL_SHUTDOWN_SECONDS = 2
DEFAULT_FEDERATED_TOKEN_LIFETIME_SECONDS = 3600
# The managed identity endpoint's X-IDENTITY-HEADER secret is this many random bytes, URL-safe base64 encoded.
IDENTITY_HEADER_BYTES = 32


class DataverseEmulator:
    """
    A local stand-in for the Microsoft identity platform and a Dataverse environment's Web API.

    It serves HTTPS on ``host``, with a certificate signed by a CA that it generates at start
    and deletes at stop. Use it as a context manager or call :meth:`start` and :meth:`stop`.

    :param host: address to listen on. Keep the default loopback address.
    :param port: TCP port, or 0 for a free one, which :attr:`base_url` then shows.
    :param tenant_id: the only tenant the token endpoint accepts.
    :param client_id: the only application (client) id the token endpoint accepts.
    :param client_secret: the client secret the token endpoint accepts.
    :param token_lifetime_seconds: lifetime of each access token, sent as ``expires_in``.
    :param flows: the flows to serve, or None for :func:`default_flows`.
    :param queue_seconds: default time a run waits in the queue (statuscode 3) before it runs.
    :param run_seconds: default time a run stays Running (statuscode 2) before its outcome.
    :param page_size: maximum rows per page of a ``workflows`` or ``flowsessions`` listing. A smaller
        ``Prefer: odata.maxpagesize`` wins, and longer results continue through ``@odata.nextLink``.
    :param max_url_length: maximum length in characters of a Web API request target (path and
        query string, percent-encoded). A longer one gets 414 with a Dataverse error body. The
        default, 32768, is the maximum Microsoft documents for Dataverse.
    :param client_certificates: certificates the token endpoint accepts as the app's credentials,
        each as PEM or DER bytes, PEM text, a file path or a
        :class:`~airflow_provider_pad.emulator.certificates.ClientCertificate`. See
        :meth:`register_client_certificate`.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        tenant_id: str = DEFAULT_TENANT_ID,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        token_lifetime_seconds: int = DEFAULT_TOKEN_LIFETIME_SECONDS,
        flows: list[EmulatedFlow] | None = None,
        queue_seconds: float = DEFAULT_QUEUE_SECONDS,
        run_seconds: float = DEFAULT_RUN_SECONDS,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_url_length: int = DEFAULT_MAX_URL_LENGTH,
        client_certificates: list[CertificateSource] | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be from 0 to 65535, got {port!r}.")
        if token_lifetime_seconds <= 0:
            raise ValueError(f"token_lifetime_seconds must be positive, got {token_lifetime_seconds!r}.")
        if queue_seconds < 0 or run_seconds < 0:
            raise ValueError(
                f"queue_seconds and run_seconds must be zero or more, got {queue_seconds!r} and {run_seconds!r}."
            )
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size!r}.")
        if max_url_length < 1:
            raise ValueError(f"max_url_length must be at least 1, got {max_url_length!r}.")

        self._host = host
        self._requested_port = port
        self._tenant_id = tenant_id
        self._client_id = client_id
        self._client_secret = client_secret
        self._token_lifetime_seconds = int(token_lifetime_seconds)
        self._queue_seconds = queue_seconds
        self._run_seconds = run_seconds
        self._page_size = page_size
        self._max_url_length = max_url_length
        self._state = EmulatorState(default_flows() if flows is None else list(flows))
        self._credentials = CredentialRegistry()
        self._managed_identity_header = secrets.token_urlsafe(IDENTITY_HEADER_BYTES)
        self._federation: FederationIssuer | None = None
        for certificate in client_certificates or ():
            self.register_client_certificate(certificate)

        self._settings: EmulatorSettings | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._certificate_directory: tempfile.TemporaryDirectory[str] | None = None
        self._ca_path: Path | None = None

    # Life cycle

    def start(self) -> None:
        """Generate the certificates and serve in a background thread. Return once the port accepts connections."""
        if self._server is not None:
            raise RuntimeError("The Dataverse emulator is already running. Call stop() before starting it again.")

        # cryptography, like uvicorn in _create_server, loads only when an emulator starts or registers a certificate.
        from airflow_provider_pad.emulator.certificates import write_certificates
        from airflow_provider_pad.emulator.federation import FederationIssuer

        if self._federation is None:
            self._federation = FederationIssuer()

        listener = _listen(self._host, self._requested_port)
        certificate_directory = tempfile.TemporaryDirectory(prefix="dataverse-emulator-")
        try:
            server_names = tuple(dict.fromkeys((self._host, "127.0.0.1", "localhost", "::1")))
            certificates = write_certificates(Path(certificate_directory.name), server_names)
            settings = self._settings_for_port(listener.getsockname()[1])
            server = self._create_server(settings, certificates)
            thread = threading.Thread(
                target=server.run,
                kwargs={"sockets": [listener]},
                name=f"dataverse-emulator-{listener.getsockname()[1]}",
                daemon=True,
            )
            thread.start()
            _wait_until_started(server, thread)
        except BaseException:
            listener.close()
            certificate_directory.cleanup()
            raise

        self._settings = settings
        self._server = server
        self._thread = thread
        self._certificate_directory = certificate_directory
        self._ca_path = certificates.ca_path
        logger.info(
            "The Dataverse emulator is serving %s with the CA certificate %s.", settings.base_url, certificates.ca_path
        )

    def stop(self) -> None:
        """Stop serving, wait for the server thread, and delete the certificates. Does nothing when not running."""
        if self._server is None:
            return
        assert self._thread is not None and self._certificate_directory is not None

        self._server.should_exit = True
        self._thread.join(SHUTDOWN_TIMEOUT_SECONDS)
        if self._thread.is_alive():
            logger.warning(
                "The Dataverse emulator's server thread did not stop within %s seconds.", SHUTDOWN_TIMEOUT_SECONDS
            )
        self._certificate_directory.cleanup()
        logger.info("The Dataverse emulator at %s has stopped.", self.base_url)

        self._server = None
        self._thread = None
        self._certificate_directory = None
        self._ca_path = None
        self._settings = None

    def __enter__(self) -> DataverseEmulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _settings_for_port(self, port: int) -> EmulatorSettings:
        return EmulatorSettings(
            base_url=f"https://{_url_host(self._host)}:{port}",
            tenant_id=self._tenant_id,
            client_id=self._client_id,
            client_secret=self._client_secret,
            token_lifetime_seconds=self._token_lifetime_seconds,
            queue_seconds=self._queue_seconds,
            run_seconds=self._run_seconds,
            page_size=self._page_size,
            max_url_length=self._max_url_length,
            managed_identity_header=self._managed_identity_header,
        )

    def _create_server(self, settings: EmulatorSettings, certificates: CertificateFiles) -> uvicorn.Server:
        # Imported here so that importing the package stays cheap for code that only needs its constants.
        import uvicorn

        from airflow_provider_pad.emulator.app import EmulatorApp
        from airflow_provider_pad.emulator.connections import ConnectionRegistry, tracked_protocol_class

        assert self._federation is not None
        connections = ConnectionRegistry()
        config = uvicorn.Config(
            EmulatorApp(settings, self._state, connections, self._credentials, self._federation),
            http=tracked_protocol_class(connections),
            loop="asyncio",
            lifespan="off",
            ssl_certfile=str(certificates.certificate_path),
            ssl_keyfile=str(certificates.private_key_path),
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            h11_max_incomplete_event_size=settings.max_url_length + REQUEST_HEAD_ALLOWANCE_BYTES,
        )
        return uvicorn.Server(config)

    # Connection details

    @property
    def base_url(self) -> str:
        """The Dataverse environment URL, ``https://<host>:<port>``. The Web API is under ``/api/data/v9.2/``."""
        return self._running_settings().base_url

    @property
    def authority(self) -> str:
        """The identity platform authority for MSAL: ``<base_url>/<tenant_id>``."""
        return self._running_settings().authority

    @property
    def token_endpoint(self) -> str:
        """The OAuth 2.0 token endpoint, ``<authority>/oauth2/v2.0/token``, which client assertions name as ``aud``."""
        return self._running_settings().token_endpoint

    @property
    def ca_path(self) -> str:
        """Path of the PEM CA certificate that signed the server certificate, to pass as ``verify``."""
        self._running_settings()
        assert self._ca_path is not None
        return str(self._ca_path)

    @property
    def tenant_id(self) -> str:
        return self._tenant_id

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def client_secret(self) -> str:
        return self._client_secret

    def connection_extra(self) -> dict[str, str]:
        """Return the ``extra`` of an Airflow connection to this emulator."""
        return {"tenant_id": self._tenant_id, "authority": self.authority, "verify": self.ca_path}

    def connection_json(self) -> str:
        """Return an Airflow connection in JSON, for ``AIRFLOW_CONN_DATAVERSE_DEFAULT``."""
        connection = {
            "conn_type": "dataverse",
            "host": self.base_url,
            "login": self._client_id,
            "password": self._client_secret,
            "extra": self.connection_extra(),
        }
        return json.dumps(connection)

    # Certificate credentials

    def register_client_certificate(self, certificate: CertificateSource) -> None:
        """
        Accept client assertions signed with this certificate's key, named by ``x5t`` or ``x5t#S256``.

        :param certificate: PEM or DER bytes, PEM text, the path of a PEM or DER file, or a
            :class:`~airflow_provider_pad.emulator.certificates.ClientCertificate`. Only the public
            certificate is read. Raise ValueError when it is not an X.509 certificate.
        """
        from airflow_provider_pad.emulator.certificates import certificate_thumbprints

        loaded = _load_certificate(certificate)
        thumbprint_sha1, thumbprint_sha256 = certificate_thumbprints(loaded)
        self._credentials.add_certificate(RegisteredCertificate(loaded, thumbprint_sha1, thumbprint_sha256))

    def register_trusted_issuer(self, ca_certificate: CertificateSource, *, subject: str) -> None:
        """
        Accept, for subject-name/issuer authentication, certificates with ``subject`` that this CA issued.

        A client assertion then needs no registered certificate: its ``x5c`` header carries the
        leaf certificate (and any intermediates), whose chain must lead to this CA and whose
        common name or whole RFC 4514 subject must equal ``subject``, ignoring case.

        :param ca_certificate: the CA certificate, in any form :meth:`register_client_certificate` takes.
        :param subject: the certificate subject the app trusts, such as ``"app.contoso.com"``.
        """
        from airflow_provider_pad.emulator.certificates import is_certificate_authority

        if not subject.strip():
            raise ValueError("subject must name the trusted certificate subject, got an empty string.")
        loaded = _load_certificate(ca_certificate)
        if not is_certificate_authority(loaded):
            raise ValueError(
                f"The certificate {loaded.subject.rfc4514_string()} is not a CA: its basicConstraints extension "
                "is missing or has ca=False."
            )
        self._credentials.add_trusted_issuer(TrustedIssuer(loaded, subject))

    # Workload identity federation

    @property
    def federation_issuer(self) -> str:
        """
        The ``iss`` of the emulator's own OpenID Connect issuer, ``<base_url>/federation``.

        Its discovery document is at ``<federation_issuer>/.well-known/openid-configuration``.
        """
        return self._running_settings().federation_issuer

    def register_federated_credential(
        self, issuer: str, subject: str, audience: str = DEFAULT_FEDERATION_AUDIENCE
    ) -> None:
        """
        Accept as client assertions the tokens whose ``iss``, ``sub`` and ``aud`` equal these values.

        The values compare case-sensitively, as the identity platform's do. The emulator checks
        signatures only for its own issuer, :attr:`federation_issuer`, so tokens of any other
        registered issuer fail signature validation.
        """
        if not issuer or not subject or not audience:
            raise ValueError(
                f"issuer, subject and audience must not be empty, got {issuer!r}, {subject!r} and {audience!r}."
            )
        self._credentials.add_federated_credential(FederatedCredential(issuer, subject, audience))

    def issue_federated_token(
        self,
        subject: str,
        lifetime_seconds: int = DEFAULT_FEDERATED_TOKEN_LIFETIME_SECONDS,
        *,
        audience: str = DEFAULT_FEDERATION_AUDIENCE,
    ) -> str:
        """
        Return a JWT from :attr:`federation_issuer` for ``subject``, signed with RS256.

        It carries ``iss``, ``sub``, ``aud``, ``iat``, ``nbf``, ``exp`` and ``jti``. A zero or
        negative ``lifetime_seconds`` makes an already expired token. The token endpoint allows
        300 seconds of clock skew, so it rejects a token only once ``exp`` is further in the past.
        """
        settings = self._running_settings()
        assert self._federation is not None
        return self._federation.issue_token(settings.federation_issuer, subject, audience, lifetime_seconds)

    # Managed identities

    @property
    def managed_identity_endpoint(self) -> str:
        """
        The App Service managed identity endpoint, ``<base_url>/msi/token``, to set as ``IDENTITY_ENDPOINT``.

        It is HTTPS with the emulator's CA, unlike App Service's ``http://localhost`` endpoint,
        so the HTTP client must trust :attr:`ca_path`.
        """
        return self._running_settings().managed_identity_endpoint

    @property
    def managed_identity_header(self) -> str:
        """The random secret the managed identity endpoint expects in ``X-IDENTITY-HEADER`` (``IDENTITY_HEADER``)."""
        return self._managed_identity_header

    def register_managed_identity(
        self, client_id: str | None = None, *, object_id: str | None = None, resource_id: str | None = None
    ) -> ManagedIdentity:
        """
        Serve tokens for a managed identity and return it, with generated ids where none were given.

        :param client_id: None for the system-assigned identity, or the client id of a
            user-assigned identity, which a request names with ``client_id``.
        :param object_id: the object (principal) id that a request may name with ``object_id``.
        :param resource_id: the Azure resource id of a user-assigned identity, which a request
            may name with ``mi_res_id``. A system-assigned identity has none.
        """
        return self._credentials.add_managed_identity(client_id, object_id, resource_id)

    # Request log

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the request log, oldest first."""
        return self._state.records()

    def count(self, endpoint: str, status: int | None = None) -> int:
        """Return how many logged requests went to ``endpoint``, counting only ``status`` when given."""
        self._check_endpoint(endpoint)
        return self._state.count(endpoint, status)

    def reset_log(self) -> None:
        """Empty the request log and the status read counts that :meth:`count_session_reads` returns."""
        self._state.reset_log()

    def count_session_reads(self, flowsession_id: str) -> int:
        """
        Return how many status reads the emulator served for a flow session. Raise KeyError for an unknown id.

        Each ``GET flowsessions(<id>)`` counts once, and so does each ``GET flowsessions`` page that
        includes the session's row. A request that a fault replaces before handling does not count.
        """
        return self._state.count_session_reads(flowsession_id)

    # Flows and flow sessions

    @property
    def flows(self) -> dict[str, EmulatedFlow]:
        """The served flows by workflow id. The dict is a copy, but the flows are the live objects."""
        return self._state.flows()

    @property
    def sessions(self) -> dict[str, FlowSession]:
        """Copies of all flow sessions by flowsession id, brought up to date with the clock."""
        return self._state.sessions()

    def add_flow(self, flow: EmulatedFlow) -> None:
        """Serve ``flow`` too, replacing a flow with the same workflow id."""
        self._state.add_flow(flow)

    def set_session_status(
        self,
        flowsession_id: str,
        statuscode: int,
        errorcode: str | None = None,
        errormessage: str | None = None,
    ) -> None:
        """
        Give a flow session ``statuscode`` now and stop its schedule. Raise KeyError for an unknown id.

        Any integer is accepted, including codes outside Dataverse's 0 to 14, which the emulator
        then serves with statecode 0 and no ``completedon``.
        """
        self._state.set_session_status(flowsession_id, statuscode, errorcode, errormessage)

    # Faults and tokens

    def inject(self, endpoint: str, *faults: Fault) -> None:
        """Queue faults for ``endpoint``. Each matching request consumes the next one, in order."""
        self._check_endpoint(endpoint)
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"inject() takes Fault objects, got {type(fault).__name__}.")
        self._state.add_faults(endpoint, faults)

    def clear_faults(self, endpoint: str | None = None) -> None:
        """Drop the faults still queued for ``endpoint``, or for every endpoint when None."""
        if endpoint is not None:
            self._check_endpoint(endpoint)
        self._state.clear_faults(endpoint)

    def issued_tokens(self) -> list[str]:
        """Return every access token this emulator issued, expired ones included."""
        return self._state.issued_tokens()

    def expire_tokens(self) -> None:
        """Make every access token issued so far expired, so that requests using one get 401."""
        self._state.expire_tokens()

    # Helpers

    def _running_settings(self) -> EmulatorSettings:
        if self._settings is None:
            raise RuntimeError("The Dataverse emulator is not running. Call start() or use it in a with block.")
        return self._settings

    @staticmethod
    def _check_endpoint(endpoint: str) -> None:
        if endpoint not in ENDPOINT_NAMES:
            raise ValueError(f"Unknown endpoint name {endpoint!r}. Use one of: {', '.join(sorted(ENDPOINT_NAMES))}.")


def _load_certificate(source: CertificateSource) -> Any:
    from airflow_provider_pad.emulator.certificates import ClientCertificate, load_certificate

    if isinstance(source, ClientCertificate):
        return source.certificate
    return load_certificate(source)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # An explicit IPPROTO_TCP makes asyncio set TCP_NODELAY on accepted connections. With
    # proto 0 it does not, and Nagle's algorithm then delays each response by about 40 ms.
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        message = f"The Dataverse emulator cannot listen on {host}:{port}: {error.strerror}."
        raise OSError(error.errno, message) from error
    listener.setblocking(False)
    return listener


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _wait_until_started(server: Any, thread: threading.Thread) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(
                "The Dataverse emulator's server thread stopped during startup. The log has the error."
            )
        if time.monotonic() > deadline:
            server.should_exit = True
            thread.join(SHUTDOWN_TIMEOUT_SECONDS)
            raise RuntimeError(f"The Dataverse emulator did not start within {STARTUP_TIMEOUT_SECONDS} seconds.")
        time.sleep(0.01)
