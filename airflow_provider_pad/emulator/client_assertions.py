"""
Check the client assertions of token requests: certificate-signed JWTs and federated tokens.

A certificate assertion is a JWT that the app signs itself (``iss`` = ``sub`` = client id),
naming its certificate in the header by thumbprint (``x5t``, ``x5t#S256``) or carrying it in
``x5c``. A federated assertion is a token from an external issuer that matches one of the app's
federated identity credentials. Each failed check raises IdentityError with the AADSTS code
that the Microsoft identity platform uses for it.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import time
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from airflow_provider_pad.emulator.certificates import certificate_thumbprints, is_certificate_authority
from airflow_provider_pad.emulator.credential_registry import CERTIFICATE, FEDERATED, CredentialRegistry, TrustedIssuer
from airflow_provider_pad.emulator.federation import FederationIssuer
from airflow_provider_pad.emulator.identity_errors import IdentityError
from airflow_provider_pad.emulator.jws import (
    CompactJws,
    MalformedTokenError,
    UnsupportedAlgorithmError,
    base64url_decode,
    parse_compact_jws,
    verify_signature,
)
from airflow_provider_pad.emulator.state import EmulatorSettings

CLIENT_ASSERTION_TYPE_JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# Clock difference tolerated on ``exp`` and ``nbf``, in both directions.
CLOCK_SKEW_SECONDS = 300
# Maximum number of x5c certificates, leaf included, followed when looking for a trusted issuer.
MAX_CHAIN_LENGTH = 5


def parse_client_assertion(assertion: str) -> CompactJws:
    """Parse a client assertion, raising AADSTS50027 when it is not a compact JWS."""
    try:
        return parse_compact_jws(assertion)
    except MalformedTokenError as error:
        raise _malformed_error(str(error)) from None


def assertion_kind(jws: CompactJws, client_id: str) -> str:
    """
    Return CERTIFICATE for an assertion the app signed itself, FEDERATED for another issuer's token.

    An assertion counts as the app's own when ``iss`` is the client id or its header names a
    certificate, so that a certificate assertion with a wrong ``iss`` gets a certificate error.
    """
    issuer = jws.claims.get("iss")
    if isinstance(issuer, str) and issuer.lower() == client_id.lower():
        return CERTIFICATE
    if any(name in jws.header for name in ("x5t", "x5t#S256", "x5c")):
        return CERTIFICATE
    return FEDERATED


class ClientAssertionValidator:
    """Check assertions against the app's registered certificates, trusted issuers and federated credentials."""

    def __init__(
        self, settings: EmulatorSettings, credentials: CredentialRegistry, federation: FederationIssuer
    ) -> None:
        self._settings = settings
        self._credentials = credentials
        self._federation = federation

    def check_certificate_assertion(self, jws: CompactJws, client_id: str) -> None:
        """Raise IdentityError unless a registered or trusted certificate signed ``jws`` and its claims are valid."""
        public_key = self._certificate_public_key(jws)
        _check_signature(jws, public_key)

        for claim in ("iss", "sub"):
            value = jws.claims.get(claim)
            if not isinstance(value, str) or value.lower() != client_id.lower():
                raise IdentityError(
                    401,
                    "invalid_client",
                    700021,
                    f"Client assertion application identifier doesn't match 'client_id' parameter. The '{claim}' "
                    f"claim is {value!r}, but both 'iss' and 'sub' must be the client id '{client_id}'.",
                )

        accepted_audiences = (self._settings.token_endpoint, f"{self._settings.authority}/oauth2/token")
        if not _audience_matches(jws.claims.get("aud"), accepted_audiences, ignore_case=True):
            raise IdentityError(
                401,
                "invalid_client",
                700023,
                f"Client assertion audience claim does not match Realm issuer. The 'aud' claim is "
                f"{jws.claims.get('aud')!r}. Set it to the token endpoint '{self._settings.token_endpoint}'.",
            )

        jti = jws.claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise _malformed_error("The client assertion has no 'jti' claim. Give each assertion a unique id.")
        _check_time_range(jws.claims)

    def check_federated_assertion(self, jws: CompactJws) -> None:
        """Raise IdentityError unless ``jws`` matches a federated credential and its issuer's key signed it."""
        issuer = jws.claims.get("iss")
        credentials = [
            credential for credential in self._credentials.federated_credentials() if credential.issuer == issuer
        ]
        if not credentials:
            raise IdentityError(
                401,
                "invalid_client",
                700211,
                f"No matching federated identity record found for presented assertion issuer '{issuer}'. "
                "Check the federated identity credential's Subject, Audience and Issuer against the presented "
                "assertion. Issuers match case-sensitively.",
            )

        self._check_federated_signature(jws, str(issuer))
        _check_time_range(jws.claims)

        subject = jws.claims.get("sub")
        credentials = [credential for credential in credentials if credential.subject == subject]
        if not credentials:
            raise IdentityError(
                401,
                "invalid_client",
                700213,
                f"No matching federated identity record found for presented assertion subject '{subject}'. "
                "Check the federated identity credential's Subject, Audience and Issuer against the presented "
                "assertion. Subjects match case-sensitively.",
            )

        audiences = tuple(credential.audience for credential in credentials)
        if not _audience_matches(jws.claims.get("aud"), audiences, ignore_case=False):
            raise IdentityError(
                401,
                "invalid_client",
                700212,
                f"No matching federated identity record found for presented assertion audience "
                f"'{jws.claims.get('aud')}'. The federated identity credential expects '{audiences[0]}'.",
            )

    def _check_federated_signature(self, jws: CompactJws, issuer: str) -> None:
        own_issuer = self._settings.federation_issuer
        if issuer != own_issuer:
            # NOTE: the identity platform would fetch this issuer's keys from its discovery document.
            # The emulator never leaves 127.0.0.1, so it can check only tokens of its own issuer.
            raise IdentityError(
                401,
                "invalid_client",
                700027,
                f"Client assertion failed signature validation. The Dataverse emulator holds signing keys only "
                f"for its own issuer '{own_issuer}', not for '{issuer}'.",
            )
        key_id = jws.header.get("kid")
        if key_id is not None and key_id != self._federation.key_id:
            raise IdentityError(
                401,
                "invalid_client",
                700027,
                f"Client assertion failed signature validation. The issuer '{issuer}' has no key with kid '{key_id}'.",
            )
        _check_signature(jws, self._federation.public_key)

    def _certificate_public_key(self, jws: CompactJws) -> Any:
        """Return the public key of the certificate that the header names by thumbprint or carries in x5c."""
        thumbprint_sha1 = _header_thumbprint(jws, "x5t")
        thumbprint_sha256 = _header_thumbprint(jws, "x5t#S256")
        chain_values = jws.header.get("x5c")
        if thumbprint_sha1 is None and thumbprint_sha256 is None and chain_values is None:
            raise IdentityError(
                401,
                "invalid_client",
                700027,
                "Client assertion contains an invalid signature. [Reason - The key was not found.] The JWS header "
                "has none of 'x5t', 'x5t#S256' or 'x5c', so it names no certificate.",
            )

        registered = self._credentials.find_certificate(
            thumbprint_sha1=thumbprint_sha1, thumbprint_sha256=thumbprint_sha256
        )
        if registered is not None:
            _check_certificate_dates(registered.certificate)
            return registered.certificate.public_key()

        if chain_values is not None:
            chain = _decode_x5c(chain_values)
            leaf = chain[0]
            leaf_sha1, leaf_sha256 = certificate_thumbprints(leaf)
            if (thumbprint_sha1 is not None and thumbprint_sha1 != leaf_sha1) or (
                thumbprint_sha256 is not None and thumbprint_sha256 != leaf_sha256
            ):
                raise IdentityError(
                    401,
                    "invalid_client",
                    700027,
                    "Client assertion contains an invalid signature. [Reason - The thumbprint in the JWS header "
                    "does not match the first certificate in 'x5c'.]",
                )
            _check_certificate_dates(leaf)
            if self._find_trusted_issuer(chain) is not None:
                return leaf.public_key()
            raise IdentityError(
                401,
                "invalid_client",
                700027,
                f"The certificate with subject '{leaf.subject.rfc4514_string()}' in 'x5c' is not registered on "
                f"application '{self._settings.client_id}', and no trusted issuer registered for subject-name/issuer "
                "authentication issued it for that subject. Register the certificate, or its CA with the subject.",
            )

        presented = (thumbprint_sha256 or thumbprint_sha1 or b"").hex().upper()
        raise IdentityError(
            401,
            "invalid_client",
            700027,
            "The certificate with identifier used to sign the client assertion is not registered on application. "
            f"[Reason - The key was not found., Thumbprint of key used by client: '{presented}', "
            f"Configured keys for app '{self._settings.client_id}' do not include it.]",
        )

    def _find_trusted_issuer(self, chain: list[x509.Certificate]) -> TrustedIssuer | None:
        """Return a trusted issuer whose CA anchors ``chain`` and whose subject matches the leaf, if any."""
        leaf = chain[0]
        candidates = [
            issuer for issuer in self._credentials.trusted_issuers() if _subject_matches(leaf, issuer.subject)
        ]
        if not candidates:
            return None

        current = leaf
        intermediates = chain[1:]
        for _ in range(MAX_CHAIN_LENGTH):
            for issuer in candidates:
                if _is_issued_by(current, issuer.ca_certificate):
                    return issuer
            parent = next(
                (
                    candidate
                    for candidate in intermediates
                    if is_certificate_authority(candidate) and _is_issued_by(current, candidate)
                ),
                None,
            )
            if parent is None:
                return None
            _check_certificate_dates(parent)
            current = parent
        return None


