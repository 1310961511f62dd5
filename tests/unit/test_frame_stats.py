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
