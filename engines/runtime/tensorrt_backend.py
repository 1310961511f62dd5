"""TensorRT backend: build an engine from ONNX (fp16, dynamic-shape profiles), cache it, run it.

The import is guarded: without TensorRT the backend raises :class:`BackendUnavailable` naming
what is missing. Serialized engines are cached under ``$OPERANDO_TRT_CACHE`` (default
``~/.cache/operando-monitor/tensorrt``) keyed by the ONNX sha256, the GPU name, the TensorRT
version, the precision and the profile, because an engine is only valid for that combination.
Buffers are torch CUDA tensors, so no pycuda is needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import BackendUnavailable, EngineError
from engines.registry import TensorSpec, sha256_file
from engines.runtime.base import BaseRunner

log = logging.getLogger("engines.runtime.tensorrt")

Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
"""input name → (min, opt, max) shapes."""

DEFAULT_BATCH = (1, 8, 32)


def import_tensorrt() -> Any:  # TensorRT ships no type information
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(
            "TensorRT is not importable here: install NVIDIA TensorRT's Python package (pip install "
            "tensorrt, matching the CUDA driver) on a machine with an NVIDIA GPU, or use backend "
            "'torch' (CUDA) or 'onnxruntime'"
        ) from exc
    return trt


def profile_shapes(inputs: Sequence[TensorSpec], dims: Mapping[str, tuple[int, int, int]]) -> Profile:
    """Min/opt/max shapes per input: dynamic dims from ``dims`` (``batch`` defaults to 1/8/32)."""
    profile: Profile = {}
    for spec in inputs:
        lo: list[int] = []
        opt: list[int] = []
        hi: list[int] = []
        for d in spec.shape:
            if isinstance(d, int):
                lo.append(d)
                opt.append(d)
                hi.append(d)
                continue
            rng = dims.get(d, DEFAULT_BATCH if d in ("batch", "N", "n") else None)
            if rng is None:
                raise EngineError(
                    f"TensorRT profile for input {spec.name!r}: dynamic dim {d!r} needs (min, opt, max)"
                )
            if not rng[0] <= rng[1] <= rng[2]:
                raise EngineError(f"TensorRT profile for dim {d!r}: need min <= opt <= max, got {rng}")
            lo.append(rng[0])
            opt.append(rng[1])
            hi.append(rng[2])
        profile[spec.name] = (tuple(lo), tuple(opt), tuple(hi))
    return profile


def engine_cache_key(
    onnx_sha256: str, gpu_name: str, trt_version: str, precision: str, profile: Profile
) -> str:
    blob = json.dumps(
        {
            "onnx": onnx_sha256,
            "gpu": gpu_name,
            "trt": trt_version,
            "precision": precision,
            "profile": {k: [list(s) for s in v] for k, v in sorted(profile.items())},
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cache_dir() -> Path:
    return Path(
        os.environ.get("OPERANDO_TRT_CACHE", Path.home() / ".cache" / "operando-monitor" / "tensorrt")
    )


class TensorRTRunner(BaseRunner):
    backend = "tensorrt"

    def __init__(
        self,
        path: Path,
        name: str,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        precision: str = "fp16",
        dims: Mapping[str, tuple[int, int, int]] | None = None,
        workspace_bytes: int = 2 << 30,
    ) -> None:
        super().__init__(name, inputs, outputs)
        self.path = Path(path)
        self.precision = precision
        self.profile = profile_shapes(self.inputs, dims or {})
        self.workspace_bytes = workspace_bytes
        self.cache_path: Path | None = None
        self._engine: Any = None  # tensorrt.ICudaEngine (TensorRT has no stubs)
        self._context: Any = None  # tensorrt.IExecutionContext

    def _build(self, trt: Any, logger: Any) -> bytes:
        t = trt  # typed loosely: TensorRT has no stubs
        builder = t.Builder(logger)
        network = builder.create_network(0)
        parser = t.OnnxParser(network, logger)
        if not parser.parse(self.path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"TensorRT could not parse {self.path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(t.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        if self.precision == "fp16":
            config.set_flag(t.BuilderFlag.FP16)
        elif self.precision == "bf16":
            config.set_flag(t.BuilderFlag.BF16)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in self.profile.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineError(f"TensorRT failed to build an engine for {self.path}")
        return bytes(serialized)

    def _activate(self) -> None:
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("TensorRT needs an NVIDIA GPU; torch sees no CUDA device here")
        logger = trt.Logger(trt.Logger.WARNING)
        key = engine_cache_key(
            sha256_file(self.path),
            torch.cuda.get_device_name(),
            str(trt.__version__),
            self.precision,
            self.profile,
        )
        self.cache_path = cache_dir() / f"{self.name}-{key}.engine"
        if self.cache_path.is_file():
            data = self.cache_path.read_bytes()
            log.info("TensorRT engine for %s from cache %s", self.name, self.cache_path)
        else:
            log.info(
                "building TensorRT engine for %s (%s); this takes a while once", self.name, self.precision
            )
            data = self._build(trt, logger)
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(self.cache_path)
        runtime = trt.Runtime(logger)
        self._engine = runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise EngineError(f"TensorRT could not load the cached engine {self.cache_path}; delete it")
        self._context = self._engine.create_execution_context()
        self._trt = trt
        self._torch = torch

    def _deactivate(self) -> None:
        self._context = None
        self._engine = None

    def _infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch, trt = self._torch, self._trt
        ctx, engine = self._context, self._engine
        keep = []
        for spec in self.inputs:
            want = trt.nptype(engine.get_tensor_dtype(spec.name))
            t = torch.from_numpy(np.ascontiguousarray(feeds[spec.name], dtype=want)).cuda()
            ctx.set_input_shape(spec.name, tuple(t.shape))
            ctx.set_tensor_address(spec.name, t.data_ptr())
            keep.append(t)
        outs: dict[str, Any] = {}  # torch CUDA tensors
        for spec in self.outputs:
            shape = tuple(ctx.get_tensor_shape(spec.name))
            dtype = trt.nptype(engine.get_tensor_dtype(spec.name))
            t = torch.empty(shape, dtype=torch.from_numpy(np.zeros(0, dtype)).dtype, device="cuda")
            ctx.set_tensor_address(spec.name, t.data_ptr())
            outs[spec.name] = t
        stream = torch.cuda.current_stream()
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise EngineError(f"TensorRT execution failed for {self.name}")
        stream.synchronize()
        return {k: v.float().cpu().numpy() for k, v in outs.items()}

    def describe(self) -> str:
        return f"tensorrt ({self.precision})"
