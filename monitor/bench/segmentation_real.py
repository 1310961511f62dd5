"""Real labelled images (public, used locally, never committed): the shipped model's OOD guard,
and ``finetune segmentation --method auto`` on 1–2 labelled images vs an ilastik-style baseline.

``python -m monitor.bench.segmentation_real --root /work/data/i15 --json bench/segmentation.json``

Per case (:data:`CASES`; images + binary masks), with a seeded choice of ``--train`` images
(default 2) and ``--test`` others (default 20):

* **shipped model** (``xct_unet_fast`` through the real :class:`SegmentationPipeline`) on every
  test image as one series: ``ood`` per slice, the penetration it reads, and the alarms the
  demo's rules (penetration, growth) plus the OOD gate would raise;
* **finetune --method auto** on the training images (written as PNG pairs, ``--class-map``):
  the method it ships, both validation scores, minutes, and the foreground IoU on the test
  images through ONNX Runtime;
* **baseline**: a random forest (100 trees) on ``skimage.feature.multiscale_basic_features``
  trained on every labelled pixel of the same images (sampled to 200k), as ilastik users do.

Results go under ``real_data`` in the JSON (other keys kept), with source and licence.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("monitor.bench.segmentation_real")


@dataclass(frozen=True)
class Case:
    name: str
    images: str
    """Glob under --root."""
    masks: str
    """Mask directory under --root; mask = <dir>/<image stem><mask_suffix>."""
    mask_suffix: str
    class_map: str
    """``--class-map`` for the masks' values."""
    foreground: str
    """The class whose IoU is the headline number."""
    source: str
    licence: str


CASES = (
    Case(
        name="xray_battery_stack_tabs",
        images="ct4batt/segmentor/images/*",
        masks="ct4batt/segmentor/masks",
        mask_suffix=".png",
        class_map="255=electrode,0=electrolyte",
        foreground="electrode",
        source="X-ray images of power-battery electrode stacks (X-ray-PBD, Zhao et al., CVPR 2024) "
        "with electrode-tab region masks, as redistributed in github.com/MIM-SP/CT4Batt segmentor/ "
        "(images/, masks/)",
        licence="CT4Batt repository: MIT (README); X-ray-PBD: public research dataset, cite the CVPR "
        "2024 paper. Used locally only, not committed.",
    ),
    Case(
        name="nanoct_battery_electrode_3phase",
        images="segmentpy/raw/[0-9]*[0-9].tif",
        masks="segmentpy/raw",
        mask_suffix="_label.tif",
        class_map="2=electrode,0=electrolyte,1=dendrite",
        foreground="electrode",
        source="Real X-ray nano-CT slices of a Li-ion battery electrode (Su et al., npj Comput. "
        "Mater. 2022: active material, carbon-binder, pores) with 3-phase labels 0/1/2, "
        "github.com/ZeliangSu/SegmentPy raw/ (N.tif + N_label.tif, 20 slices of 400-600 px from "
        "several scans). Labels go to model class slots 2=electrode, 0=electrolyte, 1=dendrite "
        "(slot names only)",
        licence="Apache-2.0 (SegmentPy LICENSE). Used locally only, not committed.",
    ),
)


def _read_grey(p: Path) -> np.ndarray:
    from engines.train.seg_labels import _grey, _read

    return np.asarray(_grey(_read(p), p), np.float32)


def _read_mask(p: Path, case: Case) -> np.ndarray:
    """Class ids (model class slots) of a mask file, mapped with the case's class map."""
    from engines.synth.xct import CLASSES
    from engines.train.seg_labels import _mask_2d, _read, map_mask, parse_class_map

    raw = _mask_2d(_read(p), p)
    if case.class_map.startswith("255=") and raw.max() > 1 and set(np.unique(raw)) - {0, 255}:
        raw = np.where(raw > 127, 255, 0).astype(np.uint8)  # JPEG-ish masks: binarise
    return map_mask(raw, str(p), len(CLASSES), parse_class_map(case.class_map, CLASSES), None)


def _scores(preds: list[np.ndarray], gts: list[np.ndarray], fg: int) -> dict[str, float]:
    from engines.synth.xct import CLASSES
    from engines.train.seg_finetune_net import confusion_labelled, present_metrics

    n = len(CLASSES)
    conf = sum(
        (confusion_labelled(p, g, n) for p, g in zip(preds, gts, strict=True)), np.zeros((n, n), np.int64)
    )
    m = present_metrics(conf)
    return {"test_IoU_foreground": m[f"IoU_{CLASSES[fg]}"], "test_mIoU": m["mIoU"]}


