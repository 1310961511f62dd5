"""Per-particle phase-correlation refinement and the real-texture bench scoring (issue 13)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from monitor.analysis.particles import particle_rois
from monitor.analysis.refine import ParticleRefiner
from monitor.bench.alignment_real import f1_gt800


def textured_frame(shift: tuple[float, float], rng_seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(rng_seed)
    tex = ndimage.gaussian_filter(rng.standard_normal((200, 200)), 1.2)
    yy, xx = np.mgrid[0:200, 0:200].astype(float)
    body = (np.hypot(yy - 100, xx - 100) < 30).astype(float)
    od = ndimage.gaussian_filter(body, 1.0) * (1.0 + 1.5 * tex)
    od = ndimage.shift(od, shift, order=3)
    return (1000.0 * np.exp(-od)).astype(np.float32)


def roi_at_centre() -> object:
    low = np.zeros((50, 50), np.int32)
    yy, xx = np.mgrid[0:50, 0:50]
    low[np.hypot(yy - 25, xx - 25) < 8] = 1
    (roi,) = particle_rois(low, 4, (200, 200))
    return roi


def test_refinement_recovers_what_the_centre_of_mass_missed() -> None:
    roi = roi_at_centre()
    ref = ParticleRefiner(min_quality=0.5, apply=True)
    first = ref.refine(1, textured_frame((0.0, 0.0)), roi, (100.0, 100.0))
    assert first.quality == 1.0 and not first.applied
    # The particle moved by (1.3, -0.6); the centre of mass said (1.0, 0.0).
    out = ref.refine(1, textured_frame((1.3, -0.6)), roi, (101.0, 100.0))
    assert out.applied and out.quality > 0.8
    assert abs(out.dy - 0.3) < 0.12 and abs(out.dx + 0.6) < 0.12


def test_quality_drops_when_the_particle_no_longer_looks_the_same() -> None:
    roi = roi_at_centre()
    ref = ParticleRefiner(min_quality=0.6, apply=False)
    ref.refine(1, textured_frame((0.0, 0.0), 0), roi, (100.0, 100.0))
    same = ref.refine(1, textured_frame((0.0, 0.0), 0), roi, (100.0, 100.0))
    other = ref.refine(1, textured_frame((0.0, 0.0), 1), roi, (100.0, 100.0))
    assert same.quality > 0.99 and other.quality < same.quality - 0.2 and not same.applied


def test_smooth_particles_are_not_refined_in_auto_mode() -> None:
    roi = roi_at_centre()
    yy, xx = np.mgrid[0:200, 0:200].astype(float)
    smooth = (1000 * np.exp(-ndimage.gaussian_filter((np.hypot(yy - 100, xx - 100) < 30) * 1.0, 1.0))).astype(
        np.float32
    )
    ref = ParticleRefiner(min_quality=0.5, apply=True, min_texture=0.25)
    ref.refine(1, smooth, roi, (100.0, 100.0))
    assert not ref.refine(1, smooth, roi, (100.4, 100.0)).applied


def test_f1_counts_only_reference_particles_above_800_px() -> None:
    ref = np.zeros((100, 100), np.int32)
    ref[10:50, 10:50] = 1  # 1600 px
    ref[60:70, 60:70] = 2  # 100 px: neither right nor wrong
    pred = np.zeros_like(ref)
    pred[12:50, 10:50] = 1
    pred[60:70, 60:70] = 2
    assert f1_gt800(pred, ref) == (1, 0, 0)
    pred2 = np.zeros_like(ref)
    pred2[55:95, 5:45] = 1  # 1600 px of nothing: a false positive
    assert f1_gt800(pred2, ref) == (0, 1, 1)
