"""`operando-monitor demo`: a simulated detector, the daemon and the dashboard on one machine.

The simulated beam has periodic saturation bursts (so the ``saturation`` alarm raises and
clears), and now and then the detector sends a malformed message (so the dashboard shows
rejections with reasons). Pipeline issues extend this with their own simulated streams.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import logging
import secrets
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from monitor.aio import poll_async, sleep_unless
from monitor.config import (
    AlertSettings,
    DaemonSettings,
    DashboardSettings,
    MonitorConfig,
    PipelineSettings,
    RuleSettings,
    SourceSettings,
    StoreSettings,
)
from monitor.sim.array10 import encode_array10, series_end, series_start, synthetic_frames
from monitor.sim.ports import free_port, open_send_socket

log = logging.getLogger("monitor.demo")

FRAME_SHAPE = (512, 512)
RATE_HZ = 20.0
BURST_PERIOD_S = 20.0
BURST_LENGTH_S = 5.0
BAD_EVERY = 150


@dataclass(frozen=True)
class DemoPart:
    """One pipeline's contribution to the demo: its simulated stream, pipeline and alarm rules."""

    name: str
    sources: tuple[SourceSettings, ...]
    pipelines: tuple[PipelineSettings, ...]
    rules: tuple[RuleSettings, ...]
    simulate: Callable[[asyncio.Event], Coroutine[Any, Any, int]]
    """Runs the simulated detector until the event is set; returns the frames it sent."""
    describe: str = ""


DEMO_PARTS: dict[str, str] = {
    "early_warning": "monitor.sim.growth_stream:demo_part",
    "segmentation": "monitor.sim.xct_stream:demo_part",
    "alignment": "monitor.sim.txm_stream:demo_part",
}
"""name → ``module:factory``; ``factory()`` returns a :class:`DemoPart` (ports from ``free_port``)."""


def load_demo_parts(names: list[str] | None = None) -> list[DemoPart]:
    parts: list[DemoPart] = []
    for name, target in DEMO_PARTS.items():
        if names is not None and name not in names:
            continue
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            log.warning("demo part %s is not available: %s", name, exc)
            continue
        part = getattr(module, attr)()
        problem = _unavailable(part)
        if problem:
            log.warning("demo part %s left out: %s", name, problem)
            continue
        parts.append(part)
    return parts


def _unavailable(part: DemoPart) -> str:
    """Why a part's pipelines cannot be built here (e.g. its model is not shipped yet), or ''."""
    from engines.errors import EngineError
    from monitor.errors import MonitorError
    from monitor.pipelines.registry import build_pipeline

    for settings in part.pipelines:
        try:
            build_pipeline(settings)
        except (MonitorError, EngineError, OSError, ValueError) as exc:
            return f"pipeline {settings.name}: {exc}"
    return ""


def with_parts(cfg: MonitorConfig, parts: list[DemoPart]) -> MonitorConfig:
    return dataclasses.replace(
        cfg,
        sources=cfg.sources + tuple(s for p in parts for s in p.sources),
        pipelines=cfg.pipelines + tuple(q for p in parts for q in p.pipelines),
        alerts=dataclasses.replace(
            cfg.alerts, rules=cfg.alerts.rules + tuple(r for p in parts for r in p.rules)
        ),
    )


def demo_config(
    det_endpoint: str, alarm_endpoint: str, port: int, out_dir: Path, token: str
) -> MonitorConfig:
    return MonitorConfig(
        run="demo",
        daemon=DaemonSettings(shutdown_timeout_s=10.0),
        sources=(SourceSettings(name="det1", kind="array10", endpoint=det_endpoint),),
        pipelines=(
            PipelineSettings(name="stats", kind="frame_stats", streams=("frames",), max_latency_ms=300),
        ),
        store=StoreSettings(directory=str(out_dir)),
        alerts=AlertSettings(
            zmq_pub=alarm_endpoint,
            rules=(
                RuleSettings(
                    name="saturation",
                    kind="threshold",
                    pipeline="stats",
                    metric="saturated_fraction",
                    minor=0.002,
                    major=0.01,
                    hysteresis=0.001,
                    min_count=3,
                ),
                RuleSettings(name="det1_silent", kind="silence", source="det1", timeout_s=5.0),
            ),
        ),
        dashboard=DashboardSettings(port=port, operator_token=token),
    )


