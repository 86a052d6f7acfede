"""Errors of the processors that a user can act on (shown as one line by the CLI)."""

from __future__ import annotations


class ProcessorError(Exception):
    """Root of the processors' user-facing errors."""
