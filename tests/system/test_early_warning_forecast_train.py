"""Smoke run of the forecasting early-warning CLI: train early-warning-forecast --quick, then
bench early-warning-forecast --quick (tmp dirs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engines.registry import load_manifest
from engines.train.early_warning_forecast import MODEL_NAME as FORECAST_MODEL
from tests.helpers import ROOT


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quick_train_and_bench(tmp_path: Path) -> None:
    out = tmp_path / "weights"
    r = _cli("train", "early-warning-forecast", "--quick", "--out", str(out), "--no-progress", "--seed", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    m = load_manifest(FORECAST_MODEL, out)  # verifies the sha256
    assert [i.name for i in m.inputs] == ["frames", "features"]
    assert [o.name for o in m.outputs] == ["hazard", "risk", "latent", "frames_to_transition"]
    assert m.training["seed"] == 1 and "--quick" in str(m.training["command"])
    assert {"major", "min_count", "hysteresis"} <= set(m.extra["alarm_rule"])  # type: ignore[arg-type]
    assert "future-minimum hull" in str(m.extra["order_parameter"])
    report = json.loads((out / "reports" / FORECAST_MODEL / "metrics.json").read_text())
    assert set(report["test"]) == {"hybrid", "cnn", "features", "static", "logistic"}
    for plot in ("risk_latent_aligned.png", "ablation.png"):
        assert (out / "reports" / FORECAST_MODEL / plot).stat().st_size > 1000

    bench = tmp_path / "bench" / "ew.json"
    r = _cli("bench", "early-warning-forecast", "--quick", "--weights", str(out), "--json", str(bench))
    assert r.returncode == 0, r.stderr[-3000:]
    b = json.loads(bench.read_text())
    for key in (
        "auroc_pre_transition",
        "lead_time_frames_median",
        "false_alarm_rate",
        "warned_before_t_star",
    ):
        assert key in b
    assert len(b["ablation"]) == 4 and "legacy_planar" in b and b["per_geometry"]
    assert b["window_latency_ms_p50"] > 0 and b["preprocess_ms_p50"] > 0
