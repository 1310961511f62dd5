"""``operando-monitor bench scale``: what Ray replicas buy on this machine (issue 18).

* frames/s of a CPU-bound ONNX pipeline (segmentation, ``xct_unet_fast``, 1 thread per replica)
  in-process vs on Ray with 1 and 2 replicas, driven through the real
  :class:`~monitor.cluster.worker.RayPipelineWorker` (queue, routing, result path), with
  ``frames_sent`` / ``frames_accounted`` per run;
* the per-frame latency the Ray hop adds (round trip minus actor compute) for 512² and 2048²
  uint16 frames through a trivial pipeline (``frame_stats``), one frame in flight;
* the replicas, GPUs and network an EIGER2 16M at 133 frames/s would need, from those rates.

The machine is shared: the load average and CPU model are recorded with the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from monitor.config import ClusterSettings, PipelineSettings
from monitor.frames import Disposition, Frame
from monitor.telemetry import Telemetry

EIGER2_16M = (4148, 4362)
EIGER2_16M_FPS = 133.0
SEG = PipelineSettings(
    name="seg", kind="segmentation", model="xct_unet_fast", threads=1, backend_precision="fp32", num_cpus=1
)
STATS = PipelineSettings(name="stats", kind="frame_stats", num_cpus=0.5)


def _frames(n: int, side: int, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 4000, size=(side, side), dtype=np.uint16)
    now = time.time()
    return [Frame("frames", "bench", "s", i, np.roll(base, i, axis=0), now, now, seq=i + 1) for i in range(n)]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def in_process_rate(side: int, seconds: float) -> dict[str, Any]:
    from monitor.pipelines.registry import build_pipeline

    pipeline = build_pipeline(SEG)
    frames = _frames(64, side)
    pipeline.process(frames[:1])  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pipeline.process([frames[n % len(frames)]])
        n += 1
    dt = time.perf_counter() - t0
    return {"engine": "in-process", "replicas": 1, "frames_sent": n, "frames_accounted": n,
            "seconds": round(dt, 2), "frames_per_s": round(n / dt, 2)}  # fmt: skip


async def _drive(worker: Any, frames: list[Frame], seconds: float, counts: dict[str, int]) -> dict[str, Any]:
    task = asyncio.create_task(worker.run())
    sent, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        f = frames[sent % len(frames)]
        await worker.queue.put(f.with_seq(sent + 1))  # policy block: the producer waits
        sent += 1
    await worker.queue.join()
    dt = time.perf_counter() - t0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return {"frames_sent": sent, "frames_accounted": sum(counts.values()),
            "processed": counts.get("PROCESSED", 0), "seconds": round(dt, 2),
            "frames_per_s": round(counts.get("PROCESSED", 0) / dt, 2)}  # fmt: skip


def ray_run(
    settings: PipelineSettings, frames: list[Frame], seconds: float, in_flight: int
) -> dict[str, Any]:
    import ray

    from monitor.cluster.session import start_replicas
    from monitor.cluster.worker import RayPipelineWorker
    from monitor.pipelines.registry import build_pipeline

    cluster = ClusterSettings(engine="ray", in_flight=in_flight)
    actors = start_replicas(settings, cluster)
    counts: dict[str, int] = {}

    def on_disposition(d: Disposition) -> None:
        counts[d.status.name] = counts.get(d.status.name, 0) + 1

    worker = RayPipelineWorker(
        build_pipeline(settings), settings, ThreadPoolExecutor(1), Telemetry(), lambda p, r: None,
        on_disposition, lambda lf: None, live_interval_s=None, actors=actors, in_flight=in_flight,
        keyed=False,
    )  # fmt: skip
    try:
        ray.get([a.process.remote([frames[0]]) for a in actors])  # warm-up (model sessions)
        out = asyncio.run(_drive(worker, frames, seconds, counts))
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)
    hop = np.array(worker.hop_s) * 1e3
    out.update(engine="ray", replicas=settings.replicas, in_flight=in_flight)
    if hop.size and in_flight == 1:  # with more in flight, the round trip includes the actor's queue
        out.update(hop_ms_p50=round(float(np.percentile(hop, 50)), 3),
                   hop_ms_p99=round(float(np.percentile(hop, 99)), 3))  # fmt: skip
    return out


def need_16m(per_replica_fps: float, side: int, gpu_mpx_per_s: float | None) -> dict[str, Any]:
    px = EIGER2_16M[0] * EIGER2_16M[1]
    mpx_s = px * EIGER2_16M_FPS / 1e6
    per_replica_mpx_s = per_replica_fps * side * side / 1e6
    raw_gbit = px * 2 * EIGER2_16M_FPS * 8 / 1e9  # 16-bit pixels
    out = {
        "detector": "EIGER2 16M (4148x4362, 16-bit) at 133 frames/s",
        "mpx_per_s": round(mpx_s, 1),
        "per_cpu_replica_mpx_per_s": round(per_replica_mpx_s, 3),
        "cpu_replicas": int(np.ceil(mpx_s / per_replica_mpx_s)) if per_replica_mpx_s else None,
        "network_gbit_s_raw": round(raw_gbit, 1),
        "network_gbit_s_bslz4_4x": round(raw_gbit / 4, 1),
        "note": "compute scales with pixels (tiled, fully convolutional model); every frame once",
    }
    if gpu_mpx_per_s:
        out["gpu_mpx_per_s_assumed"] = gpu_mpx_per_s
        out["gpus"] = int(np.ceil(mpx_s / gpu_mpx_per_s))
    return out


GPU_TARGET_MPX_S = 176.0
"""``bench gpu``'s target for xct_unet_fast on one H100/H200 (used when no measurement exists)."""


