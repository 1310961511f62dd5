"""Sub-pixel centre-of-mass registration, rigid/non-rigid split, and the global baselines."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from engines.synth.txm_xanes import TxmConfig, make_scene, render
from monitor.analysis.particles import particle_rois
from monitor.analysis.registration import (
    ShiftTracker,
    aligned_crop,
    box_mean,
    centre_of_mass,
    decompose,
    highpass_log,
    phase_correlation_shift,
    register_all,
    template_matching_shift,
)

CFG = TxmConfig(size=240, n_particles=3, radius_px=(40.0, 50.0), touch_prob=1.0, noise=0.5)


def centres(image: np.ndarray, labels: np.ndarray) -> dict[int, np.ndarray]:
    low = labels[2::4, 2::4].astype(np.int32)
    rois = particle_rois(low, 4, image.shape)
    return {r.label: np.array([e.y, e.x]) for r, e in zip(rois, register_all(image, rois), strict=True)}


@pytest.mark.parametrize("seed", [1, 2])
def test_recovers_subpixel_shifts_of_touching_particles(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scene = make_scene(rng, CFG)
    n = len(scene.particles)
    zero = np.zeros((n, 2))
    shift = rng.uniform(-2.5, 2.5, (n, 2))  # each particle its own (non-rigid) shift
    img0, lab0 = render(scene, 8335.0, zero, rng)
    img1, lab1 = render(scene, 8350.0, shift, rng)  # other energy: other contrast
    c0, c1 = centres(img0, lab0), centres(img1, lab1)
    errs = [np.linalg.norm((c1[k] - c0[k]) - shift[k - 1]) for k in c0 if k in c1]
    assert len(errs) == n
    assert np.sqrt(np.mean(np.square(errs))) < 0.5  # pre-edge vs post-edge contrast, all touching


def test_decompose_splits_common_motion() -> None:
    inc = np.array([[1.0, 2.0], [1.5, 2.0], [0.5, 2.0], [9.0, 9.0]])
    valid = np.array([True, True, True, False])
    rigid, resid = decompose(inc, valid)
    assert np.allclose(rigid, [1.0, 2.0])
    assert np.allclose(resid[:3], [[0, 0], [0.5, 0], [-0.5, 0]]) and np.allclose(resid[3], 0)


def test_baselines_recover_a_global_shift() -> None:
    rng = np.random.default_rng(4)
    cfg = dataclasses.replace(CFG, touch_prob=0.0, n_particles=4, radius_px=(20.0, 30.0))
    scene = make_scene(rng, cfg)
    n = len(scene.particles)
    d = np.array([2.3, -1.6])
    img0, _ = render(scene, 8345.0, np.zeros((n, 2)), rng)
    img1, _ = render(scene, 8345.0, np.tile(d, (n, 1)), rng)
    a, b = highpass_log(img0), highpass_log(img1)
    assert np.allclose(phase_correlation_shift(a, b), d, atol=0.3)
    assert np.allclose(template_matching_shift(a, b), d, atol=0.3)


def test_aligned_crop_is_subpixel_and_nan_outside() -> None:
    img = np.add.outer(np.arange(50.0), np.zeros(50))  # value = row
    crop = aligned_crop(img, (20.25, 25.0), 8)
    assert crop.shape == (8, 8)
    assert np.allclose(crop[:, 0], np.arange(8) + 20.25 - 3.5)
    assert np.isnan(aligned_crop(img, (2.0, 2.0), 16)).any()


def test_box_mean_is_uniform_filter() -> None:
    img = np.random.default_rng(0).random((37, 52)).astype(np.float32)
    for size in (3, 5, 9):
        assert np.allclose(box_mean(img, size), ndimage.uniform_filter(img, size), atol=1e-6)


def test_shift_tracker_measures_the_common_shift() -> None:
    rng = np.random.default_rng(5)
    blobs = ndimage.gaussian_filter(rng.standard_normal((128, 128)), 4.0, mode="wrap") > 0
    base = ndimage.gaussian_filter(blobs.astype(np.float64), 0.7, mode="wrap").astype(np.float32)
    st = ShiftTracker(9)
    assert np.allclose(st.update(base), 0)
    moved = ndimage.shift(base, (2.4, -1.3), order=3, mode="grid-wrap").astype(np.float32)
    assert np.allclose(st.update(moved), (2.4, -1.3), atol=0.2)
    st.update(moved, measure=False)
    assert np.allclose(st.update(moved), 0, atol=0.05)


def test_single_particle_centre_matches_register_all() -> None:
    rng = np.random.default_rng(2)
    scene = make_scene(rng, CFG)
    img, lab = render(scene, 8345.0, np.zeros((len(scene.particles), 2)), rng)
    rois = particle_rois(lab[2::4, 2::4].astype(np.int32), 4, img.shape)
    both = register_all(img, rois, 1)
    circles = {r.label: (r.centroid[0], r.centroid[1], r.radius) for r in rois}
    for r, e in zip(rois, both, strict=True):
        one = centre_of_mass(img, r, circles)
        assert abs(one.y - e.y) < 1e-6 and abs(one.x - e.x) < 1e-6
