"""torch → ONNX, then an automatic check that ONNX Runtime agrees with torch.

A mismatch beyond the tolerance is an :class:`~engines.errors.ExportMismatch`, never a warning.
The TorchScript exporter is used by default: it is ~50× faster than the dynamo exporter here,
handles ``dynamic_axes`` (batch, spatial) for every model we ship, and its graphs run on
ONNX Runtime, TensorRT and Triton alike. ``dynamo=True`` switches to the new exporter.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engines.errors import ExportMismatch

log = logging.getLogger("engines.export")

DEFAULT_OPSET = 17


@dataclass(frozen=True)
class ExportReport:
    path: Path
    max_abs_err: float
    max_rel_err: float
    rtol: float
    atol: float
    checked_shapes: tuple[tuple[int, ...], ...]
    """Input shapes the check ran with (the example and, with dynamic axes, a second shape)."""


def _second_example(
    example_inputs: tuple[torch.Tensor, ...],
    input_names: list[str],
    dynamic_axes: dict[str, dict[int, str]] | None,
) -> tuple[torch.Tensor, ...] | None:
    """The example with every dynamic batch axis grown by one, to prove the axes really are dynamic."""
    if not dynamic_axes:
        return None
    grown = []
    changed = False
    for name, t in zip(input_names, example_inputs, strict=True):
        axes = dynamic_axes.get(name, {})
        if 0 in axes:
            reps = [t.shape[0] + 1] + list(t.shape[1:])
            idx = torch.arange(reps[0]) % t.shape[0]
            grown.append(t[idx].clone())
            changed = True
        else:
            grown.append(t)
    return tuple(grown) if changed else None


def compare_outputs(
    ours: list[np.ndarray], reference: list[np.ndarray], names: list[str], rtol: float, atol: float
) -> tuple[float, float]:
    """Max abs/rel error over all outputs; raises ExportMismatch if any element exceeds atol + rtol*|ref|."""
    max_abs = 0.0
    max_rel = 0.0
    for name, a, b in zip(names, ours, reference, strict=True):
        if a.shape != b.shape:
            raise ExportMismatch(f"output {name!r}: ONNX Runtime shape {a.shape} != torch shape {b.shape}")
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        if not np.all(np.isfinite(a) == np.isfinite(b)):
            raise ExportMismatch(f"output {name!r}: non-finite values differ between ONNX Runtime and torch")
        diff = np.where(np.isfinite(diff), diff, 0.0)
        bound = atol + rtol * np.abs(b.astype(np.float64))
        worst = float(diff.max(initial=0.0))
        rel = float((diff / np.maximum(np.abs(b), 1e-12)).max(initial=0.0))
        max_abs, max_rel = max(max_abs, worst), max(max_rel, rel)
        if np.any(diff > bound):
            n_bad = int(np.count_nonzero(diff > bound))
            raise ExportMismatch(
                f"output {name!r}: {n_bad} of {diff.size} values differ beyond atol={atol:g}, "
                f"rtol={rtol:g} (max abs error {worst:.3g})"
            )
    return max_abs, max_rel


def _run_ort(path: Path, input_names: list[str], inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = {n: t.detach().cpu().numpy() for n, t in zip(input_names, inputs, strict=True)}
    return [np.asarray(o) for o in sess.run(None, feeds)]


def _run_torch(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(*inputs)
    outs = out if isinstance(out, tuple | list) else (out,)
    return [o.detach().cpu().numpy() for o in outs]


def export_onnx(
    model: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path | str,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = False,
) -> ExportReport:
    """Export ``model`` (put in eval mode) and check ONNX Runtime against torch on the examples."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    example_inputs = tuple(t.detach().cpu() for t in example_inputs)
    with warnings.catch_warnings():
        # The exporter's own deprecation chatter is not actionable for us (see the module docstring).
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=r".*batch_size other than 1.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            example_inputs,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            dynamo=dynamo,
        )
    checks = [example_inputs]
    second = _second_example(example_inputs, input_names, dynamic_axes)
    if second is not None:
        checks.append(second)
    max_abs = max_rel = 0.0
    for inputs in checks:
        a, r = compare_outputs(
            _run_ort(path, input_names, inputs), _run_torch(model, inputs), output_names, rtol, atol
        )
        max_abs, max_rel = max(max_abs, a), max(max_rel, r)
    report = ExportReport(
        path=path,
        max_abs_err=max_abs,
        max_rel_err=max_rel,
        rtol=rtol,
        atol=atol,
        checked_shapes=tuple(tuple(c[0].shape) for c in checks),
    )
    log.info("exported %s: ONNX Runtime vs torch max abs error %.2e (atol %.0e)", path, max_abs, atol)
    return report
