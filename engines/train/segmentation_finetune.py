"""``operando-monitor finetune segmentation``: a model from a few labelled real slices.

``--data DIR``: labelled slices (:mod:`engines.train.seg_labels`: TIFF/PNG/HDF5, any size,
``--class-map``, ``--ignore`` for unlabelled pixels). A seeded random split (by slice with
three or more slices, else by blocks inside the slices) gives train / validation (checkpoint
and method choice) / test (reported only). ``--method``:

* ``network``: fine-tune a shipped model (``--model``, any with torch weights) for ``--steps``
  steps (optional ``--max-minutes`` cap), cross-entropy on labelled pixels;
* ``forest``: a random forest on multi-scale filter features (:mod:`engines.train.forest`),
  refitted on train + validation pixels once chosen;
* ``auto`` (default): both; ships the better on validation and states both scores.

Writes ``<name>.onnx`` + ``<name>.json`` (+ ``.pt`` for a network) to ``--out``; the manifest
records the data's provenance (files and sha256), the split, both methods' scores, the test
metrics (classes present only) and OOD statistics of the new model's own training slices.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Required, TypedDict

import numpy as np
import torch

from engines.export import export_onnx
from engines.models.unet import WithSoftmax
from engines.registry import TensorSpec, load_manifest, save_model
from engines.runtime import create_runner
from engines.seg_ood import fit_segmentation_stats
from engines.synth.xct import CLASSES
from engines.train.forest import (
    FEATURES,
    FOREST_TILE,
    FeatureExtractor,
    ForestConfig,
    export_forest_onnx,
    forest_probs,
    train_forest,
)
from engines.train.seg_finetune_net import (
    evaluate_slices,
    load_network,
    manifest_probs,
    split_slices,
    torch_probs,
    train_network,
)
from engines.train.seg_labels import (
    FinetuneDataError,
    data_digest,
    load_labelled,
    parse_class_map,
)
from engines.train.segmentation_export import NORMALISATION

log = logging.getLogger("engines.train.segmentation")
DEFAULT_MODEL = "xct_unet_fast"
DEFAULT_OUT = Path("runs") / "finetune" / "segmentation"
DEFAULT_NAME = "xct_finetuned"
METHODS = ("auto", "network", "forest")
__all__ = ["FinetuneDataError", "finetune", "finetune_cli", "load_labelled"]


class MethodScores(TypedDict, total=False):
    """Validation metrics of one fine-tuning method (and the forest's training time)."""

    val: Required[dict[str, float]]
    seconds: float


def _save(
    onnx_file: Path,
    out: Path,
    name: str,
    version: str,
    extra: dict,
    training: dict,
    metrics: dict,
    **torch_kw,
) -> None:
    fully = bool(extra.get("fully_convolutional"))
    in_shape: tuple[int | str, ...] = ("batch", 1, "height", "width") if fully else ("batch", 1, 128, 128)
    save_model(
        onnx_file,
        name=name,
        version=version,
        task="segmentation",
        inputs=(TensorSpec("image", in_shape),),
        outputs=(TensorSpec("probs", (in_shape[0], len(CLASSES), in_shape[2], in_shape[3])),),
        normalisation=NORMALISATION,
        training=training,
        metrics={k: v for k, v in metrics.items() if np.isfinite(v)},
        extra=extra,
        out_dir=out,
        **torch_kw,
    )


def finetune(
    data: Path,
    out: Path,
    *,
    method: str = "auto",
    model: str = DEFAULT_MODEL,
    weights: Path | None = None,
    class_map: str | None = None,
    ignore: int | None = None,
    steps: int = 500,
    max_minutes: float | None = None,
    seed: int = 0,
    threads: int = 1,
    name: str = DEFAULT_NAME,
    forest: ForestConfig | None = None,
    refit_all: bool = True,
) -> dict[str, object]:
    """Train, choose, export; returns a summary (also in the manifest)."""
    if method not in METHODS:
        raise FinetuneDataError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    torch.set_num_threads(threads)
    cmap = parse_class_map(class_map, CLASSES)
    slices = load_labelled(data, len(CLASSES), cmap, ignore)
    split = split_slices(slices, seed)
    digest, files = data_digest(data)
    log.info("%d labelled slices from %s; split %s", len(slices), data, split.how)
    t_start = time.monotonic()
    base = load_manifest(model, weights) if method in ("auto", "network") else None
    scores: dict[str, MethodScores] = {}
    net = hist = None
    if base is not None:
        net, probs_out = load_network(base, weights)
        max_s = None if max_minutes is None else 60.0 * max_minutes
        lr = 4e-4 if not probs_out else 2e-4
        net, hist, _ = train_network(
            net, probs_out, base, split, steps=steps, max_seconds=max_s, seed=seed, lr=lr
        )
        scores["network"] = {"val": evaluate_slices(torch_probs(net, probs_out, base), split.val)}
    clf = None
    fcfg = forest or ForestConfig(seed=seed, threads=threads)
    if method in ("auto", "forest"):
        fe = FeatureExtractor(threads)
        t0 = time.monotonic()
        clf = train_forest(
            [fe(s.image) for s in split.train], [s.mask for s in split.train], len(CLASSES), fcfg
        )
        val = evaluate_slices(lambda x: forest_probs(clf, fe(x), len(CLASSES)), split.val)
        scores["forest"] = {"val": val, "seconds": round(time.monotonic() - t0, 1)}
    chosen = method if method != "auto" else max(scores, key=lambda k: scores[k]["val"]["mIoU"])
    if method == "auto":
        log.info(
            "auto: network val mIoU %.4f, forest val mIoU %.4f -> %s",
            scores["network"]["val"]["mIoU"],
            scores["forest"]["val"]["mIoU"],
            chosen,
        )
    version = f"ft-{digest[:8]}-s{seed}"
    training: dict[str, object] = {
        "command": f"operando-monitor finetune segmentation --data {data} --method {method} --seed {seed}",
        "seed": seed,
        "method": chosen,
        "methods": {k: dict(v.items()) for k, v in scores.items()},
        "data": {
            "directory": str(data),
            "sha256": digest,
            "files": files,
            "slices": [s.source for s in slices],
            "class_map": class_map or "mask values are class ids",
            "ignore": ignore,
            "kind": "user-labelled slices",
        },
        "split": split.how,
        "test_metrics_of": "the model trained without the test labels"
        + (
            "; the shipped forest is then refitted on every labelled pixel"
            if refit_all and chosen == "forest"
            else ""
        ),
    }
    out.mkdir(parents=True, exist_ok=True)
    test_pre: dict[str, float] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.onnx"
        if chosen == "forest":
            assert clf is not None
            fe = FeatureExtractor(threads)
            refit = split.train + split.val
            clf = train_forest([fe(s.image) for s in refit], [s.mask for s in refit], len(CLASSES), fcfg)
            export_forest_onnx(clf, len(CLASSES), path)
            if refit_all:  # test metrics come from the model above; the shipped one sees every label
                pre = clf
                test_pre = evaluate_slices(lambda x: forest_probs(pre, fe(x), len(CLASSES)), split.test)
                full = [s.image for s in slices]
                clf = train_forest([fe(x) for x in full], [s.mask for s in slices], len(CLASSES), fcfg)
                export_forest_onnx(clf, len(CLASSES), path)
            extra: dict[str, object] = {
                "kind": "forest",
                "classes": list(CLASSES),
                "tile": {"tile": FOREST_TILE.tile, "overlap": FOREST_TILE.overlap,
                         "margin": FOREST_TILE.margin, "batch": FOREST_TILE.batch},
                "fully_convolutional": True,
                "multiple": 1,
                "forest": {"features": list(FEATURES), "n_estimators": fcfg.n_estimators,
                           "max_depth": fcfg.max_depth, "min_samples_leaf": fcfg.min_samples_leaf,
                           "max_pixels": fcfg.max_pixels,
                           "refit": "every labelled pixel" if refit_all else "train + validation pixels"},
            }  # fmt: skip
            torch_kw: dict[str, object] = {}
        else:
            assert base is not None and net is not None and hist is not None
            wrapped = net if probs_out else WithSoftmax(net).eval()
            fully = bool(base.extra.get("fully_convolutional"))
            dyn = {"image": {0: "batch"}, "probs": {0: "batch"}}
            if fully:
                dyn = {k: {0: "batch", 2: "height", 3: "width"} for k in ("image", "probs")}
            example = torch.from_numpy(np.ascontiguousarray(split.train[0].image[None, None, :128, :128]))
            if example.shape[-2:] != (128, 128):
                example = torch.zeros(1, 1, 128, 128)
            export_onnx(wrapped.eval(), (example,), path, input_names=["image"], output_names=["probs"],
                        dynamic_axes=dyn)  # fmt: skip
            info = base.extra["torch"]
            assert isinstance(info, dict)
            extra = {k: v for k, v in base.extra.items() if k not in ("torch", "ood", "held_out")}
            extra["kind"] = "network"
            training.update(steps=hist.steps, seconds=round(hist.seconds, 1), max_minutes=max_minutes,
                            stopped_by_time=hist.stopped_by_time, val_mIoU_curve=hist.val_miou,
                            finetuned_from=f"{base.name} {base.version} {base.sha256[:12]}")  # fmt: skip
            torch_kw = {"torch_module": wrapped, "torch_factory": str(info["factory"]),
                        "torch_kwargs": dict(info["kwargs"])}  # fmt: skip
        extra["held_out"] = split.how
        _save(path, out, name, version, extra, training, {}, **torch_kw)
    m = load_manifest(name, out)
    with create_runner(m, "onnxruntime", threads=threads, weights_dir=out) as runner:
        probs_of = manifest_probs(m, lambda b: runner.infer({"image": b})["probs"])
        test = test_pre if test_pre is not None else evaluate_slices(probs_of, split.test)
        stats = fit_segmentation_stats(
            [s.image for s in slices],
            probs_of,
            CLASSES,
            f"{len(slices)} labelled slices in {data} (and their quadrants)",
            quadrants=True,
            min_threshold=4.0,
        )
    extra = dict(m.extra)
    extra["ood"] = stats.to_json()
    training["test"] = test
    training["seconds_total"] = round(time.monotonic() - t_start, 1)
    metrics = {k: v for k, v in test.items() if k != "pixels"}
    with tempfile.TemporaryDirectory() as tmp:  # rewrite the manifest with test metrics and OOD stats
        path = Path(tmp) / f"{name}.onnx"
        path.write_bytes((out / m.onnx).read_bytes())
        _save(path, out, name, version, extra, training, metrics)
    summary: dict[str, object] = {
        "name": name,
        "version": version,
        "method": chosen,
        "split": split.how,
        "test": test,
    }
    summary["validation"] = {k: v["val"] for k, v in scores.items()}
    return summary


def finetune_cli(args: argparse.Namespace) -> int:
    if not args.data:
        raise SystemExit(
            "finetune segmentation needs --data DIR (image/mask pairs; see docs/segmentation.md)"
        )
    max_minutes = getattr(args, "max_minutes", None)
    if args.epochs:
        log.warning(
            "--epochs is deprecated for segmentation: read as --max-minutes %d (use --steps)", args.epochs
        )
        max_minutes = float(args.epochs)
    steps = args.steps or 500
    forest = None
    if args.quick:
        steps = 3
        forest = ForestConfig(n_estimators=4, max_depth=6, max_pixels=4000, seed=args.seed)
    out = Path(args.out) if args.out else DEFAULT_OUT
    try:
        summary = finetune(
            Path(args.data),
            out,
            method=args.method,
            model=args.model or DEFAULT_MODEL,
            weights=Path(args.weights) if args.weights else None,
            class_map=args.class_map,
            ignore=args.ignore,
            steps=steps,
            max_minutes=max_minutes,
            seed=args.seed,
            threads=args.threads or 1,
            name=args.name or DEFAULT_NAME,
            forest=forest,
        )
    except FinetuneDataError as exc:
        print(f"operando-monitor finetune segmentation: error: {exc}", file=sys.stderr)
        return 2
    val = summary["validation"]
    assert isinstance(val, dict)
    for k, v in val.items():
        per_class = json.dumps({a: b for a, b in v.items() if a != "pixels"})
        print(f"{k:8s} validation mIoU {v['mIoU']:.4f}  {per_class}")
    print(f"shipped: {summary['method']}  test {json.dumps(summary['test'])}")
    print(f"split: {summary['split']}")
    print(f"wrote {out}/{summary['name']}.onnx + .json (version {summary['version']}); use it with")
    print(f'  model = "{summary["name"]}"  weights_dir = "{out}"   (config), or --weights-dir/--model')
    return 0
