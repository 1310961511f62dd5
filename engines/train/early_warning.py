"""`operando-monitor train early-warning` and `finetune early-warning`.

Train: simulate (cached under ``runs/cache/early_warning``) the train/val/test splits (seed
ranges in :mod:`engines.train.early_warning_data`), train the CNN-GRU and the three baselines,
evaluate on the held-out test split, export ONNX (checked against torch), write the manifest
``early_warning_cnn_gru`` (+ torch state dict), the baselines (``early_warning_baselines.pt``),
and metrics JSON + plots under ``<out>/reports/early_warning/``.

Fine-tune: adapt the shipped model to a new kinetic regime from a few runs (``--data DIR`` of
``*.npz`` run files with ``frames`` (n, H, W) and ``t_star``, or, without ``--data``, the
simulated ``ood_finetune`` split: 10 runs of the unseen Da band); writes the adapted model
under the same name to ``--out`` (default ``runs/finetune/early_warning``) with before/after
metrics on the ``ood`` split.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from engines.export import export_onnx
from engines.models.cnn_gru import CnnGru
from engines.registry import WEIGHTS_DIR, TensorSpec, load_manifest, save_model
from engines.synth.growth import (
    HORIZON,
    ORDER_WINDOW,
    PSI_CRIT,
    PSI_MARGIN,
    SMOOTH,
    GrowthParams,
    transition_frame,
)
from engines.train import early_warning_eval as ev
from engines.train.early_warning_data import (
    NET_SIZE,
    OOD_DA,
    SPLIT_SEED_BASE,
    TRAIN_DA,
    WINDOW,
    RunSet,
    make_specs,
    simulate_set,
    to_net,
)
from engines.train.early_warning_models import (
    FitConfig,
    calibrate_shift,
    cnn_gru_predictor,
    descriptor_predictor,
    fit_cnn_gru,
    fit_descriptor_models,
    fit_static,
    static_epochs,
    static_predictor,
)

log = logging.getLogger("engines.train.early_warning")

MODEL_NAME = "early_warning_cnn_gru"
BASELINES_FILE = "early_warning_baselines.pt"
BASELINE_NAMES = ("static_cnn", "descriptor_gru", "descriptor_logistic")
VERSION = "1.0.0"
FULL_SPLITS = {"train": 240, "val": 40, "test": 200}
QUICK_SPLITS = {"train": 10, "val": 4, "test": 6}
QUICK_PARAMS = GrowthParams(width=48, height=48, delta=6, per_frame=30, n_frames=24, render_size=64)
FINETUNE_RUNS = 10


class _NoBar:
    """Stand-in when tqdm is not installed (engines runs with numpy/scipy/torch only)."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None


def _bar(total: int, desc: str, disable: bool):
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="it", disable=disable, leave=False, dynamic_ncols=True)


def load_split(split: str, n: int, quick: bool, cache_dir: Path | None, no_progress: bool) -> RunSet:
    specs = make_specs(split, n, QUICK_PARAMS if quick else None)
    with _bar(n, f"simulate {split}", no_progress) as bar:
        return simulate_set(
            specs, cache_dir=cache_dir, name=split, progress=bar.update, workers=1 if quick else 2
        )


def export_model(model: CnnGru, out_dir: Path) -> Path:
    path = out_dir / f".{MODEL_NAME}.export.onnx"
    example = torch.randn(2, WINDOW, NET_SIZE, NET_SIZE)
    export_onnx(
        model,
        (example,),
        path,
        input_names=["frames"],
        output_names=["risk", "latent", "frames_to_transition"],
        dynamic_axes={n: {0: "batch"} for n in ("frames", "risk", "latent", "frames_to_transition")},
        rtol=1e-3,
        atol=1e-4,
    )
    return path


