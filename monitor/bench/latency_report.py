"""Receive → result latency per pipeline from a run file (``operando-monitor bench demo-latency``).

For each pipeline: p50/p99/max of ``latency_queued + latency_compute`` over its stored results,
and the frames skipped per reason (``stale``, ``overload``). Used to check the demo's defaults
(``max_latency_ms``) keep every pipeline's p99 within 500 ms on a busy 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from monitor.store import RunReader


def latency_report(path: Path, *, skip_first_s: float = 5.0) -> dict[str, dict[str, object]]:
    """Per-pipeline latency statistics of a run file (the first ``skip_first_s`` left out: warm-up)."""
    out: dict[str, dict[str, object]] = {}
    with RunReader(path) as reader:
        frames = reader.frames()
        t0 = float(frames["t_received"].min()) if len(frames) else 0.0
        skipped: dict[str, Counter[str]] = {}
        for d in reader.dispositions():
            if d.status.name == "SKIPPED":
                skipped.setdefault(d.pipeline or "-", Counter())[d.reason] += 1
        for name in reader.pipelines():
            rows = reader.results(name)
            keep = rows["t_received"] >= t0 + skip_first_s
            lat = (rows["latency_queued"] + rows["latency_compute"])[keep] * 1e3
            compute = rows["latency_compute"][keep] * 1e3
            entry: dict[str, object] = {"results": int(keep.sum())}
            if lat.size:
                p50, p99 = np.percentile(lat, [50, 99])
                entry |= {
                    "p50_ms": round(float(p50), 1),
                    "p99_ms": round(float(p99), 1),
                    "max_ms": round(float(lat.max()), 1),
                    "compute_p99_ms": round(float(np.percentile(compute, 99)), 1),
                }
            entry["skipped_by_reason"] = dict(skipped.get(name, Counter()))
            out[name] = entry
    return out


def cli_main(args: argparse.Namespace) -> int:
    from monitor.bench import host_info

    run = Path(args.run) if getattr(args, "run", None) else None
    if run is None:
        raise SystemExit("bench demo-latency needs --run RUNFILE.h5 (e.g. from `operando-monitor demo`)")
    pipelines = latency_report(run)
    result = {
        "benchmark": "demo_latency",
        "run_file": str(run),
        "pipelines": pipelines,
        "target_p99_ms": 500,
        "host_at_report": host_info(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    for name, entry in pipelines.items():
        print(f"{name}: p99 {entry.get('p99_ms')} ms, skipped {entry['skipped_by_reason']}")
    return 0
