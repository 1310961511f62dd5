"""`operando-monitor train early-warning-forecast`: the forecasting (hazard) model on any geometry.

Simulates (cached under ``runs/cache/early_warning_geo``) the geometry splits of
:mod:`engines.train.early_warning_geo_data`, computes the geometry-free window features, trains
the five variants of :class:`~engines.models.hazard_gru.HazardNet` (hybrid CNN + features → GRU,
CNN → GRU, features → GRU, static CNN, logistic) with the survival loss, picks the variant with
the best *validation* pre-transition AUROC, calibrates each variant's alarm rule on the
validation runs (false alarms ≤ 5 %), evaluates everything on the held-out test runs (per
geometry), exports the winner as ``early_warning_hazard`` (ONNX + manifest + state dict) and
the others to ``early_warning_hazard_baselines.pt``, with metrics and plots under
``<out>/reports/early_warning_hazard/``. (The default ``early_warning_cnn_gru`` is the legacy
model, ``train early-warning``.)
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
from engines.models.hazard_gru import K_HAZARD, HazardNet
from engines.prep.geo_features import FEATURE_NAMES, N_FEAT
from engines.registry import WEIGHTS_DIR, TensorSpec, save_model
from engines.synth.growth import HORIZON, ORDER_WINDOW, PSI_CRIT, PSI_MARGIN, SMOOTH
from engines.train import early_warning_hazard as hz
from engines.train.early_warning_data import NET_SIZE, WINDOW
from engines.train.early_warning_geo_data import (
    GEO_CACHE,
    GEO_SEED_BASE,
    MAX_CANVAS,
    geo_specs,
    resolved,
    simulate_geo_set,
)

log = logging.getLogger("engines.train.early_warning")

MODEL_NAME = "early_warning_hazard"
BASELINES_FILE = "early_warning_hazard_baselines.pt"
VERSION = "0.1.0"
MODES = ("hybrid", "cnn", "features", "static", "logistic")
FULL_SPLITS = {"train": 300, "val": 200, "test": 240}
QUICK_SPLITS = {"train": 10, "val": 6, "test": 8}
EPOCHS = {"hybrid": 25, "cnn": 15, "features": 200, "static": 8, "logistic": 100}
SELECT_RUNS = 60
"""Validation runs used for per-epoch model selection (all of them calibrate the alarm rule)."""
OUTPUTS = ("hazard", "risk", "latent", "frames_to_transition")
T_STAR_DEFINITION = (
    f"psi = 1 - growth-zone density over {ORDER_WINDOW} frames (deposited particles / area newly swept "
    "under the front's envelope along rays from the nucleation set: columns for a planar electrode, "
    f"sectors for seeds); s = centred running median of psi over {SMOOTH} frames; t* = first frame with "
    f"s >= {PSI_CRIT} and min over all later frames of s >= {PSI_CRIT - PSI_MARGIN} (future-minimum hull: "
    "no flicker)"
)


def load(split: str, n: int, quick: bool, cache: Path | None):
    """The split's runs at a resolution where fingers are visible (see ``MAX_CANVAS``)."""
    specs = geo_specs(split, n, quick=quick)
    rs, geo = simulate_geo_set(specs, split, cache=cache, workers=1 if quick else 2)
    keep = resolved(specs)
    return rs.subset(keep), geo[keep]


def ood_stats(data: hz.Prepared, out: hz.Outputs) -> dict[str, object]:
    """Training statistics for the per-window OOD score (see :func:`ood_score`)."""
    feats = np.concatenate([f.mean(axis=1) for f in data.feats if len(f)])
    mean, std = feats.mean(0), np.maximum(feats.std(0), 1e-3)
    scores = np.sqrt((((feats - mean) / std) ** 2).mean(axis=1))
    lat = np.concatenate([z[np.isfinite(z)] for z in out.latent])
    return {
        "feature_mean": [float(v) for v in mean],
        "feature_std": [float(v) for v in std],
        "score_threshold": float(np.percentile(scores, 99.5)),
        "latent_range": [float(np.percentile(lat, 0.1)), float(np.percentile(lat, 99.9))],
        "definition": "score = RMS over features of the z-scored window-mean features; a window is "
        "OOD when score > score_threshold (training 99.5th percentile) or the latent leaves "
        "latent_range widened by its own width",
    }


