"""Errors of the engines layer (the daemon wraps them in its own MonitorError where needed)."""

from __future__ import annotations


class EngineError(Exception):
    """Base for every engines error."""


class ModelNotFound(EngineError):
    """No manifest or no ONNX file where the registry looked."""


class ModelCorrupt(EngineError):
    """A manifest that does not parse, or an ONNX file whose sha256 does not match its manifest."""


class ExportMismatch(EngineError):
    """ONNX Runtime's output differs from torch's beyond the stated tolerance after export."""


class BackendUnavailable(EngineError):
    """A backend whose library or device is missing here (says what to install or where to run)."""


class InputMismatch(EngineError, ValueError):
    """Inputs to ``infer`` whose names, shapes or dtypes do not match the model's spec."""
