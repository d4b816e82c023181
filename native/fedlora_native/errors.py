"""Errors of the native client: a refusal says why, so an app can log and report it."""

from __future__ import annotations


class NativeError(Exception):
    """Base class of everything the native client raises on purpose."""


class Refused(NativeError):
    """An adapter was refused; ``reason`` is a stable code, ``detail`` for humans.

    Codes: ``missing_signature``, ``malformed_signature``, ``wrong_key``,
    ``invalid_signature``, ``metadata_mismatch``, ``unreadable_adapter``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"adapter refused ({reason}): {detail}")
