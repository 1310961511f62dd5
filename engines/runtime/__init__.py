"""Inference backends behind one Runner protocol; ``create_runner`` picks and builds one.

``auto`` tries TensorRT → PyTorch-CUDA → ONNX Runtime and logs why each earlier choice was
passed over; :func:`chosen_backends` lists what every runner built in this process uses, so
the daemon can store it with the run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path

from engines.errors import BackendUnavailable, EngineError
from engines.registry import WEIGHTS_DIR, Manifest, TensorSpec, load_manifest, onnx_path
from engines.runtime.base import BaseRunner, Runner, RunnerStats

__all__ = [
    "BACKENDS",
    "BaseRunner",
    "Runner",
    "RunnerStats",
    "chosen_backends",
    "create_runner",
]

log = logging.getLogger("engines.runtime")

BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt", "triton")
PRECISIONS = ("auto", "fp32", "int8", "bf16")
"""``backend_precision``: ``auto`` uses an accepted int8 model (``operando-monitor quantize``)
on a CPU with int8 dot-product instructions (VNNI/AMX) if it measured faster than fp32 when
quantised (tiny models can be slower in int8: QDQ overhead), else fp32; on CUDA, the backend's own
default (fp16). ``int8`` uses the int8 model wherever it exists; ``bf16`` runs the torch module
in bfloat16 on a CPU with AVX-512 BF16/AMX (ONNX Runtime's CPU provider has no bf16 kernels)."""

_chosen: dict[str, str] = {}
_chosen_lock = threading.Lock()


def chosen_backends() -> dict[str, str]:
    """model name → backend description, for every runner created in this process."""
    with _chosen_lock:
        return dict(_chosen)


def _cuda_available(backend: str = "auto") -> bool:
    """Whether inference would run on a CUDA GPU. For ``onnxruntime`` that is ONNX Runtime's own
    providers (no torch import: the ONNX-only daemon never loads torch)."""
    if backend == "onnxruntime":
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _resolve(model: Manifest | str | Path, weights_dir: Path | None) -> tuple[Manifest | None, Path, Path]:
    """(manifest or None, onnx path, directory) for a manifest, a registry name or an ONNX path."""
    if isinstance(model, Manifest):
        d = weights_dir or WEIGHTS_DIR
        return model, onnx_path(model, d), d
    p = Path(model)
    if p.suffix == ".onnx":
        if not p.is_file():
            raise EngineError(f"no ONNX file at {p}")
        return None, p, p.parent
    m = load_manifest(str(model), weights_dir)
    d = weights_dir or WEIGHTS_DIR
    return m, onnx_path(m, d), d


def _specs_from_onnx(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    init = {i.name for i in graph.initializer}

    def spec(v: object) -> TensorSpec:
        t = v.type.tensor_type  # type: ignore[attr-defined]
        dims = tuple(d.dim_param or d.dim_value or "dim" for d in t.shape.dim)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        return TensorSpec(v.name, dims, dtype)  # type: ignore[attr-defined]

    return (
        tuple(spec(v) for v in graph.input if v.name not in init),
        tuple(spec(v) for v in graph.output),
    )


def create_runner(
    model: Manifest | str | Path,
    backend: str = "onnxruntime",
    *,
    threads: int = 1,
    weights_dir: Path | str | None = None,
    device: str = "cuda",
    precision: str = "auto",
    trt_dims: Mapping[str, tuple[int, int, int]] | None = None,
    triton_url: str = "127.0.0.1:8001",
) -> BaseRunner:
    """A runner for a registry name, a :class:`Manifest` or an ``.onnx`` path (not yet activated)."""
    wd = Path(weights_dir) if weights_dir not in (None, "") else None
    manifest, path, directory = _resolve(model, wd)
    if precision not in PRECISIONS + ("fp16",):
        raise EngineError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    tag = ""
    if manifest is not None and backend in ("onnxruntime", "auto") and not _cuda_available(backend):
        path, backend, precision, tag = _cpu_precision(manifest, path, directory, backend, precision)
    if manifest is not None:
        name, inputs, outputs = manifest.name, manifest.inputs, manifest.outputs
    else:
        name = path.stem
        inputs, outputs = _specs_from_onnx(path)
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")

    def build(kind: str) -> BaseRunner:
        if kind == "onnxruntime":
            from engines.runtime.ort import OnnxRuntimeRunner

            return OnnxRuntimeRunner(path, name, inputs, outputs, threads=threads)
        if kind == "torch":
            from engines.runtime.torch_backend import TorchRunner, torch_module_from_manifest

            if manifest is None:
                raise BackendUnavailable(
                    f"{path}: the torch backend needs a manifest naming the torch module"
                )
            dev = device if _cuda_available() else "cpu"
            return TorchRunner(
                torch_module_from_manifest(manifest, directory),
                name,
                inputs,
                outputs,
                device=dev,
                precision=precision,
                threads=threads,
            )
        if kind == "tensorrt":
            from engines.runtime.tensorrt_backend import TensorRTRunner, import_tensorrt

            import_tensorrt()
            dims = dict(trt_dims or {})
            if manifest is not None and not dims:
                extra = manifest.extra.get("trt_dims", {})
                if isinstance(extra, Mapping):
                    dims = {str(k): tuple(v) for k, v in extra.items()}
            prec = "fp16" if precision == "auto" else precision
            return TensorRTRunner(path, name, inputs, outputs, precision=prec, dims=dims)
        from engines.runtime.triton_backend import TritonRunner

        return TritonRunner(triton_url, name, inputs, outputs)

    if backend == "auto":
        reasons = []
        candidates = ["tensorrt", "torch"] if _cuda_available() else []
        if not candidates:
            reasons.append("no CUDA device: TensorRT and PyTorch-CUDA skipped")
        runner: BaseRunner | None = None
        for kind in candidates:
            try:
                runner = build(kind)
                break
            except BackendUnavailable as exc:
                reasons.append(f"{kind}: {exc}")
        if runner is None:
            runner = build("onnxruntime")
        log.info(
            "model %s: backend auto chose %s (%s)",
            name,
            runner.describe(),
            "; ".join(reasons) or "first choice",
        )
    else:
        runner = build(backend)
    with _chosen_lock:
        _chosen[name] = runner.describe() + tag + (f"; sha256 {manifest.sha256}" if manifest else f"; {path}")
    return runner


def _cpu_precision(
    manifest: Manifest, path: Path, directory: Path, backend: str, precision: str
) -> tuple[Path, str, str, str]:
    """(ONNX path, backend, precision, description tag) for ``backend_precision`` on a CPU."""
    from engines.isa import detect
    from engines.registry import int8_manifest_for

    isa = detect()
    if precision in ("auto", "int8"):
        q = int8_manifest_for(manifest, directory)
        faster = q is not None and float(q.extra.get("speedup_vs_fp32", 0.0)) > 1.0  # type: ignore[arg-type]
        if q is not None and (precision == "int8" or (isa.fast_int8 and faster)):
            log.info(
                "model %s: int8 (%s; %sx fp32 speed where quantised; this CPU: %s)",
                manifest.name, q.onnx, q.extra.get("speedup_vs_fp32", "?"), isa.summary(),
            )  # fmt: skip
            return onnx_path(q, directory), "onnxruntime", "fp32", f"; int8 {q.onnx} sha256 {q.sha256[:12]}"
        if precision == "int8":
            log.warning(
                "model %s: backend_precision int8 but no accepted int8 model (run `operando-monitor "
                "quantize %s`): fp32",
                manifest.name, manifest.name,
            )  # fmt: skip
        return path, backend, "fp32", ""
    if precision == "bf16":
        if not isa.fast_bf16:
            log.warning("model %s: bf16 asked but this CPU has no bf16 instructions: fp32", manifest.name)
            return path, backend, "fp32", ""
        if not manifest.extra.get("torch"):
            log.warning("model %s: bf16 needs the torch module, none in the manifest: fp32", manifest.name)
            return path, backend, "fp32", ""
        return path, "torch", "bf16", ""
    return path, backend, precision, ""
