"""Write an NVIDIA Triton Inference Server model repository for the shipped models.

Layout (https://docs.nvidia.com/deeplearning/triton-inference-server — model repository)::

    OUT/<model>/config.pbtxt
    OUT/<model>/1/model.onnx

Dynamic batch dimensions become ``max_batch_size`` with dynamic batching; other dynamic
dimensions become ``-1``. The ONNX files are copied after their sha256 is verified.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from engines.registry import Manifest, TensorSpec, list_models, load_manifest, verify_model

TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
}
MAX_BATCH = 32


def _batched(m: Manifest) -> bool:
    return all(s.shape and isinstance(s.shape[0], str) for s in m.inputs + m.outputs)


def _tensor(spec: TensorSpec, batched: bool) -> str:
    dims = spec.shape[1:] if batched else spec.shape
    dims_txt = ", ".join(str(-1 if isinstance(d, str) else d) for d in dims)
    body = f'    name: "{spec.name}"\n    data_type: {TRITON_TYPES[spec.dtype]}\n    dims: [ {dims_txt} ]'
    return "  {\n" + body + "\n  }"


def config_pbtxt(m: Manifest, instances: int = 1, kind: str = "KIND_GPU") -> str:
    batched = _batched(m)
    lines = [
        f'name: "{m.name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {MAX_BATCH if batched else 0}",
        "input [\n" + ",\n".join(_tensor(s, batched) for s in m.inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor(s, batched) for s in m.outputs) + "\n]",
        f"instance_group [ {{ count: {instances} kind: {kind} }} ]",
    ]
    if batched:
        lines.append("dynamic_batching { max_queue_delay_microseconds: 2000 }")
    lines.append(f'parameters {{ key: "sha256" value: {{ string_value: "{m.sha256}" }} }}')
    return "\n".join(lines) + "\n"


def write_triton_repository(out: Path, weights_dir: Path | None = None, kind: str = "KIND_GPU") -> list[str]:
    """Write one Triton model per shipped manifest; returns the model names written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for m in list_models(weights_dir):
        m = load_manifest(m.name, weights_dir)  # verifies sha256
        src = verify_model(m, weights_dir)
        model_dir = out / m.name
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, model_dir / "1" / "model.onnx")
        (model_dir / "config.pbtxt").write_text(config_pbtxt(m, kind=kind), encoding="utf-8")
        written.append(m.name)
    return written
