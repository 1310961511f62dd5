"""Simulated TXM-XANES detector: energy scans of 460×460 frames over array-1.0 PUSH.

Each scan is one series (``series-start`` … frames … ``series-end``); every frame header
carries ``energy_eV`` and, in ``ndattr``, ``scan``, ``scan_point`` and ``scan_points`` so the
alignment pipeline knows which frame ends a scan. The sample keeps moving across scans
(drift, jitter, a growing non-rigid deformation, strong in every other scene) and the scene
is regenerated every ``scans_per_scene`` scans. Frames are rendered in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import numpy as np
import zmq
import zmq.asyncio

from monitor.aio import poll_async, sleep_unless
from monitor.config import PipelineSettings, RuleSettings, SourceSettings
from monitor.sim.array10 import encode_array10, series_end, series_start
from monitor.sim.demo import DemoPart
from monitor.sim.ports import free_port, open_send_socket

log = logging.getLogger("monitor.sim.txm")

STREAM = "txm"
RATE_HZ = 4.0
SHAPE = 460
NONRIGID_PX = (3.0, 16.0)


def scan_frames(
    seed: int = 7, scans_per_scene: int = 3, energy_stride: int = 1
) -> Iterator[tuple[int, int, int, float, np.ndarray]]:
    """Endless (scene, scan, point, energy, uint16 frame) tuples; deterministic per seed."""
    from engines.synth.txm_xanes import TxmConfig, generate

    scene = 0
    while True:
        energies = TxmConfig().energies[::energy_stride]
        # Every other scene deforms strongly, so the non-rigid-rate alarm has something to see.
        strength = NONRIGID_PX[scene % len(NONRIGID_PX)]
        cfg = TxmConfig(energies=tuple(energies), scans=scans_per_scene, nonrigid_px=strength)
        seq = generate(seed + scene, cfg)
        per = len(energies)
        for t in range(len(seq.frames)):
            frame = np.clip(seq.frames[t], 0, 65535).astype(np.uint16)
            yield scene, int(seq.scan[t]) + scene * scans_per_scene, t % per, float(seq.energies[t]), frame
        scene += 1


async def simulate_txm(
    endpoint: str,
    stop: asyncio.Event,
    *,
    rate_hz: float = RATE_HZ,
    seed: int = 7,
    count: int | None = None,
    energy_stride: int = 1,
    scans_per_scene: int = 3,
) -> int:
    """Bind PUSH at ``endpoint``, stream scans until ``stop`` (or ``count`` frames); return frames sent."""
    sock = open_send_socket(endpoint, sndhwm=20)
    gen = scan_frames(seed, scans_per_scene, energy_stride)
    sent = 0
    current: str | None = None
    n_points = None
    try:
        t0 = time.monotonic()
        while count is None or sent < count:
            if stop.is_set():
                break
            scene, scan, point, energy, img = await asyncio.to_thread(next, gen)
            if n_points is None:
                from engines.synth.txm_xanes import TxmConfig

                n_points = len(TxmConfig().energies[::energy_stride])
            series = f"txm-scan-{scan:04d}"
            msgs = []
            if series != current:
                if current is not None:
                    msgs.append(series_end(current))
                msgs.append(series_start(series))
                current = series
            meta = {"energy_eV": energy, "scan": scan, "scan_point": point, "scan_points": n_points}
            meta["sample"] = scene
            msgs.append(encode_array10(img, frame=sent, stream=STREAM, series=series, meta=meta))
            delay = t0 + sent / rate_hz - time.monotonic() if rate_hz > 0 else 0
            if delay > 0 and await sleep_unless(stop, delay):
                break
            for msg in msgs:
                while not await poll_async(sock, 100, zmq.POLLOUT):
                    if stop.is_set():
                        return sent
                await sock.send_multipart(msg)
            sent += 1
        if current is not None:
            await sock.send_multipart(series_end(current), flags=zmq.NOBLOCK)
    except zmq.Again:
        log.info("txm simulator: receiver gone before series end")
    finally:
        sock.close()
    return sent


def demo_part() -> DemoPart:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    source = SourceSettings(
        name="txm", kind="array10", endpoint=endpoint, stream=STREAM, max_frame_bytes=64 << 20
    )
    pipeline = PipelineSettings(
        name="alignment",
        kind="alignment",
        streams=(STREAM,),
        queue_size=16,
        threads=2,
        max_latency_ms=200,  # + one frame's compute: p99 receive -> result within 500 ms
        options={"max_particles": 16},
    )
    rules = (
        RuleSettings(
            name="nonrigid_rate",
            kind="threshold",
            pipeline="alignment",
            metric="nonrigid_rate_px_s",
            minor=0.4,
            major=1.0,
            hysteresis=0.1,
            min_count=3,
        ),
        RuleSettings(
            name="particle_lost",
            kind="threshold",
            pipeline="alignment",
            metric="lost_now",
            minor=0.5,
            hysteresis=0.25,
            min_count=2,
        ),
        RuleSettings(name="txm_silent", kind="silence", source="txm", timeout_s=10.0),
    )

    async def simulate(stop: asyncio.Event) -> int:
        return await simulate_txm(endpoint, stop)

    return DemoPart(
        name="alignment",
        sources=(source,),
        pipelines=(pipeline,),
        rules=rules,
        simulate=simulate,
        describe=f"TXM-XANES scans {SHAPE}x{SHAPE} uint16 at {RATE_HZ:g} Hz on {endpoint} ({STREAM!r})",
    )
