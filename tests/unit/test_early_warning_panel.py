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
