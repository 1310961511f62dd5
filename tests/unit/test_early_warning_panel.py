"""EarlyWarningPanel renders LiveState: image, risk/latent timelines, status text."""

from __future__ import annotations

import math

import numpy as np

from dashboards.panels.early_warning import EarlyWarningPanel, timeline
from monitor.live import LiveFrame, LivePoint, LiveState


def _point(i: int, risk: float) -> LivePoint:
    scalars = (("risk", risk), ("latent", risk * 4 - 2), ("lead_time_frames", 20 - i), ("window_fill", 1.0))
    return LivePoint("ew", "growth", "growth-run-1", i, 1000.0 + i, scalars)


def test_panel_shows_image_timelines_and_status() -> None:
    live = LiveState()
    panel = EarlyWarningPanel("ew", live)
    panel.update(0.0)
    assert "no results yet" in panel.status.text
    img = np.random.default_rng(0).random((128, 128), dtype=np.float32)
    live.publish_frame(LiveFrame("growth", "sim", "growth-run-1", 9, 1009.0, img, pipeline="ew"))
    live.publish_points([_point(i, r) for i, r in enumerate([math.nan, 0.2, 0.5, 0.85, 0.9])])
    panel.update(1010.0)
    assert panel.image.data["image"][0].shape == (128, 128)
    assert "frame 9" in panel.frame.title.text
    data = panel.series.data
    assert len(data["t"]) == 5 and data["t"][0] == 1_000_000.0
    assert math.isnan(data["risk"][0]) and data["risk"][-1] == 0.9
    assert "HIGH" in panel.status.text and "growth-run-1" in panel.status.text


def test_status_while_the_window_fills() -> None:
    live = LiveState()
    live.publish_points([LivePoint("ew", "g", "s", 0, 0.0, (("risk", math.nan), ("window_fill", 0.25)))])
    panel = EarlyWarningPanel("ew", live)
    panel.update(0.0)
    assert "filling window (25%)" in panel.status.text
    assert timeline([])["t"] == []


def test_forecast_text_never_prints_tiny_floats() -> None:
    from dashboards.panels.early_warning import frames_text

    assert frames_text(8.167e-05, 0.0, 0.0) == "now (already transitioning)"
    assert frames_text(12.4, 5.0, 20.0) == "12 (5–20)"
    assert frames_text(12.4, 5.0, 28.0) == "12 (5–> 28)"
    assert frames_text(27.9, 20.0, 28.0) == "> 28"
    assert frames_text(math.nan, math.nan, math.nan) == "–"


def test_thresholds_and_ood_flag_come_from_the_configuration_and_results() -> None:
    live = LiveState()
    live.thresholds = (("other", "risk", 0.1, 0.0, 1), ("ew", "alarm_risk", 0.42, 0.1, 2))
    panel = EarlyWarningPanel("ew", live)
    assert (panel.major, panel.min_count) == (0.42, 2) and abs(panel.clear - 0.32) < 1e-9
    assert "0.42 for 2" in panel.risk.title.text
    scalars = (("risk", 0.9), ("lead_time_frames", 3.2), ("lead_time_lo", 1.0), ("lead_time_hi", 7.0),
               ("ood", 1.0), ("window_fill", 1.0))  # fmt: skip
    live.publish_points([LivePoint("ew", "g", "s", 0, 0.0, scalars)])
    panel.update(0.0)
    assert "OUT OF DISTRIBUTION" in panel.status.text and "3 (1–7)" in panel.status.text
    assert panel.series.data["lead_hi"] == [7.0]