def gpu_rate(path: Path | None) -> tuple[float, str]:
    """Mpx/s of one GPU: ``bench gpu``'s measured XCT-volume rate if its JSON is there."""
    if path is not None and path.is_file():
        try:
            vol = json.loads(path.read_text()).get("xct_volume") or {}
        except json.JSONDecodeError:
            vol = {}
        if vol.get("mpx_per_s"):
            return float(vol["mpx_per_s"]), f"measured ({path})"
    return GPU_TARGET_MPX_S, "assumed: bench gpu's H100/H200 target, not measured here (no CUDA torch)"


def cli_main(args: argparse.Namespace) -> int:
    import ray

    quick = bool(getattr(args, "quick", False))
    seconds = 3.0 if quick else 12.0
    side = 256 if quick else 512
    load_start = os.getloadavg()
    base = in_process_rate(side, seconds)
    print(f"in-process: {base['frames_per_s']} frames/s ({side}²)", file=sys.stderr)
    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False, num_cpus=os.cpu_count() or 2,
             object_store_memory=200 * 1024 * 1024)  # fmt: skip
    startup_s = time.perf_counter() - t0
    runs = [base]
    try:
        frames = _frames(32, side)
        for replicas in (1, 2):
            s = PipelineSettings(**{**SEG.__dict__, "replicas": replicas})
            r = ray_run(s, frames, seconds, in_flight=2)
            print(f"ray {replicas} replica(s): {r['frames_per_s']} frames/s", file=sys.stderr)
            runs.append(r)
        hop: dict[str, dict[str, Any]] = {}
        for hs in (512, 2048):
            r = ray_run(STATS, _frames(8, hs, seed=1), 2.0 if quick else 6.0, in_flight=1)
            hop[str(hs)] = r
            print(f"hop {hs}²: p50 {r.get('hop_ms_p50')} ms p99 {r.get('hop_ms_p99')} ms", file=sys.stderr)
    finally:
        ray.shutdown()
    one, two = runs[1]["frames_per_s"], runs[2]["frames_per_s"]
    gpu, gpu_from = gpu_rate(Path(args.json).parent / "gpu.json" if args.json else None)
    out = {
        "bench": "scale",
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": load_start,
            "load_average_at_end": os.getloadavg(),
            "ray": ray.__version__,
            "ray_local_startup_s": round(startup_s, 1),
        },  # fmt: skip
        "pipeline": f"segmentation {SEG.model} fp32, 1 ONNX thread per replica, {side}x{side} uint16",
        "runs": runs,
        "speedup_2_replicas": round(two / one, 3) if one else None,
        "efficiency_2_replicas": round(two / (2 * one), 3) if one else None,
        "ray_1_replica_vs_in_process": round(one / base["frames_per_s"], 3) if base["frames_per_s"] else None,
        "hop_ms_p50": {k: v.get("hop_ms_p50") for k, v in hop.items()},
        "hop_ms_p99": {k: v.get("hop_ms_p99") for k, v in hop.items()},
        "hop_runs": hop,
        "need_16m_133fps": {**need_16m(one, side, gpu), "gpu_rate_from": gpu_from},
        "targets": {"speedup_2_replicas": 1.6, "hop_ms_p50_512": 5.0},
    }
    text = json.dumps(out, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0
