"""User errors of the CLI and wiring: shown as one line, never as a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: a bad path, a bad option, a missing topic."""
