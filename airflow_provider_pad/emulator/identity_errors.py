"""The error that the emulated identity platform's handlers raise, sent as the identity platform's error JSON."""

from __future__ import annotations


class IdentityError(Exception):
    """An OAuth 2.0 error response of the identity platform, with its AADSTS code."""

    def __init__(self, status: int, error: str, aadsts_code: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.aadsts_code = aadsts_code
        self.description = description
