"""
The emulator's own OpenID Connect issuer, the external identity provider of workload identity federation.

It plays the part that a Kubernetes cluster or GitHub Actions plays in Azure: it issues
RS256-signed tokens for a subject, and publishes its discovery document and JSON Web Key Set.
The emulated token endpoint then accepts those tokens as client assertions.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from airflow_provider_pad.emulator.jws import base64url_encode, sign_rs256
from airflow_provider_pad.emulator.state import FEDERATION_PATH

ISSUER_KEY_SIZE_BITS = 2048
RSA_PUBLIC_EXPONENT = 65537
JWKS_PATH = f"{FEDERATION_PATH}/.well-known/jwks"
DISCOVERY_PATH = f"{FEDERATION_PATH}/.well-known/openid-configuration"


class FederationIssuer:
    """
    The issuer's signing key and the tokens and documents made with it. Safe to use from several threads.

    The RSA key is generated on first use, so that emulators that never federate skip the cost.
    It stays the same across restarts of one emulator. The issuer URL does not, because it
    contains the port, so callers pass it in.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: rsa.RSAPrivateKey | None = None
        self._key_id: str | None = None

    def _signing_key(self) -> tuple[rsa.RSAPrivateKey, str]:
        with self._lock:
            if self._key is None:
                self._key = rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=ISSUER_KEY_SIZE_BITS)
                self._key_id = _jwk_thumbprint(self._key.public_key())
            assert self._key_id is not None
            return self._key, self._key_id

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self._signing_key()[0].public_key()

    @property
    def key_id(self) -> str:
        """The ``kid`` of the signing key: its JWK thumbprint (RFC 7638)."""
        return self._signing_key()[1]

    def issue_token(self, issuer: str, subject: str, audience: str, lifetime_seconds: float) -> str:
        """Return a JWT for ``subject`` with ``iss``, ``sub``, ``aud``, ``iat``, ``nbf``, ``exp`` and ``jti``."""
        key, key_id = self._signing_key()
        now = int(time.time())
        claims = {
            "iss": issuer,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime_seconds),
            "jti": str(uuid.uuid4()),
        }
        return sign_rs256({"typ": "JWT", "kid": key_id}, claims, key)

    def jwks(self) -> dict[str, Any]:
        """Return the JSON Web Key Set with the issuer's public signing key."""
        return {"keys": [{**_public_jwk(self.public_key), "use": "sig", "alg": "RS256", "kid": self.key_id}]}

    @staticmethod
    def discovery_document(issuer: str, base_url: str) -> dict[str, Any]:
        """Return the OpenID Provider Metadata that ``<issuer>/.well-known/openid-configuration`` serves."""
        return {
            "issuer": issuer,
            "jwks_uri": f"{base_url}{JWKS_PATH}",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti"],
        }


def _public_jwk(public_key: rsa.RSAPublicKey) -> dict[str, str]:
    numbers = public_key.public_numbers()
    return {"kty": "RSA", "n": _base64url_uint(numbers.n), "e": _base64url_uint(numbers.e)}


def _base64url_uint(value: int) -> str:
    return base64url_encode(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def _jwk_thumbprint(public_key: rsa.RSAPublicKey) -> str:
    # RFC 7638: SHA-256 over the required members in lexicographic order, without whitespace.
    canonical = json.dumps(_public_jwk(public_key), sort_keys=True, separators=(",", ":"))
    return base64url_encode(hashlib.sha256(canonical.encode("ascii")).digest())
