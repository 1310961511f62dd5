"""SegmentationPipeline with a real (untrained, freshly exported) ONNX model: schema, scalars,
cumulative volume per series, growth between scans, masks, overlays and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.synth.xct import labels_at, make_cell, render, to_counts
from engines.train.segmentation_export import export_untrained
from monitor.config import PipelineSettings
from monitor.errors import ConfigError
from monitor.frames import Frame, FrameMeta
from monitor.pipelines.base import LiveOverlays
from monitor.pipelines.registry import build_pipeline
from monitor.pipelines.segmentation import NO_DATA, SCALARS, SegmentationPipeline, resample_nearest


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("xct_weights")
    export_untrained("xct_unet_fast", out)
    return out


def settings(weights: Path, **options: bool | int | float | str) -> PipelineSettings:
    return PipelineSettings(
        name="seg", kind="segmentation", streams=("xct",), model="xct_unet_fast", weights_dir=str(weights),
        options=dict(options),
    )  # fmt: skip


def frame(img: np.ndarray, series: str, index: int, z: float | None = None) -> Frame:
    return Frame("xct", "test", series, index, img, 0.0, 0.0, FrameMeta(slice_z=z))


def test_results_scalars_and_mask(weights: Path) -> None:
    p = build_pipeline(settings(weights, mask_shape=64))
    assert isinstance(p, SegmentationPipeline) and isinstance(p, LiveOverlays)
    schema = p.schema()
    assert (
        schema.scalars == SCALARS and schema.arrays[0].shape == (64, 64) and schema.arrays[0].dtype == "uint8"
    )
    cell = make_cell((200, 300), seed=800_001, depth=4)
    imgs = [to_counts(render(cell, labels_at(cell, z), z)) for z in (0.0, 1.0, 2.0)]
    res = p.process([frame(imgs[0], "s1", 0, 0), frame(imgs[1], "s1", 1, 1)])
    assert len(res) == 2 and set(res[0].scalars) == set(SCALARS)
    m = res[0].arrays["mask"]
    assert m.shape == (64, 64) and m.dtype == np.uint8
    assert m[:43].max() < 5 and (m[43:] == NO_DATA).all()  # 200x300: aspect kept, rest NO_DATA
    s0, s1 = res[0].scalars, res[1].scalars
    assert sum(
        s0[f"vf_{c}"] for c in ("electrode", "electrolyte", "dendrite", "redeposit", "pit")
    ) == pytest.approx(1)
    assert 0.0 <= s0["penetration"] <= 1.0
    assert np.isnan(s0["dendrite_vf_growth"])  # first pass over slice 0
    vox = 200 * 300
    total = s1["cum_dendrite_vox"] + s1["cum_redeposit_vox"] + s1["cum_pit_vox"]
    assert total <= 2 * vox and s1["slice_z"] == 1.0
    ov = p.display_overlays(res[1], (100, 150))
    assert ov["mask"].shape == (100, 150) and ov["mip"].shape == (43, 64) and ov["mip"].max() <= 2
    # A new series (the next scan): cumulative volume restarts, growth compares with slice 0 of s1.
    r2 = p.process([frame(imgs[0], "s2", 0, 0)])[0].scalars
    assert r2["cum_dendrite_vox"] == pytest.approx(s0["cum_dendrite_vox"])
    assert r2["dendrite_vf_growth"] == pytest.approx(0.0)  # same image, same model
    assert "mip" not in p.display_overlays(res[1], (100, 150))  # s1's projection is gone


def test_whole_slice_mode_matches_tiles_in_the_interior(weights: Path) -> None:
    tiled = SegmentationPipeline(settings(weights))
    whole = SegmentationPipeline(settings(weights, tile=-1))
    cell = make_cell((640, 640), seed=800_002, depth=2)
    img = to_counts(render(cell, labels_at(cell, 0.0), 0.0))
    a, b = tiled.segment(img), whole.segment(img)
    assert (a[64:-64, 64:-64] == b[64:-64, 64:-64]).mean() > 0.99


def test_bad_frames_and_options(weights: Path) -> None:
    p = SegmentationPipeline(settings(weights))
    with pytest.raises(ValueError, match="at least"):
        p.process([frame(np.zeros((8, 300), np.uint16), "s", 0)])
    bad = np.full((64, 64), np.nan, np.float32)
    with pytest.raises(ValueError, match="non-finite"):
        p.process([frame(bad, "s", 0)])
    with pytest.raises(ConfigError, match="mask_shape"):
        SegmentationPipeline(settings(weights, mask_shape=2))
    with pytest.raises(ConfigError, match="unknown key"):
        SegmentationPipeline(settings(weights, colour="red"))
    with pytest.raises(ConfigError, match="cannot load model"):
        SegmentationPipeline(settings(weights.parent / "nowhere"))


def test_resample_nearest() -> None:
    m = np.arange(16, dtype=np.uint8).reshape(4, 4)
    np.testing.assert_array_equal(resample_nearest(m, 2), [[5, 7], [13, 15]])
    assert resample_nearest(m, 8).shape == (8, 8)
