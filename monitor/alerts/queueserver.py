"""bluesky-queueserver adapter: on a chosen alarm, ask the RE Manager to pause or queue a plan.

An alarm sink: when a configured rule raises (or escalates to) at least ``min_severity``, it
sends one request to the RE Manager over its 0MQ control socket through
``bluesky_queueserver_api.zmq.aio.REManagerAPI``:

- ``pause_deferred`` / ``pause_immediate``: ``re_pause(option="deferred"|"immediate")``
  (deferred: at the next checkpoint, the plan's own resume logic stays valid);
- ``queue_plan``: ``item_add(BPlan(plan_name, **plan_kwargs), pos=queue_position)`` (e.g. a
  slower-rate follow-up scan, or a plan that lowers the current).

The request runs as a task on the daemon's loop (the alarm path never waits for it). The action
and the manager's reply (or the error) are appended to the alarm journal as
``{"record": "action", ...}`` lines and counted in ``outcomes`` (``ok``, ``refused``,
``unreachable``, ``error``). A missing or failing RE Manager is one log line per alarm, never a
crash. The suspender path (``<prefix>TRIP``) is independent and unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from typing import Any

from monitor.alerts.model import AlarmEvent, Severity
from monitor.alerts.sinks import JournalSink
from monitor.config import QueueServerSettings

log = logging.getLogger("monitor.alerts.queueserver")

TRIGGERS = frozenset({"raise", "escalate"})


class QueueServerAdapter:
    """Alarm sink that turns chosen alarms into RE Manager requests."""

    name = "queueserver"

    def __init__(self, settings: QueueServerSettings, journal: JournalSink | None = None) -> None:
        self.settings = settings
        self.outcomes: Counter[str] = Counter()
        self.records: deque[dict[str, object]] = deque(maxlen=100)
        """The latest action records (all of them are in the journal)."""
        self._journal = journal
        self._api: Any = None
        self._api_tasks: set[asyncio.Task[Any]] = set()
        self._tasks: set[asyncio.Task[dict[str, object]]] = set()
        self._min = Severity[settings.min_severity]

    def wants(self, event: AlarmEvent) -> bool:
        a = event.alarm
        rules = self.settings.rules
        return event.transition in TRIGGERS and a.severity >= self._min and (not rules or a.rule in rules)

    def emit(self, event: AlarmEvent) -> None:
        if not self.wants(event):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.outcomes["no_loop"] += 1
            log.error("queueserver: alarm %s outside the event loop; no request sent", event.alarm.id)
            return
        task = loop.create_task(self.act(event), name=f"queueserver:{event.alarm.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _client(self) -> Any:
        if self._api is None:
            from bluesky_queueserver_api.zmq.aio import REManagerAPI  # only when configured

            s = self.settings
            before = asyncio.all_tasks()
            self._api = REManagerAPI(
                zmq_control_addr=s.zmq_control_addr,
                zmq_public_key=s.zmq_public_key or None,
                timeout_recv=s.timeout_s,
                timeout_send=min(0.5, s.timeout_s),
                request_fail_exceptions=False,
                status_polling_period=0.1,
            )
            # The client starts two status-polling tasks of its own; they end after close().
            self._api_tasks = asyncio.all_tasks() - before
            self._api.user = s.user
            self._api.user_group = s.user_group
        return self._api

    async def _request(self) -> tuple[str, dict[str, object]]:
        s = self.settings
        api = self._client()
        if s.action == "queue_plan":
            from bluesky_queueserver_api import BPlan

            kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in s.plan_kwargs.items()}
            plan = BPlan(s.plan_name, **kwargs)
            reply = await api.item_add(plan, pos=s.queue_position)
            detail: dict[str, object] = {"plan": s.plan_name, "kwargs": kwargs, "pos": s.queue_position}
            return "item_add", detail | {"reply": _plain(reply)}
        option = "immediate" if s.action == "pause_immediate" else "deferred"
        reply = await api.re_pause(option=option)
        return "re_pause", {"option": option, "reply": _plain(reply)}

    async def act(self, event: AlarmEvent) -> dict[str, object]:
        """Send the configured request for ``event``; record and return what happened."""
        a = event.alarm
        record: dict[str, object] = {
            "record": "action",
            "adapter": self.name,
            "t": time.time(),
            "alarm": a.id,
            "rule": a.rule,
            "severity": a.severity.name,
            "control_addr": self.settings.zmq_control_addr,
        }
        try:
            action, detail = await asyncio.wait_for(self._request(), self.settings.timeout_s + 1.0)
            record |= {"action": action, **detail}
            reply = detail.get("reply")
            ok = isinstance(reply, dict) and bool(reply.get("success"))
            outcome = "ok" if ok else "refused"
            if not ok:
                msg = reply.get("msg", "") if isinstance(reply, dict) else reply
                log.warning("queueserver: %s for alarm %s refused by the RE Manager: %s", action, a.id, msg)
            else:
                log.warning("queueserver: %s sent for alarm %s (RE Manager accepted)", action, a.id)
        except (TimeoutError, OSError) as exc:  # RequestTimeoutError is a TimeoutError
            outcome = "unreachable"
            record["error"] = f"{type(exc).__name__}: {exc}"
            log.error(
                "queueserver: RE Manager at %s did not answer (%s); alarm %s not acted on",
                self.settings.zmq_control_addr, exc or type(exc).__name__, a.id,
            )  # fmt: skip
        except ImportError as exc:
            outcome = "error"
            record["error"] = f"bluesky-queueserver-api is not installed: {exc}"
            log.error("queueserver: %s (pip install bluesky-queueserver-api)", record["error"])
        except (ValueError, TypeError, KeyError, RuntimeError) as exc:  # API parameter / protocol errors
            outcome = "error"
            record["error"] = f"{type(exc).__name__}: {exc}"
            log.error("queueserver: request for alarm %s failed: %s", a.id, record["error"])
        record["outcome"] = outcome
        self.outcomes[outcome] += 1
        self.records.append(record)
        if self._journal is not None:
            try:
                self._journal.write_record(record)
            except OSError as exc:
                self.outcomes["journal_error"] += 1
                log.error("queueserver: cannot journal the action for %s: %s", a.id, exc)
        return record

    async def stop(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.settings.timeout_s + 1.5)
        for t in self._tasks:
            t.cancel()
        if self._api is not None:
            await self._api.close()
            if self._api_tasks:
                await asyncio.wait(self._api_tasks, timeout=2.0)
            self._api = None
        if self._journal is not None:
            self._journal.close()

    def close(self) -> None:
        """AlarmSink protocol (the manager closes sinks); async cleanup happens in :meth:`stop`."""


def _plain(reply: object) -> dict[str, object]:
    """The manager's reply as JSON-safe scalars (it may carry nested item dicts)."""
    if not isinstance(reply, dict):
        return {"raw": str(reply)[:200]}
    out: dict[str, object] = {}
    for k, v in reply.items():
        out[str(k)] = v if isinstance(v, str | int | float | bool) or v is None else str(v)[:200]
    return out