def baseline_forest(train: list[tuple[np.ndarray, np.ndarray]], seed: int) -> tuple[object, float]:
    """ilastik-style: 100 trees on skimage's multiscale_basic_features, all labelled pixels."""
    from skimage.feature import multiscale_basic_features
    from sklearn.ensemble import RandomForestClassifier

    from engines.tiling import normalise_slice

    t0 = time.monotonic()
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for img, m in train:
        f = multiscale_basic_features(normalise_slice(img), sigma_min=1, sigma_max=16)
        f = f.reshape(-1, f.shape[-1])
        idx = rng.choice(f.shape[0], size=min(f.shape[0], 200_000 // len(train)), replace=False)
        xs.append(f[idx])
        ys.append(m.ravel()[idx])
    clf = RandomForestClassifier(n_estimators=100, max_depth=16, n_jobs=1, random_state=seed)
    clf.fit(np.concatenate(xs), np.concatenate(ys))
    return clf, time.monotonic() - t0


def baseline_predict(clf: object, img: np.ndarray) -> np.ndarray:
    from skimage.feature import multiscale_basic_features

    from engines.tiling import normalise_slice

    f = multiscale_basic_features(normalise_slice(img), sigma_min=1, sigma_max=16)
    return clf.predict(f.reshape(-1, f.shape[-1])).reshape(img.shape).astype(np.uint8)  # type: ignore[attr-defined]


def shipped_on_real(tests: list[tuple[Path, np.ndarray]]) -> dict[str, object]:
    from monitor.alerts.model import Severity
    from monitor.alerts.ood import OodAlarms
    from monitor.alerts.rules import ThresholdRule
    from monitor.config import PipelineSettings
    from monitor.frames import Frame, FrameMeta
    from monitor.pipelines.segmentation import SegmentationPipeline
    from monitor.sim.xct_stream import rules

    p = SegmentationPipeline(
        PipelineSettings(name="segmentation", kind="segmentation", streams=("xct",), model="xct_unet_fast")
    )
    gate, rs = OodAlarms([p]), [ThresholdRule(r) for r in rules("segmentation")]
    ungated = [ThresholdRule(r) for r in rules("segmentation")]
    flags, scores, pens, alarms, would = [], [], [], [], []
    for i, (_path, img) in enumerate(tests):
        (r,) = p.process([Frame("xct", "real", "real-series", i, img, 0.0, 0.0, FrameMeta(slice_z=i))])
        flags.append(r.scalars["ood"])
        scores.append(round(r.scalars["ood_score"], 2))
        pens.append(round(r.scalars["penetration"], 3))
        v = gate.verdict("segmentation", r)
        if v is not None:
            alarms.append((v.alarm_id, v.severity.name))
        for rule, raw in zip(rs, ungated, strict=True):
            val = float(r.scalars[rule.metric])
            w = raw.evaluate("xct", val, "real-series")
            if w is not None and w.severity >= Severity.MAJOR:
                would.append(w.alarm_id)
            if not gate.suppressed("segmentation", r, rule.metric):
                v = rule.evaluate("xct", val, "real-series")
                if v is not None:
                    alarms.append((v.alarm_id, v.severity.name))
    return {
        "slices": len(tests),
        "ood_flagged_slices": int(sum(f > 0 for f in flags)),
        "ood_threshold": round(p.ood.threshold, 3),
        "ood_score_min_median_max": [min(scores), float(np.median(scores)), max(scores)],
        "penetration_min_median_max": [min(pens), float(np.median(pens)), max(pens)],
        "alarms_raised": alarms,
        "major_alarms": [a for a in alarms if a[1] == "MAJOR"],
        "majors_without_guard": sorted(set(would)),
    }


def run_case(case: Case, root: Path, n_train: int, n_test: int, seed: int, steps: int) -> dict[str, object]:
    from engines.registry import load_manifest
    from engines.runtime import create_runner
    from engines.tiling import labels_from_probs, normalise_slice
    from engines.train.seg_finetune_net import manifest_probs
    from engines.train.segmentation_finetune import finetune

    images = sorted(root.glob(case.images))
    pairs = [(p, root / case.masks / f"{p.stem}{case.mask_suffix}") for p in images if p.stat().st_size]
    pairs = [pm for pm in pairs if pm[1].exists()]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))
    train = [pairs[i] for i in order[:n_train]]
    test = [pairs[i] for i in order[n_train : n_train + n_test]]
    tests = [(p, _read_grey(p)) for p, _ in test]
    gts = [_read_mask(m, case) for _, m in test]
    from engines.synth.xct import CLASSES

    fg_id = CLASSES.index(case.foreground)
    out: dict[str, object] = {
        "source": case.source,
        "licence": case.licence,
        "train_images": [p.name for p, _ in train],
        "test_images": len(test),
        "seed": seed,
    }
    out["shipped_model"] = shipped_on_real(tests)
    with tempfile.TemporaryDirectory() as tmp:
        data, wdir = Path(tmp) / "data", Path(tmp) / "model"
        data.mkdir()
        for p, m in train:  # the files as a user has them (image as is, mask as is)
            (data / f"{p.stem}_image{p.suffix.lower()}").symlink_to(p.resolve())
            (data / f"{p.stem}_mask{m.suffix.lower()}").symlink_to(m.resolve())
        t0 = time.monotonic()
        summary = finetune(
            data, wdir, method="auto", class_map=case.class_map, steps=steps, seed=seed, threads=1
        )
        minutes = (time.monotonic() - t0) / 60
        man = load_manifest(str(summary["name"]), wdir)
        with create_runner(man, "onnxruntime", threads=1, weights_dir=wdir) as runner:
            probs_of = manifest_probs(man, lambda b: runner.infer({"image": b})["probs"])
            preds = [labels_from_probs(probs_of(normalise_slice(img))) for _, img in tests]
            ood_after = []
            from engines.seg_ood import manifest_stats, slice_features

            st = manifest_stats(man)
            for _, img in tests[:5]:
                x = normalise_slice(img)
                pr = probs_of(x)
                f = slice_features(x, labels_from_probs(pr), float(pr.max(0).mean()), pr.shape[0])
                ood_after.append(round(st.score(f), 2) if st else None)
    val = summary["validation"]
    assert isinstance(val, dict)
    out["finetune_auto"] = {
        "shipped_method": summary["method"],
        "validation_mIoU": {k: v["mIoU"] for k, v in val.items()},
        "internal_test": summary["test"],
        "minutes": round(minutes, 2),
        "steps": steps,
        **_scores(preds, gts, fg_id),
        "ood_score_first5_test_images_vs_new_model": ood_after,
    }
    clf, secs = baseline_forest([(_read_grey(p), _read_mask(m, case)) for p, m in train], seed)
    bp = [baseline_predict(clf, img) for _, img in tests]
    out["baseline_rf_multiscale_basic_features"] = {
        "train_seconds": round(secs, 1),
        **_scores(bp, gts, fg_id),
        "config": "RandomForestClassifier(100 trees, max_depth 16) on multiscale_basic_features"
        "(sigma 1..16), "
        "200k sampled labelled pixels",
    }
    return out


def main(argv: list[str] | None = None) -> int:
    a = argparse.ArgumentParser(description=__doc__)
    a.add_argument("--root", default="/work/data/i15")
    a.add_argument("--json", default="bench/segmentation.json")
    a.add_argument("--train", type=int, default=2)
    a.add_argument("--test", type=int, default=20)
    a.add_argument("--seeds", type=int, nargs="+", default=[0])
    a.add_argument("--steps", type=int, default=500)
    a.add_argument("--cases", nargs="*", default=[c.name for c in CASES])
    args = a.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(1)
    load0 = os.getloadavg()[0]
    results = {}
    by_name = {c.name: c for c in CASES}
    for case in (by_name[n] for n in args.cases):
        for seed in args.seeds:
            results[f"{case.name}/seed{seed}"] = run_case(
                case, Path(args.root), args.train, args.test, seed, args.steps
            )
    path = Path(args.json)
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc["real_data"] = {
        "command": "python -m monitor.bench.segmentation_real " + " ".join(argv or []),
        "cpu": platform.processor() or platform.machine(),
        "loadavg_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "cases": results,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc["real_data"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