def _check_signature(jws: CompactJws, public_key: Any) -> None:
    try:
        valid = verify_signature(jws, public_key)
    except UnsupportedAlgorithmError as error:
        raise IdentityError(
            401, "invalid_client", 5002730, f"Invalid JWT token. Unsupported key for the signing algorithm. {error}"
        ) from None
    if not valid:
        raise IdentityError(
            401,
            "invalid_client",
            700027,
            "Client assertion failed signature validation. The signature does not match the public key of the "
            "certificate or issuer key that the assertion names. Sign with the private key of that certificate.",
        )


def _check_time_range(claims: dict[str, Any]) -> None:
    """Raise AADSTS700024 unless now is within [nbf, exp], each widened by CLOCK_SKEW_SECONDS."""
    expires_at = claims.get("exp")
    if not _is_number(expires_at):
        raise _malformed_error("The assertion has no numeric 'exp' claim.")
    not_before = claims.get("nbf")
    if not_before is not None and not _is_number(not_before):
        raise _malformed_error("The assertion's 'nbf' claim is not a number.")

    now = time.time()
    if now - CLOCK_SKEW_SECONDS <= expires_at and (not_before is None or not_before <= now + CLOCK_SKEW_SECONDS):
        return
    valid_from = _format_time(not_before) if not_before is not None else "(no nbf)"
    raise IdentityError(
        401,
        "invalid_client",
        700024,
        f"Client assertion is not within its valid time range. Current time: {_format_time(now)}, "
        f"assertion valid from {valid_from}, expiry time of assertion {_format_time(expires_at)}. "
        f"The allowed clock skew is {CLOCK_SKEW_SECONDS} seconds.",
    )


