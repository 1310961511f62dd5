"""int8 static quantisation of a shipped model, kept only where its metric holds.

``operando-monitor quantize MODEL`` (:func:`quantize_model`):

1. calibrate on synthetic data from seeds of their own (``CALIB_SEED0 …``, used neither in
   training nor in any evaluation), ONNX Runtime ``quantize_static`` in QDQ format, weights
   int8 per output channel, activations uint8;
2. evaluate fp32 and int8 on the same held-out data (the seeds of ``bench segmentation``) with
   the model's own metric (mIoU for segmentation);
3. keep ``<model>_int8.onnx`` + ``<model>_int8.json`` (its own manifest: metrics, fp32 metric,
   quantisation config, the CPU it was measured on, speed ratio) only if the int8 metric is
   within ``tolerance`` (0.005) of fp32; otherwise remove both. A report goes to
   ``reports/quantize/<model>.json`` either way.

Evaluators: segmentation (mIoU, 8 held-out slices) and instance segmentation (``txm_particle_net``:
instance F1 on the 40 held-out scenes of its training). Early warning (AUROC) has none here and is
reported as not quantised. Re-run the command after retraining:
the int8 manifest records the fp32 model's sha256, and the runtime ignores an int8 model whose
fp32 parent has changed (:func:`int8_manifest_for`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.isa import detect
from engines.registry import (  # noqa: F401 - int8_manifest_for re-exported for callers
    INT8_SUFFIX,
    WEIGHTS_DIR,
    Manifest,
    int8_manifest_for,
    load_manifest,
    onnx_path,
    sha256_file,
)

log = logging.getLogger("engines.quantize")

CALIB_SEED0 = 970_000
"""Calibration seeds: disjoint from training (< 900 000) and from the bench's held-out seeds."""
EVAL_SEED0 = 950_000
"""Held-out evaluation seeds (the same as ``bench segmentation``)."""
TOLERANCE = 0.005


@dataclass(frozen=True)
class Evaluation:
    metric: str
    value: float
    seconds: float
    """Wall time of the evaluation (all slices, same path as the pipeline)."""
    pixels: int


Predict = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def _segmentation_data(m: Manifest, n_calib: int) -> Iterator[dict[str, np.ndarray]]:
    from engines.synth.xct import make_slice
    from engines.tiling import normalise_slice

    # manifest extra["tile"] is the TileSpec dict the training wrote (untyped JSON here)
    size = int(m.extra.get("tile", {}).get("tile", 128))  # type: ignore[attr-defined]
    rng = np.random.default_rng(CALIB_SEED0)
    for i in range(n_calib):
        img = normalise_slice(make_slice((512, 512), CALIB_SEED0 + i, growth=float(rng.uniform(0.2, 1.0)))[0])
        y, x = rng.integers(0, 512 - size + 1, 2)
        yield {
            m.inputs[0].name: np.ascontiguousarray(img[None, None, y : y + size, x : x + size], np.float32)
        }


def _segmentation_eval(m: Manifest, predict: Predict, n_eval: int) -> Evaluation:
    from engines.synth.xct import N_CLASSES, make_slice
    from engines.tiling import TileSpec, labels_from_probs, normalise_slice, tiled_predict
    from engines.train.segmentation_data import confusion, scores, slice_growth

    tile = TileSpec(**m.extra["tile"])  # type: ignore[arg-type]
    name_in, name_out = m.inputs[0].name, m.outputs[0].name
    conf = np.zeros((N_CLASSES, N_CLASSES), np.int64)
    seconds, pixels = 0.0, 0
    for i in range(n_eval):
        img, lab = make_slice((512, 512), EVAL_SEED0 + i, growth=slice_growth(EVAL_SEED0 + i))
        t0 = time.perf_counter()
        probs = tiled_predict(normalise_slice(img), lambda b: predict({name_in: b})[name_out], tile)
        labels = labels_from_probs(probs)
        seconds += time.perf_counter() - t0
        pixels += img.size
        conf += confusion(labels, lab)
    return Evaluation("mIoU", float(scores(conf).miou), seconds, pixels)


def _particle_input(m: Manifest, image: np.ndarray) -> dict[str, np.ndarray]:
    from engines.models.particle_net import pad_to_multiple

    multiple = int(m.extra.get("multiple", 4))  # type: ignore[call-overload]
    return {m.inputs[0].name: np.ascontiguousarray(pad_to_multiple(image, multiple)[None, None], np.float32)}


def _particle_data(m: Manifest, n_calib: int) -> Iterator[dict[str, np.ndarray]]:
    from engines.train.alignment_data import make_set

    for s in make_set(CALIB_SEED0, n_calib):
        yield _particle_input(m, s.image)


