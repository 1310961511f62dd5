"""Per-frame cost of the control-room sinks (``operando-monitor bench sinks --json OUT``).

What each sink costs the daemon's event loop per frame, and what it costs elsewhere:

- Prometheus: ``MetricsServer.observe`` per processed frame (loop), one scrape (HTTP thread);
- Tiled: ``TiledSink.on_results`` per frame (loop); rows/s of the writer thread against a
  real ``tiled serve`` when the ``tiled`` command is installed (else reported as not run);
- queue server: ``QueueServerAdapter.emit`` per alarm event it ignores (it never sees frames);
- NeXus: ``add_nexus`` at close, per stored result row;
- NDPluginZMQ: header salvage and codec decode per frame (2048 x 2048 uint16).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from monitor.config import PipelineSettings, QueueServerSettings, StoreSettings, TiledSettings
from monitor.frames import Disposition, Frame, Status
from monitor.pipelines.base import Latency, Result


def _per_call_us(fn: Callable[[int], object], n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        fn(n)
        best = min(best, (time.perf_counter() - t0) / n)
    return round(best * 1e6, 3)


def _results(n: int, scalars: tuple[str, ...]) -> list[Result]:
    frame = Frame("s", "det", "r", 0, np.zeros((2, 2), np.uint16), 1.0, 1.0, seq=0)
    return [
        Result("stats", frame, {s: float(i) for s in scalars}, latency=Latency(0.001, 0.002, 1))
        for i in range(n)
    ]


def bench_metrics() -> dict[str, object]:
    from monitor.metrics import MetricsServer
    from monitor.telemetry import Telemetry

    class View:
        telemetry = Telemetry()
        workers: list[object] = []
        sources: list[object] = []
        alarms = None

    view = View()
    for i in range(20):
        view.telemetry.rejected[f"reason_{i}"] = i
    server = MetricsServer(view, port=0)
    d = Disposition(0, "det", "s", "r", 0, "stats", Status.PROCESSED, "", 1.0, 1.0, 1.002)

    def observe(n: int) -> None:
        for _ in range(n):
            server.observe(d)

    from prometheus_client.exposition import generate_latest

    t0 = time.perf_counter()
    for _ in range(50):
        generate_latest(server.registry)
    scrape_ms = (time.perf_counter() - t0) / 50 * 1e3
    return {"observe_us_per_frame": _per_call_us(observe, 20000), "scrape_ms": round(scrape_ms, 3)}


def bench_tiled(rows: int) -> dict[str, object]:
    from monitor.tiled_sink import TiledSink

    scalars = ("mean", "std", "min", "max", "p1", "p50", "p99", "saturated_fraction", "dead_fraction")
    batch = _results(64, scalars)
    out: dict[str, object] = {}
    tiled_cmd = shutil.which("tiled") or str(Path(sys.executable).parent / "tiled")
    settings = TiledSettings(enabled=True, flush_interval_s=3600, max_pending_rows=10**7)
    sink = TiledSink(settings, "bench", {"stats": scalars}, {})

    def on_results(n: int) -> None:
        for _ in range(n // 64):
            sink.on_results("stats", batch)

    out["on_results_us_per_frame"] = _per_call_us(on_results, 64 * 200)
    if not Path(tiled_cmd).exists():
        out["writer"] = "not run: no `tiled` command"
        return out
    from monitor.sim.ports import free_port

    port, key = free_port(), "benchkey16"
    with tempfile.TemporaryDirectory() as d:
        cmd = [tiled_cmd, "serve", "catalog", "--temp", "--api-key", key]
        cmd += ["--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(cmd, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            import urllib.request

            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/", timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        out["writer"] = "not run: tiled serve did not start"
                        return out
                    time.sleep(0.2)
            settings = TiledSettings(enabled=True, uri=f"http://127.0.0.1:{port}", api_key=key)
            live = TiledSink(settings, "bench", {"stats": scalars}, {"run": "bench"})
            flushes = 10
            t0 = time.perf_counter()
            for _ in range(flushes):
                for _ in range(rows // flushes // 64):
                    live.on_results("stats", batch)
                live._flush()  # what the writer thread does once per flush_interval_s
            dt = time.perf_counter() - t0
            written = live.rows_written["stats"]
            out["writer"] = {
                "rows": written,
                "flushes": flushes,
                "ms_per_flush": round(dt / flushes * 1e3, 1),
                "us_per_row_writer_thread": round(dt / max(written, 1) * 1e6, 1),
            }
        finally:
            proc.terminate()
            proc.wait(15)
    return out


def bench_queueserver() -> dict[str, object]:
    from monitor.alerts.model import Alarm, AlarmEvent, AlarmState, Severity
    from monitor.alerts.queueserver import QueueServerAdapter

    adapter = QueueServerAdapter(QueueServerSettings(enabled=True, rules=("runaway",)))
    alarm = Alarm("other:s", "other", Severity.MAJOR, AlarmState.ACTIVE, "m", 1.0, 0.5, None, 0.0, 0.0)
    event = AlarmEvent(0.0, "raise", alarm)

    def emit(n: int) -> None:
        for _ in range(n):
            adapter.emit(event)

    return {"emit_ignored_alarm_us": _per_call_us(emit, 20000), "per_frame": 0.0}


def bench_nexus(rows: int) -> dict[str, object]:
    from monitor.pipelines.frame_stats import FrameStatsPipeline
    from monitor.store import RunStore
    from monitor.store.nexus import add_nexus

    pipe = FrameStatsPipeline(PipelineSettings(name="stats", kind="frame_stats"))
    frame = Frame("s", "det", "r", 0, np.ones((8, 8), np.uint16), 1.0, 1.0, seq=0)
    results = pipe.process([frame]) * 1000
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "run.h5"
        store = RunStore(path, StoreSettings(directory=d), {"stats": pipe.schema()}, "", {}, ["det"])
        for _ in range(rows // 1000):
            store.write_results("stats", results)
        store._f.close()  # close without the NeXus step, then time it alone
        store._closed = True
        t0 = time.perf_counter()
        add_nexus(path)
        dt = time.perf_counter() - t0
    return {"rows": rows, "close_ms": round(dt * 1e3, 1), "us_per_row_at_close": round(dt / rows * 1e6, 3)}


def bench_ndpluginzmq() -> dict[str, object]:
    import blosc2
    import lz4.block

    from monitor.sources.ad_codec import decode_codec
    from monitor.sources.ad_header import parse_header_tolerant

    rng = np.random.default_rng(0)
    a = rng.poisson(20, size=(2048, 2048)).astype(np.uint16)
    good = b'{"htype":["array-1.0"], "type":"uint16", "shape":[2048,2048], "frame":1, "ndattr":{"A":1.5}}'
    bad = good.replace(b'"A":1.5', b'"A":nan,"P":"C:\\data\\x","G":\x07')
    out: dict[str, object] = {
        "header_strict_us": _per_call_us(lambda n: [parse_header_tolerant(good) for _ in range(n)], 5000),
        "header_salvaged_us": _per_call_us(lambda n: [parse_header_tolerant(bad) for _ in range(n)], 5000),
    }
    data = {
        "lz4": lz4.block.compress(a.tobytes(), store_size=False),
        "blosc": blosc2.compress(a.tobytes(), typesize=2),
        "zlib": zlib.compress(a.tobytes(), 1),
    }
    for codec, raw in data.items():
        view = memoryview(raw)

        def run(n: int, codec: str = codec, view: memoryview = view) -> None:
            for _ in range(n):
                decode_codec(codec, view, a.nbytes, 2)

        out[f"decode_{codec}_2048sq_uint16_ms"] = round(_per_call_us(run, 5) / 1e3, 2)
    return out


def run_bench(path: Path, quick: bool = False) -> dict[str, object]:
    rows = 2000 if quick else 20000
    result = {
        "metrics": bench_metrics(),
        "tiled": bench_tiled(rows),
        "queueserver": bench_queueserver(),
        "nexus": bench_nexus(rows),
        "ndpluginzmq": bench_ndpluginzmq(),
        "machine": {
            "cpu": _cpu_model(),
            "loadavg": os.getloadavg(),
            "python": platform.python_version(),
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return models[0] if models else platform.processor()


def cli_main(args: argparse.Namespace) -> int:
    result = run_bench(Path(args.json), quick=bool(getattr(args, "quick", False)))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--json", required=True)
    p.add_argument("--quick", action="store_true")
    sys.exit(cli_main(p.parse_args()))
