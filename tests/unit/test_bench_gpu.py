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


def test_gpu_bench_code_paths_run_on_the_cpu() -> None:
    """The measuring code itself (not its speed) on the CPU, tiny: so a GPU session is not its first run."""
    from monitor.bench.gpu import model_throughput, volume_time

    vol = volume_time(None, 2, device="cpu", volume=(3, 96, 80))
    assert vol["slices_segmented"] == 2 and vol["scaled_from_slices"] and vol["seconds_for_volume"] > 0
    rates = model_throughput(None, 0.01, device="cpu", precisions=("fp32",), batches=(1,))
    assert "xct_unet_fast" in rates
    assert all("error" in r or r["fp32"]["best_batch"] == "1" for r in rates.values())  # type: ignore[index]
