"""OOD guard: statistics, scores, the per-series decision, the segmentation pipeline with the
shipped model (synthetic scans in distribution; foreign images out, on every slice) and the
alarm gate (a MINOR ``segmentation_ood``; no penetration MAJOR while out of distribution)."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data

from engines.ood import OodStats, SeriesOod, fit_stats, image_features
from monitor.alerts.model import Severity
from monitor.alerts.ood import OodAlarms
from monitor.alerts.rules import ThresholdRule
from monitor.config import PipelineSettings, RuleSettings
from monitor.frames import Frame, FrameMeta
from monitor.pipelines.base import Result
from monitor.pipelines.segmentation import SegmentationPipeline
from monitor.sim.xct_stream import xct_slices


def test_fit_score_roundtrip() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(0, 1, (200, 5))
    st = fit_stats(rows, list("abcde"), floors=0.01)
    assert 2.0 <= st.threshold < 8.0
    inside = [st.score(r) for r in rng.normal(0, 1, (50, 5))]
    assert np.median(inside) < st.threshold / 2
    far = np.array([0.0, 0, 0, 9.0, -9.0])
    assert st.score(far) > st.threshold
    assert [n for n, _ in st.worst(far, 2)] in (["d", "e"], ["e", "d"])
    again = OodStats.from_json(st.to_json())
    assert again.score(far) == pytest.approx(st.score(far), rel=1e-4)
    with pytest.raises(ValueError):
        st.score(np.zeros(3))


def test_series_decision_is_a_median_and_new_once() -> None:
    g = SeriesOod(threshold=3.0, window=5)
    states = [g.update("s", "run1", v) for v in (5.0, 5.0, 1.0, 5.0)]
    assert [s.flagged for s in states] == [True, True, True, True]  # one good slice changes nothing
    assert [s.new for s in states] == [True, False, False, False]
    assert not g.update("s", "run2", 1.0).flagged  # a new series starts afresh


def test_image_features_are_scale_free() -> None:
    img = skimage.data.camera().astype(np.float32) / 255
    big = np.kron(img, np.ones((4, 4), np.float32))
    assert np.allclose(image_features(img)[:7], image_features(big)[:7], atol=0.02)


@pytest.fixture(scope="module")
def pipeline() -> SegmentationPipeline:
    s = PipelineSettings(name="segmentation", kind="segmentation", streams=("xct",), model="xct_unet_fast")
    return SegmentationPipeline(s)


def foreign_slices() -> list[np.ndarray]:
    """Real photographs and micrographs (scikit-image's data), none like the training slices."""
    imgs = [skimage.data.camera(), skimage.data.coins(), skimage.data.brick(), skimage.data.grass()]
    imgs.append(skimage.color.rgb2gray(skimage.data.immunohistochemistry()) * 255)
    imgs.append(skimage.data.moon())
    return [np.asarray(i, np.float32) for i in imgs]


def test_shipped_model_flags_foreign_images_on_every_slice(pipeline: SegmentationPipeline) -> None:
    assert pipeline.ood_stats is not None, "shipped manifest carries OOD statistics"
    frames = [
        Frame("xct", "cam", "foreign", i, img, 0.0, 0.0, FrameMeta())
        for i, img in enumerate(foreign_slices())
    ]
    res = pipeline.process(frames)
    assert all(r.scalars["ood"] == 1.0 for r in res), [round(r.scalars["ood_score"], 2) for r in res]
    assert all(r.scalars["ood_score"] > pipeline.ood.threshold for r in res)


def test_shipped_model_accepts_held_out_synthetic_scans(pipeline: SegmentationPipeline) -> None:
    frames = []
    for i, s in zip(range(24), xct_slices(seed_base=812_345, scans=1), strict=False):
        frames.append(Frame("xct", "sim", s.series, i, s.image, 0.0, 0.0, FrameMeta(slice_z=s.z)))
    res = pipeline.process(frames[::3])
    assert all(r.scalars["ood"] == 0.0 for r in res), [round(r.scalars["ood_score"], 2) for r in res]


def test_no_major_while_out_of_distribution(pipeline: SegmentationPipeline) -> None:
    rule = ThresholdRule(
        RuleSettings(
            name="dendrite_penetration", kind="threshold", pipeline="segmentation", metric="penetration",
            minor=0.5, major=0.8, min_count=1,
        )
    )  # fmt: skip
    gate = OodAlarms([pipeline])
    frames = [
        Frame("xct", "cam", "foreign2", i, img, 0.0, 0.0, FrameMeta())
        for i, img in enumerate(foreign_slices())
    ]
    verdicts = []
    for r in pipeline.process(frames):
        r = type(r)(r.pipeline, r.frame, {**r.scalars, "penetration": 1.0}, r.arrays, r.latency)
        v = gate.verdict("segmentation", r)
        if v is not None:
            verdicts.append(v)
        if not gate.suppressed("segmentation", r, "penetration"):
            v = rule.evaluate(r.frame.stream, r.scalars["penetration"], r.frame.series)
            if v is not None:
                verdicts.append(v)
    assert [(v.alarm_id, v.severity) for v in verdicts] == [("segmentation_ood:xct", Severity.MINOR)]
    # Without the guard the same values would raise a MAJOR.
    assert rule.evaluate("xct", 1.0, "foreign2").severity == Severity.MAJOR  # type: ignore[union-attr]


def test_gate_clears_and_can_be_switched_off() -> None:
    class Guarded:
        name = "seg"
        ood_gated = frozenset({"penetration"})

    gate = OodAlarms([Guarded()])

    def result(ood: float) -> Result:
        f = Frame("xct", "s", "run", 0, np.zeros((4, 4)), 0.0, 0.0, FrameMeta())
        return Result("seg", f, {"ood": ood, "ood_score": 9.0 if ood else 1.0, "penetration": 1.0})

    v = gate.verdict("seg", result(1.0))
    assert (
        v is not None and v.severity == Severity.MINOR and gate.suppressed("seg", result(1.0), "penetration")
    )
    assert not gate.suppressed("seg", result(1.0), "thickness_px")
    assert gate.verdict("seg", result(1.0)) is None  # raised once
    v = gate.verdict("seg", result(0.0))
    assert v is not None and v.severity == Severity.NO_ALARM
    assert not gate.suppressed("seg", result(0.0), "penetration")
    Guarded.ood_gated = frozenset()  # ood_suppress = false: the MINOR only
    gate = OodAlarms([Guarded()])
    assert gate.verdict("seg", result(1.0)) is not None and not gate.suppressed(
        "seg", result(1.0), "penetration"
    )
    assert OodAlarms([]).verdict("seg", result(1.0)) is None  # pipelines without a guard: untouched
