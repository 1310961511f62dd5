"""`operando-monitor bench early-warning-forecast --json OUT.json`: the forecasting (hazard) model's
accuracy, lead and latency, with the default (legacy) CNN-GRU on the same runs for comparison.

Held-out runs only (seeds never used in training or calibration): the 240 ``test`` runs of
:mod:`engines.train.early_warning_geo_data` (equal parts planar electrode — bottom or another
side —, point seed, several seeds, line of seeds) plus 100 runs of the project's *original*
planar simulator (:mod:`engines.synth.growth`, periodic, bottom electrode, its own t*), which the
shipped model never trained on (``legacy_planar``: a transfer check to another simulator).

The shipped model runs through ONNX Runtime (CPU, 1 thread) with the daemon's numpy window
preprocessing (:func:`engines.prep.geo_features.prepare_window`) and the alarm rule calibrated
on validation runs and written in the manifest (``extra.alarm_rule``).

* top level: ``auroc``, ``auroc_pre_transition`` (windows ending at or before t*),
  ``lead_time_frames_median`` (t* − first alarm over warned runs), ``warned_before_t_star``,
  ``false_alarm_rate`` (compact runs that alarm) on all 240 test runs;
* ``per_geometry``: the same per geometry label; ``legacy_planar``: the original simulator;
* ``ablation``: the baselines (torch, each with its own calibrated rule, i.e. lead at an equal
  ≤ 5 % validation false-alarm rate), on the same test runs;
* ``window_latency_ms_p50/p99``: one ONNX ``infer`` of one window; ``preprocess_ms_p50``: the
  numpy window preprocessing; ``frame_to_alarm_ms_p50/p99``: frames at 20 Hz through the real
  pipeline and the threshold rule.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.errors import EngineError
from engines.models.hazard_gru import HazardNet
from engines.prep.geo_features import prepare_window
from engines.registry import WEIGHTS_DIR, load_manifest
from engines.runtime import create_runner
from engines.synth.growth import HORIZON
from engines.train import early_warning_eval as ev
from engines.train import early_warning_forecast as ewf
from engines.train import early_warning_hazard as hz
from engines.train.early_warning_data import WINDOW, RunSet, windows_of_run

log = logging.getLogger("monitor.bench.early_warning")


def onnx_outputs(runner, runs: RunSet) -> hz.Outputs:
    """Every full window of every run through the daemon's preprocessing and ONNX Runtime."""
    out = hz.Outputs([], [], [], [])
    for i in range(len(runs)):
        f = runs.run(i).astype(np.float32)
        n = len(f)
        risk, lat, eta = (np.full(n, np.nan, np.float32) for _ in range(3))
        haz = np.full((n, ewf.K_HAZARD), np.nan, np.float32)
        w = windows_of_run(f)
        if len(w):
            prepped = [prepare_window(x) for x in w]
            o = runner.infer(
                {"frames": np.stack([p[0] for p in prepped]), "features": np.stack([p[1] for p in prepped])}
            )
            risk[WINDOW - 1 :], lat[WINDOW - 1 :], eta[WINDOW - 1 :] = (
                o["risk"][:, 0],
                o["latent"][:, 0],
                o["frames_to_transition"][:, 0],
            )
            haz[WINDOW - 1 :] = o["hazard"]
        out.risk.append(risk)
        out.latent.append(lat)
        out.eta.append(eta)
        out.hazard.append(haz)
    return out


def legacy_on(test: RunSet, geo: np.ndarray, weights_dir: Path, old: RunSet) -> dict[str, object]:
    """The default (legacy) CNN-GRU, raw frames in, its own rule (risk >= 0.8 for 3 windows), on
    the same geometry test runs and on the original simulator's runs."""
    try:
        manifest = load_manifest("early_warning_cnn_gru", weights_dir)
    except EngineError as exc:  # a missing legacy model only drops this comparison
        log.warning("legacy model not available for comparison: %s", exc)
        return {}
    rule = hz.Rule(0.8, 3, 0.2)
    with create_runner(manifest, "onnxruntime", threads=1, weights_dir=weights_dir) as runner:

        def predict(w: np.ndarray) -> tuple[np.ndarray, ...]:
            o = runner.infer({"frames": np.ascontiguousarray(w, dtype=np.float32)})
            return (o["risk"][:, 0],)

        tr = ev.run_traces(test, predict)
        tr_old = ev.run_traces(old, predict)
    out = hz.Outputs(tr.risk, tr.risk, [], [])
    res = ewf.summarise(test, geo, out, rule)
    old_m = {
        **hz.evaluate(old, hz.Outputs(tr_old.risk, tr_old.risk, [], [])),
        **hz.rule_metrics(old, tr_old.risk, rule),
    }
    return {
        "model": "early_warning_cnn_gru",
        "rule": "risk >= 0.8 for 3 windows",
        **res["all"],
        "per_geometry": {k: v for k, v in res.items() if k != "all"},
        "legacy_planar": old_m,
    }