def save_cnn_gru(
    model: CnnGru,
    out_dir: Path,
    *,
    command: str,
    seed: int,
    config: dict[str, object],
    metrics: dict[str, float],
) -> None:
    onnx = export_model(model, out_dir)
    save_model(
        onnx,
        name=MODEL_NAME,
        version=VERSION,
        task="early_warning",
        inputs=[TensorSpec("frames", ("batch", WINDOW, NET_SIZE, NET_SIZE))],
        outputs=[TensorSpec(n, ("batch", 1)) for n in ("risk", "latent", "frames_to_transition")],
        normalisation={"resize_to": float(NET_SIZE), "window": float(WINDOW), "horizon": float(HORIZON)},
        training={"command": command, "seed": seed, "config": config},
        metrics={k: float(v) for k, v in metrics.items()},
        extra={
            "window": WINDOW,
            "horizon": HORIZON,
            "input": "raw intensities resized to 64x64 (block mean when divisible, else bilinear); "
            "per-frame standardisation happens inside the graph",
            "latent": "1-unit linear bottleneck of the last GRU state; risk = sigmoid(a*latent + c), a > 0",
            "frames_to_transition": "softplus head, trained on min(t* - t, 2H); 2H means 'not soon'",
            "label": f"transition within H={HORIZON} frames or already happened",
            "order_parameter": f"psi = 1 - growth-zone density over {ORDER_WINDOW} frames; t*: first frame "
            f"where psi (running mean over {SMOOTH}) reaches {PSI_CRIT} and stays >= {PSI_CRIT - PSI_MARGIN}",
            "seed_ranges": SPLIT_SEED_BASE,
            "train_da": list(TRAIN_DA),
            "ood_da": list(OOD_DA),
        },
        out_dir=out_dir,
        torch_module=model,
        torch_factory="engines.models.cnn_gru:CnnGru",
    )
    onnx.unlink(missing_ok=True)


