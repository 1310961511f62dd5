"""EarlyWarningPipeline with a forecasting (hazard) model: numpy preprocessing, forecast scalars,
per-series OOD flag gating ``alarm_risk``. Uses a freshly exported, untrained HazardNet."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.models.hazard_gru import HazardNet
from engines.train.early_warning_forecast import MODEL_NAME, export
from monitor.config import PipelineSettings
from monitor.frames import Frame
from monitor.pipelines.early_warning import FORECAST_SCALARS, SCALARS, EarlyWarningPipeline
from monitor.pipelines.early_warning_ood import OodMonitor
from monitor.pipelines.early_warning_rule import OOD_RULE, calibrated_rule, rule_settings


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ew_forecast")
    torch.manual_seed(0)
    ood = {
        "feature_mean": [0.0] * 8,
        "feature_std": [1.0] * 8,
        "score_threshold": 5.0,
        "latent_range": [-50, 50],
    }
    export(
        HazardNet("hybrid").eval(), out, training={"command": "test"}, metrics={},
        extra={"horizon": 14, "alarm_rule": {"major": 0.6, "min_count": 2, "hysteresis": 0.2}, "ood": ood},
    )  # fmt: skip
    return out


def _growth(i: int, series: str = "s", scale: float = 1.0) -> Frame:
    img = np.full((128, 128), 1000.0)
    img[128 - 4 * (i + 1) :, :] = 30000.0  # a compact front rising from the bottom
    img += np.random.default_rng(i).normal(0, 200, img.shape)
    return Frame("growth", "sim", series, i, np.clip(img * scale, 0, 65535).astype(np.uint16), 0.0, 0.0)


def test_forecast_scalars_and_calibrated_rule(weights: Path) -> None:
    pipe = EarlyWarningPipeline(
        PipelineSettings(name="ew", kind="early_warning", weights_dir=str(weights), model=MODEL_NAME)
    )
    assert pipe.forecast and pipe.schema().scalars == SCALARS + FORECAST_SCALARS
    out = pipe.process([_growth(i) for i in range(10)])
    assert all(math.isnan(r.scalars["lead_time_lo"]) for r in out[:7])
    s = out[-1].scalars
    assert 0 <= s["risk"] <= 1 and s["lead_time_lo"] <= s["lead_time_hi"] <= 28
    assert 0 <= s["lead_time_frames"] <= 28 and s["ood"] == 0.0 and s["alarm_risk"] == s["risk"]
    c = calibrated_rule(str(weights), MODEL_NAME)
    assert (c.metric, c.major, c.min_count, c.forecast) == ("alarm_risk", 0.6, 2, True)
    names = [r.name for r in rule_settings("r", "ew", str(weights), MODEL_NAME)]
    assert names == ["r", OOD_RULE]


def test_ood_flag_needs_consecutive_far_windows_and_gates_alarm_risk(weights: Path) -> None:
    manifest = json.loads((weights / f"{MODEL_NAME}.json").read_text())
    ood = OodMonitor(manifest["extra"]["ood"], min_count=3)
    near, far = np.zeros((8, 8)), np.full((8, 8), 100.0)
    assert ood.update(("g", "a"), near, 0.0) == (0.0, False)
    flags = [ood.update(("g", "a"), far, 0.0)[1] for _ in range(3)]
    assert flags == [False, False, True]
    assert ood.update(("g", "b"), near, 0.0)[1] is False  # per series
    assert ood.update(("g", "a"), near, 1e6)[1] is True  # latent far too: stays flagged
    flags = [ood.update(("g", "a"), near, 0.0)[1] for _ in range(3)]
    assert flags == [True, True, False]
    pipe = EarlyWarningPipeline(
        PipelineSettings(name="ew", kind="early_warning", weights_dir=str(weights), model=MODEL_NAME)
    )
    pipe.ood = OodMonitor({**manifest["extra"]["ood"], "score_threshold": -1.0}, min_count=2)  # all far
    out = pipe.process([_growth(i, "x") for i in range(12)])
    assert out[-1].scalars["ood"] == 1.0 and math.isnan(out[-1].scalars["alarm_risk"])
    assert math.isfinite(out[-1].scalars["risk"])
