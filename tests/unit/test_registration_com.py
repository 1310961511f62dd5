"""Sub-pixel centre-of-mass registration, rigid/non-rigid split, and the global baselines."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engines.synth.txm_xanes import TxmConfig, make_scene, render
from monitor.analysis.particles import particle_rois
from monitor.analysis.registration import (
    aligned_crop,
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
