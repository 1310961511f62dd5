"""Smoke runs of the early-warning CLI: train --quick, finetune --data, bench --quick (tmp dirs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engines.registry import load_manifest
from engines.train.early_warning import MODEL_NAME, QUICK_PARAMS, write_run_dir
from engines.train.early_warning_data import make_specs, simulate_set
from tests.helpers import ROOT


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quick_train_finetune_and_bench(tmp_path: Path) -> None:
    out = tmp_path / "weights"
    r = _cli("train", "early-warning", "--quick", "--out", str(out), "--no-progress", "--seed", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    m = load_manifest(MODEL_NAME, out)  # verifies the sha256
    assert m.inputs[0].shape == ("batch", 8, 64, 64)
    assert [o.name for o in m.outputs] == ["risk", "latent", "frames_to_transition"]
    assert m.training["seed"] == 1 and "--quick" in str(m.training["command"])
    report = json.loads((out / "reports" / "early_warning" / "metrics.json").read_text())
    assert set(report["ablation"]) == {"static_cnn", "descriptor_gru", "descriptor_logistic"}
    for plot in ("roc.png", "lead_time_hist.png", "latent_aligned.png"):
        assert (out / "reports" / "early_warning" / plot).stat().st_size > 1000

    data = tmp_path / "new_regime"
    runs = simulate_set(make_specs("ood_finetune", 3, QUICK_PARAMS), cache_dir=None, workers=1)
    assert len(write_run_dir(runs, data)) == 3
    tuned = tmp_path / "tuned"
    r = _cli(
        "finetune", "early-warning", "--quick", "--data", str(data), "--weights", str(out),
        "--out", str(tuned), "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    ft = json.loads((tuned / "finetune_metrics.json").read_text())
    assert ft["runs"] == 3 and "auroc" in ft["before"] and "auroc" in ft["after"]
    assert load_manifest(MODEL_NAME, tuned).sha256 != m.sha256

    bench = tmp_path / "bench" / "ew.json"
    r = _cli("bench", "early-warning", "--quick", "--weights", str(out), "--json", str(bench))
    assert r.returncode == 0, r.stderr[-3000:]
    b = json.loads(bench.read_text())
    for key in (
        "auroc",
        "lead_time_frames_median",
        "false_alarm_rate",
        "missed_rate",
        "window_latency_ms_p50",
    ):
        assert key in b
    assert set(b["ablation"]) == {"static_cnn", "descriptor_gru", "descriptor_logistic"}
    assert set(b["transfer"]) >= {"before", "after"}
    assert b["window_latency_ms_p50"] > 0
