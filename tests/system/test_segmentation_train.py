"""Smoke runs of the segmentation CLI into temporary directories: train --quick, finetune on a
directory of labelled slices (HDF5 and TIFF pairs), bench --quick."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from engines.registry import load_manifest
from engines.synth.xct import make_slice, make_volume
from tests.helpers import ROOT


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quick_train_finetune_and_bench(tmp_path: Path) -> None:
    out = tmp_path / "weights"
    r = _cli("train", "segmentation", "--quick", "--out", str(out), "--no-progress", "--seed", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("xct_unet_fast", "xct_transforcnn", "xct_ensemble"):
        m = load_manifest(name, out)  # verifies the sha256
        assert m.task == "segmentation" and m.outputs[0].shape[1] == 5
        assert {"mIoU", "mDSC", "IoU_dendrite"} <= set(m.metrics)
        assert m.training["seed"] == 1 and (out / f"{name}.pt").exists()
    assert load_manifest("xct_unet_fast", out).inputs[0].shape == ("batch", 1, "height", "width")
    assert load_manifest("xct_transforcnn", out).inputs[0].shape == ("batch", 1, 128, 128)
    rdir = out / "reports" / "segmentation"
    report = json.loads((rdir / "report.json").read_text())
    assert report["quick"] and set(report["models"]) == {"xct_unet_fast", "xct_transforcnn", "xct_ensemble"}
    for plot in ("training_curves.png", "overlays.png"):
        assert (rdir / plot).stat().st_size > 1000

    data = tmp_path / "labelled"
    data.mkdir()
    imgs, labs = make_volume((160, 192), depth=2, seed=123)
    with h5py.File(data / "cell_a.h5", "w") as f:
        f["image"] = (imgs * 1000 + 2000).astype(np.uint16)
        f["mask"] = labs
    img, lab = make_slice((160, 192), seed=124)
    tifffile.imwrite(data / "cell_b_image.tif", img)
    tifffile.imwrite(data / "cell_b_mask.tif", lab)
    tuned = tmp_path / "tuned"
    r = _cli(
        "finetune", "segmentation", "--quick", "--data", str(data), "--weights", str(out),
        "--out", str(tuned), "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    ft = load_manifest("xct_finetuned", tuned)
    assert ft.sha256 != load_manifest("xct_unet_fast", out).sha256
    assert ft.training["method"] in ("network", "forest") and "by slice" in ft.training["split"]
    assert set(ft.training["methods"]) == {"network", "forest"} and "mIoU" in ft.metrics

    bench = tmp_path / "bench" / "seg.json"
    r = _cli("bench", "segmentation", "--quick", "--weights", str(out), "--json", str(bench))
    assert r.returncode == 0, r.stderr[-3000:]
    b = json.loads(bench.read_text())
    for name in ("xct_unet_fast", "xct_transforcnn", "xct_ensemble"):
        for key in ("mIoU", "mDSC", "mpx_per_s", "latency_ms_per_128_patch"):
            assert b["models"][name][key] > 0, (name, key)
    assert b["models"]["xct_unet_paper_shape"]["latency_ms_per_128_patch"] > 0
    assert set(b["verdict"]) >= {"accuracy_met", "unet_latency_met", "throughput_met"}


def test_finetune_rejects_bad_data(tmp_path: Path) -> None:
    from engines.train.segmentation_finetune import FinetuneDataError, load_labelled

    def load_pairs(d: Path) -> object:
        return load_labelled(d, 5)

    with pytest.raises(FinetuneDataError, match="no labelled image/mask pairs"):
        load_pairs(tmp_path)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["image"] = np.zeros((200, 200), np.float32)
        f["mask"] = np.full((200, 200), 7, np.uint8)
    with pytest.raises(FinetuneDataError, match=r"x.h5:/mask: mask values \{7\}.*class ids"):
        load_pairs(tmp_path)
    (tmp_path / "x.h5").unlink()
    tifffile.imwrite(tmp_path / "y_image.tif", np.zeros((200, 200), np.float32))
    with pytest.raises(FinetuneDataError, match="no matching"):
        load_pairs(tmp_path)
