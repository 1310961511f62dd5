"""One error base for the daemon, with specific subclasses.

Per-frame problems are *counted* (see :class:`monitor.frames.Rejection`), never raised
out of the main loop; these exceptions are for configuration and start-up problems and
for decoders to signal a rejection with a machine-readable reason.
"""

from __future__ import annotations


class MonitorError(Exception):
    """Base class of every error raised by operando-monitor."""


class ConfigError(MonitorError):
    """A configuration file is missing, malformed, or has a bad key or value."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"config error at '{key}': {message}" if key else f"config error: {message}")


class FrameRejected(MonitorError):
    """A message could not be turned into a frame.

    ``reason`` is a short stable code (e.g. ``bad_json``, ``size_mismatch``) used for
    counters and the store; ``detail`` is the human-readable explanation.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class StoreError(MonitorError):
    """The result store could not be created, written or read."""


class InvalidResult(StoreError):
    """A pipeline's result does not match the schema it declared (a pipeline bug, not I/O)."""


class SourceError(MonitorError):
    """A source could not be started (bad endpoint, missing file, ...)."""
