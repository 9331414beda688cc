"""
Compact JWS (RFC 7515) tokens: parse them, check RS256 and PS256 signatures, and sign with RS256.

The identity platform emulation uses this for client assertions and for the tokens of its own
federation issuer. It checks only what the algorithms need and leaves claims to its callers.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

SUPPORTED_ALGORITHMS = ("RS256", "PS256")


class MalformedTokenError(ValueError):
    """The text is not a compact JWS with a JSON header and a JSON object as claims."""


class UnsupportedAlgorithmError(ValueError):
    """The JWS header names an algorithm other than RS256 or PS256, or the key is not an RSA key."""


@dataclass(frozen=True)
class CompactJws:
    """A parsed compact JWS whose signature has not been checked yet."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def algorithm(self) -> str:
        return str(self.header.get("alg", ""))


def base64url_encode(data: bytes) -> str:
    """Encode ``data`` as base64url without padding, as JWS does."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def base64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding. Raise MalformedTokenError for other characters."""
    if not isinstance(text, str):
        raise MalformedTokenError(f"Expected a base64url string, got {type(text).__name__}.")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as error:
        raise MalformedTokenError(f"Invalid base64url text: {error}") from None


def parse_compact_jws(token: str) -> CompactJws:
    """Split and decode ``<header>.<claims>.<signature>``. Raise MalformedTokenError for anything else."""
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedTokenError(f"A compact JWS has 3 parts separated by dots, this text has {len(parts)}.")

    header = _decode_json_object(parts[0], "header")
    claims = _decode_json_object(parts[1], "claims")
    signature = base64url_decode(parts[2])
    return CompactJws(header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)


def verify_signature(jws: CompactJws, public_key: Any) -> bool:
    """
    Return whether ``public_key`` verifies the token's signature under the header's ``alg``.

    Raise UnsupportedAlgorithmError when ``alg`` is not RS256 or PS256, or the key is not RSA.
    """
    if jws.algorithm not in SUPPORTED_ALGORITHMS:
        raise UnsupportedAlgorithmError(
            f"The JWS algorithm {jws.algorithm!r} is not supported. "
            f"Sign with one of: {', '.join(SUPPORTED_ALGORITHMS)}."
        )
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise UnsupportedAlgorithmError(
            f"{jws.algorithm} requires an RSA key, but the certificate contains a {type(public_key).__name__}."
        )

    if jws.algorithm == "RS256":
        signature_padding: padding.AsymmetricPadding = padding.PKCS1v15()
    else:
        # RFC 7518 section 3.5 sets the PSS salt length of PS256 to the hash's output size.
        signature_padding = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    try:
        public_key.verify(jws.signature, jws.signing_input, signature_padding, hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def sign_rs256(header: dict[str, Any], claims: dict[str, Any], private_key: rsa.RSAPrivateKey) -> str:
    """Return a compact JWS of ``claims`` signed with RS256. ``alg`` is set in the header."""
    encoded_header = base64url_encode(_json_bytes({**header, "alg": "RS256"}))
    encoded_claims = base64url_encode(_json_bytes(claims))
    signing_input = f"{encoded_header}.{encoded_claims}".encode("ascii")
    signature = private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{encoded_header}.{encoded_claims}.{base64url_encode(signature)}"


def _decode_json_object(part: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(base64url_decode(part))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MalformedTokenError(f"The JWS {name} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise MalformedTokenError(f"The JWS {name} must be a JSON object, got {type(value).__name__}.")
    return value


def _json_bytes(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")
