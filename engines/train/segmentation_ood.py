"""Write the OOD statistics of the shipped XCT segmentation models into their manifests.

``python -m engines.train.segmentation_ood [--models ...] [--n 48] [--weights DIR]``: renders
``n`` synthetic training slices (training seeds, two sizes, growth varied like training),
runs each model on them (ONNX Runtime, tiled like the pipeline) and stores
:class:`engines.ood.OodStats` as ``extra["ood"]`` of the model's manifest. The ONNX file and its
sha256 are untouched. Fine-tuned models get theirs from their own training slices
(:mod:`engines.train.segmentation_finetune`).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engines.ood import OodStats
from engines.registry import WEIGHTS_DIR, Manifest, load_manifest
from engines.runtime import create_runner
from engines.seg_ood import fit_segmentation_stats
from engines.synth.xct import CLASSES, labels_at, make_cell, make_slice, render, to_counts
from engines.tiling import TileSpec, full_predict, normalise_slice, tiled_predict
from engines.train.segmentation_data import TRAIN_SEED0, slice_growth

log = logging.getLogger("engines.train.segmentation")
MODELS = ("xct_unet_fast", "xct_transforcnn", "xct_ensemble")


def model_predict(manifest: Manifest, runner: object) -> Callable[[np.ndarray], np.ndarray]:
    """``x (normalised) -> (C, H, W)`` probabilities, tiled as the pipeline does."""
    tile = TileSpec(**manifest.extra["tile"])  # type: ignore[arg-type]

    def infer(b: np.ndarray) -> np.ndarray:
        return runner.infer({"image": b})["probs"]  # type: ignore[attr-defined]

    if manifest.extra.get("fully_convolutional"):
        multiple = int(manifest.extra.get("multiple", 16))  # type: ignore[call-overload]
        return lambda x: full_predict(x, infer, multiple)
    return lambda x: tiled_predict(x, infer, tile)


def training_like_slices(n: int, seed0: int = TRAIN_SEED0) -> list[np.ndarray]:
    """``n`` normalised synthetic slices from training seeds: half independent slices (512²,
    growth varied), half from volumes (384×640, every z of a 24-slice cell, as streamed)."""
    out = []
    for i in range(n // 2):
        img, _ = make_slice((512, 512), seed0 + i, growth=slice_growth(seed0 + i))
        out.append(normalise_slice(img))
    k = 0
    while len(out) < n:
        cell = make_cell((384, 640), seed0 + 50_000 + k, depth=24)
        growth = float(np.random.default_rng(k).uniform(0.3, 1.0))
        for z in range(0, 24, 3):
            if len(out) < n:
                lab = labels_at(cell, float(z), growth)
                out.append(normalise_slice(to_counts(render(cell, lab, float(z)))))
        k += 1
    return out


def write_ood(name: str, stats: OodStats, weights: Path) -> None:
    path = weights / f"{name}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data.setdefault("extra", {})["ood"] = stats.to_json()
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def fit_shipped(models: tuple[str, ...], n: int, weights: Path, threads: int = 2) -> dict[str, OodStats]:
    slices = training_like_slices(n)
    out = {}
    for name in models:
        m = load_manifest(name, weights)
        with create_runner(m, "onnxruntime", threads=threads, weights_dir=weights) as runner:
            stats = fit_segmentation_stats(
                slices,
                model_predict(m, runner),
                CLASSES,
                source=f"{n} synthetic training-seed slices (512x512 and 384x640 volumes), engines.synth.xct",
            )
        write_ood(name, stats, weights)
        log.info("%s: OOD threshold %.2f from %d slices", name, stats.threshold, n)
        out[name] = stats
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="*", default=list(MODELS))
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--weights", default=str(WEIGHTS_DIR))
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    fit_shipped(tuple(a.models), a.n, Path(a.weights), a.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
