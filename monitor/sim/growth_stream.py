"""Simulated electrodeposition imaging: growth runs streamed as array-1.0 over PUSH.

Runs alternate between ones that turn dendritic part-way (constant Da 0.07–0.14, or a current
ramp from Da ≈ 0.015 to ≈ 0.35) and ones that stay compact (Da ≈ 0.01–0.02); each run is its
own series (``growth-run-<seed>``), so the early-warning window resets. Seeds start at 500 000
(never used in training). Each frame's header carries the ground truth in ``ndattr``: ``da``,
``psi`` (order parameter), ``run_seed``, and at the run's last frame ``t_star`` (the transition
frame, -1 if none; it needs the whole run).
Frames are 128×128 uint16, rendered in a worker thread so the rate holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import zmq
import zmq.asyncio

from monitor.aio import poll_async, sleep_unless
from monitor.config import PipelineSettings, RuleSettings, SourceSettings
from monitor.pipelines.early_warning_rule import rule_settings
from monitor.sim.array10 import encode_array10, series_end, series_start
from monitor.sim.demo import DemoPart
from monitor.sim.ports import free_port, open_send_socket

log = logging.getLogger("monitor.sim.growth")

STREAM = "growth"
RATE_HZ = 10.0
SEED_BASE = 500_000
FULL_SCALE = 40_000.0


@dataclass(frozen=True)
class DemoRun:
    seed: int
    da_start: float
    da_end: float | None = None


def demo_runs(seed_base: int = SEED_BASE) -> Iterator[DemoRun]:
    """Endless deterministic run list: dendritic, compact, ramp, dendritic, compact, …"""
    rng = np.random.default_rng(seed_base)
    i = 0
    while True:
        kind = i % 4
        seed = seed_base + i
        if kind in (0, 3):
            yield DemoRun(seed, float(rng.uniform(0.07, 0.14)))
        elif kind == 1:
            yield DemoRun(seed, float(rng.uniform(0.01, 0.02)))
        else:
            yield DemoRun(seed, float(rng.uniform(0.01, 0.02)), float(rng.uniform(0.3, 0.4)))
        i += 1


@dataclass(frozen=True)
class GrowthFrame:
    run: DemoRun
    index: int
    image: np.ndarray  # uint16
    meta: dict[str, float | int | str]
    last: bool


def growth_frames(runs: Iterator[DemoRun]) -> Iterator[GrowthFrame]:
    """Frames of consecutive runs, driven frame by frame through :class:`GrowthSim`."""
    from engines.synth.growth import GrowthSim, RunSpec

    for run in runs:
        spec = RunSpec(run.seed, run.da_start, run.da_end)
        sim = GrowthSim(run.seed, spec.params)
        n = spec.params.n_frames
        for t in range(n):
            img, truth = sim.step(spec.da_at(t))
            last = sim.done or t == n - 1
            meta: dict[str, float | int | str] = {
                "da": truth.da,
                "psi": round(truth.psi, 4),
                "run_seed": run.seed,
            }
            if last:
                meta["t_star"] = sim.transition_frame()
            frame = np.clip(img * FULL_SCALE, 0, 65535).astype(np.uint16)
            yield GrowthFrame(run, t, frame, meta, last)
            if last:
                log.info("growth run %d done: %d frames, t* = %s", run.seed, t + 1, meta["t_star"])
                break


async def simulate_growth(
    endpoint: str,
    stop: asyncio.Event,
    *,
    rate_hz: float = RATE_HZ,
    seed_base: int = SEED_BASE,
    runs: int | None = None,
    mode: str = "bind",
) -> int:
    """PUSH growth runs to ``endpoint`` until ``stop`` (or ``runs`` runs); returns frames sent."""
    sock = open_send_socket(endpoint, mode=mode)
    it = demo_runs(seed_base)
    if runs is not None:
        it = (r for _, r in zip(range(runs), it, strict=False))
    gen = growth_frames(it)
    sent = 0
    try:
        t0 = time.monotonic()
        while not stop.is_set():
            item = await asyncio.to_thread(next, gen, None)
            if item is None:
                break
            series = f"growth-run-{item.run.seed}"
            msgs = [series_start(series)] if item.index == 0 else []
            msgs.append(
                encode_array10(item.image, frame=item.index, stream=STREAM, series=series, meta=item.meta)
            )
            if item.last:
                msgs.append(series_end(series))
            delay = t0 + sent / rate_hz - time.monotonic() if rate_hz > 0 else 0.0
            if delay < -1.0:  # fell behind (slow rendering): rebase instead of bursting
                t0 = time.monotonic() - sent / rate_hz
            elif delay > 0 and await sleep_unless(stop, delay):
                break
            for msg in msgs:
                while not await poll_async(sock, 100, zmq.POLLOUT):
                    if stop.is_set():
                        return sent
                await sock.send_multipart(msg)
            sent += 1
    finally:
        sock.close()
    return sent


def demo_part() -> DemoPart:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    source = SourceSettings(name="growth", kind="array10", endpoint=endpoint, stream=STREAM)
    pipeline = PipelineSettings(
        name="early_warning", kind="early_warning", streams=(STREAM,), queue_size=32, max_latency_ms=300
    )
    rules = (
        *rule_settings("dendrite_risk", "early_warning"),  # the shipped model's calibrated rule
        RuleSettings(name="growth_silent", kind="silence", source="growth", timeout_s=10.0),
    )

    async def simulate(stop: asyncio.Event) -> int:
        return await simulate_growth(endpoint, stop)

    return DemoPart(
        name="early_warning",
        sources=(source,),
        pipelines=(pipeline,),
        rules=rules,
        simulate=simulate,
        describe=f"electrodeposition growth runs 128x128 uint16 at {RATE_HZ:g} Hz on {endpoint} "
        f"(stream {STREAM!r})",
    )
