"""ONNX Runtime backend: the CPU default everywhere (CUDA provider used when asked and present)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import BackendUnavailable
from engines.registry import TensorSpec
from engines.runtime.base import BaseRunner


class OnnxRuntimeRunner(BaseRunner):
    backend = "onnxruntime"

    def __init__(
        self,
        path: Path,
        name: str,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        threads: int = 1,
        device: str = "cpu",
    ) -> None:
        super().__init__(name, inputs, outputs)
        self.path = Path(path)
        self.threads = threads
        self.device = device
        self._session: Any = None  # onnxruntime.InferenceSession (no stubs)
        self._output_names = [s.name for s in self.outputs]

    def _activate(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a hard dependency of the project
            raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Spinning workers burn the CPU the daemon's ingest needs; the latency cost is small.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(
                    "onnxruntime here has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
                )
            providers.insert(0, "CUDAExecutionProvider")
        self._session = ort.InferenceSession(str(self.path), opts, providers=providers)

    def _deactivate(self) -> None:
        self._session = None

    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._session.run(self._output_names, feeds)
        return {n: np.asarray(o) for n, o in zip(self._output_names, outs, strict=True)}

    def describe(self) -> str:
        return f"onnxruntime ({self.device}, {self.threads} thread{'s' if self.threads != 1 else ''})"