def latency(runner, reps: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    win = rng.random((WINDOW, 64, 64), dtype=np.float32)
    win[:, 40:] += np.linspace(0, 1, WINDOW, dtype=np.float32)[:, None, None]
    pre, inf = [], []
    for r in range(reps + 10):
        t0 = time.perf_counter()
        fr, ft = prepare_window(win)
        t1 = time.perf_counter()
        runner.infer({"frames": fr[None], "features": ft[None]})
        t2 = time.perf_counter()
        if r >= 10:
            pre.append((t1 - t0) * 1e3)
            inf.append((t2 - t1) * 1e3)
    return {
        "window_latency_ms_p50": float(np.percentile(inf, 50)),
        "window_latency_ms_p99": float(np.percentile(inf, 99)),
        "preprocess_ms_p50": float(np.percentile(pre, 50)),
        "preprocess_ms_p99": float(np.percentile(pre, 99)),
    }


def baselines(weights_dir: Path, test: RunSet, geo: np.ndarray) -> dict[str, dict[str, Any]]:
    path = weights_dir / ewf.BASELINES_FILE
    if not path.exists():
        return {}
    state = torch.load(path, weights_only=True)
    prepared = hz.prepare(test)
    out: dict[str, dict[str, Any]] = {}
    for mode, sd in state["states"].items():
        model = HazardNet(mode, horizon=HORIZON)
        model.load_state_dict(sd)
        model.eval()
        rule = hz.Rule(**state["rules"][mode])
        res = ewf.summarise(test, geo, hz.predict_all(model, prepared), rule)
        out[mode] = {
            "rule": state["rules"][mode],
            **res["all"],
            "per_geometry": {k: v for k, v in res.items() if k != "all"},
        }
    return out


def machine() -> dict[str, object]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "loadavg": list(os.getloadavg())}


