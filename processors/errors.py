"""Errors of the processors that a user can act on (shown as one line by the CLI)."""

from __future__ import annotations


class ProcessorError(Exception):
    """Root of the processors' user-facing errors."""


class InvalidCommand(ProcessorError, ValueError):
    """A job command that cannot run as asked (unknown strategy, bad parameter, no data...): `str()` is the reason."""


class BackendUnavailable(ProcessorError):
    """The compute backend asked for is not usable here (no CuPy, no GPU): the caller may fall back to the CPU."""


class BacktestStopped(ProcessorError):
    """A running backtest was asked to stop (its `should_stop` said so) between two chunks of parameter sets."""
