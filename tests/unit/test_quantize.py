"""operando-monitor quantize: int8 kept only within the tolerance; its own manifest; rejected → removed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from engines.quantize import quantize_model
from engines.registry import WEIGHTS_DIR, load_manifest


def _copy(tmp_path: Path, name: str) -> Path:
    for suffix in ("json", "onnx"):
        shutil.copy(WEIGHTS_DIR / f"{name}.{suffix}", tmp_path)
    return tmp_path


def test_quantize_keeps_within_tolerance_and_writes_its_manifest(tmp_path: Path) -> None:
    weights = _copy(tmp_path, "xct_unet_fast")
    r = quantize_model("xct_unet_fast", weights, n_calib=4, n_eval=1, threads=1, report_dir=tmp_path / "rep")
    assert r["metric"] == "mIoU" and abs(r["delta"]) < 0.05  # type: ignore[arg-type]
    report = json.loads((tmp_path / "rep" / "xct_unet_fast.json").read_text())
    assert report["kept"] == r["kept"]
    if r["kept"]:
        q = load_manifest("xct_unet_fast_int8", weights)  # sha256 verified
        assert (
            q.extra["precision"] == "int8"
            and q.extra["fp32_sha256"] == load_manifest("xct_unet_fast", weights).sha256
        )
        assert q.metrics["mIoU"] >= q.metrics["fp32_mIoU"] - 0.005
        assert q.extra["quantization"]["format"] == "QDQ"  # type: ignore[index]


def test_quantize_rejects_and_removes_when_the_metric_drops(tmp_path: Path) -> None:
    weights = _copy(tmp_path, "xct_unet_fast")
    # a negative tolerance demands int8 beat fp32 by a margin no model reaches
    r = quantize_model(
        "xct_unet_fast", weights, n_calib=2, n_eval=1, tolerance=-0.5, threads=1, report_dir=tmp_path / "rep"
    )
    assert not r["kept"] and "below fp32" in str(r["reason"])
    assert not (weights / "xct_unet_fast_int8.onnx").exists()
    assert not (weights / "xct_unet_fast_int8.json").exists()


def test_tasks_without_an_evaluator_are_reported_not_quantised(tmp_path: Path) -> None:
    weights = _copy(tmp_path, "early_warning_cnn_gru")
    r = quantize_model("early_warning_cnn_gru", weights, report_dir=tmp_path / "rep")
    assert not r["kept"] and "no evaluator" in str(r["reason"])
