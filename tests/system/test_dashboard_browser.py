"""The dashboard end to end: a real Bokeh server on the test's loop, a real Chromium via Playwright.

The ack handler here stands in for the daemon's (which journals the acknowledgement; that path is
tested with the daemon): it checks the token and moves the alarm to ACKNOWLEDGED in LiveState.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from bokeh.document import Document

from dashboards.app import make_document
from dashboards.server import BokehDisplay
from monitor.alerts.model import Alarm, AlarmState, FrameRef, Severity
from monitor.config import DashboardSettings
from monitor.live import AckResult, LiveFrame, LiveState
from monitor.telemetry import TelemetrySnapshot

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "secret"
ALARM_ID = "risk_threshold/cell-A"
WAIT_MS = 10_000


def _alarm(t: float) -> Alarm:
    return Alarm(
        id=ALARM_ID,
        rule="risk_threshold",
        severity=Severity.MAJOR,
        state=AlarmState.ACTIVE,
        message="dendrite risk 0.93 above 0.80 <b>not markup</b>",
        value=0.93,
        threshold=0.8,
        frame=FrameRef(source="sim", stream="xrd", series="run1", index=7, seq=7),
        t_raised=t,
        t_changed=t,
    )


def _frame(i: int, stream: str = "xrd") -> LiveFrame:
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    image = np.sin((xx + 4 * i) / 23.0) * np.cos(yy / 31.0) * 100 + xx + yy
    if stream != "xrd":
        image = image.T[::-1].copy()
    return LiveFrame(
        stream=stream,
        source="sim",
        series="run1",
        index=i,
        t_received=time.time(),
        image=image.astype(np.float32),
        scalars=(("mean", float(image.mean())), ("max", float(image.max()))),
    )


def _snapshot(i: int) -> TelemetrySnapshot:
    return TelemetrySnapshot(
        t=time.time(),
        received=10 * i,
        processed=10 * i - 2,
        skipped=1,
        rejected=1,
        failed=0,
        fps_in=100.0 + 5 * np.sin(i / 5),
        fps_out=98.0 + 5 * np.cos(i / 5),
        latency_p50_ms=12.0 + np.sin(i / 3),
        latency_p99_ms=30.0 + 4 * np.cos(i / 4),
        queue_depth=i % 4,
        upstream_gaps=0,
        rejected_by_reason=(("bad_json", 1),),
        skipped_by_reason=(("stale", 1),),
    )


async def _feed(live: LiveState) -> None:
    i = 0
    while True:
        i += 1
        live.publish_frame(_frame(i, "xrd"))
        if i % 5 == 1:
            live.publish_frame(_frame(i, "tomo"))
        live.publish_health(_snapshot(i))
        await asyncio.sleep(0.1)


def _received(text: str) -> int:
    match = re.search(r"received\s*(\d+)", text)
    assert match, f"no received counter in {text!r}"
    return int(match.group(1))


def _console(kind: str, text: str, errors: list[str]) -> None:
    if kind == "error":
        errors.append(f"console error: {text}")


def _image_stats(png: bytes) -> tuple[float, int]:
    """Pixel std-dev and colour count of the central half of a screenshot (the plot area)."""
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)
    h, w = img.shape[:2]
    centre = img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
    colours = len(np.unique(centre.reshape(-1, 3), axis=0))
    return float(centre.std()), colours


MODEL_NAMES = (
    "live_frame",
    "stream_select",
    "frame_scalars",
    "health_fps",
    "health_latency",
    "counters",
    "alarms_table",
    "ack_alarm_id",
    "ack_operator",
    "ack_token",
    "ack_button",
    "ack_status",
)


def _model_text(doc: Document, name: str) -> str:
    model = doc.select_one({"name": name})
    assert model is not None, name
    return re.sub(r"<[^>]+>", " ", str(model.text))  # the text a browser shows


def test_document_handles_empty_then_live_state() -> None:
    """No browser: the document builds on empty state and follows LiveState on update()."""
    live = LiveState()
    doc = Document()
    dash = make_document(doc, live, DashboardSettings(update_ms=100, history=5))
    assert doc.title == "operando-monitor"
    for name in MODEL_NAMES:
        assert doc.select_one({"name": name}) is not None, name
    assert len(doc.session_callbacks) == 1
    assert "no telemetry yet" in _model_text(doc, "counters")
    dash.update()  # nothing published: nothing to draw, nothing raised

    live.publish_frame(_frame(1, "xrd"))
    live.publish_frame(_frame(1, "tomo"))
    for i in range(1, 9):
        live.publish_health(dataclasses.replace(_snapshot(i), t=1000.0 + i))
    live.publish_alarm(_alarm(time.time()))
    dash.update()
    assert dash.frame.select.options == ["tomo", "xrd"] and dash.frame.select.value == "tomo"
    image = dash.frame.source.data["image"][0]
    assert image.dtype == np.float32 and image.shape == (256, 256)
    assert dash.frame.mapper.low < dash.frame.mapper.high
    assert _received(_model_text(doc, "counters")) == 80
    assert len(dash.health.source.data["t"]) == 5  # rollover = history
    assert list(dash.alarms.source.data["id"]) == [ALARM_ID]
    assert list(dash.alarms.source.data["severity"]) == ["MAJOR"]

    dash.update()  # version unchanged: the image is not re-sent
    assert dash.frame.source.data["image"][0] is image
    dash.frame.select.value = "xrd"  # switching streams redraws at once
    assert dash.frame.source.data["image"][0] is not image
    assert dash.frame.plot.title.text.startswith("xrd")


async def test_display_serves_on_port_zero_and_stops() -> None:
    display = BokehDisplay(LiveState(), DashboardSettings(port=0, allow_websocket_origin=("beamline:8080",)))
    url = await display.start()
    port = display.port
    assert port and url == f"http://127.0.0.1:{port}/"
    assert display.websocket_origins(port) == [f"127.0.0.1:{port}", f"localhost:{port}", "beamline:8080"]
    loop = asyncio.get_running_loop()
    with await loop.run_in_executor(None, urllib.request.urlopen, url) as response:
        assert response.status == 200 and b"<title>operando-monitor</title>" in response.read()
    await display.stop()
    with pytest.raises(OSError):
        await loop.run_in_executor(None, urllib.request.urlopen, url)
    await display.stop()  # idempotent
    assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()


@pytest.mark.browser
async def test_dashboard_in_browser(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(
            "BROWSER TEST SKIPPED: /usr/bin/chromium not found: install Debian chromium "
            "(make test does this when root)"
        )
    from playwright.async_api import async_playwright, expect

    live = LiveState(history=600)
    live.publish_alarm(_alarm(time.time()))
    attempts: list[tuple[str, str, str, bool]] = []  # stands in for the journal in this test

    def ack_handler(alarm_id: str, operator: str, token: str) -> AckResult:
        ok = token == TOKEN
        attempts.append((alarm_id, operator, token, ok))
        if not ok:
            return AckResult(False, "invalid operator token")
        current = {a.id: a for a in live.alarms()}[alarm_id]
        acked = dataclasses.replace(
            current, state=AlarmState.ACKNOWLEDGED, acked_by=operator, t_changed=time.time()
        )
        live.publish_alarm(acked)
        return AckResult(True, f"acknowledged by {operator}")

    live.ack_handler = ack_handler
    display = BokehDisplay(live, DashboardSettings(port=0, update_ms=100))
    url = await display.start()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url) and display.port
    feeder = asyncio.create_task(_feed(live))
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 1150})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
                page.on("console", lambda msg: _console(msg.type, msg.text, errors))
                await page.goto(url)
                await expect(page).to_have_title("operando-monitor", timeout=WAIT_MS)

                # Live frame: the canvas shows the gradient (not a blank plot).
                plot = page.locator(".om-live-frame").first
                await expect(plot).to_be_visible(timeout=WAIT_MS)
                counters = page.locator(".om-counter-grid")
                await expect(counters).to_contain_text("received", timeout=WAIT_MS)
                deadline = time.monotonic() + WAIT_MS / 1000
                while True:
                    std, colours = _image_stats(await plot.screenshot())
                    if (std > 10 and colours > 50) or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
                assert std > 10 and colours > 50, f"live frame looks blank: std={std:.1f} colours={colours}"

                # Every key model is addressable by name in the browser's document.
                names = await page.evaluate(
                    "(names) => names.filter((n) => Bokeh.documents[0].get_model_by_name(n) !== null)",
                    list(MODEL_NAMES),
                )
                assert names == list(MODEL_NAMES)

                # Stream selector: one entry per stream; switching redraws the other stream.
                title_js = "() => Bokeh.documents[0].get_model_by_name('live_frame').title.text"
                stream_select = page.locator(".om-stream-select select")
                await expect(stream_select.locator("option")).to_have_count(2, timeout=WAIT_MS)
                await stream_select.select_option("xrd")
                deadline = time.monotonic() + WAIT_MS / 1000
                while not (title := await page.evaluate(title_js)).startswith("xrd"):
                    assert time.monotonic() < deadline, f"frame title stuck at {title!r}"
                    await asyncio.sleep(0.1)
                assert re.search(r"frame \d+ +· +age", title), title

                # Health: the received counter moves.
                first = _received(await counters.inner_text())
                deadline = time.monotonic() + WAIT_MS / 1000
                while (second := _received(await counters.inner_text())) <= first:
                    assert time.monotonic() < deadline, f"received stuck at {first}"
                    await asyncio.sleep(0.1)

                # Alarms: the id is in the table; select the row.
                table = page.locator(".om-alarms-table")
                await expect(table).to_contain_text(ALARM_ID, timeout=WAIT_MS)
                await expect(table).to_contain_text("MAJOR")
                await table.locator(".slick-cell", has_text=ALARM_ID).first.click()
                alarm_id_input = page.locator(".om-ack-alarm-id input")
                await expect(alarm_id_input).to_have_value(ALARM_ID, timeout=WAIT_MS)
                await page.locator(".om-ack-operator input").fill("alice")
                token_input = page.locator(".om-ack-token input")
                button = page.locator(".om-ack-button button")
                status = page.locator(".om-ack-status")

                # Wrong token: rejected, and the alarm stays active.
                await token_input.fill("wrong")
                await button.click()
                await expect(status).to_contain_text("invalid operator token", timeout=WAIT_MS)
                assert attempts == [(ALARM_ID, "alice", "wrong", False)]
                assert live.alarms()[0].state is AlarmState.ACTIVE

                # Right token: acknowledged in LiveState and in the table.
                await token_input.fill(TOKEN)
                await button.click()
                await expect(status).to_contain_text("acknowledged by alice", timeout=WAIT_MS)
                assert attempts[-1] == (ALARM_ID, "alice", TOKEN, True)
                (alarm,) = live.alarms()
                assert alarm.state is AlarmState.ACKNOWLEDGED and alarm.acked_by == "alice"
                await expect(table).to_contain_text("acknowledged", timeout=WAIT_MS)
                await expect(table).to_contain_text("alice")

                shot = tmp_path / "dashboard.png"
                await page.screenshot(path=str(shot), full_page=True)
                assert second > first
                assert not errors, "browser reported errors:\n" + "\n".join(errors)
            finally:
                await browser.close()
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        await display.stop()
