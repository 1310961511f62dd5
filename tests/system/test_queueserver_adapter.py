"""The bluesky-queueserver adapter against a real RE Manager (``start-re-manager`` with its
built-in simulated profile, a real ``redis-server``), all on 127.0.0.1.

Skipped, with the reason, when ``redis-server`` or ``start-re-manager`` is not installed
(``apt-get install redis-server``; ``pip install bluesky-queueserver bluesky-queueserver-api``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from monitor.alerts.manager import AlarmManager
from monitor.alerts.model import Severity
from monitor.alerts.queueserver import QueueServerAdapter
from monitor.alerts.rules import Verdict
from monitor.alerts.sinks import JournalSink, read_journal
from monitor.config import QueueServerSettings
from monitor.sim.ports import free_port

REDIS = shutil.which("redis-server")
RE_MANAGER = shutil.which("start-re-manager") or str(Path(sys.executable).parent / "start-re-manager")
pytestmark = pytest.mark.skipif(
    REDIS is None or not Path(RE_MANAGER).exists(),
    reason="NOT RUN: needs redis-server (apt-get install redis-server) and start-re-manager "
    "(pip install bluesky-queueserver) to start a real RE Manager",
)


@pytest.fixture(scope="module")
def re_manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """redis + RE Manager on loopback ports; yields the control address."""
    d = tmp_path_factory.mktemp("qserver")
    redis_port, control, info = free_port(), free_port(), free_port()
    redis = subprocess.Popen(
        [REDIS, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],  # type: ignore[list-item]
        cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    addr = f"tcp://127.0.0.1:{control}"
    manager = subprocess.Popen(
        [RE_MANAGER, "--redis-addr", f"127.0.0.1:{redis_port}", "--zmq-control-addr", addr,
         "--zmq-info-addr", f"tcp://127.0.0.1:{info}", "--zmq-publish-console", "OFF",
         "--console-output", "OFF", "--quiet"],
        cwd=d, stdout=(d / "manager.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        asyncio.run(_open_environment(addr))
        yield addr
    finally:
        manager.terminate()
        redis.terminate()
        for p in (manager, redis):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


async def _open_environment(addr: str) -> None:
    from bluesky_queueserver_api.zmq.aio import REManagerAPI

    api = REManagerAPI(zmq_control_addr=addr, request_fail_exceptions=False, timeout_recv=2.0)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                await api.status()
                break
            except TimeoutError:
                assert time.monotonic() < deadline, "RE Manager did not come up"
        assert (await api.environment_open())["success"]
        await api.wait_for_idle(timeout=60)
    finally:
        await api.close()


@pytest.fixture
async def api(re_manager: str) -> AsyncIterator[object]:
    from bluesky_queueserver_api.zmq.aio import REManagerAPI

    before = asyncio.all_tasks()
    client = REManagerAPI(
        zmq_control_addr=re_manager, request_fail_exceptions=False, status_polling_period=0.1
    )
    own_tasks = asyncio.all_tasks() - before
    try:
        yield client
        status = await client.status()
        if status["re_state"] == "paused" or status["manager_state"] == "paused":
            reply = await client.re_abort()
            assert reply["success"], reply
        elif status["manager_state"] == "executing_queue":
            await client.queue_stop()
            await client.re_pause(option="immediate")
            await client.wait_for_idle_or_paused(timeout=30)
            await client.re_abort()
        await client.wait_for_idle(timeout=30)
        await client.queue_clear()
    finally:
        await client.close()
        await asyncio.wait(own_tasks, timeout=2.0)  # the client's status pollers end after close()


def alarm_manager(tmp_path: Path, settings: QueueServerSettings) -> tuple[AlarmManager, QueueServerAdapter]:
    journal = tmp_path / "alarms.jsonl"
    adapter = QueueServerAdapter(settings, JournalSink(journal))
    return AlarmManager(JournalSink(journal), [adapter]), adapter


def raise_alarm(manager: AlarmManager, rule: str = "runaway", severity: Severity = Severity.MAJOR) -> None:
    manager.apply(Verdict(f"{rule}:frames", severity, 0.93, 0.8, f"{rule} score 0.93 above MAJOR 0.8"))


async def settle(adapter: QueueServerAdapter) -> None:
    await asyncio.wait_for(asyncio.gather(*list(adapter._tasks)), 10)


def journal_actions(tmp_path: Path) -> list[dict]:  # type: ignore[type-arg]
    lines = (tmp_path / "alarms.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("record") == "action"]


@pytest.mark.parametrize("option", ["deferred", "immediate"])
async def test_alarm_pauses_a_running_plan(re_manager: str, api, tmp_path: Path, option: str) -> None:  # type: ignore[no-untyped-def]
    from bluesky_queueserver_api import BPlan

    assert (await api.item_add(BPlan("count", ["det1"], num=200, delay=0.1)))["success"]
    assert (await api.queue_start())["success"]
    deadline = time.monotonic() + 20
    while (await api.status())["re_state"] != "running":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    manager, adapter = alarm_manager(
        tmp_path, QueueServerSettings(enabled=True, zmq_control_addr=re_manager, action=f"pause_{option}",
                                      rules=("runaway",))
    )  # fmt: skip
    raise_alarm(manager)
    await settle(adapter)
    deadline = time.monotonic() + 20
    while (await api.status())["re_state"] != "paused":
        assert time.monotonic() < deadline, "the RE never paused"
        await asyncio.sleep(0.1)
    assert adapter.outcomes == {"ok": 1}
    (record,) = journal_actions(tmp_path)
    assert record["action"] == "re_pause" and record["option"] == option
    assert record["reply"]["success"] is True and record["alarm"] == "runaway:frames"
    assert [e.transition for e in read_journal(tmp_path / "alarms.jsonl")] == ["raise"]  # alarms unaffected
    await adapter.stop()


async def test_alarm_queues_a_follow_up_plan(re_manager: str, api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = QueueServerSettings(
        enabled=True, zmq_control_addr=re_manager, action="queue_plan", plan_name="count",
        plan_kwargs={"detectors": ("det1",), "num": 3}, queue_position="front",
    )  # fmt: skip
    manager, adapter = alarm_manager(tmp_path, settings)
    raise_alarm(manager, severity=Severity.MINOR)  # below min_severity MAJOR: nothing sent
    raise_alarm(manager, rule="other", severity=Severity.MAJOR)  # any rule (rules = ())
    await settle(adapter)
    queue = await api.queue_get()
    assert [(i["name"], i["kwargs"]) for i in queue["items"]] == [
        ("count", {"detectors": ["det1"], "num": 3})
    ]
    assert queue["items"][0]["user"] == "operando-monitor"
    (record,) = journal_actions(tmp_path)
    assert record["action"] == "item_add" and record["outcome"] == "ok" and record["rule"] == "other"
    await adapter.stop()


async def test_missing_re_manager_is_one_log_line_and_a_counter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = QueueServerSettings(
        enabled=True, zmq_control_addr=f"tcp://127.0.0.1:{free_port()}", timeout_s=0.5
    )
    manager, adapter = alarm_manager(tmp_path, settings)
    with caplog.at_level(logging.ERROR, logger="monitor.alerts.queueserver"):
        raise_alarm(manager)
        await settle(adapter)
    assert adapter.outcomes == {"unreachable": 1}
    assert len([r for r in caplog.records if r.name == "monitor.alerts.queueserver"]) == 1
    (record,) = journal_actions(tmp_path)
    assert record["outcome"] == "unreachable" and "error" in record
    await adapter.stop()