def _particle_eval(m: Manifest, predict: Predict, n_eval: int) -> Evaluation:
    """Held-out instance F1 (seeds 100 000…, as in training), network through ONNX."""
    from engines.models.particle_net import instance_f1, split_instances
    from engines.train.alignment import upsample_labels
    from engines.train.alignment_data import HELDOUT_SEED0, make_set

    split = m.extra.get("split", {})
    split = {k: float(v) for k, v in split.items()} if isinstance(split, dict) else {}
    tp = fp = fn = 0
    seconds, pixels = 0.0, 0
    for s in make_set(HELDOUT_SEED0, n_eval):
        h, w = s.image.shape
        t0 = time.perf_counter()
        out = predict(_particle_input(m, s.image))
        seconds += time.perf_counter() - t0
        pixels += s.image.size
        labels = split_instances(out["fg"][0, 0, :h, :w], out["dist"][0, 0, :h, :w], **split)  # type: ignore[arg-type]
        a, b, c = instance_f1(upsample_labels(labels, s.factor, s.labels_full.shape), s.labels_full)
        tp, fp, fn = tp + a, fp + b, fn + c
    return Evaluation("instance_f1", 2 * tp / max(2 * tp + fp + fn, 1), seconds, pixels)


EVALUATORS: dict[
    str, tuple[Callable[..., Iterator[dict[str, np.ndarray]]], Callable[..., Evaluation], int]
] = {
    "segmentation": (_segmentation_data, _segmentation_eval, 8),
    "instance_segmentation": (_particle_data, _particle_eval, 40),
}
"""task → (calibration data, evaluation, default held-out samples). Tasks without one are not
quantised (early warning: its AUROC evaluation lives with its training data)."""


def _quantize(src: Path, dst: Path, data: list[dict[str, np.ndarray]]) -> dict[str, object]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(data)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    config = {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weights": "int8 per channel",
        "activations": "uint8",
        "calibration": "MinMax",
        "calibration_samples": len(data),
        "calibration_seeds": [CALIB_SEED0, CALIB_SEED0 + len(data) - 1],
    }
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
    return config


def quantize_model(
    name: str,
    weights_dir: Path | str | None = None,
    *,
    n_calib: int = 32,
    n_eval: int | None = None,
    tolerance: float = TOLERANCE,
    threads: int = 2,
    report_dir: Path | str | None = None,
) -> dict[str, object]:
    """Quantise ``name``; keep the int8 model only within ``tolerance`` of fp32. Returns the report."""
    from engines.runtime import create_runner

    d = Path(weights_dir) if weights_dir not in (None, "") else WEIGHTS_DIR
    m = load_manifest(name, d)
    isa = detect()
    report: dict[str, object] = {
        "model": name,
        "fp32_sha256": m.sha256,
        "cpu": isa.as_dict(),
        "tolerance": tolerance,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if m.task not in EVALUATORS:
        report |= {"kept": False, "reason": f"no evaluator for task {m.task!r} here: not quantised"}
        _write_report(report, d, report_dir)
        return report
    calibration, evaluate, default_eval = EVALUATORS[m.task]
    n_eval = n_eval or default_eval
    dst = d / f"{name}{INT8_SUFFIX}.onnx"
    config = _quantize(onnx_path(m, d), dst, list(calibration(m, n_calib)))
    with (
        create_runner(m, "onnxruntime", threads=threads, weights_dir=d, precision="fp32") as fp32,
        create_runner(dst, "onnxruntime", threads=threads) as int8,
    ):
        ref = evaluate(m, fp32.infer, n_eval)
        got = evaluate(m, int8.infer, n_eval)
    delta = got.value - ref.value
    kept = delta >= -tolerance
    report |= {
        "metric": ref.metric,
        "fp32": ref.value,
        "int8": got.value,
        "delta": delta,
        "fp32_mpx_per_s": ref.pixels / ref.seconds / 1e6,
        "int8_mpx_per_s": got.pixels / got.seconds / 1e6,
        "speedup_vs_fp32": ref.seconds / got.seconds,
        "quantization": config,
        "kept": kept,
    }
    manifest_path = d / f"{name}{INT8_SUFFIX}.json"
    if kept:
        q = dataclasses.replace(
            m,
            name=f"{name}{INT8_SUFFIX}",
            metrics={f"{ref.metric}": round(got.value, 4), f"fp32_{ref.metric}": round(ref.value, 4)},
            training=dict(m.training) | {"quantize_command": f"operando-monitor quantize {name}"},
            onnx=dst.name,
            sha256=sha256_file(dst),
            extra=dict(m.extra)
            | {
                "precision": "int8",
                "fp32_model": name,
                "fp32_sha256": m.sha256,
                "quantization": config,
                "measured_on": isa.summary(),
                "speedup_vs_fp32": round(ref.seconds / got.seconds, 3),
            },
        )
        manifest_path.write_text(q.to_json(), encoding="utf-8")
        log.info("%s: int8 kept (%s %.4f vs fp32 %.4f), %.2fx", name, ref.metric, got.value, ref.value,
                 ref.seconds / got.seconds)  # fmt: skip
    else:
        dst.unlink(missing_ok=True)
        manifest_path.unlink(missing_ok=True)
        report["reason"] = f"{ref.metric} {got.value:.4f} is more than {tolerance} below fp32 {ref.value:.4f}"
        log.warning("%s: int8 rejected: %s", name, report["reason"])
    _write_report(report, d, report_dir)
    return report


def _write_report(report: dict[str, object], weights_dir: Path, report_dir: Path | str | None) -> None:
    out = Path(report_dir) if report_dir else weights_dir / "reports" / "quantize"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{report['model']}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
