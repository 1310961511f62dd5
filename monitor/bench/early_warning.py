"""`operando-monitor bench early-warning --json OUT.json`: accuracy, lead time, latency, ablation, transfer.

Held-out simulations only (seed ranges in :mod:`engines.train.early_warning_data`): 200
in-distribution ``test`` runs plus 60 ``ood`` runs whose Da (0.5–1.5) lies outside the training
range (0.008–0.4) — 260 runs. The shipped ONNX model runs through ONNX Runtime (CPU).

* top-level ``auroc``, ``lead_time_frames_median``, ``false_alarm_rate``, ``missed_rate``: the
  CNN-GRU on the in-distribution test runs (alarm rule: risk ≥ 0.8 for 3 windows, clear < 0.6);
* ``all_runs``: the same over all 260 runs;
* ``window_latency_ms_p50/p99``: one ``infer`` of a (1, 8, 64, 64) window, 1 thread;
* ``frame_to_alarm_ms_p50/p99``: in-process, frames of 128×128 uint16 at 20 Hz through
  :class:`~monitor.pipelines.early_warning.EarlyWarningPipeline` and the threshold rule
  (from the frame's arrival to the rule's verdict; no network, no store);
* ``ablation``: the baselines on the same test runs;
* ``transfer``: the CNN-GRU on the ``ood`` runs before and after fine-tuning on 10
  ``ood_finetune`` runs (plus 20 in-distribution anchor runs).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engines.models.cnn_gru import StaticCnn
from engines.models.descriptors import DescriptorGru, DescriptorLogistic, DescriptorScaler
from engines.registry import WEIGHTS_DIR, load_manifest
from engines.runtime import create_runner
from engines.synth.growth import RunSpec, simulate_run
from engines.train import early_warning as ew
from engines.train import early_warning_eval as ev
from engines.train.early_warning_data import NET_SIZE, OOD_DA, TRAIN_DA, WINDOW, RunSet
from engines.train.early_warning_models import cnn_gru_predictor, descriptor_predictor, static_predictor

log = logging.getLogger("monitor.bench.early_warning")


def onnx_predictor(runner):
    def predict(windows: np.ndarray) -> tuple[np.ndarray, ...]:
        out = runner.infer({"frames": np.ascontiguousarray(windows, dtype=np.float32)})
        return out["risk"][:, 0], out["latent"][:, 0], out["frames_to_transition"][:, 0]

    return predict


def window_latency(runner, reps: int) -> dict[str, float]:
    x = np.random.default_rng(0).random((1, WINDOW, NET_SIZE, NET_SIZE), dtype=np.float32)
    for _ in range(10):
        runner.infer({"frames": x})
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        runner.infer({"frames": x})
        times.append((time.perf_counter() - t0) * 1000.0)
    return ev.summarise(times)


def frame_to_alarm(weights_dir: Path, frames: int, quick: bool) -> dict[str, float]:
    """Frames at 20 Hz through the real pipeline + threshold rule; latency arrival → verdict."""
    from monitor.alerts.rules import ThresholdRule
    from monitor.config import PipelineSettings, RuleSettings
    from monitor.frames import Frame
    from monitor.pipelines.early_warning import EarlyWarningPipeline

    pipe = EarlyWarningPipeline(
        PipelineSettings(name="ew", kind="early_warning", weights_dir=str(weights_dir))
    )
    rule = ThresholdRule(
        RuleSettings(
            name="r", kind="threshold", pipeline="ew", metric="risk", major=0.8, hysteresis=0.2, min_count=3
        )
    )
    params = ew.QUICK_PARAMS if quick else RunSpec(0, 0.3).params
    images: list[np.ndarray] = []
    seed = 900_000
    while len(images) < frames:
        run = simulate_run(RunSpec(seed, 0.3, None, params))
        images += [np.clip(im * 40000, 0, 65535).astype(np.uint16) for im in run.images]
        seed += 1
    period = 1.0 / 20.0
    lat = []
    t0 = time.perf_counter()
    for i, img in enumerate(images[:frames]):
        due = t0 + i * period
        while time.perf_counter() < due:
            time.sleep(min(0.002, max(0.0, due - time.perf_counter())))
        arrival = time.perf_counter()
        f = Frame("growth", "bench", f"s{i // 60}", i % 60, img, time.time(), time.time())
        (res,) = pipe.process([f])
        rule.evaluate(f.stream, res.scalars["risk"])
        lat.append((time.perf_counter() - arrival) * 1000.0)
    return ev.summarise(lat)


def load_baselines(weights_dir: Path) -> dict[str, Callable[[np.ndarray], tuple[np.ndarray, ...]]]:
    state = torch.load(weights_dir / ew.BASELINES_FILE, weights_only=True)
    static, dgru, logi = StaticCnn(), DescriptorGru(), DescriptorLogistic()
    static.load_state_dict(state["static_cnn"])
    dgru.load_state_dict(state["descriptor_gru"])
    logi.load_state_dict(state["descriptor_logistic"])
    for m in (static, dgru, logi):
        m.eval()
    scaler = DescriptorScaler(state["scaler_mean"].numpy(), state["scaler_std"].numpy())
    shifts = dict(zip(ew.BASELINE_NAMES, state["shifts"].tolist(), strict=True))
    return {
        "static_cnn": static_predictor(static, shifts["static_cnn"]),
        "descriptor_gru": descriptor_predictor(scaler, dgru, logistic=False, shift=shifts["descriptor_gru"]),
        "descriptor_logistic": descriptor_predictor(
            scaler, logi, logistic=True, shift=shifts["descriptor_logistic"]
        ),
    }


def _concat(a: RunSet, b: RunSet) -> RunSet:
    return RunSet(
        frames=np.concatenate([a.frames, b.frames]),
        offsets=np.concatenate([a.offsets, a.offsets[-1] + b.offsets[1:]]),
        t_star=np.concatenate([a.t_star, b.t_star]),
        da_start=np.concatenate([a.da_start, b.da_start]),
        da_end=np.concatenate([a.da_end, b.da_end]),
        seeds=np.concatenate([a.seeds, b.seeds]),
        psi=np.concatenate([a.psi, b.psi]),
    )


def cli_main(args: argparse.Namespace) -> int:
    t0 = time.time()
    quick = bool(args.quick)
    torch.set_num_threads(2)
    weights_dir = Path(args.weights) if args.weights else WEIGHTS_DIR
    cache = Path(args.json).parent / "cache" if quick else Path("runs/cache/early_warning")
    n_test, n_ood, n_ft = (6, 4, 3) if quick else (200, 60, ew.FINETUNE_RUNS)
    manifest = load_manifest(ew.MODEL_NAME, weights_dir)
    test = ew.load_split("test", n_test, quick, cache, True)
    ood = ew.load_split("ood", n_ood, quick, cache, True)
    ft_runs = ew.load_split("ood_finetune", n_ft, quick, cache, True)
    anchor = ew.load_split("train", 4 if quick else 20, quick, cache, True)
    with create_runner(manifest, "onnxruntime", threads=args.threads or 1, weights_dir=weights_dir) as runner:
        predict = onnx_predictor(runner)
        tr_test = ev.run_traces(test, predict)
        tr_ood = ev.run_traces(ood, predict)
        latency = window_latency(runner, 50 if quick else 1000)
    main = ev.metrics(test, tr_test)
    both = _concat(test, ood)
    all_runs = ev.metrics(both, ev.Traces(tr_test.risk + tr_ood.risk))
    ablation = {
        name: ev.metrics(test, ev.run_traces(test, p)) for name, p in load_baselines(weights_dir).items()
    }
    model = ew.load_model(weights_dir)
    tuned = ew.finetune(model, ft_runs, anchor, epochs=1 if quick else 8, seed=0)
    after = ev.metrics(ood, ev.run_traces(ood, cnn_gru_predictor(tuned)))
    f2a = frame_to_alarm(weights_dir, 40 if quick else 400, quick)
    frames_before = main.get("frames_before_transition_median", float("nan"))
    result = {
        "model": ew.MODEL_NAME,
        "sha256": manifest.sha256,
        "quick": quick,
        "runs": {"test": len(test), "ood": len(ood), "total": len(test) + len(ood), "finetune": len(ft_runs)},
        "da_range": {"train": list(TRAIN_DA), "ood": list(OOD_DA)},
        "window": WINDOW,
        "horizon": int(manifest.extra.get("horizon", 12)),  # type: ignore[call-overload]
        "alarm_rule": {"major": ev.MAJOR, "hysteresis": ev.HYSTERESIS, "min_count": ev.MIN_COUNT},
        **{
            k: main[k]
            for k in (
                "auroc",
                "auroc_pre_transition",
                "lead_time_frames_median",
                "false_alarm_rate",
                "missed_rate",
            )
        },
        "lead_time_fraction_median": main["lead_time_fraction_median"],
        "frames_before_transition_median": frames_before,
        "window_latency_ms_p50": latency["p50"],
        "window_latency_ms_p99": latency["p99"],
        "frame_to_alarm_ms_p50": f2a["p50"],
        "frame_to_alarm_ms_p99": f2a["p99"],
        "test": main,
        "all_runs": all_runs,
        "ablation": ablation,
        "transfer": {"before": ev.metrics(ood, tr_ood), "after": after, "finetune_runs": len(ft_runs)},
        "targets": {
            "auroc_ge_0.95": main["auroc"] >= 0.95,
            "auroc_above_every_baseline": all(main["auroc"] > a["auroc"] for a in ablation.values()),
            "lead_time_ge_20pct": main["lead_time_fraction_median"] >= 0.2,
            "false_alarm_rate_le_5pct": main["false_alarm_rate"] <= 0.05,
            "window_p50_le_5ms": latency["p50"] <= 5.0,
            "frame_to_alarm_p99_le_100ms": f2a["p99"] <= 100.0,
        },
        "bench_runtime_s": round(time.time() - t0, 1),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        f"early-warning: AUROC {main['auroc']:.3f}, lead {main['lead_time_frames_median']:.1f} frames "
        f"({main['lead_time_fraction_median']:.0%} of t*), false alarms {main['false_alarm_rate']:.3f}, "
        f"missed {main['missed_rate']:.3f}; window p50 {latency['p50']:.2f} ms, "
        f"frame->alarm p99 {f2a['p99']:.1f} ms; "
        f"OOD AUROC {result['transfer']['before']['auroc']:.3f} → {after['auroc']:.3f}; wrote {args.json}"
    )
    return 0
