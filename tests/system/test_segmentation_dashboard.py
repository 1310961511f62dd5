"""Segmentation panel in a real Bokeh server and headless Chromium, fed by real pipeline results
(an untrained model exported into a temporary directory: the panel is under test, not accuracy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboards.server import BokehDisplay
from engines.train.segmentation_export import export_untrained
from monitor.config import DashboardSettings, PipelineSettings
from monitor.frames import Frame, FrameMeta
from monitor.live import LiveFrame, LivePoint, LiveState, display_image
from monitor.pipelines.segmentation import SegmentationPipeline
from monitor.sim.xct_stream import xct_slices

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
WAIT_MS = 20_000


def fed_state(weights: Path) -> LiveState:
    export_untrained("xct_unet_fast", weights)
    pipe = SegmentationPipeline(
        PipelineSettings(
            name="segmentation", kind="segmentation", weights_dir=str(weights), options={"mask_shape": 64}
        )
    )
    live = LiveState()
    live.pipelines = (("segmentation", "segmentation"),)
    for s in xct_slices(shape=(160, 160), depth=3, scans=2):
        f = Frame("xct", "sim", s.series, s.z, s.image, 0.0, 1.7e9 + s.scan * 3 + s.z, FrameMeta(slice_z=s.z))
        res = pipe.process([f])[0]
        img = display_image(f.array)
        live.publish_points(
            [LivePoint("segmentation", "xct", f.series, f.index, f.t_received, tuple(res.scalars.items()))]
        )
        over = pipe.display_overlays(res, img.shape)
        live.publish_frame(
            LiveFrame(
                "xct",
                "sim",
                f.series,
                f.index,
                f.t_received,
                img,
                tuple(res.scalars.items()),
                "segmentation",
                tuple(over.items()),
            )  # fmt: skip
        )
    return live


@pytest.mark.browser
async def test_segmentation_panel_in_browser(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("BROWSER TEST SKIPPED: /usr/bin/chromium not found")
    from playwright.async_api import async_playwright, expect

    live = fed_state(tmp_path / "weights")
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
                status = page.locator(".om-seg-status")
                await expect(status).to_contain_text("penetration", timeout=WAIT_MS)
                await expect(status).to_contain_text("scan1", timeout=WAIT_MS)
                counts = await page.evaluate(
                    """() => {
                        const d = Bokeh.documents[0];
                        const n = (name) => d.get_model_by_name(name).data;
                        return [n("segmentation_image_source").image.length,
                                n("segmentation_overlay_source").image.length,
                                n("segmentation_mip_source").image.length,
                                n("segmentation_series").t.length,
                                n("segmentation_profile").z.length];
                    }"""
                )
                assert counts == [1, 1, 1, 6, 3], counts
                assert not errors, errors
            finally:
                await browser.close()
    finally:
        await display.stop()
