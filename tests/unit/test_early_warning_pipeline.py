"""EarlyWarningPipeline: per-(stream, series) windows, fixed schema, odd shapes, bad frames.

Uses a freshly exported (untrained) CNN-GRU in a temporary weights directory, so the window
logic is tested independently of the shipped weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.models.cnn_gru import CnnGru
from engines.train.early_warning import MODEL_NAME, save_cnn_gru
from monitor.config import PipelineSettings
from monitor.errors import ConfigError
from monitor.frames import Frame
from monitor.pipelines.early_warning import SCALARS, EarlyWarningPipeline, resize


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ew_weights")
    torch.manual_seed(0)
    save_cnn_gru(CnnGru().eval(), out, command="test", seed=0, config={}, metrics={})
    return out


def _pipe(weights: Path, **options: int) -> EarlyWarningPipeline:
    return EarlyWarningPipeline(
        PipelineSettings(
            name="ew", kind="early_warning", streams=("growth",), weights_dir=str(weights), options=options
        )
    )


def _frame(series: str, i: int, shape: tuple[int, int] = (128, 128), seed: int = 0) -> Frame:
    a = np.random.default_rng(seed * 1000 + i).integers(0, 40000, shape).astype(np.uint16)
    return Frame("growth", "sim", series, i, a, 0.0, 0.0)


def test_risk_is_nan_until_the_window_is_full_and_each_series_has_its_own_window(weights: Path) -> None:
    pipe = _pipe(weights)
    assert pipe.schema().scalars == SCALARS
    t = pipe.window
    out = pipe.process([_frame("a", i) for i in range(t - 1)])
    assert all(math.isnan(r.scalars["risk"]) for r in out)
    assert [r.scalars["window_fill"] for r in out] == pytest.approx([(i + 1) / t for i in range(t - 1)])
    # A new series starts empty even though series "a" is one frame short of full.
    (b0,) = pipe.process([_frame("b", 0)])
    assert math.isnan(b0.scalars["risk"]) and b0.scalars["window_fill"] == pytest.approx(1 / t)
    (full,) = pipe.process([_frame("a", t - 1)])
    assert 0.0 <= full.scalars["risk"] <= 1.0
    assert math.isfinite(full.scalars["latent"]) and full.scalars["lead_time_frames"] >= 0
    assert full.scalars["window_fill"] == 1.0


def test_batched_processing_equals_frame_by_frame(weights: Path) -> None:
    frames = [_frame("s", i, seed=3) for i in range(12)]
    seq_pipe = _pipe(weights)
    one = [seq_pipe.process([f])[0].scalars["risk"] for f in frames]
    batched = [r.scalars["risk"] for r in _pipe(weights).process(frames)]
    np.testing.assert_allclose(np.nan_to_num(batched, nan=-1), np.nan_to_num(one, nan=-1), atol=1e-5)


def test_odd_shapes_are_resized_and_unusable_frames_raise_valueerror(weights: Path) -> None:
    pipe = _pipe(weights)
    out = pipe.process([_frame("odd", i, shape=(100, 90)) for i in range(pipe.window)])
    assert math.isfinite(out[-1].scalars["risk"])
    assert resize(np.ones((100, 90)), 64).shape == (64, 64)
    assert resize(np.ones((256, 256)), 64).shape == (64, 64)
    with pytest.raises(ValueError, match="at least 16 px"):
        pipe.process([_frame("tiny", 0, shape=(8, 128))])
    bad = Frame("growth", "sim", "nan", 0, np.full((64, 64), np.nan, np.float32), 0.0, 0.0)
    with pytest.raises(ValueError, match="non-finite"):
        pipe.process([bad])


def test_old_series_windows_are_evicted(weights: Path) -> None:
    pipe = _pipe(weights, max_series=2)
    for s in ("a", "b", "c"):
        pipe.process([_frame(s, 0)])
    (r,) = pipe.process([_frame("a", 1)])
    assert r.scalars["window_fill"] == pytest.approx(1 / pipe.window)  # "a" was dropped, starts over


def test_missing_model_and_bad_options_are_config_errors(tmp_path: Path, weights: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load model"):
        EarlyWarningPipeline(PipelineSettings(name="ew", kind="early_warning", weights_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="pipelines.ew.options.nope"):
        _pipe(weights, nope=1)
    assert (weights / f"{MODEL_NAME}.onnx").is_file()