def export(model: HazardNet, out_dir: Path, **manifest) -> None:
    path = out_dir / f".{MODEL_NAME}.export.onnx"
    example = (torch.randn(2, WINDOW, NET_SIZE, NET_SIZE), torch.rand(2, WINDOW, N_FEAT))
    export_onnx(
        model,
        example,
        path,
        input_names=["frames", "features"],
        output_names=list(OUTPUTS),
        dynamic_axes={n: {0: "batch"} for n in ("frames", "features", *OUTPUTS)},
        rtol=1e-3,
        atol=1e-4,
    )
    save_model(
        path,
        name=MODEL_NAME,
        version=VERSION,
        task="early_warning",
        inputs=[
            TensorSpec("frames", ("batch", WINDOW, NET_SIZE, NET_SIZE)),
            TensorSpec("features", ("batch", WINDOW, N_FEAT)),
        ],
        outputs=[TensorSpec("hazard", ("batch", K_HAZARD))]
        + [TensorSpec(n, ("batch", 1)) for n in OUTPUTS[1:]],
        normalisation={"resize_to": float(NET_SIZE), "window": float(WINDOW), "horizon": float(HORIZON)},
        out_dir=out_dir,
        torch_module=model,
        torch_factory="engines.models.hazard_gru:HazardNet",
        torch_kwargs={"mode": model.mode, "horizon": HORIZON},
        **manifest,
    )
    path.unlink(missing_ok=True)


