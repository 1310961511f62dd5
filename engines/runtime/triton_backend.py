"""Triton Inference Server backend (gRPC client), for several daemons sharing GPUs.

The model repository comes from ``operando-monitor export-triton`` (see engines/triton_repo.py);
the model name on the server is the manifest's name. The client import is guarded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engines.errors import BackendUnavailable, EngineError
from engines.registry import TensorSpec
from engines.runtime.base import BaseRunner

TRITON_DTYPES = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32", "uint8": "UINT8"}


class TritonRunner(BaseRunner):
    backend = "triton"

    def __init__(
        self,
        url: str,
        name: str,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        model_version: str = "",
        timeout_s: float = 10.0,
    ) -> None:
        super().__init__(name, inputs, outputs)
        self.url = url
        self.model_version = model_version
        self.timeout_s = timeout_s
        self._client: Any = None  # tritonclient.grpc.InferenceServerClient (no stubs)

    def _activate(self) -> None:
        try:
            import tritonclient.grpc as grpcclient
        except ImportError as exc:
            raise BackendUnavailable(
                "the Triton client is not installed (pip install 'tritonclient[grpc]'); "
                "or use backend 'onnxruntime'"
            ) from exc
        self._grpc = grpcclient
        client = grpcclient.InferenceServerClient(url=self.url)
        if not client.is_model_ready(self.name, self.model_version):
            raise EngineError(
                f"Triton at {self.url}: model {self.name!r} is not ready (is it in the repository?)"
            )
        self._client = client

    def _deactivate(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        g = self._grpc
        inputs = []
        for spec in self.inputs:
            a = feeds[spec.name]
            inp = g.InferInput(spec.name, list(a.shape), TRITON_DTYPES[str(a.dtype)])
            inp.set_data_from_numpy(a)
            inputs.append(inp)
        requested = [g.InferRequestedOutput(s.name) for s in self.outputs]
        result = self._client.infer(
            self.name,
            inputs,
            model_version=self.model_version,
            outputs=requested,
            client_timeout=self.timeout_s,
        )
        return {s.name: np.asarray(result.as_numpy(s.name)) for s in self.outputs}

    def describe(self) -> str:
        return f"triton ({self.url})"
