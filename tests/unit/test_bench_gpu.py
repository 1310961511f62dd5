"""bench gpu: one command; without CUDA it skips cleanly (exit 0, a clear line, JSON says why)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.bench.gpu import SEED_VOLUME, cuda_status


def test_bench_gpu_skips_cleanly_without_cuda(tmp_path: Path) -> None:
    ok, why = cuda_status()
    if ok:
        pytest.skip(f"a CUDA device is present ({why}): the skip path is not taken here")
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "bench", "gpu", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "bench gpu not run: no CUDA device" in proc.stdout
    result = json.loads(out.read_text())
    assert result["skipped"].startswith("bench gpu not run") and "models" not in result
    assert result["host"]["cpus"] >= 1


def test_seed_volume_size() -> None:
    assert SEED_VOLUME == (3977, 2575, 2582)