def beam(shape: tuple[int, int], seed: int = 0) -> Iterator[np.ndarray]:
    """Synthetic frames with saturation bursts: a growing saturated region for a few seconds."""
    frames = synthetic_frames(shape, "uint16", seed=seed)
    rng = np.random.default_rng(seed + 1)
    t0 = time.monotonic()
    for img in frames:
        phase = (time.monotonic() - t0) % BURST_PERIOD_S
        if phase > BURST_PERIOD_S - BURST_LENGTH_S:
            frac = 0.02 * (phase - (BURST_PERIOD_S - BURST_LENGTH_S)) / BURST_LENGTH_S
            n = int(frac * img.size)
            flat = img.reshape(-1)
            flat[rng.integers(0, img.size, n)] = np.iinfo(np.uint16).max
        yield img


def malformed(i: int) -> list[bytes]:
    """One of a few kinds of broken messages, as real detectors occasionally send."""
    kind = (i // BAD_EVERY) % 3
    if kind == 0:
        return [b"{not json", b"\x00" * 16]
    if kind == 1:
        header = {"htype": "array-1.0", "type": "uint16", "shape": [512, 512], "frame": i}
        return [json.dumps(header).encode(), b"\x00" * 1000]
    return [json.dumps({"htype": "array-1.0", "type": "complex64", "shape": [2, 2]}).encode(), b"\x00" * 32]


async def simulate(endpoint: str, stop: asyncio.Event) -> int:
    sock = open_send_socket(endpoint)
    series = f"demo-{time.strftime('%Y%m%dT%H%M%S')}"
    sent = 0
    try:
        await sock.send_multipart(series_start(series))
        t0 = time.monotonic()
        for i, img in enumerate(beam(FRAME_SHAPE)):
            if stop.is_set():
                break
            delay = t0 + i / RATE_HZ - time.monotonic()
            if delay > 0 and await sleep_unless(stop, delay):
                break
            msgs = [malformed(i)] if i and i % BAD_EVERY == 0 else []
            msgs.append(encode_array10(img, frame=i, stream="frames", series=series))
            for msg in msgs:
                while not await poll_async(sock, 100, zmq.POLLOUT):  # receiver slow or gone
                    if stop.is_set():
                        return sent
                await sock.send_multipart(msg)
            sent += 1
        await sock.send_multipart(series_end(series), flags=zmq.NOBLOCK)
    except zmq.Again:
        log.info("demo simulator: receiver gone before series end")
    finally:
        sock.close()
    return sent


async def run_demo(duration: float | None, port: int, out_dir: Path, parts: list[str] | None = None) -> int:
    from monitor.daemon import Daemon
    from monitor.display import load_display

    det = f"tcp://127.0.0.1:{free_port()}"
    alarms = f"tcp://127.0.0.1:{free_port()}"
    token = secrets.token_urlsafe(6)
    demo_parts = load_demo_parts(parts)
    cfg = with_parts(demo_config(det, alarms, port, out_dir, token), demo_parts)
    stop_sim = asyncio.Event()
    sim = asyncio.create_task(simulate(det, stop_sim), name="demo-simulator")
    part_sims = [asyncio.create_task(p.simulate(stop_sim), name=f"demo-{p.name}") for p in demo_parts]
    daemon = Daemon(cfg, config_text="# generated by operando-monitor demo\n", display=load_display("bokeh"))
    daemon.install_signal_handlers()
    serve = asyncio.create_task(daemon.serve(), name="daemon")
    await daemon.started.wait()
    print(
        f"\noperando-monitor demo\n  dashboard: {daemon.dashboard_url}\n  operator token: {token}\n"
        f"  detector: {det} (array-1.0, {FRAME_SHAPE[0]}x{FRAME_SHAPE[1]} uint16 at {RATE_HZ:g} Hz)\n"
        + "".join(f"  {p.name}: {p.describe}\n" for p in demo_parts)
        + f"  alarms PUB: {alarms}\n  results: {daemon.store_path}\n  journal: {daemon.journal_path}\n"
        + (f"  exits after {duration:g} s\n" if duration else "  Ctrl-C to stop\n"),
        file=sys.stderr,
        flush=True,
    )
    if duration:
        try:
            await asyncio.wait_for(asyncio.shield(serve), duration)
        except TimeoutError:
            stop_sim.set()
            daemon.request_exit()
    await serve
    stop_sim.set()
    sent = await sim
    for task in part_sims:
        sent += await task
    t = daemon.telemetry
    print(
        f"demo finished: {sent} frames sent, {sum(t.received.values())} received, "
        f"{sum(t.processed.values())} processed, {sum(t.skipped.values())} skipped, "
        f"{sum(t.rejected.values())} rejected; results in {daemon.store_path}",
        file=sys.stderr,
    )
    return 0
