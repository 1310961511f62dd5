from __future__ import annotations

import numpy as np
import pytest

from monitor.pipelines.frame_stats import frame_statistics


@pytest.mark.parametrize("shape", [(97, 131), (1100, 1000)])  # the second is histogrammed in chunks
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int8", "int16", "int32", "float32", "float64"])
def test_matches_numpy(dtype: str, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    a = (rng.random(shape) * 100).astype(dtype)
    s = frame_statistics(a, saturation=95, dead=2)
    f = a.astype(np.float64)
    assert s["mean"] == pytest.approx(f.mean())
    assert s["std"] == pytest.approx(f.std())
    assert s["min"] == f.min() and s["max"] == f.max()
    for q, k in ((1, "p1"), (50, "p50"), (99, "p99")):
        assert s[k] == pytest.approx(np.percentile(f, q, method="inverted_cdf"))
    assert s["saturated_fraction"] == pytest.approx((f >= 95).mean())
    assert s["dead_fraction"] == pytest.approx((f <= 2).mean())


def test_negative_int16_values() -> None:
    a = np.array([[-5, -1, 0, 7]], dtype=np.int16)
    s = frame_statistics(a, saturation=7, dead=-1)
    assert s["min"] == -5 and s["max"] == 7
    assert s["saturated_fraction"] == 0.25
    assert s["dead_fraction"] == 0.5


def test_detector_saturation_value_from_metadata() -> None:
    """A stream2 detector's saturation_value (carried in FrameMeta.extra) is used when none is set."""
    from monitor.config import PipelineSettings
    from monitor.frames import Frame, FrameMeta
    from monitor.pipelines.frame_stats import FrameStatsPipeline

    a = np.full((10, 10), 100, np.uint32)
    a[0, :5] = 5000
    meta = FrameMeta(extra={"saturation_value": 5000})
    p = FrameStatsPipeline(PipelineSettings(name="s", kind="frame_stats"))
    with_meta = p.process([Frame("f", "d", "s", 0, a, 0.0, 0.0, meta)])[0]
    without = p.process([Frame("f", "d", "s", 1, a, 0.0, 0.0)])[0]
    assert with_meta.scalars["saturated_fraction"] == 0.05
    assert without.scalars["saturated_fraction"] == 0.0
    configured = FrameStatsPipeline(PipelineSettings(name="s", kind="frame_stats", saturation_value=100))
    assert (
        configured.process([Frame("f", "d", "s", 0, a, 0.0, 0.0, meta)])[0].scalars["saturated_fraction"]
        == 1.0
    )


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int16", "float32"])
def test_sampled_path_keeps_exact_fields_exact(dtype: str) -> None:
    """Above exact_pixels: mean, min, max, saturated and dead fractions still exact; the rest close."""
    rng = np.random.default_rng(3)
    a = rng.poisson(300, (1536, 1400)).astype(dtype)
    a[100:107, 50:600] = 4000  # a saturated band: not sampled evenly
    a[900, :3] = 0
    exact = frame_statistics(a, saturation=4000, dead=0)
    sampled = frame_statistics(a, saturation=4000, dead=0, exact_pixels=1 << 20)
    for key in ("mean", "min", "max", "saturated_fraction", "dead_fraction"):
        assert sampled[key] == pytest.approx(exact[key], rel=1e-9), key
    for key in ("p1", "p50", "p99"):
        assert abs(sampled[key] - exact[key]) <= 2, key
    assert sampled["std"] == pytest.approx(exact["std"], rel=0.15)
    assert frame_statistics(a, saturation=4000, dead=0, exact_pixels=a.size) == exact


def test_sample_grid_keeps_enough_pixels() -> None:
    from monitor.pipelines.frame_stats import SAMPLE_MIN_PIXELS, sample_grid

    for shape in ((2048, 2048), (4362, 4148), (600, 700)):
        sub = sample_grid(np.zeros(shape, np.uint8))
        assert sub.size >= min(SAMPLE_MIN_PIXELS, np.prod(shape))
        assert sub.size <= 4 * SAMPLE_MIN_PIXELS or sub.size == np.prod(shape)


def test_exact_pixels_option_and_nan_frames() -> None:
    from monitor.config import PipelineSettings
    from monitor.errors import ConfigError
    from monitor.frames import Frame
    from monitor.pipelines.frame_stats import FrameStatsPipeline

    a = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    a[3, 3] = np.nan
    p = FrameStatsPipeline(PipelineSettings(name="s", kind="frame_stats", options={"exact_pixels": 100}))
    got = p.process([Frame("f", "d", "s", 0, a, 0.0, 0.0)])[0].scalars
    want = frame_statistics(a, float("inf"), 0.0)  # NaN frames take the exact path
    assert got.keys() == want.keys()
    np.testing.assert_array_equal([got[k] for k in want], [want[k] for k in want])
    with pytest.raises(ConfigError):
        FrameStatsPipeline(PipelineSettings(name="s", kind="frame_stats", options={"exact": 1}))
