"""A real daemon with the SHIPPED segmentation model and the demo's alarm rules, fed real images the
model has never seen (scikit-image's photographs and micrographs): every slice is stored with
``ood = 1``, the journal holds one MINOR ``segmentation_ood`` alarm and no MAJOR, although the
model reads a high penetration on them."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest
import skimage.color
import skimage.data
import zmq

from monitor.alerts.model import Severity
from monitor.alerts.sinks import read_journal
from monitor.errors import StoreError
from monitor.sim.array10 import encode_array10, series_end, series_start
from monitor.store import RunReader
from tests.helpers import free_port, start_daemon, wait_for


def _config(tmp: Path, endpoint: str) -> Path:
    text = f"""
run = "ood"
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
policy = "block"
[pipelines.options]
mask_shape = 64
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
min_count = 1
[[alerts.rules]]
name = "dendrite_fraction"
kind = "threshold"
pipeline = "segmentation"
metric = "vf_dendrite"
major = 0.001
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
def test_foreign_images_raise_only_the_ood_minor(tmp_path: Path) -> None:
    images = [skimage.data.camera(), skimage.data.coins(), skimage.data.moon(), skimage.data.brick()]
    images.append((skimage.color.rgb2gray(skimage.data.immunohistochemistry()) * 255).astype(np.uint8))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    log = tmp_path / "daemon.log"
    store = tmp_path / "runs" / "ood.h5"
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.bind(endpoint)
    proc = start_daemon(_config(tmp_path, endpoint), log)
    try:
        time.sleep(0.5)
        push.send_multipart(series_start("foreign"))
        for i, img in enumerate(images):
            frame = encode_array10(np.asarray(img, np.uint16), frame=i, stream="xct", series="foreign")
            push.send_multipart(frame)
        push.send_multipart(series_end("foreign"))
        wait_for(lambda: _stored(store) >= len(images), 180, "all slices accounted")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        push.close()
        ctx.term()
    assert code == 0, log.read_text()[-3000:]
    with RunReader(store) as r:
        rows = r.results("segmentation")
        assert len(rows) == len(images)
        assert (rows["ood"] == 1).all() and (rows["ood_score"] > 4).all()
        assert (rows["vf_dendrite"] > 0.001).any()  # the rule would have raised a MAJOR without the guard
    events = read_journal(tmp_path / "runs" / "alarms.jsonl")
    raised = [(e.alarm.id, e.alarm.severity) for e in events if e.transition in ("raise", "escalate")]
    assert raised == [("segmentation_ood:xct", Severity.MINOR)], raised
    assert "out of distribution" in log.read_text()
