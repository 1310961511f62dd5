"""`bench bluesky`: a real RunEngine publishing N events with inline images → proxy → the daemon.

Three processes: bluesky's ``Proxy``, a RunEngine (``monitor.sim.bluesky_demo publish``: ophyd
sim detector, ``Publisher`` with msgpack-numpy) and this one running the daemon (bluesky source,
frame_stats, HDF5 store). Every event must come out as a processed frame in the store. Rates:
events/s as the source received them (first to last frame) and end to end (first frame
received to the last result processed); ``publisher_s`` includes the RunEngine's start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from monitor.config import (
    DashboardSettings,
    MonitorConfig,
    PipelineSettings,
    SourceSettings,
    StoreSettings,
)
from monitor.frames import Frame, IngestEvent
from monitor.sim.bluesky_demo import start_proxy_process
from monitor.sim.ports import free_port


@dataclass(frozen=True)
class BlueskyBenchResult:
    events: int
    shape: tuple[int, int]
    format: str
    messages: int
    frames_received: int
    processed: int
    skipped: int
    rejected: int
    receive_rate_hz: float
    end_to_end_rate_hz: float
    publisher_s: float
    all_accounted: bool


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


async def run_bench(
    events: int = 1000, shape: tuple[int, int] = (512, 512), fmt: str = "msgpack", workdir: Path | None = None
) -> BlueskyBenchResult:
    from monitor.daemon import Daemon

    in_port, out_port = free_port(), free_port()
    proxy = start_proxy_process(in_port, out_port)
    tmp = tempfile.TemporaryDirectory() if workdir is None else None
    out = Path(tmp.name) if tmp is not None else workdir
    assert out is not None
    try:
        wait_port(out_port)
        cfg = MonitorConfig(
            run="bench-bluesky",
            sources=(SourceSettings(name="bs", kind="bluesky", endpoint=f"tcp://127.0.0.1:{out_port}"),),
            pipelines=(PipelineSettings(name="stats", kind="frame_stats", queue_size=64, policy="block"),),
            store=StoreSettings(directory=str(out), filename="{run}.h5", compression="none"),
            dashboard=DashboardSettings(enabled=False),
        )
        daemon = Daemon(cfg)
        first = last = 0.0
        route = daemon.router.route

        async def timed(event: IngestEvent) -> None:
            nonlocal first, last
            if isinstance(event, Frame):
                last = time.monotonic()
                first = first or last
            await route(event)

        daemon.router.route = timed  # type: ignore[method-assign]
        await daemon.start()
        await asyncio.sleep(0.5)  # SUB connected to the proxy before the RunEngine starts
        cmd = [
            sys.executable,
            "-m",
            "monitor.sim.bluesky_demo",
            "publish",
            "--address",
            f"127.0.0.1:{in_port}",
        ]
        cmd += ["--events", str(events), "--shape", str(shape[0]), str(shape[1]), "--format", fmt]
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        t0 = time.monotonic()
        pub = await asyncio.create_subprocess_exec(
            *cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _, err = await pub.communicate()
        t_pub = time.monotonic() - t0
        if pub.returncode != 0:
            raise RuntimeError(f"publisher failed ({pub.returncode}): {err.decode()[-2000:]}")
        source = daemon.sources[0]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            snap = daemon.telemetry.snapshot()
            if snap.processed + snap.skipped + snap.rejected >= events:
                break
            await asyncio.sleep(0.05)
        t_end = time.monotonic()
        await daemon.shutdown()
        snap = daemon.telemetry.snapshot()
        frames = getattr(source, "frames", 0)
        messages = getattr(source, "received", 0)
        return BlueskyBenchResult(
            events=events,
            shape=shape,
            format=fmt,
            messages=messages,
            frames_received=frames,
            processed=snap.processed,
            skipped=snap.skipped,
            rejected=snap.rejected,
            receive_rate_hz=(frames - 1) / (last - first) if frames > 1 and last > first else 0.0,
            end_to_end_rate_hz=snap.processed / (t_end - first) if first else 0.0,
            publisher_s=t_pub,
            all_accounted=frames == events and snap.processed == events,
        )
    finally:
        proxy.terminate()
        proxy.wait(10)
        if tmp is not None:
            tmp.cleanup()


def cli_main(args: argparse.Namespace) -> int:
    quick = bool(getattr(args, "quick", False))
    events = getattr(args, "frames", None) or (100 if quick else 1000)
    result = asyncio.run(run_bench(events=events))
    record = {
        "bench": "bluesky",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "note": "RunEngine (ophyd sim detector, inline uint16 images, msgpack-numpy) → bluesky Proxy → "
        "daemon (bluesky source → frame_stats → HDF5 store); three processes on one host",
        "result": asdict(result),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["result"], indent=2))
    return 0 if result.all_accounted else 1
