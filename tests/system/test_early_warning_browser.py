"""The early-warning panel in headless Chromium: image, risk and latent plots, status text."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import numpy as np
import pytest

from dashboards.server import BokehDisplay
from monitor.config import DashboardSettings
from monitor.live import LiveFrame, LivePoint, LiveState

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
NAMES = ["early_warning_image", "early_warning_risk", "early_warning_latent", "early_warning_status"]


async def _feed(live: LiveState) -> None:
    rng = np.random.default_rng(0)
    i = 0
    while True:
        img = np.zeros((128, 128), np.float32)
        img[128 - min(100, 20 + i) :, ::3] = 1.0  # a growing, fingered deposit
        img += 0.05 * rng.standard_normal(img.shape, dtype=np.float32)
        live.publish_frame(LiveFrame("growth", "sim", "growth-run-1", i, time.time(), img, pipeline="ew"))
        risk = float("nan") if i < 7 else min(0.99, 0.05 * i)
        scalars = (("risk", risk), ("latent", risk * 4 - 2), ("lead_time_frames", 10.0), ("window_fill", 1.0))
        live.publish_points([LivePoint("ew", "growth", "growth-run-1", i, time.time(), scalars)])
        i += 1
        await asyncio.sleep(0.05)


@pytest.mark.browser
async def test_early_warning_panel_in_browser() -> None:
    if not CHROMIUM.exists():
        pytest.skip("BROWSER TEST SKIPPED: /usr/bin/chromium not found")
    from PIL import Image
    from playwright.async_api import async_playwright, expect

    live = LiveState()
    live.pipelines = (("ew", "early_warning"),)
    display = BokehDisplay(live, DashboardSettings(port=0, update_ms=100))
    url = await display.start()
    feeder = asyncio.create_task(_feed(live))
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 1600})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(url)
                status = page.locator(".om-ew-status")
                await expect(status).to_contain_text("HIGH", timeout=20_000)
                found = await page.evaluate(
                    "(names) => names.filter((n) => Bokeh.documents[0].get_model_by_name(n) !== null)", NAMES
                )
                assert found == NAMES
                n_points = await page.evaluate(
                    "() => Bokeh.documents[0].get_model_by_name('early_warning_series').data.t.length"
                )
                assert n_points > 10
                png = await page.locator(".om-ew-image").first.screenshot()
                pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)
                assert pixels.std() > 10, "panel looks blank"
                assert not errors, errors
            finally:
                await browser.close()
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        await display.stop()