def cli_main(args: argparse.Namespace) -> int:
    t0 = time.time()
    torch.set_num_threads(args.threads or 1)
    quick = bool(args.quick)
    out_dir = Path(args.out) if args.out else WEIGHTS_DIR
    report_dir = out_dir / "reports" / MODEL_NAME
    cache = (out_dir / "cache") if quick else GEO_CACHE
    sizes = QUICK_SPLITS if quick else FULL_SPLITS
    raw = {s: load(s, n, quick, cache) for s, n in sizes.items() if s != "test"}
    data = {s: hz.prepare(rs, workers=1 if quick else 2) for s, (rs, _) in raw.items()}
    sel = hz.subset(
        data["val"], list(range(0, len(raw["val"][0]), max(1, len(raw["val"][0]) // SELECT_RUNS)))
    )
    t_data = time.time() - t0
    log.info("data ready in %.0f s: %s", t_data, {s: len(r) for s, (r, _) in raw.items()})
    models, histories, rules, val_m, test_m = {}, {}, {}, {}, {}
    for mode in MODES:
        epochs = args.epochs or (1 if quick else EPOCHS[mode])
        cfg = hz.HazardConfig(mode=mode, epochs=epochs, seed=args.seed)
        t1 = time.time()
        models[mode], histories[mode] = hz.fit(data["train"], sel, cfg)
        vo = hz.predict_all(models[mode], data["val"])
        rules[mode], _ = hz.calibrate_rule(raw["val"][0], vo.risk)
        val_m[mode] = {**hz.evaluate(data["val"], vo), **hz.rule_metrics(raw["val"][0], vo.risk, rules[mode])}
        log.info("%s: %.0f s; val %s", mode, time.time() - t1, val_m[mode])
    raw["test"] = load("test", sizes["test"], quick, cache)
    data["test"] = hz.prepare(raw["test"][0], workers=1 if quick else 2)
    test_geo = raw["test"][1]
    for mode in MODES:
        test_m[mode] = summarise(
            raw["test"][0], test_geo, hz.predict_all(models[mode], data["test"]), rules[mode]
        )
        log.info("%s: test %s", mode, test_m[mode]["all"])

    def score(m: str) -> float:
        v = val_m[m]["auroc_pre_transition"]
        return float(v) if np.isfinite(v) else -1.0

    winner = max(MODES, key=score)
    model = models[winner]
    rule = rules[winner]
    train_out = hz.predict_all(model, data["train"])
    command = (
        "operando-monitor train early-warning-forecast"
        + (" --quick" if quick else "")
        + f" --seed {args.seed}"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    export(
        model,
        out_dir,
        training={
            "command": command,
            "seed": args.seed,
            "config": {
                "epochs": {m: args.epochs or EPOCHS[m] for m in MODES},
                "splits": sizes,
                "quick": quick,
                "fit": asdict(hz.HazardConfig(mode=winner)),
            },
        },
        metrics={k: float(v) for k, v in test_m[winner]["all"].items()},
        extra={
            "window": WINDOW,
            "horizon": HORIZON,
            "k_hazard": K_HAZARD,
            "variant": winner,
            "features": list(FEATURE_NAMES),
            "input": "frames: raw intensities resized to 64x64 (block mean), multiplied by the window's "
            "contrast polarity (engines.prep.geo_features.prepare_window); features: geometry-free "
            "window features from the same module (standardised inside the graph)",
            "latent": "1-unit linear bottleneck; every hazard = sigmoid(softplus(a_k)*latent + c_k), a_k > 0",
            "hazard": "P(transition k frames after the window's last frame | not before), "
            f"k = 0..{K_HAZARD - 1}",
            "risk": f"P(transition within H={HORIZON} frames, or already) = 1 - S(H+1) from the hazards",
            "frames_to_transition": f"E[min(T, {K_HAZARD})] from the hazards; "
            "interval from their 10/90 % quantiles",
            "order_parameter": T_STAR_DEFINITION,
            "alarm_rule": {
                **asdict(rule),
                "calibrated_on": f"{len(raw['val'][0])} validation runs",
                "val_false_alarm_rate": val_m[winner]["false_alarm_rate"],
                "val_runs_compact": val_m[winner]["runs_compact"],
                "max_false_alarm_rate": 0.05,
            },
            "ood": ood_stats(data["train"], train_out),
            "seed_ranges": GEO_SEED_BASE,
            "max_canvas": MAX_CANVAS,
        },
    )
    torch.save(
        {
            "states": {m: models[m].state_dict() for m in MODES if m != winner},
            "rules": {m: asdict(rules[m]) for m in MODES},
        },
        out_dir / BASELINES_FILE,
    )
    summary = {
        "model": MODEL_NAME,
        "winner": winner,
        "command": command,
        "alarm_rules": {m: asdict(r) for m, r in rules.items()},
        "validation": val_m,
        "test": test_m,
        "history": histories,
        "data": {
            s: {"runs": len(r), "transitioning": int((r.t_star >= 0).sum())} for s, (r, _) in raw.items()
        },
        "runtime_s": {"data": round(t_data, 1), "total": round(time.time() - t0, 1)},
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    write_plots(report_dir, raw["test"][0], hz.predict_all(model, data["test"]), rule, summary)
    (report_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    w = test_m[winner]["all"]
    print(
        f"early-warning forecast ({winner}): test pre-transition AUROC {w['auroc_pre_transition']:.3f}; "
        + ", ".join(f"{m} {test_m[m]['all']['auroc_pre_transition']:.3f}" for m in MODES if m != winner)
        + f"; rule risk >= {rule.major} x{rule.min_count}: lead {w['lead_time_frames_median']:.1f} frames, "
        f"warned {w['warned_before_t_star']:.0%}, false alarms {w['false_alarm_rate']:.1%}; "
        f"{time.time() - t0:.0f} s"
    )
    return 0


def summarise(runs, geo: np.ndarray, out: hz.Outputs, rule: hz.Rule) -> dict[str, dict[str, float]]:
    """Metrics over all test runs and per geometry label."""
    res = {"all": {**hz.evaluate(runs, out), **hz.rule_metrics(runs, out.risk, rule)}}
    for g in sorted(set(geo.tolist())):
        idx = np.flatnonzero(geo == g)
        res[g] = {**hz.evaluate(runs, out, idx), **hz.rule_metrics(runs, out.risk, rule, idx)}
    return res


def write_plots(out_dir: Path, runs, out: hz.Outputs, rule: hz.Rule, summary: dict) -> None:
    """Risk and latent aligned on t*, ablation bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for i in range(len(runs)):
        t = np.arange(len(out.risk[i]))
        ts = runs.t_star[i]
        x, col = (t - ts, "#dc2626") if ts >= 0 else (t - len(t), "#16a34a")
        axes[0].plot(x, out.risk[i], color=col, alpha=0.15, lw=0.8)
        axes[1].plot(x, out.latent[i], color=col, alpha=0.15, lw=0.8)
    axes[0].axhline(
        rule.major, color="k", ls="--", lw=1, label=f"alarm: risk >= {rule.major} x{rule.min_count}"
    )
    axes[0].legend(fontsize=7)
    for ax, lab in zip(axes, ("risk within H", "latent (1-D surrogate)"), strict=True):
        ax.axvline(0, color="k", lw=1)
        ax.set(xlabel="frames relative to t* (red) / run end (green, compact)", ylabel=lab)
    fig.tight_layout()
    fig.savefig(out_dir / "risk_latent_aligned.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    modes = list(summary["test"])
    vals = [summary["test"][m]["all"]["auroc_pre_transition"] for m in modes]
    ax.bar(modes, vals, color=["#2563eb" if m == summary["winner"] else "#94a3b8" for m in modes])
    finite = [v for v in vals if np.isfinite(v)]
    ax.set(
        ylim=(min(finite, default=0.5) - 0.05, 1.0),
        ylabel="test pre-transition AUROC",
        title="Ablation (held-out runs)",
    )
    fig.tight_layout()
    fig.savefig(out_dir / "ablation.png", dpi=100)
    plt.close(fig)
