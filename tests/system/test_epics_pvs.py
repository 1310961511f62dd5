"""A real caproto server (EpicsAlarmSink on the daemon's loop) read by a real Channel Access client.

Everything on loopback with non-default ports: EPICS_CA_SERVER_PORT / EPICS_CA_REPEATER_PORT
from free UDP ports, EPICS_CA_ADDR_LIST=127.0.0.1, EPICS_CA_AUTO_ADDR_LIST=NO,
EPICS_CAS_INTF_ADDR_LIST=127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from caproto import AlarmSeverity, AlarmStatus
from caproto.sync.client import read

from monitor.alerts.epics import STATE_STRINGS, EpicsAlarmSink
from monitor.alerts.manager import AlarmManager
from monitor.alerts.rules import SilenceRule, ThresholdRule
from monitor.alerts.sinks import JournalSink
from monitor.config import EpicsSettings, RuleSettings, config_from_dict
from monitor.daemon import Daemon
from monitor.sim.array10 import encode_array10
from monitor.sim.ports import free_port


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ca_env(monkeypatch: pytest.MonkeyPatch) -> int:
    port = free_udp_port()
    monkeypatch.setenv("EPICS_CA_SERVER_PORT", str(port))
    monkeypatch.setenv("EPICS_CAS_SERVER_PORT", str(port))
    monkeypatch.setenv("EPICS_CA_REPEATER_PORT", str(free_udp_port()))
    monkeypatch.setenv("EPICS_CA_ADDR_LIST", "127.0.0.1")
    monkeypatch.setenv("EPICS_CA_AUTO_ADDR_LIST", "NO")
    monkeypatch.setenv("EPICS_CAS_INTF_ADDR_LIST", "127.0.0.1")
    monkeypatch.setenv("EPICS_CAS_AUTO_BEACON_ADDR_LIST", "NO")
    monkeypatch.setenv("EPICS_CAS_BEACON_ADDR_LIST", "127.0.0.1")
    return port


async def ca_read(pv: str) -> tuple[object, AlarmStatus, AlarmSeverity]:
    """Read value, status and severity over CA (the sync client, in a thread: the server runs here)."""
    r = await asyncio.to_thread(read, pv, data_type="time", repeater=False, timeout=5)
    value = r.data[0] if len(r.data) == 1 else bytes(r.data)
    if isinstance(value, bytes):
        value = value.split(b"\0", 1)[0].decode()
    if pv.endswith("STATE"):  # DBR_TIME_ENUM carries the index
        value = STATE_STRINGS[int(value)]  # type: ignore[call-overload]
    return value, AlarmStatus(r.metadata.status), AlarmSeverity(r.metadata.severity)


async def wait_pv(pv: str, want: object, timeout: float = 5.0) -> tuple[object, AlarmStatus, AlarmSeverity]:
    deadline = time.monotonic() + timeout
    while True:
        got = await ca_read(pv)
        if got[0] == want or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


async def test_alarm_pvs_follow_the_alarm_manager(ca_env: int, tmp_path: Path) -> None:
    sink = EpicsAlarmSink(EpicsSettings(enabled=True, prefix="TST1:", heartbeat_s=0.1))
    await sink.start()
    manager = AlarmManager(JournalSink(tmp_path / "j.jsonl", fsync=False), [sink])
    rule = ThresholdRule(
        RuleSettings(name="sat", kind="threshold", pipeline="stats", metric="f", minor=0.01, major=0.1)
    )
    silence = SilenceRule(RuleSettings(name="quiet", kind="silence", source="det", timeout_s=1.0))
    try:
        assert await ca_read("TST1:STATE") == ("OK", AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM)
        assert await ca_read("TST1:TRIP") == (0, AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM)
        hb1 = (await ca_read("TST1:HEARTBEAT"))[0]
        await asyncio.sleep(0.35)
        hb2 = (await ca_read("TST1:HEARTBEAT"))[0]
        assert isinstance(hb1, int | np.integer) and hb2 > hb1  # type: ignore[operator]

        for value in (0.05, 0.3):  # MINOR, then MAJOR
            verdict = rule.evaluate("frames", value)
            assert verdict is not None
            manager.apply(verdict)
        assert await wait_pv("TST1:STATE", "MAJOR") == ("MAJOR", AlarmStatus.STATE, AlarmSeverity.MAJOR_ALARM)
        assert await ca_read("TST1:TRIP") == (1, AlarmStatus.STATE, AlarmSeverity.MAJOR_ALARM)
        score = await ca_read("TST1:SCORE")
        assert score[0] == pytest.approx(0.3) and score[1:] == (AlarmStatus.HIHI, AlarmSeverity.MAJOR_ALARM)
        msg = await ca_read("TST1:MSG")
        assert "MAJOR sat:frames" in str(msg[0]) and msg[2] == AlarmSeverity.MAJOR_ALARM

        verdict = silence.check(3.0)  # the source fell silent
        assert verdict is not None
        manager.apply(verdict)
        state = await wait_pv("TST1:STATE", "INVALID")
        assert state == ("INVALID", AlarmStatus.TIMEOUT, AlarmSeverity.INVALID_ALARM)
        assert (await ca_read("TST1:SCORE"))[1:] == (AlarmStatus.TIMEOUT, AlarmSeverity.INVALID_ALARM)
        assert (await ca_read("TST1:TRIP"))[0] == 1  # the MAJOR alarm is still active

        for v in (silence.check(0.0), rule.evaluate("frames", 0.0)):
            assert v is not None
            manager.apply(v)
        assert await wait_pv("TST1:STATE", "OK") == ("OK", AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM)
        assert await ca_read("TST1:TRIP") == (0, AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM)
        assert (await ca_read("TST1:MSG"))[0] == "OK"
    finally:
        await sink.stop()
        manager.close()


async def test_daemon_serves_pvs_from_config(ca_env: int, tmp_path: Path) -> None:
    """[alerts.epics] enabled: saturated frames through the daemon raise STATE/TRIP over CA."""
    import zmq
    import zmq.asyncio

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = config_from_dict(
        {
            "run": "epics",
            "sources": [{"name": "det", "kind": "array10", "endpoint": endpoint, "mode": "bind"}],
            "pipelines": [{"name": "stats", "kind": "frame_stats", "queue_size": 100}],
            "store": {"directory": str(tmp_path), "filename": "{run}.h5", "flush_interval_s": 0.1},
            "alerts": {
                "rules": [
                    {"name": "saturation", "kind": "threshold", "pipeline": "stats",
                     "metric": "saturated_fraction", "major": 0.01},
                ],
                "epics": {"enabled": True, "prefix": "TST2:", "heartbeat_s": 0.2},
            },
            "dashboard": {"enabled": False},
        }
    )  # fmt: skip
    daemon = Daemon(cfg)
    await daemon.start()
    ctx = zmq.asyncio.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(endpoint)
    try:
        assert (await ca_read("TST2:STATE"))[0] == "OK"
        frame = np.full((16, 16), 65535, dtype=np.uint16)
        for i in range(3):
            await push.send_multipart(encode_array10(frame, frame=i, series="s"))
        assert (await wait_pv("TST2:TRIP", 1))[0] == 1
        assert (await ca_read("TST2:STATE"))[2] == AlarmSeverity.MAJOR_ALARM
    finally:
        push.close(linger=0)
        ctx.destroy(linger=0)
        await daemon.shutdown()
    assert daemon.epics is not None and daemon.epics.writes >= 2
