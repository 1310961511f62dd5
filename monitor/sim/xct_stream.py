"""Simulated operando XCT: a Li | polymer | Li cell scanned again and again while dendrites grow.

Each scan is one synthetic volume (``engines.synth.xct``: consecutive slices of one cell, so the
dendrites are 3-D consistent), streamed slice by slice as array-1.0 over PUSH; scan ``k`` has
growth level ``min(1, GROWTH0 + k·GROWTH_STEP)`` and is its own series (``xct-<seed>-scan<k>``),
so the pipeline's cumulative volume restarts per scan and ``dendrite_vf_growth`` compares each
slice with the same slice of the previous scan. Headers carry ``slice_z`` and ``cycle`` (the
scan number) and, in ``ndattr``, the ground truth of the slice: ``true_penetration`` and
``true_dendrite_gap_fraction``. Seeds start at 800 000 (never used in training).
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
from monitor.sim.array10 import encode_array10, series_end, series_start
from monitor.sim.demo import DemoPart
from monitor.sim.ports import free_port, open_send_socket

log = logging.getLogger("monitor.sim.xct")

STREAM = "xct"
RATE_HZ = 4.0
SHAPE = (512, 512)
DEPTH = 24
SEED_BASE = 800_000
GROWTH0 = 0.3
GROWTH_STEP = 0.1
SCANS_PER_CELL = 8


@dataclass(frozen=True)
class XctSlice:
    series: str
    z: int
    scan: int
    image: np.ndarray  # uint16
    meta: dict[str, float | int | str]
    first: bool
    last: bool


def xct_slices(
    seed_base: int = SEED_BASE, shape: tuple[int, int] = SHAPE, depth: int = DEPTH, scans: int | None = None
) -> Iterator[XctSlice]:
    """Slices of consecutive scans; a new cell (seed) after every ``SCANS_PER_CELL`` scans."""
    from engines.synth.xct import labels_at, make_cell, render, to_counts
    from monitor.analysis.morphology import slice_morphology

    k = 0
    while scans is None or k < scans:
        seed = seed_base + k // SCANS_PER_CELL
        cell = make_cell(shape, seed, depth=depth)
        growth = min(1.0, GROWTH0 + (k % SCANS_PER_CELL) * GROWTH_STEP)
        series = f"xct-{seed}-scan{k}"
        for z in range(depth):
            lab = labels_at(cell, float(z), growth)
            img = to_counts(render(cell, lab, float(z)))
            truth = slice_morphology(lab)
            meta: dict[str, float | int | str] = {
                "slice_z": z,
                "cycle": k,
                "growth": round(growth, 3),
                "true_penetration": round(truth.penetration, 4),
                "true_dendrite_gap_fraction": round(truth.dendrite_gap_fraction, 5),
            }
            yield XctSlice(series, z, k, img, meta, z == 0, z == depth - 1)
        log.info("xct scan %d (cell %d, growth %.2f) streamed", k, seed, growth)
        k += 1


async def simulate_xct(
    endpoint: str,
    stop: asyncio.Event,
    *,
    rate_hz: float = RATE_HZ,
    seed_base: int = SEED_BASE,
    shape: tuple[int, int] = SHAPE,
    depth: int = DEPTH,
    scans: int | None = None,
    mode: str = "bind",
) -> int:
    """PUSH slices to ``endpoint`` until ``stop`` (or ``scans`` scans); returns slices sent."""
    sock = open_send_socket(endpoint, mode=mode, linger_ms=2000)
    gen = xct_slices(seed_base, shape, depth, scans)
    sent = 0
    try:
        t0 = time.monotonic()
        while not stop.is_set():
            item = await asyncio.to_thread(next, gen, None)  # rendering off the event loop
            if item is None:
                break
            msgs = [series_start(item.series)] if item.first else []
            msgs.append(
                encode_array10(item.image, frame=item.z, stream=STREAM, series=item.series, meta=item.meta)
            )
            if item.last:
                msgs.append(series_end(item.series))
            delay = t0 + sent / rate_hz - time.monotonic() if rate_hz > 0 else 0.0
            if delay < -1.0:  # fell behind: rebase instead of bursting
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


def rules(pipeline: str = "segmentation") -> tuple[RuleSettings, ...]:
    """Short-circuit risk (penetration) and dendrite volume-fraction growth between scans."""
    return (
        RuleSettings(
            name="dendrite_penetration",
            kind="threshold",
            pipeline=pipeline,
            metric="penetration",
            minor=0.5,
            major=0.8,
            hysteresis=0.05,
            min_count=2,
        ),
        RuleSettings(
            name="dendrite_growth",
            kind="threshold",
            pipeline=pipeline,
            metric="dendrite_vf_growth",
            minor=0.004,
            major=0.01,
            hysteresis=0.002,
            min_count=3,
        ),
    )


def demo_part() -> DemoPart:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    source = SourceSettings(name="xct", kind="array10", endpoint=endpoint, stream=STREAM)
    pipeline = PipelineSettings(
        name="segmentation",
        kind="segmentation",
        streams=(STREAM,),
        queue_size=16,
        threads=2,
        max_latency_ms=200,  # + one slice's compute: p99 receive -> result within 500 ms
        options={"volume_depth": DEPTH},
    )

    async def simulate(stop: asyncio.Event) -> int:
        return await simulate_xct(endpoint, stop)

    return DemoPart(
        name="segmentation",
        sources=(source,),
        pipelines=(pipeline,),
        rules=(
            *rules("segmentation"),
            RuleSettings(name="xct_silent", kind="silence", source="xct", timeout_s=10.0),
        ),
        simulate=simulate,
        describe=f"operando XCT scans ({DEPTH} slices of {SHAPE[0]}x{SHAPE[1]} uint16 per scan) at "
        f"{RATE_HZ:g} slices/s on {endpoint} (stream {STREAM!r})",
    )
