"""Alignment end to end: a real daemon, an array-1.0 source streaming a TXM-XANES scan, HDF5 results
(including the XANES maps on the scan's last frame); and a --quick training run into a tmp dir."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from itertools import islice
from pathlib import Path

import numpy as np

from engines.registry import load_manifest
from monitor.sim.array10 import encode_array10, send_raw, series_end, series_start
from monitor.sim.txm_stream import scan_frames
from monitor.store import RunReader
from tests.helpers import ROOT, daemon_config, free_port, start_daemon, wait_for

ALIGNMENT = """
[[pipelines]]
name = "alignment"
kind = "alignment"
streams = ["txm"]
queue_size = 64
policy = "block"
threads = 1
[pipelines.options]
max_particles = 12
roi_size = 96
detect_every = 2
[[alerts.rules]]
name = "particle_lost"
kind = "threshold"
pipeline = "alignment"
metric = "lost_now"
minor = 0.5
"""


def _rows(store: Path) -> int:
    try:
        with RunReader(store) as r:
            return r.rows().get("alignment", 0)
    except Exception:  # noqa: BLE001 - file not there or not yet committed
        return 0


def test_daemon_aligns_a_streamed_scan_and_stores_xanes_maps(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = daemon_config(tmp_path, endpoint, extra=ALIGNMENT)
    text = cfg.read_text().replace("max_frame_bytes = 1000000", "max_frame_bytes = 4000000")
    cfg.write_text(text)
    log = tmp_path / "daemon.log"
    proc = start_daemon(cfg, log)
    store = tmp_path / "runs" / "test.h5"
    frames = list(islice(scan_frames(seed=300_000, energy_stride=3), 13))  # one scan, 13 energies
    series = "scan-0"
    msgs = [series_start(series)]
    for i, (_scene, scan, point, energy, img) in enumerate(frames):
        meta = {"energy_eV": energy, "scan": scan, "scan_point": point, "scan_points": 13}
        msgs.append(encode_array10(img, frame=i, stream="txm", series=series, meta=meta))
    msgs.append(series_end(series))
    try:
        assert send_raw(endpoint, msgs, mode="connect", timeout_s=20) == len(msgs)
        wait_for(lambda: _rows(store) >= 13, 90, "13 alignment results stored")
        assert proc.poll() is None, log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()
    with RunReader(store) as r:
        res = r.results("alignment")
        assert len(res) == 13
        assert (res["n_particles"] >= 6).all()
        assert res["xanes_ready"][-1] == 1 and (res["xanes_ready"][:-1] == 0).all()
        assert np.isfinite(res["energy_eV"]).all()
        edge = r.array("alignment", "xanes_edge_eV")
        assert edge.shape == (13, 12, 96, 96)
        last = edge[-1]
        finite = last[np.isfinite(last)]
        assert finite.size > 2000
        assert 8338 < np.median(finite) < 8350
        ids = r.array("alignment", "track_id")
        assert (ids[-1] >= 0).sum() >= 6
        disp = r.array("alignment", "displacement")
        assert np.isfinite(disp[-1][ids[-1] >= 0]).all()


def test_quick_training_writes_a_loadable_model(tmp_path: Path) -> None:
    out = tmp_path / "weights"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor.cli",
            "train",
            "alignment",
            "--quick",
            "--out",
            str(out),
            "--no-progress",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "instance_f1" in summary
    manifest = load_manifest("txm_particle_net", out)
    assert [t.name for t in manifest.outputs] == ["fg", "dist"]
    assert (out / "reports" / "alignment" / "metrics.json").exists()
