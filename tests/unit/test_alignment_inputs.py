"""Alignment pipeline on inputs it must survive, and its per-series input decisions (issue 13)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from engines.synth.txm_real import real_stack
from monitor.analysis.input_prep import INPUT_CONSTANT, INPUT_NO_PARTICLES, INPUT_NONFINITE, INPUT_ONE_HUGE
from monitor.analysis.tracking import Tracker
from monitor.config import PipelineSettings
from monitor.frames import Frame, FrameMeta
from monitor.pipelines.alignment import AlignmentPipeline


def pipeline(**options: bool | int | float | str) -> AlignmentPipeline:
    return AlignmentPipeline(
        PipelineSettings(name="alignment", kind="alignment", streams=("txm",), options=dict(options))
    )


def frame(arr: np.ndarray, i: int = 0, series: str = "s") -> Frame:
    return Frame("txm", "t", series, i, arr, float(i), float(i), FrameMeta(), seq=i + 1)


def test_bad_frames_are_flagged_logged_once_and_do_not_crash(caplog: pytest.LogCaptureFixture) -> None:
    pipe = pipeline()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:200, 0:200]
    huge = np.where(np.hypot(yy - 100, xx - 100) < 95, 200.0, 1000.0) + rng.normal(0, 5, (200, 200))
    nan = huge.copy()
    nan[10:20, 10:20] = np.nan
    cases = [
        (np.full((200, 200), 500.0), INPUT_CONSTANT),
        (np.full((200, 200), np.nan), INPUT_CONSTANT),
        (1000.0 + rng.normal(0, 3, (200, 200)), INPUT_NO_PARTICLES),
        (huge, INPUT_ONE_HUGE),
        (nan, INPUT_NONFINITE),
    ]
    with caplog.at_level(logging.WARNING, logger="monitor.analysis.input_prep"):
        for i, (arr, flag) in enumerate(cases * 2):
            (res,) = pipe.process([frame(arr.astype(np.float32), i, series=f"s{i % len(cases)}")])
            assert res.scalars["input_flag"] == flag, (i, res.scalars["input_flag"])
            assert np.isfinite(res.scalars["n_particles"])
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == len(cases)  # one line per series and kind, not one per frame
    assert any("constant frame" in w for w in warnings) and any("non-finite" in w for w in warnings)


@pytest.mark.parametrize("contrast", ["absorbance", "transmission"])
def test_auto_contrast_and_scale_are_decided_per_series_and_stored(contrast: str) -> None:
    st = real_stack(240_000, frames=6, contrast=contrast)
    pipe = pipeline()
    results = [pipe.process([frame(a, i)])[0] for i, a in enumerate(st.frames)]
    assert {r.scalars["contrast_absorbance"] for r in results} == {float(contrast == "absorbance")}
    d = results[0].scalars["particle_diameter_px"]
    assert 0.5 * st.diameter_px < d < 1.6 * st.diameter_px
    assert results[0].scalars["block_factor"] >= 2
    assert results[-1].scalars["n_whole"] >= 0.6 * st.whole.sum()
    # Edge-cut particles are flagged per slot and kept apart from the whole ones.
    r = results[-1]
    flags = [
        r.scalars[f"p{s}_edge_cut"] for s in range(pipe.opts.max_particles) if r.arrays["track_id"][s] >= 0
    ]
    assert sum(flags) <= r.scalars["n_edge_cut"]


def test_forced_contrast_option_is_used() -> None:
    st = real_stack(240_001, frames=2, contrast="absorbance")
    pipe = pipeline(contrast="transmission", particle_diameter_px=60.0)
    r = pipe.process([frame(st.frames[0])])[0]
    assert r.scalars["contrast_absorbance"] == 0.0 and r.scalars["particle_diameter_px"] == 60.0


def test_whole_particles_get_slots_before_edge_cut_ones(caplog: pytest.LogCaptureFixture) -> None:
    st = real_stack(240_002, frames=1, contrast="absorbance")
    pipe = pipeline(max_particles=2)
    with caplog.at_level(logging.WARNING, logger="monitor.pipelines.alignment"):
        r = pipe.process([frame(st.frames[0])])[0]
    assert r.scalars["n_whole"] > 2
    assert [r.scalars[f"p{s}_edge_cut"] for s in range(2)] == [0.0, 0.0]
    assert r.scalars["untracked"] >= r.scalars["n_particles"] - 2
    assert any("slots" in rec.getMessage() for rec in caplog.records)


def test_a_lost_track_is_refound_by_appearance_beyond_the_gate() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.random((24, 24)), rng.random((24, 24))
    tr = Tracker(max_tracks=4, gate_px=10.0, confirm_px=4.0)
    tr.update(np.array([[50.0, 50.0], [150.0, 150.0]]), [a, b])
    tr.update(np.array([[150.0, 150.0]]), [b])  # particle 1 missed
    upd = tr.update(np.array([[50.0, 68.0], [150.0, 150.0]]), [a + 0.01, b])  # back, 18 px away (gate 10)
    assert upd.assignment[0] is not None and upd.assignment[0].id == 1
    assert tr.found_total == 1 and not upd.started
    upd = tr.update(np.array([[50.0, 68.0], [150.0, 150.0], [100.0, 30.0]]), [a, b, rng.random((24, 24))])
    assert upd.started  # a detection that looks like no track starts a new one


def _discs(shape: tuple[int, int], diameter: float, step: int) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    lab = np.zeros(shape, np.int32)
    k = 0
    for cy in range(step // 2, shape[0] - step // 2, step):
        for cx in range(step // 2, shape[1] - step // 2, step):
            k += 1
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= (diameter / 2) ** 2] = k
    return lab


def test_series_scale_confirmed_by_network_instances() -> None:
    """The granulometry's estimate sets the first block factor; the first network pass's
    instance diameter corrects it, once per series."""
    from monitor.analysis.input_prep import SeriesInput, instance_diameter

    frame = np.where(_discs((460, 460), 40, 90) > 0, 300.0, 1000.0).astype(np.float32)
    si = SeriesInput("transmission", 0.0, 0, 20.0, "t")
    d = si.decide(("s", None, frame.shape), frame)
    assert d.factor == 2 and si.unconfirmed, d
    labels = _discs((230, 230), 38, 70)  # network instances at factor 2: 76 px particles
    assert abs(instance_diameter(labels) - 38) < 1.5
    assert si.confirm(labels, 2, frame.shape) is True
    assert si.decision is not None and si.decision.factor == 4
    assert abs(si.decision.diameter_px - 76) < 3
    assert si.confirm(labels, 4, frame.shape) is False  # once per series
    fixed = SeriesInput("transmission", 0.0, 3, 20.0, "t")
    fixed.decide(("s", None, frame.shape), frame)
    assert fixed.confirm(labels, 3, frame.shape) is False and fixed.decision.factor == 3  # type: ignore[union-attr]
