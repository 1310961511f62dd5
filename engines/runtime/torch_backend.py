"""PyTorch backend: eager on CPU; on CUDA in fp16/bf16 with CUDA graphs for fixed input shapes.

A shipped model can be run here when its manifest names its torch module and state dict::

    "extra": {"torch": {"factory": "engines.models.unet:UNet", "kwargs": {...}, "state_dict": "x.pt"}}
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from engines.errors import BackendUnavailable, ModelNotFound
from engines.registry import Manifest, TensorSpec, sha256_file
from engines.runtime.base import BaseRunner

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchRunner(BaseRunner):
    backend = "torch"

    def __init__(
        self,
        module: torch.nn.Module,
        name: str,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        device: str = "cpu",
        precision: str = "auto",
        cuda_graphs: bool = True,
        threads: int | None = None,
    ) -> None:
        super().__init__(name, inputs, outputs)
        self.module = module.eval()
        self.device = device
        if precision == "auto":
            precision = "fp16" if device.startswith("cuda") else "fp32"
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)} or 'auto', got {precision!r}")
        self.precision = precision
        self.cuda_graphs = cuda_graphs and device.startswith("cuda")
        self.threads = threads
        self._graphs: dict[
            tuple[tuple[int, ...], ...], tuple[object, list[torch.Tensor], list[torch.Tensor]]
        ] = {}

    def _activate(self) -> None:
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable("torch backend on CUDA asked for, but torch sees no CUDA device here")
        if self.threads is not None and not self.device.startswith("cuda"):
            torch.set_num_threads(self.threads)
        self.module.to(self.device, dtype=PRECISIONS[self.precision])

    def _deactivate(self) -> None:
        self._graphs.clear()
        if self.device.startswith("cuda"):
            self.module.to("cpu")
            torch.cuda.empty_cache()

    def _to_tensors(self, feeds: dict[str, np.ndarray]) -> list[torch.Tensor]:
        dtype = PRECISIONS[self.precision]
        out = []
        for spec in self.inputs:
            t = torch.from_numpy(feeds[spec.name])
            if t.is_floating_point():
                t = t.to(dtype)
            out.append(t.to(self.device, non_blocking=True))
        return out

    def _outputs(self, result: object) -> dict[str, np.ndarray]:
        outs = result if isinstance(result, tuple | list) else (result,)
        return {
            spec.name: o.detach().float().cpu().numpy() for spec, o in zip(self.outputs, outs, strict=True)
        }

    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = self._to_tensors(feeds)
        if not self.cuda_graphs:
            with torch.inference_mode():
                return self._outputs(self.module(*tensors))
        key = tuple(tuple(t.shape) for t in tensors)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(tensors)
            self._graphs[key] = entry
        graph, static_in, static_out = entry
        for dst, src in zip(static_in, tensors, strict=True):
            dst.copy_(src)
        graph.replay()  # type: ignore[attr-defined]
        return self._outputs(static_out)

    def _capture(self, tensors: list[torch.Tensor]) -> tuple[object, list[torch.Tensor], list[torch.Tensor]]:
        """Record one CUDA graph for this input shape (after a warm-up on a side stream)."""
        static_in = [t.clone() for t in tensors]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(3):
                self.module(*static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            out = self.module(*static_in)
        static_out = list(out) if isinstance(out, tuple | list) else [out]
        return graph, static_in, static_out

    def describe(self) -> str:
        graphs = ", CUDA graphs" if self.cuda_graphs else ""
        return f"torch ({self.device}, {self.precision}{graphs})"


def torch_module_from_manifest(manifest: Manifest, weights_dir: Path) -> torch.nn.Module:
    """Rebuild the torch module a manifest names in ``extra.torch`` and load its state dict."""
    spec = manifest.extra.get("torch")
    if not isinstance(spec, Mapping):
        raise BackendUnavailable(
            f"model {manifest.name!r} ships no torch weights (extra.torch); use onnxruntime or tensorrt"
        )
    module_name, _, attr = str(spec["factory"]).partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    kwargs = spec.get("kwargs", {})
    module: torch.nn.Module = factory(**(kwargs if isinstance(kwargs, Mapping) else {}))
    path = weights_dir / str(spec["state_dict"])
    if not path.is_file():
        raise ModelNotFound(f"model {manifest.name!r}: torch state dict {path} is missing")
    want = spec.get("sha256")
    if want and sha256_file(path) != want:
        raise BackendUnavailable(f"model {manifest.name!r}: {path} does not match its sha256")
    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return module.eval()
