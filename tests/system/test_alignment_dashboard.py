"""Alignment panel in a real Bokeh server and headless Chromium, fed by real pipeline results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dashboards.panels.alignment import AlignmentPanel, contour_rgba, mosaic
from dashboards.server import BokehDisplay
from engines.synth.txm_xanes import TxmConfig, default_energies, generate
from monitor.bench.alignment import frames_of
from monitor.config import DashboardSettings, PipelineSettings
from monitor.live import LiveFrame, LivePoint, LiveState, display_image
from monitor.pipelines.alignment import AlignmentPipeline

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
WAIT_MS = 15_000


def fed_state() -> LiveState:
    seq = generate(150_002, TxmConfig(energies=tuple(default_energies()[::3])))
    pipe = AlignmentPipeline(PipelineSettings(name="alignment", kind="alignment", options={"roi_size": 96}))
    live = LiveState()
    live.pipelines = (("alignment", "alignment"),)
    for f in frames_of(seq, "dash-scan"):
        res = pipe.process([f])[0]
        img = display_image(f.array)
        live.publish_points(
            [LivePoint("alignment", f.stream, f.series, f.index, 1.7e9 + f.index, tuple(res.scalars.items()))]
        )
        over = pipe.display_overlays(res, img.shape)
        live.publish_frame(
            LiveFrame(
                f.stream,
                f.source,
                f.series,
                f.index,
                1.7e9 + f.index,
                img,
                tuple(res.scalars.items()),
                "alignment",
                tuple(over.items()),
            )  # fmt: skip
        )
    return live


def test_panel_draws_contours_tails_timelines_and_maps() -> None:
    live = fed_state()
    panel = AlignmentPanel("alignment", live)
    panel.update(0.0)
    assert len(panel.image.data["image"]) == 1
    assert len(panel.tails.data["xs"]) == 9
    assert len(panel.particles.data["xs"]) == 9
    xanes = panel.xanes.data["image"][0]
    assert np.isfinite(xanes).sum() > 1000
    assert "tracks" in panel.status.text and "<b>9</b>" in panel.status.text
    rgba = panel.contours.data["image"][0]
    assert (rgba != 0).sum() > 200


def test_helpers() -> None:
    lab = np.zeros((10, 10), np.uint8)
    lab[2:6, 2:6] = 1
    assert (contour_rgba(lab) != 0).sum() == 12
    maps = np.full((3, 8, 8), np.nan, np.float32)
    maps[1] = 1.0
    assert mosaic(maps, 4).shape == (4, 4)


@pytest.mark.browser
async def test_alignment_panel_in_browser() -> None:
    if not CHROMIUM.exists():
        pytest.skip("BROWSER TEST SKIPPED: /usr/bin/chromium not found")
    from playwright.async_api import async_playwright, expect

    live = fed_state()
    display = BokehDisplay(live, DashboardSettings(port=0, update_ms=100))
    url = await display.start()
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1500, "height": 1600})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(url)
                status = page.locator(".om-alignment-status")
                await expect(status).to_contain_text("tracks", timeout=WAIT_MS)
                await expect(status).to_contain_text("scan", timeout=WAIT_MS)
                counts = await page.evaluate(
                    """() => {
                        const d = Bokeh.documents[0];
                        const n = (name) => d.get_model_by_name(name).data;
                        return [n("align_tails").xs.length, n("align_xanes").image.length,
                                n("align_particles").xs.length];
                    }"""
                )
                assert counts == [9, 1, 9], counts
                assert not errors, errors
            finally:
                await browser.close()
    finally:
        await display.stop()
