"""The command line as a user runs it: replay, demo, check, simulate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from monitor.store import RunReader
from tests.helpers import ROOT


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def stack(n: int = 12) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 1000, size=(n, 40, 50), dtype=np.uint16)


@pytest.mark.parametrize("kind", ["hdf5", "tiff", "dir"])
def test_replay_writes_the_live_layout(tmp_path: Path, kind: str) -> None:
    data = stack()
    if kind == "hdf5":
        inp = tmp_path / "scan.h5"
        with h5py.File(inp, "w") as f:
            f["/entry/data/data"] = data
        extra = ["--dataset", "/entry/data/data"]
    elif kind == "tiff":
        inp = tmp_path / "scan.tif"
        tifffile.imwrite(inp, data)
        extra = []
    else:
        inp = tmp_path / "scan"
        inp.mkdir()
        for i, a in enumerate(data):
            tifffile.imwrite(inp / f"img_{i}.tif", a)
        extra = []
    out = tmp_path / "results.h5"
    res = cli("replay", str(inp), "--pipeline", "frame_stats", "--out", str(out), "--no-progress", *extra)
    assert res.returncode == 0, res.stderr
    assert "12 frames in, 12 processed" in res.stdout
    with RunReader(out) as r:
        assert r.pipelines() == ["frame_stats"]
        results = r.results("frame_stats")
        assert len(results) == 12
        np.testing.assert_allclose(results["mean"], data.reshape(12, -1).mean(axis=1))
        assert r.status_counts()["PROCESSED"] == 12
        assert [d.index for d in r.dispositions()] == list(range(12))
    # A second run refuses to overwrite without --overwrite.
    again = cli("replay", str(inp), "--pipeline", "frame_stats", "--out", str(out), "--no-progress", *extra)
    assert again.returncode == 2 and "exists" in again.stderr


def test_replay_bad_input_is_one_clear_error(tmp_path: Path) -> None:
    res = cli(
        "replay", str(tmp_path / "nope.h5"), "--pipeline", "frame_stats", "--out", str(tmp_path / "o.h5")
    )
    assert res.returncode == 2
    assert "error" in res.stderr and "nope.h5" in res.stderr
    assert "Traceback" not in res.stderr
    res = cli("replay", str(tmp_path), "--pipeline", "nonsense", "--out", str(tmp_path / "o.h5"))
    assert res.returncode == 2 and "unknown pipeline" in res.stderr


def test_check_reports_bad_key(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text('[[pipelines]]\nname = "p"\nkind = "frame_stats"\nqueue_size = "eight"\n')
    res = cli("check", "--config", str(cfg))
    assert res.returncode == 2
    assert "pipelines[0].queue_size" in res.stderr and "Traceback" not in res.stderr
    ok = cli("check", "--config", str(ROOT / "examples" / "monitor.toml"))
    assert ok.returncode == 0 and "OK" in ok.stdout


def test_demo_runs_and_exits_cleanly(tmp_path: Path) -> None:
    res = cli("demo", "--duration", "6", "--port", "0", "--out", str(tmp_path), timeout=60)
    assert res.returncode == 0, res.stderr
    assert "dashboard: http://127.0.0.1:" in res.stderr
    assert "shutdown complete" in res.stderr
    files = list(tmp_path.glob("demo-*.h5"))
    assert len(files) == 1
    with RunReader(files[0]) as r:
        counts = r.status_counts()
        assert counts["PROCESSED"] > 50
        assert len(r.accounted_seqs()) == sum(counts.values())
