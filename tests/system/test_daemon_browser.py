"""The real daemon with its dashboard: an operator acknowledges an alarm in Chromium, and the
acknowledgement lands in the alarm journal and the run's HDF5 file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import zmq

from dashboards.server import BokehDisplay
from monitor.alerts.model import AlarmState
from monitor.alerts.sinks import read_journal
from monitor.config import config_from_dict
from monitor.daemon import Daemon
from monitor.store import RunReader
from tests.helpers import free_port, good_frame
from tests.system.test_dashboard_browser import CHROMIUM, CHROMIUM_ARGS, WAIT_MS

pytestmark = pytest.mark.browser
ALARM_ID = "saturation:frames"


def _send(endpoint: str, frames: list[list[bytes]]) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.connect(endpoint)
    for parts in frames:
        sock.send_multipart(parts)
    sock.close()
    ctx.term()


async def _until(cond, what: str, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_acknowledge_in_browser_reaches_the_journal(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("BROWSER TEST SKIPPED: /usr/bin/chromium not found (make test installs it when root)")
    from playwright.async_api import async_playwright, expect

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = config_from_dict(
        {
            "run": "ack",
            "daemon": {"shutdown_timeout_s": 5.0, "telemetry_interval_s": 0.2},
            "sources": [{"name": "det", "kind": "array10", "endpoint": endpoint, "mode": "bind"}],
            "pipelines": [{"name": "stats", "kind": "frame_stats"}],
            "store": {"directory": str(tmp_path), "filename": "{run}.h5", "flush_interval_s": 0.1},
            "alerts": {
                "rules": [
                    {
                        "name": "saturation",
                        "kind": "threshold",
                        "pipeline": "stats",
                        "metric": "saturated_fraction",
                        "major": 0.01,
                        "latch": True,
                    }
                ]
            },
            "dashboard": {"port": 0, "update_ms": 100, "operator_token": "letmein"},
        }
    )
    daemon = Daemon(cfg, display=BokehDisplay)
    await daemon.start()
    try:
        # Saturated frames raise the alarm; normal frames clear the condition, but it is latched.
        await asyncio.to_thread(_send, endpoint, [good_frame(i, sat=100) for i in range(3)])
        await asyncio.to_thread(_send, endpoint, [good_frame(i) for i in range(3, 6)])
        await _until(lambda: sum(daemon.telemetry.processed.values()) == 6, "6 processed frames")
        alarm = daemon.alarms.get(ALARM_ID) if daemon.alarms else None
        assert alarm is not None and alarm.state is AlarmState.ACTIVE and "latched" in alarm.message

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 1100})
                await page.goto(daemon.dashboard_url)
                table = page.locator(".om-alarms-table")
                await expect(table).to_contain_text(ALARM_ID, timeout=WAIT_MS)
                await page.locator(".om-ack-alarm-id input").fill(ALARM_ID)
                await page.locator(".om-ack-operator input").fill("bob")
                token = page.locator(".om-ack-token input")
                status = page.locator(".om-ack-status")
                await token.fill("guess")
                await page.locator(".om-ack-button button").click()
                await expect(status).to_contain_text("wrong operator token", timeout=WAIT_MS)
                assert [e.transition for e in read_journal(daemon.journal_path)] == [
                    "raise",
                    "condition_cleared",
                ]
                await token.fill("letmein")
                await page.locator(".om-ack-button button").click()
                await expect(status).to_contain_text("acknowledged by bob", timeout=WAIT_MS)
                await expect(table).to_contain_text("cleared", timeout=WAIT_MS)
            finally:
                await browser.close()
    finally:
        daemon.request_exit()
        await daemon.shutdown()
    journal = read_journal(daemon.journal_path)
    assert [e.transition for e in journal] == ["raise", "condition_cleared", "acknowledge", "clear"]
    assert journal[2].alarm.acked_by == "bob" and journal[2].alarm.state is AlarmState.ACKNOWLEDGED
    with RunReader(daemon.store_path) as r:
        assert [e.transition for e in r.alarms()] == ["raise", "condition_cleared", "acknowledge", "clear"]
        assert r.status_counts()["PROCESSED"] == 6
