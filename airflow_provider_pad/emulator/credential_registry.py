"""
The credentials registered for the emulated app and its managed identities.

Besides its client secret, the app accepts certificates (by thumbprint), certificates whose
chain leads to a trusted issuer (subject-name/issuer authentication), and tokens of federated
issuers. The managed identity endpoint serves tokens for registered managed identities.
Importing this module loads only the standard library.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509

# Credential kinds, as the request log's ``detail`` names them.
CLIENT_SECRET = "client_secret"
CERTIFICATE = "certificate"
FEDERATED = "federated"
MANAGED_IDENTITY = "managed_identity"

# The audience Microsoft recommends for federated identity credentials.
DEFAULT_FEDERATION_AUDIENCE = "api://AzureADTokenExchange"

# Subscription and resource group in the resource ids of emulated user-assigned managed identities.
MANAGED_IDENTITY_RESOURCE_GROUP = (
    "/subscriptions/00000000-0000-0000-0000-0000000000f1/resourceGroups/dataverse-emulator"
)


@dataclass(frozen=True)
class RegisteredCertificate:
    """A certificate credential of the app, with the SHA-1 and SHA-256 fingerprints of its DER form."""

    certificate: x509.Certificate
    thumbprint_sha1: bytes
    thumbprint_sha256: bytes


@dataclass(frozen=True)
class TrustedIssuer:
    """A CA for subject-name/issuer authentication, and the certificate subject it vouches for."""

    ca_certificate: x509.Certificate
    subject: str


@dataclass(frozen=True)
class FederatedCredential:
    """A federated identity credential: the app accepts tokens with exactly this issuer, subject and audience."""

    issuer: str
    subject: str
    audience: str


@dataclass(frozen=True)
class ManagedIdentity:
    """
    A managed identity that the managed identity endpoint serves tokens for.

    ``resource_id`` is None for the system-assigned identity, which has no Azure resource of its own.
    """

    client_id: str
    object_id: str
    resource_id: str | None

    @property
    def system_assigned(self) -> bool:
        return self.resource_id is None


class CredentialRegistry:
    """The registered credentials, guarded by one lock because tests register while the server reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._certificates: list[RegisteredCertificate] = []
        self._trusted_issuers: list[TrustedIssuer] = []
        self._federated_credentials: list[FederatedCredential] = []
        self._system_identity: ManagedIdentity | None = None
        self._user_identities: list[ManagedIdentity] = []

    # Certificates

    def add_certificate(self, certificate: RegisteredCertificate) -> None:
        with self._lock:
            if all(known.thumbprint_sha256 != certificate.thumbprint_sha256 for known in self._certificates):
                self._certificates.append(certificate)

    def find_certificate(
        self, *, thumbprint_sha1: bytes | None = None, thumbprint_sha256: bytes | None = None
    ) -> RegisteredCertificate | None:
        """Return the certificate with the given SHA-256 or, failing that, SHA-1 thumbprint."""
        with self._lock:
            for certificate in self._certificates:
                if thumbprint_sha256 is not None and certificate.thumbprint_sha256 == thumbprint_sha256:
                    return certificate
            for certificate in self._certificates:
                if thumbprint_sha1 is not None and certificate.thumbprint_sha1 == thumbprint_sha1:
                    return certificate
        return None

    def add_trusted_issuer(self, issuer: TrustedIssuer) -> None:
        with self._lock:
            if issuer not in self._trusted_issuers:
                self._trusted_issuers.append(issuer)

    def trusted_issuers(self) -> list[TrustedIssuer]:
        with self._lock:
            return list(self._trusted_issuers)

    # Federated credentials

    def add_federated_credential(self, credential: FederatedCredential) -> None:
        with self._lock:
            if credential not in self._federated_credentials:
                self._federated_credentials.append(credential)

    def federated_credentials(self) -> list[FederatedCredential]:
        with self._lock:
            return list(self._federated_credentials)

    # Managed identities

    def add_managed_identity(
        self, client_id: str | None = None, object_id: str | None = None, resource_id: str | None = None
    ) -> ManagedIdentity:
        """
        Register the system-assigned identity when ``client_id`` is None, otherwise a user-assigned one.

        Ids left as None are generated. Registering an identity again returns the one registered first.
        """
        with self._lock:
            if client_id is None:
                if resource_id is not None:
                    raise ValueError("A system-assigned managed identity has no resource id. Pass a client_id too.")
                if self._system_identity is None:
                    self._system_identity = ManagedIdentity(
                        client_id=str(uuid.uuid4()), object_id=object_id or str(uuid.uuid4()), resource_id=None
                    )
                return self._system_identity

            for identity in self._user_identities:
                if identity.client_id.lower() == client_id.lower():
                    return identity
            identity = ManagedIdentity(
                client_id=client_id,
                object_id=object_id or str(uuid.uuid4()),
                resource_id=resource_id
                or f"{MANAGED_IDENTITY_RESOURCE_GROUP}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/"
                f"identity-{client_id}",
            )
            self._user_identities.append(identity)
            return identity

    def system_identity(self) -> ManagedIdentity | None:
        with self._lock:
            return self._system_identity

    def find_user_identity(
        self, *, client_id: str | None = None, object_id: str | None = None, resource_id: str | None = None
    ) -> ManagedIdentity | None:
        """Return the user-assigned identity with the given id. Ids compare case-insensitively, as Azure's do."""
        with self._lock:
            for identity in self._user_identities:
                if client_id is not None and identity.client_id.lower() == client_id.lower():
                    return identity
                if object_id is not None and identity.object_id.lower() == object_id.lower():
                    return identity
                if (
                    resource_id is not None
                    and identity.resource_id is not None
                    and identity.resource_id.lower() == resource_id.lower()
                ):
                    return identity
        return None