def _check_certificate_dates(certificate: x509.Certificate) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    if certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        return
    raise IdentityError(
        401,
        "invalid_client",
        700027,
        f"Client assertion contains an invalid signature. [Reason - The key used is expired or not yet valid. "
        f"The certificate '{certificate.subject.rfc4514_string()}' is valid from "
        f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%SZ} to "
        f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}.]",
    )


def _header_thumbprint(jws: CompactJws, name: str) -> bytes | None:
    value = jws.header.get(name)
    if value is None:
        return None
    try:
        return base64url_decode(value)
    except MalformedTokenError:
        raise _malformed_error(f"The JWS header '{name}' is not base64url text.") from None


def _decode_x5c(values: Any) -> list[x509.Certificate]:
    """Decode x5c: a list of base64 (not base64url) DER certificates, leaf first. MSAL sends line breaks in them."""
    if not isinstance(values, list) or not values or not all(isinstance(value, str) for value in values):
        raise _malformed_error("The JWS header 'x5c' must be a non-empty list of base64 certificates.")
    chain = []
    for value in values:
        try:
            der = base64.b64decode("".join(value.split()), validate=True)
            chain.append(x509.load_der_x509_certificate(der))
        except (binascii.Error, ValueError) as error:
            raise _malformed_error(f"An 'x5c' entry is not a base64 DER certificate: {error}") from None
    return chain


def _is_issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _subject_matches(certificate: x509.Certificate, subject: str) -> bool:
    """Compare ``subject`` with the certificate's common name or whole RFC 4514 subject, ignoring case."""
    wanted = subject.strip().lower()
    names = [certificate.subject.rfc4514_string().lower()]
    common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    names += [str(attribute.value).lower() for attribute in common_names]
    names += [f"cn={name}" for name in names[1:]]
    return wanted in names


def _audience_matches(audience: Any, accepted: tuple[str, ...], *, ignore_case: bool) -> bool:
    presented = audience if isinstance(audience, list) else [audience]

    def normalize(value: str) -> str:
        value = value.rstrip("/")
        return value.lower() if ignore_case else value

    accepted_values = {normalize(value) for value in accepted}
    return any(isinstance(value, str) and normalize(value) in accepted_values for value in presented)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _format_time(epoch_seconds: float) -> str:
    try:
        return datetime.datetime.fromtimestamp(epoch_seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{epoch_seconds} (epoch seconds, out of range)"


def _malformed_error(detail: str) -> IdentityError:
    return IdentityError(400, "invalid_request", 50027, f"JWT token is invalid or malformed. {detail}")
