"""Security (issue 12, failure 5): secrets never reach the run file, wrong acknowledge tokens are
rate-limited and logged, the dashboard checks the Host header, EPICS binds loopback by default."""

from __future__ import annotations

import asyncio
import http.client
import logging
from pathlib import Path

import pytest

from dashboards.server import BokehDisplay
from monitor.alerts.ackguard import TokenGuard
from monitor.config import DashboardSettings, EpicsSettings, config_from_dict
from monitor.daemon import Daemon
from monitor.live import LiveState
from monitor.store import RunReader
from tests.helpers import free_port

TOKEN = "s3cret-token"


def _daemon(tmp_path: Path) -> Daemon:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    text = f"""run = "sec"
[[sources]]
name = "det"
kind = "array10"
endpoint = "{endpoint}"
mode = "bind"
[store]
directory = "{tmp_path}"
filename = "{{run}}.h5"
[dashboard]
enabled = false
operator_token = "{TOKEN}"
"""
    import tomllib

    return Daemon(config_from_dict(tomllib.loads(text)), config_text=text)


async def test_operator_token_is_redacted_in_the_run_file(tmp_path: Path) -> None:
    daemon = _daemon(tmp_path)
    await daemon.start()
    daemon.request_exit()
    await daemon.shutdown()
    raw = daemon.store_path.read_bytes()
    assert TOKEN.encode() not in raw
    with RunReader(daemon.store_path) as r:
        assert 'operator_token = "<redacted>"' in r.attrs.config_toml


def test_wrong_tokens_lock_acknowledgement_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    daemon = _daemon(tmp_path)
    for _ in range(5):
        assert not daemon.live.acknowledge("r:s", "mallory", "guess").ok
    result = daemon.live.acknowledge("r:s", "mallory", TOKEN)  # even the right token, while locked
    assert not result.ok and "too many wrong tokens" in result.message
    wrong = [r for r in caplog.records if "bad operator token" in r.getMessage()]
    assert len(wrong) == 5 and "locked" in wrong[-1].getMessage()
    assert any("locked out" in r.getMessage() for r in caplog.records)


def test_token_guard_window_and_expiry() -> None:
    g = TokenGuard(max_failures=3, window_s=10, lockout_s=30)
    assert not g.failed(0) and not g.failed(20)  # outside one window: no lockout
    assert not g.failed(21)
    assert g.failed(22)  # three within ten seconds
    assert g.locked_for(40) == pytest.approx(12)
    assert g.locked_for(52.1) == 0.0


def _get(port: int, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": host})
        return conn.getresponse().status
    finally:
        conn.close()


async def test_dashboard_refuses_foreign_host_headers() -> None:
    display = BokehDisplay(LiveState(), DashboardSettings(port=0))
    await display.start()
    try:
        port = display.port
        assert port is not None
        assert await asyncio.to_thread(_get, port, f"127.0.0.1:{port}") == 200
        assert await asyncio.to_thread(_get, port, f"localhost:{port}") == 200
        # DNS rebinding: a page on attacker.example resolving to 127.0.0.1.
        assert await asyncio.to_thread(_get, port, f"attacker.example:{port}") == 403
        assert await asyncio.to_thread(_get, port, "attacker.example") == 403
    finally:
        await display.stop()


async def test_epics_binds_loopback_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("caproto")
    from monitor.alerts.epics import EpicsAlarmSink

    monkeypatch.delenv("EPICS_CAS_INTF_ADDR_LIST", raising=False)
    sink = EpicsAlarmSink(EpicsSettings(enabled=True, prefix="I12SEC:"))
    await sink.start()
    try:
        assert list(sink._ctx.interfaces) == ["127.0.0.1"]
    finally:
        await sink.stop()
