"""Errors raised while turning message bytes into records; each carries a stable error class."""

from __future__ import annotations


class SchemaError(Exception):
    """Root of every error raised by `schemas`."""


class InvalidMessage(SchemaError):
    """A message that cannot become a valid record.

    `error_class` is a short, bounded token (it labels metrics and dead-letter headers); `reason`
    is the human-readable detail.
    """

    def __init__(self, error_class: str, reason: str) -> None:
        super().__init__(f"{error_class}: {reason}")
        self.error_class = error_class
        self.reason = reason


class UnknownSchema(SchemaError):
    """A record type, version or wire format that this build does not know."""
