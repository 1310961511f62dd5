"""`bench soak --minutes N`: the daemon's resident memory under full-rate 2048² ingest.

The daemon runs as its own process (``operando-monitor run``) fed by the benchmark sender (array
1.0 frames as fast as PUSH takes them, a separate process); its RSS is sampled from
``/proc/PID/status`` every ``sample_s``. One run per flush interval: memory must not scale with
flush interval × rate × frame size (pending results no longer hold frames, and pending result
arrays flush early past ``store.max_pending_mb``). Growth is the median RSS of the last tenth of
the run against the median just after warm-up (the first quarter).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from monitor.bench.ingest import start_sender
from monitor.sim.ports import free_port

CONFIG = """run = "soak"
[daemon]
log_level = "INFO"
shutdown_timeout_s = 30
[[sources]]
name = "det"
kind = "array10"
endpoint = "{endpoint}"
mode = "connect"
max_frame_bytes = 16777216
[[pipelines]]
name = "stats"
kind = "frame_stats"
queue_size = 8
[store]
directory = "{directory}"
filename = "{{run}}-{{time}}.h5"
flush_interval_s = {flush}
[dashboard]
enabled = false
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def soak(seconds: float, flush_s: float, size: int = 2048, sample_s: float = 1.0) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        cfg = Path(tmp) / "soak.toml"
        cfg.write_text(CONFIG.format(endpoint=endpoint, directory=tmp, flush=flush_s))
        log = Path(tmp) / "daemon.log"
        sender = start_sender(endpoint, size, 10**9)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log, "wb") as fh:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "monitor.cli", "run", "--config", str(cfg)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
            )
        samples: list[tuple[float, float]] = []
        t0 = time.monotonic()
        try:
            while (t := time.monotonic() - t0) < seconds:
                if daemon.poll() is not None:
                    raise RuntimeError(
                        f"daemon exited early ({daemon.returncode}): {log.read_text()[-2000:]}"
                    )
                samples.append((round(t, 2), round(rss_mb(daemon.pid), 1)))
                time.sleep(sample_s)
        finally:
            sender.kill()
            sender.wait()
            daemon.send_signal(signal.SIGINT)
            rc = daemon.wait(timeout=120)
        text = log.read_text()
    m = re.search(r"shutdown complete: (\d+) received, (\d+) processed, (\d+) skipped", text)
    received, processed, skipped = (int(g) for g in m.groups()) if m else (0, 0, 0)
    rss = [r for _, r in samples]
    n = len(rss)
    warm = statistics.median(rss[n // 4 : max(n // 4 + 1, int(n * 0.35))])
    end = statistics.median(rss[max(0, n - max(1, n // 10)) :])
    return {
        "flush_interval_s": flush_s,
        "seconds": seconds,
        "frame": [size, size],
        "exit_code": rc,
        "received": received,
        "processed": processed,
        "skipped": skipped,
        "rate_hz": round(received / seconds, 1),
        "rss_mb_peak": max(rss),
        "rss_mb_after_warmup": warm,
        "rss_mb_end": end,
        "growth_pct": round(100.0 * (end - warm) / warm, 2),
        "samples": samples,
    }


def cli_main(args: argparse.Namespace) -> int:
    minutes = float(getattr(args, "minutes", None) or 1.0)
    flushes = getattr(args, "flush", None) or [0.5, 5.0]
    size = (args.sizes or [2048])[0]
    runs = []
    for flush in flushes:
        r = soak(minutes * 60.0, float(flush), size)
        print(
            f"flush {flush:g} s: {r['rate_hz']} frames/s, RSS peak {r['rss_mb_peak']:.0f} MB, "
            f"after warm-up {r['rss_mb_after_warmup']:.0f} MB, end {r['rss_mb_end']:.0f} MB "
            f"(growth {r['growth_pct']:+.1f} %)",
            file=sys.stderr,
        )
        runs.append(r)
    out = {
        "bench": "soak",
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        "python": platform.python_version(),
        "runs": runs,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()