def cli_main(args: argparse.Namespace) -> int:
    t0 = time.time()
    quick = bool(args.quick)
    torch.set_num_threads(1)
    weights_dir = Path(args.weights) if args.weights else WEIGHTS_DIR
    cache = Path(args.json).parent / "cache" if quick else ewf.GEO_CACHE
    manifest = load_manifest(ewf.MODEL_NAME, weights_dir)
    alarm_rule = manifest.extra["alarm_rule"]
    assert isinstance(alarm_rule, dict), "manifest extra.alarm_rule is a JSON object"
    rule = hz.Rule(**{k: v for k, v in alarm_rule.items() if k in ("major", "min_count", "hysteresis")})
    test, geo = ewf.load("test", 8 if quick else ewf.FULL_SPLITS["test"], quick, cache)
    from engines.train import early_warning as legacy

    old = legacy.load_split("test", 4 if quick else 100, quick, cache if quick else None, True)
    with create_runner(manifest, "onnxruntime", threads=args.threads or 1, weights_dir=weights_dir) as runner:
        out = onnx_outputs(runner, test)
        out_old = onnx_outputs(runner, old)
        lat = latency(runner, 50 if quick else 1000)
    res = ewf.summarise(test, geo, out, rule)
    main = res["all"]
    legacy_m = {**hz.evaluate(old, out_old), **hz.rule_metrics(old, out_old.risk, rule)}
    ablation = baselines(weights_dir, test, geo)
    legacy_model = legacy_on(
        test, geo, weights_dir if (weights_dir / "early_warning_cnn_gru.json").exists() else WEIGHTS_DIR, old
    )
    f2a = frame_to_alarm(weights_dir, rule, 40 if quick else 400)
    planar = res.get("planar-bottom", main)["auroc_pre_transition"]
    others = {g: m for g, m in res.items() if g not in ("all", "planar-bottom")}
    keys = (
        "auroc",
        "auroc_pre_transition",
        "lead_time_frames_median",
        "lead_time_fraction_median",
        "warned_before_t_star",
        "missed_rate",
        "false_alarm_rate",
    )
    result = {
        "model": ewf.MODEL_NAME,
        "variant": manifest.extra.get("variant"),
        "sha256": manifest.sha256,
        "quick": quick,
        "runs": {
            "test": len(test),
            "transitioning": int((test.t_star >= 0).sum()),
            "legacy_planar": len(old),
        },
        "window": WINDOW,
        "horizon": HORIZON,
        "alarm_rule": {
            "major": rule.major,
            "min_count": rule.min_count,
            "hysteresis": rule.hysteresis,
            "source": "manifest extra.alarm_rule (calibrated on validation runs)",
        },
        **{k: main[k] for k in keys},
        "frames_before_transition_median": float(np.median(test.t_star[test.t_star >= 0]))
        if (test.t_star >= 0).any()
        else float("nan"),
        **lat,
        "frame_to_alarm_ms_p50": f2a["p50"],
        "frame_to_alarm_ms_p99": f2a["p99"],
        "per_geometry": {g: m for g, m in res.items() if g != "all"},
        "legacy_planar": legacy_m,
        "ablation": ablation,
        "default_model_same_runs": legacy_model,
        "targets": {
            "auroc_pre_ge_0.95": main["auroc_pre_transition"] >= 0.95,
            "auroc_pre_above_every_baseline": all(
                main["auroc_pre_transition"] > a["auroc_pre_transition"] for a in ablation.values()
            ),
            "lead_ge_20pct": main["lead_time_fraction_median"] >= 0.2,
            "warned_ge_90pct": main["warned_before_t_star"] >= 0.9,
            "false_alarm_le_5pct": main["false_alarm_rate"] <= 0.05,
            "geometries_within_0.03": all(
                abs(m["auroc_pre_transition"] - planar) <= 0.03 for m in others.values()
            ),
            "geometries_false_alarm_le_5pct": all(not m["false_alarm_rate"] > 0.05 for m in others.values()),
            "window_p50_le_5ms": lat["window_latency_ms_p50"] <= 5.0,
        },
        "machine": machine(),
        "bench_runtime_s": round(time.time() - t0, 1),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        f"early-warning: pre-transition AUROC {main['auroc_pre_transition']:.3f} "
        f"(AUROC {main['auroc']:.3f}); "
        f"rule risk >= {rule.major:g} x{rule.min_count}: lead {main['lead_time_frames_median']:.1f} frames, "
        f"warned before t* {main['warned_before_t_star']:.0%}, false alarms {main['false_alarm_rate']:.1%}; "
        f"window p50 {lat['window_latency_ms_p50']:.2f} ms "
        f"(+ preprocessing {lat['preprocess_ms_p50']:.2f} ms); wrote {args.json}"
    )
    return 0


def frame_to_alarm(weights_dir: Path, rule: hz.Rule, frames: int) -> dict[str, float]:
    """Frames at 20 Hz through the real pipeline + threshold rule; latency arrival → verdict."""
    from engines.synth.growth_geometry import GeoSpec, simulate_geo
    from monitor.alerts.rules import ThresholdRule
    from monitor.config import PipelineSettings, RuleSettings
    from monitor.frames import Frame
    from monitor.pipelines.early_warning import EarlyWarningPipeline

    pipe = EarlyWarningPipeline(
        PipelineSettings(name="ew", kind="early_warning", weights_dir=str(weights_dir), model=ewf.MODEL_NAME)
    )
    thr = ThresholdRule(
        RuleSettings(
            name="r",
            kind="threshold",
            pipeline="ew",
            metric="alarm_risk",
            major=rule.major,
            hysteresis=rule.hysteresis,
            min_count=rule.min_count,
        )
    )
    images: list[np.ndarray] = []
    seed = 1_900_000
    while len(images) < frames:
        run = simulate_geo([GeoSpec(seed, geometry="point", da_start=0.1)])[0]
        images += [np.clip((im + 1.0) * 20000, 0, 65535).astype(np.uint16) for im in run.images]
        seed += 1
    lat = []
    t0 = time.perf_counter()
    for i, img in enumerate(images[:frames]):
        due = t0 + i * 0.05
        while time.perf_counter() < due:
            time.sleep(min(0.002, max(0.0, due - time.perf_counter())))
        arrival = time.perf_counter()
        f = Frame("growth", "bench", f"s{i // 60}", i % 60, img, time.time(), time.time())
        (res,) = pipe.process([f])
        thr.evaluate(f.stream, res.scalars["alarm_risk"])
        lat.append((time.perf_counter() - arrival) * 1000.0)
    return ev.summarise(lat)
