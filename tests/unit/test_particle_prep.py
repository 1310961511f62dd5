"""Contrast conventions, particle scale, crack-safe split, edge-cut ROIs (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest

from engines.models.particle_net import instance_targets, split_instances
from engines.prep.particle_prep import block_factor, detect_contrast, estimate_diameter, normalise
from engines.synth.txm_real import real_like
from engines.synth.txm_xanes import random_frame
from monitor.analysis.particles import particle_rois

SEED0 = 230_000  # held out: never used in training or tuning


@pytest.mark.parametrize("contrast", ["transmission", "absorbance"])
def test_auto_contrast_finds_the_polarity_of_real_like_frames(contrast: str) -> None:
    right = 0
    for i in range(8):
        rng = np.random.default_rng(SEED0 + i)
        frame = real_like(rng, (320, 400), float(rng.uniform(30, 90)), contrast=contrast)
        right += detect_contrast(frame.image).contrast == contrast
    assert right >= 7


def test_auto_contrast_of_synthetic_txm_and_its_inversion() -> None:
    counts, _ = random_frame(np.random.default_rng(SEED0 + 50))
    assert detect_contrast(counts).contrast == "transmission"
    od = -np.log(np.maximum(counts, 1.0) / counts.max())  # the same frame as optical density
    assert detect_contrast(od).contrast == "absorbance"


def test_flat_image_defaults_to_transmission_without_error() -> None:
    dec = detect_contrast(np.full((64, 64), 7.0, np.float32))
    assert dec.contrast == "transmission" and dec.score == 0.0


@pytest.mark.parametrize("contrast", ["transmission", "absorbance"])
def test_normalise_makes_particles_positive_in_either_convention(contrast: str) -> None:
    rng = np.random.default_rng(SEED0 + 60)
    frame = real_like(rng, (300, 300), 60.0, contrast=contrast)
    x = normalise(frame.image, contrast)
    inside, outside = x[frame.labels > 0], x[frame.labels == 0]
    assert np.median(inside) > 0.15 and abs(float(np.median(outside))) < 0.1
    # The wrong convention puts particles negative: what the network never saw.
    wrong = normalise(frame.image, "absorbance" if contrast == "transmission" else "transmission")
    assert np.median(wrong[frame.labels > 0]) < np.median(wrong[frame.labels == 0])


def test_normalise_survives_nan_and_constant_input() -> None:
    a = np.ones((40, 40), np.float32)
    assert np.all(normalise(a) == 0)
    a[3, 3] = np.nan
    assert np.isfinite(normalise(a)).all()


def test_diameter_estimate_follows_the_particles() -> None:
    for d in (30.0, 80.0, 200.0):
        rng = np.random.default_rng(SEED0 + int(d))
        frame = real_like(rng, (700, 700), d, contrast="absorbance")
        est = estimate_diameter(frame.image, "absorbance")
        assert 0.55 * d < est < 1.6 * d, (d, est)


def test_block_factor_from_diameter() -> None:
    assert block_factor(80.0, (460, 460)) == 4
    assert block_factor(20.0, (460, 460)) == 1
    assert block_factor(1000.0, (460, 460)) == 14  # bounded by the field (460 // 32)
    assert block_factor(float("nan"), (1024, 1024)) == 8  # unknown: the old frame-size rule


def disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.hypot(yy - cy, xx - cx) < r


def test_a_crack_the_network_cuts_does_not_split_the_particle() -> None:
    lab = disc((64, 64), 32, 32, 20).astype(np.int32)
    fg, _ = instance_targets(lab)
    # What a network that never saw cracks produces: a gap in the foreground along the crack
    # and a distance map that treats the two halves as separate objects.
    crack = np.zeros_like(fg, bool)
    crack[:, 30:32] = True
    fg = np.where(crack, 0.0, fg).astype(np.float32)
    _, dist = instance_targets(np.where(crack, 0, np.where(np.arange(64)[None, :] < 31, 1, 2) * lab))
    old = split_instances(fg, dist, close_px=0, merge_ratio=0)
    assert old.max() == 2  # the old split cut it in two
    assert split_instances(fg, dist).max() == 1


def test_touching_particles_still_separate() -> None:
    lab = np.zeros((60, 80), np.int32)
    lab[disc(lab.shape, 30, 25, 14)] = 1
    lab[disc(lab.shape, 30, 51, 13)] = 2
    fg, dist = instance_targets(lab)
    assert split_instances(fg, dist).max() == 2


def test_rois_flag_particles_cut_by_the_field_edge() -> None:
    low = np.zeros((40, 50), np.int32)
    low[disc(low.shape, 20, 25, 6)] = 1
    low[disc(low.shape, 2, 10, 5)] = 2  # reaches the top edge
    rois = {r.label: r for r in particle_rois(low, 4, (160, 200))}
    assert not rois[1].edge_cut and rois[2].edge_cut


def test_block_factor_keeps_frame_size_factor_at_training_scale() -> None:
    """Particles at a trained scale keep the frame-size factor (no flip between 3, 4 and 5 as
    the estimate scatters); outside it the factor follows the diameter."""
    assert [block_factor(d, (460, 460)) for d in (66.0, 70.0, 80.0, 97.0)] == [4] * 4
    assert block_factor(58.0, (460, 460)) == 3  # 14.5 px at factor 4: below 16 → 2.9 → 3
    assert block_factor(110.0, (460, 460)) == 6  # 27.5 px at factor 4: above 25
    assert block_factor(50.0, (460, 460)) == 2  # 12.5 px at factor 4: too small → 2.5 → 2
    assert block_factor(130.0, (460, 460)) == 6  # 32.5 px at factor 4: too big
    assert block_factor(80.0, (2048, 2048)) == 4  # 5 px at the frame-size factor 16: too small
    assert block_factor(300.0, (2048, 2048)) == 16  # 18.75 px at 16: trained scale