def cli_main(args: argparse.Namespace) -> int:
    t0 = time.time()
    torch.set_num_threads(args.threads or 2)
    quick = bool(args.quick)
    out_dir = Path(args.out) if args.out else WEIGHTS_DIR
    report_dir = out_dir / "reports" / "early_warning"
    cache = (out_dir / "cache") if quick else Path("runs/cache/early_warning")
    sizes = QUICK_SPLITS if quick else FULL_SPLITS
    sets = {s: load_split(s, n, quick, cache, args.no_progress) for s, n in sizes.items() if s != "test"}
    t_data = time.time() - t0
    cfg = FitConfig(epochs=args.epochs or (1 if quick else 14), seed=args.seed)
    n_iter = cfg.epochs * -(-len(sets["train"]) // cfg.runs_per_batch)
    with _bar(n_iter, "train cnn-gru", args.no_progress) as bar:
        model, history = fit_cnn_gru(sets["train"], sets["val"], cfg, progress=bar.update)
    with _bar(n_iter * static_epochs(cfg) // cfg.epochs, "train static cnn", args.no_progress) as bar:
        static = fit_static(sets["train"], sets["val"], cfg, progress=bar.update)
    with _bar(2, "train descriptor baselines", args.no_progress) as bar:
        scaler, dgru, logi = fit_descriptor_models(sets["train"], cfg, progress=bar.update)
    # Operating point of the fixed alarm rule, chosen on the validation runs (see calibrate_shift).
    val = sets["val"]
    shift = calibrate_shift(val, ev.run_traces(val, cnn_gru_predictor(model)).risk)
    with torch.no_grad():
        model.risk_bias.add_(shift)
    predictors = {
        "static_cnn": lambda d: static_predictor(static, d),
        "descriptor_gru": lambda d: descriptor_predictor(scaler, dgru, logistic=False, shift=d),
        "descriptor_logistic": lambda d: descriptor_predictor(scaler, logi, logistic=True, shift=d),
    }
    shifts = {k: calibrate_shift(val, ev.run_traces(val, p(0.0)).risk) for k, p in predictors.items()}
    t_train = time.time() - t0 - t_data
    test = sets["test"] = load_split("test", sizes["test"], quick, cache, args.no_progress)
    traces = ev.run_traces(test, cnn_gru_predictor(model))
    base_traces = {k: ev.run_traces(test, p(shifts[k])) for k, p in predictors.items()}
    m = ev.metrics(test, traces)
    ablation = {k: ev.metrics(test, v) for k, v in base_traces.items()}
    command = "operando-monitor train early-warning" + (" --quick" if quick else "") + f" --seed {args.seed}"
    config = {
        "fit": asdict(cfg),
        "static_epochs": static_epochs(cfg),
        "splits": sizes,
        "quick": quick,
        "window": WINDOW,
        "horizon": HORIZON,
        "risk_logit_shift": shift,
        "baseline_logit_shifts": shifts,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_cnn_gru(model, out_dir, command=command, seed=args.seed, config=config, metrics=m)
    torch.save(
        {
            "static_cnn": static.state_dict(),
            "descriptor_gru": dgru.state_dict(),
            "descriptor_logistic": logi.state_dict(),
            "scaler_mean": torch.from_numpy(scaler.mean),
            "scaler_std": torch.from_numpy(scaler.std),
            "shifts": torch.tensor([shifts[k] for k in BASELINE_NAMES]),
        },
        out_dir / BASELINES_FILE,
    )
    plots = ev.write_plots(report_dir, test, traces, base_traces)
    summary = {
        "model": MODEL_NAME,
        "command": command,
        "test": m,
        "ablation": ablation,
        "history": history,
        "data": {s: {"runs": len(r), "transitioning": int((r.t_star >= 0).sum())} for s, r in sets.items()},
        "runtime_s": {
            "simulate": round(t_data, 1),
            "train": round(t_train, 1),
            "total": round(time.time() - t0, 1),
        },
        "plots": [p.name for p in plots],
    }
    (report_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(
        f"early-warning: test AUROC {m['auroc']:.3f} (static {ablation['static_cnn']['auroc']:.3f}, "
        f"descriptor GRU {ablation['descriptor_gru']['auroc']:.3f}, logistic "
        f"{ablation['descriptor_logistic']['auroc']:.3f}); "
        f"lead time median {m['lead_time_frames_median']:.1f} frames; "
        f"false alarms {m['false_alarm_rate']:.3f}; missed {m['missed_rate']:.3f}; "
        f"{time.time() - t0:.0f} s; wrote {out_dir / (MODEL_NAME + '.json')}"
    )
    return 0


# -- fine-tuning ----------------------------------------------------------------------------------
def load_model(weights_dir: Path | None = None) -> CnnGru:
    """The CNN-GRU as torch module from a manifest's saved state dict."""
    d = weights_dir or WEIGHTS_DIR
    manifest = load_manifest(MODEL_NAME, d)
    info = manifest.extra.get("torch")
    if not isinstance(info, dict):
        raise FileNotFoundError(f"{MODEL_NAME} in {d} has no torch state dict to fine-tune from")
    if info.get("factory") != "engines.models.cnn_gru:CnnGru":
        raise FileNotFoundError(
            f"{MODEL_NAME} in {d} is the forecasting (hazard) model; fine-tuning supports the legacy "
            "CNN-GRU (train early-warning-legacy) only: retrain with train early-warning instead"
        )
    model = CnnGru()
    model.load_state_dict(torch.load(Path(d) / str(info["state_dict"]), weights_only=True))
    model.eval()
    return model


def load_run_dir(path: Path) -> RunSet:
    """``*.npz`` run files (``frames`` (n, H, W); ``t_star`` or ``psi``) → a RunSet at network size."""
    files = sorted(Path(path).glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"no *.npz run files in {path}")
    frames, t_stars, lens = [], [], []
    for f in files:
        with np.load(f) as z:
            fr = to_net(z["frames"]).astype(np.float16)
            t = int(z["t_star"]) if "t_star" in z else transition_frame(z["psi"])
        frames.append(fr)
        t_stars.append(t)
        lens.append(len(fr))
    n = len(files)
    return RunSet(
        frames=np.concatenate(frames),
        offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        t_star=np.array(t_stars, dtype=np.int64),
        da_start=np.full(n, np.nan),
        da_end=np.full(n, np.nan),
        seeds=np.full(n, -1, dtype=np.int64),
        psi=np.zeros(sum(lens), dtype=np.float32),
    )


def write_run_dir(runs: RunSet, path: Path) -> list[Path]:
    """Write runs as ``*.npz`` files that ``finetune --data`` reads."""
    path.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(len(runs)):
        p = path / f"run{i:03d}.npz"
        np.savez(p, frames=runs.run(i).astype(np.float32), t_star=runs.t_star[i])
        out.append(p)
    return out


def finetune(model: CnnGru, runs: RunSet, anchor: RunSet, epochs: int, seed: int, progress=None) -> CnnGru:
    """Fine-tune on ``runs`` (≤ 10) mixed with ``anchor`` in-distribution runs (against forgetting);
    the new runs also serve as validation (there is nothing else in the new regime)."""
    mixed = anchor.subset(range(len(anchor)))
    both = RunSet(
        frames=np.concatenate([runs.frames, mixed.frames]),
        offsets=np.concatenate([runs.offsets, runs.offsets[-1] + mixed.offsets[1:]]),
        t_star=np.concatenate([runs.t_star, mixed.t_star]),
        da_start=np.concatenate([runs.da_start, mixed.da_start]),
        da_end=np.concatenate([runs.da_end, mixed.da_end]),
        seeds=np.concatenate([runs.seeds, mixed.seeds]),
        psi=np.concatenate([runs.psi, mixed.psi]),
    )
    cfg = FitConfig(epochs=epochs, lr=5e-4, seed=seed, runs_per_batch=6)
    tuned, _ = fit_cnn_gru(both, runs, cfg, model=model, progress=progress)
    return tuned


def finetune_main(args: argparse.Namespace) -> int:
    t0 = time.time()
    torch.set_num_threads(args.threads or 2)
    quick = bool(args.quick)
    out_dir = Path(args.out) if args.out else Path("runs/finetune/early_warning")
    base_dir = Path(args.weights) if args.weights else WEIGHTS_DIR
    cache = (out_dir / "cache") if quick else Path("runs/cache/early_warning")
    model = load_model(base_dir)
    if args.data:
        new_runs = load_run_dir(Path(args.data))
    else:
        new_runs = load_split("ood_finetune", 4 if quick else FINETUNE_RUNS, quick, cache, args.no_progress)
    ood = load_split("ood", 6 if quick else 60, quick, cache, args.no_progress)
    anchor = load_split("train", 6 if quick else 20, quick, cache, args.no_progress)
    before = ev.metrics(ood, ev.run_traces(ood, cnn_gru_predictor(model)))
    epochs = args.epochs or (1 if quick else 8)
    with _bar(epochs * -(-(len(new_runs) + len(anchor)) // 6), "fine-tune", args.no_progress) as bar:
        tuned = finetune(model, new_runs, anchor, epochs, args.seed, progress=bar.update)
    after = ev.metrics(ood, ev.run_traces(ood, cnn_gru_predictor(tuned)))
    command = f"operando-monitor finetune early-warning{' --data ' + str(args.data) if args.data else ''}"
    save_cnn_gru(
        tuned,
        out_dir,
        command=command,
        seed=args.seed,
        config={"runs": len(new_runs), "anchor_runs": len(anchor), "epochs": epochs, "quick": quick},
        metrics={f"ood_{k}": v for k, v in after.items()},
    )
    report = {
        "runs": len(new_runs),
        "before": before,
        "after": after,
        "runtime_s": round(time.time() - t0, 1),
    }
    (out_dir / "finetune_metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(
        f"fine-tuned on {len(new_runs)} runs: OOD AUROC {before['auroc']:.3f} -> {after['auroc']:.3f}, "
        f"lead {before['lead_time_frames_median']:.1f} -> {after['lead_time_frames_median']:.1f} frames; "
        f"wrote {out_dir / (MODEL_NAME + '.json')}"
    )
    return 0
