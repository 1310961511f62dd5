"""A real daemon (subprocess) with an array10 source fed by the XCT simulator: every slice is
accounted for in the HDF5 store with its scalars and mask; a bad slice is counted, not fatal;
the alarm rule on penetration is accepted and only ever refers to streamed slices.

The model is freshly exported (untrained) into a temporary weights directory, so the test checks
the plumbing, not the accuracy (``bench segmentation`` measures that on held-out seeds).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from engines.train.segmentation_export import export_untrained
from monitor.alerts.sinks import read_journal
from monitor.errors import StoreError
from monitor.sim.array10 import encode_array10, series_end, series_start
from monitor.sim.xct_stream import simulate_xct
from monitor.store import RunReader
from tests.helpers import free_port, start_daemon, wait_for

DEPTH, SCANS, SIDE = 4, 2, 192


def _config(tmp: Path, endpoint: str, weights: Path) -> Path:
    text = f"""
run = "seg"
[daemon]
shutdown_timeout_s = 10.0
telemetry_interval_s = 0.2
[[sources]]
name = "xct"
kind = "array10"
endpoint = "{endpoint}"
mode = "connect"
stream = "xct"
[[pipelines]]
name = "segmentation"
kind = "segmentation"
streams = ["xct"]
queue_size = 64
policy = "block"
weights_dir = "{weights}"
[pipelines.options]
mask_shape = 96
volume_depth = {DEPTH}
[store]
directory = "{tmp / "runs"}"
filename = "{{run}}.h5"
flush_interval_s = 0.1
[[alerts.rules]]
name = "dendrite_penetration"
kind = "threshold"
pipeline = "segmentation"
metric = "penetration"
minor = 0.5
major = 0.8
hysteresis = 0.05
min_count = 1
[dashboard]
enabled = false
"""
    path = tmp / "monitor.toml"
    path.write_text(text)
    return path


def _stored(store: Path) -> int:
    try:
        with RunReader(store) as r:
            return len(r.dispositions())
    except StoreError:
        return 0


@pytest.mark.timeout(300)
def test_streamed_volume_is_segmented_and_stored(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    export_untrained("xct_unet_fast", weights)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    log = tmp_path / "daemon.log"
    store = tmp_path / "runs" / "seg.h5"
    proc = start_daemon(_config(tmp_path, endpoint, weights), log)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    try:
        sent = asyncio.run(
            simulate_xct(endpoint, asyncio.Event(), rate_hz=0, shape=(SIDE, SIDE), depth=DEPTH, scans=SCANS)
        )
        assert sent == DEPTH * SCANS
        # Then a slice too small to segment, on a fresh PUSH (the daemon reconnects).
        deadline = time.monotonic() + 10
        while True:  # the simulator's socket may still hold the port for a moment after closing
            try:
                push.bind(endpoint)
                break
            except zmq.ZMQError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        push.send_multipart(series_start("bad"))
        push.send_multipart(encode_array10(np.zeros((8, 8), np.uint16), frame=0, stream="xct", series="bad"))
        push.send_multipart(series_end("bad"))
        wait_for(lambda: _stored(store) >= sent + 1, 120, f"{sent + 1} slices accounted")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        push.close()
        ctx.term()
    assert code == 0, log.read_text()[-3000:]
    with RunReader(store) as r:
        counts = r.status_counts()
        assert counts["PROCESSED"] == sent and counts.get("FAILED", 0) == 1, counts
        rows = r.results("segmentation")
        assert len(rows) == sent
        masks = r.array("segmentation", "mask")
        assert masks.shape == (sent, 96, 96) and masks.dtype == np.uint8 and masks.max() < 5
        pen = rows["penetration"]
        assert np.all((pen >= 0) & (pen <= 1))
        z = rows["slice_z"]
        np.testing.assert_array_equal(z, np.tile(np.arange(DEPTH), SCANS))
        growth = rows["dendrite_vf_growth"]
        assert np.isnan(growth[:DEPTH]).all() and np.isfinite(growth[DEPTH:]).all()
        cum = rows["cum_dendrite_vox"]
        assert np.all(np.diff(cum[:DEPTH]) >= 0)
    journal = tmp_path / "runs" / "alarms.jsonl"
    events = read_journal(journal) if journal.exists() else []
    assert all(e.alarm.frame is None or e.alarm.frame.series.startswith("xct-") for e in events)
