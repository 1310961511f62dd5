"""SegmentationPanel renders LiveState: slice + mask overlay, MIP, profiles, timelines, status."""

from __future__ import annotations

import numpy as np

from dashboards.panels.segmentation import SegmentationPanel, rgba_overlay, series_columns
from monitor.live import LiveFrame, LivePoint, LiveState


def _point(series: str, z: int, vf: float, pen: float) -> LivePoint:
    scalars = (("dendrite_gap_fraction", vf), ("cum_dendrite_gap_fraction", vf / 2), ("penetration", pen),
               ("slice_z", float(z)), ("n_dendrite", 3.0), ("dendrite_vf_growth", 0.001))  # fmt: skip
    return LivePoint("seg", "xct", series, z, 1000.0 + z, scalars)


def test_panel_shows_overlay_mip_profiles_and_status() -> None:
    live = LiveState()
    panel = SegmentationPanel("seg", live)
    panel.update(0.0)
    assert "no results yet" in panel.status.text
    img = np.random.default_rng(0).random((200, 300), dtype=np.float32)
    mask = np.zeros((200, 300), np.uint8)
    mask[50:60, 100:110] = 2
    mip = np.zeros((64, 64), np.float32)
    mip[10, 10] = 5
    over = (("mask", mask), ("mip", mip))
    live.publish_frame(LiveFrame("xct", "sim", "scan1", 3, 1003.0, img, pipeline="seg", overlays=over))
    live.publish_points([_point("scan0", z, 0.01, 0.3) for z in range(4)])
    live.publish_points([_point("scan1", z, 0.02, 0.85 if z == 3 else 0.4) for z in range(4)])
    panel.update(1010.0)
    assert panel.image.data["image"][0].shape == (200, 300)
    rgba = panel.overlay.data["image"][0]
    assert rgba.dtype == np.uint32 and (rgba != 0).sum() == 100
    assert panel.mip.data["image"][0].shape == (64, 64) and panel.mip_mapper.high == 5.0
    assert "slice 3" in panel.frame.title.text
    assert len(panel.timeline.data["t"]) == 8
    assert panel.latest.data["vf"] == [0.02] * 4 and panel.previous.data["vf"] == [0.01] * 4
    assert "SHORT-CIRCUIT" in panel.status.text and "scan1" in panel.status.text


def test_helpers() -> None:
    m = np.array([[0, 1, 2], [3, 4, 9]], np.uint8)
    r = rgba_overlay(m)
    assert r.shape == (2, 3) and r.dtype == np.uint32
    assert r[0, 0] == 0 and r[0, 1] == 0 and r[0, 2] != 0 and r[1, 2] == r[1, 1]  # out-of-range clipped
    t, latest, prev = series_columns([])
    assert t["t"] == [] and latest["z"] == [] and prev["z"] == []
