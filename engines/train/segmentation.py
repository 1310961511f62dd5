"""`operando-monitor train|finetune segmentation`: XCT dendrite segmentation models.

``train`` (``cli_main``): generates (and caches under ``build/cache/xct``) synthetic slices,
compares the paper's losses (BCE, Tversky, focal Tversky) on equal-step short runs of the
fast U-Net, trains the fast U-Net and TransforCNN with the winning loss (the paper-shaped U-Net
with ``python -m engines.train.segmentation --models xct_unet``), searches the E-Net ensemble
weights on validation slices, exports every model to ONNX
(checked against torch), measures held-out metrics through ONNX Runtime and writes
manifests, plots and ``engines/weights/reports/segmentation/report.json``.

``finetune`` (``finetune_main``): adapts a shipped model to a few labelled real slices; see
:mod:`engines.train.segmentation_finetune` and docs/segmentation.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engines.models.ensemble import Ensemble, search_weights
from engines.registry import WEIGHTS_DIR
from engines.train.losses import LOSSES
from engines.train.segmentation_core import SPECS, History, ModelSpec, torch_predict, train
from engines.train.segmentation_data import (
    TEST_SEED0,
    TRAIN_SEED0,
    VAL_SEED0,
    build_slices,
    confusion,
    scores,
)
from engines.train.segmentation_export import ENSEMBLE_TILE, export_model, write_plots

log = logging.getLogger("engines.train.segmentation")
REPORT_DIR = WEIGHTS_DIR / "reports" / "segmentation"


def _members_probs(models: list[torch.nn.Module], images: np.ndarray) -> list[np.ndarray]:
    from engines.tiling import tiled_predict

    return [np.stack([tiled_predict(img, torch_predict(m), ENSEMBLE_TILE) for img in images]) for m in models]


def run(
    out: Path,
    *,
    seed: int = 0,
    quick: bool = False,
    progress: bool = True,
    models: tuple[str, ...] = ("xct_unet_fast", "xct_transforcnn"),
    loss: str | None = None,
    sweep_steps: int = 150,
    budget_s: float | None = None,
    n_train: int = 240,
    n_val: int = 6,
    n_test: int = 16,
    threads: int = 2,
    command: str = "operando-monitor train segmentation",
) -> dict[str, object]:
    """Train, select, export; return the report (also written to ``out/reports/segmentation``)."""
    torch.set_num_threads(threads)
    shape = (512, 512)
    steps = None
    if quick:
        shape, n_train, n_val, n_test, sweep_steps = (256, 256), 6, 2, 2, 0
        steps = 3
    t0 = time.monotonic()
    train_data = build_slices(TRAIN_SEED0 + seed * 10_000, n_train, shape, cache=None if quick else _cache())
    val_data = build_slices(VAL_SEED0, n_val, shape, cache=None if quick else _cache())
    test_data = build_slices(TEST_SEED0, n_test, shape, cache=None if quick else _cache())
    log.info(
        "data: %d train, %d val, %d test slices of %s in %.0f s",
        n_train,
        n_val,
        n_test,
        shape,
        time.monotonic() - t0,
    )
    report: dict[str, object] = {
        "seeds": {
            "train": [TRAIN_SEED0 + seed * 10_000, TRAIN_SEED0 + seed * 10_000 + n_train - 1],
            "val": [VAL_SEED0, VAL_SEED0 + n_val - 1],
            "test": [TEST_SEED0, TEST_SEED0 + n_test - 1],
        },
        "slice_shape": list(shape),
        "quick": quick,
    }
    # 1. Loss comparison on short runs of the fast U-Net with equal step counts (a shared
    # machine's speed varies, so equal time would not be a fair comparison); val mIoU decides.
    sweep: dict[str, dict[str, float]] = {}
    if loss is None and sweep_steps > 0:
        for name in LOSSES:
            _, h = train(
                SPECS["xct_unet_fast"],
                train_data,
                val_data,
                loss=name,
                seed=seed,
                steps=sweep_steps,
                budget_s=10 * sweep_steps,
                progress=progress,
                evals=1,
            )
            sweep[name] = {
                "val_mIoU": round(max(h.val_miou), 4),
                "steps": h.steps_done,
                "seconds": round(h.seconds, 1),
            }
        loss = max(sweep, key=lambda k: sweep[k]["val_mIoU"])
        log.info("loss comparison: %s → %s", sweep, loss)
    loss = loss or "bce"
    report["loss_comparison"] = sweep
    report["loss"] = loss
    if not models:  # loss comparison only
        rdir = out / "reports" / "segmentation"
        rdir.mkdir(parents=True, exist_ok=True)
        (rdir / "loss_comparison.json").write_text(json.dumps(report, indent=2) + "\n")
        return report
    # 2. Final models.
    trained: dict[str, tuple[ModelSpec, torch.nn.Module, History]] = {}
    for name in models:
        spec = SPECS[name]
        model, hist = train(
            spec,
            train_data,
            val_data,
            loss=loss,
            seed=seed,
            budget_s=budget_s,
            progress=progress,
            steps=steps,
        )
        trained[name] = (spec, model, hist)
    # 3. Ensemble weights on validation data (never the test seeds).
    names = list(trained)
    ens_info: dict[str, object] = {}
    if len(names) >= 2:
        members = [trained[n][1] for n in names]
        probs = _members_probs(members, val_data[0])

        def val_score(p: np.ndarray) -> float:
            conf = np.sum(
                [confusion(pi.argmax(0), li) for pi, li in zip(p, val_data[1], strict=True)], axis=0
            )
            return scores(conf).miou

        weights, best = search_weights(probs, val_score, step=0.1)
        ens_info = {"members": names, "weights": [round(w, 2) for w in weights], "val_mIoU": round(best, 4)}
        log.info("ensemble weights %s (val mIoU %.4f)", dict(zip(names, weights, strict=True)), best)
    # 4. Export, held-out metrics through ONNX Runtime, manifests.
    config = {
        "loss": loss,
        "quick": quick,
        "n_train": n_train,
        "slice_shape": list(shape),
        "budget_s": budget_s,
    }
    results: dict[str, object] = {}
    for name, (spec, model, hist) in trained.items():
        m = export_model(spec, model, out, test_data, command=command, seed=seed, config=config, history=hist)
        results[name] = m
    if ens_info:
        ens = Ensemble([trained[n][1] for n in names], ens_info["weights"])  # type: ignore[arg-type]
        member_specs = [trained[n][0] for n in names]
        results["xct_ensemble"] = export_model(
            None,
            ens,
            out,
            test_data,
            command=command,
            seed=seed,
            config={**config, **ens_info},
            members=member_specs,
        )
    report["models"] = results
    report["ensemble"] = ens_info
    report["histories"] = {
        n: {
            "steps": h.steps_done,
            "seconds": round(h.seconds, 1),
            "val_step": h.val_step,
            "val_mIoU": [round(v, 4) for v in h.val_miou],
        }
        for n, (_, _, h) in trained.items()
    }
    report["total_seconds"] = round(time.monotonic() - t0, 1)
    rdir = out / "reports" / "segmentation"
    rdir.mkdir(parents=True, exist_ok=True)
    (rdir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_plots(rdir, {n: h for n, (_, _, h) in trained.items()}, out, test_data, list(results))
    return report


def _cache() -> Path:
    from engines.train.segmentation_data import CACHE_DIR

    return CACHE_DIR


def cli_main(args: argparse.Namespace) -> int:
    """Entry point of ``operando-monitor train segmentation``."""
    out = Path(args.out) if args.out else WEIGHTS_DIR
    budget = None
    if args.epochs:
        budget = 60.0 * float(args.epochs)  # --epochs N: N minutes per model (time-boxed training)
    report = run(
        out,
        seed=args.seed,
        quick=bool(args.quick),
        progress=not args.no_progress,
        budget_s=budget,
        threads=args.threads or 2,
    )
    models = report["models"]
    assert isinstance(models, dict)
    for name, m in models.items():
        print(f"{name}: {json.dumps(m)}")
    return 0


def finetune_main(args: argparse.Namespace) -> int:
    """Entry point of ``operando-monitor finetune segmentation`` (see segmentation_finetune)."""
    from engines.train.segmentation_finetune import finetune_cli

    return finetune_cli(args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="train XCT segmentation models (finer control than the CLI)")
    p.add_argument("--out", default=str(WEIGHTS_DIR))
    p.add_argument("--models", nargs="+", default=["xct_unet_fast", "xct_transforcnn"], choices=list(SPECS))
    p.add_argument("--loss", default=None, choices=list(LOSSES), help="skip the loss comparison")
    p.add_argument("--sweep-steps", type=int, default=150)
    p.add_argument("--budget-seconds", type=float, default=None, help="per model")
    p.add_argument("--n-train", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--losses-only",
        action="store_true",
        help="only compare the losses (reports/segmentation/loss_comparison.json)",
    )
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cmd = "python -m engines.train.segmentation " + " ".join(sys.argv[1:] if argv is None else argv)
    report = run(
        Path(a.out),
        seed=a.seed,
        quick=a.quick,
        progress=not a.no_progress,
        models=() if a.losses_only else tuple(a.models),
        loss=a.loss,
        sweep_steps=a.sweep_steps,
        budget_s=a.budget_seconds,
        n_train=a.n_train,
        threads=a.threads,
        command=cmd,
    )
    print(json.dumps(report.get("models", report.get("loss_comparison")), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
