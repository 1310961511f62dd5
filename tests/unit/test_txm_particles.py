"""Watershed instance split, instance F1 and full-resolution particle ROIs."""

from __future__ import annotations

import numpy as np

from engines.models.particle_net import instance_f1, instance_targets, split_instances
from monitor.analysis.particles import particle_rois, upsample_labels


def two_touching(shape: tuple[int, int] = (60, 80)) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    lab = np.zeros(shape, np.int32)
    lab[np.hypot(yy - 30, xx - 25) < 14] = 1
    lab[np.hypot(yy - 30, xx - 51) < 13] = 2  # touches disc 1
    return lab


def test_split_separates_touching_particles() -> None:
    truth = two_touching()
    fg, dist = instance_targets(truth)
    assert ((fg > 0.5) == (truth > 0)).all()
    pred = split_instances(fg, dist)
    assert pred.max() == 2
    tp, fp, fn = instance_f1(pred, truth)
    assert (tp, fp, fn) == (2, 0, 0)


def test_split_ignores_a_crack() -> None:
    truth = two_touching()
    fg, dist = instance_targets(truth)
    fg[:, 24:26] = np.where(truth[:, 24:26] == 1, 0.6, fg[:, 24:26])  # weaker foreground along a crack
    assert split_instances(fg, dist).max() == 2


def test_instance_f1_counts_misses_and_false_positives() -> None:
    truth = two_touching()
    merged = (truth > 0).astype(np.int32)
    tp, fp, fn = instance_f1(merged, truth)
    assert tp <= 1 and fn >= 1
    assert instance_f1(np.zeros_like(truth), truth) == (0, 0, 2)


def test_rois_cover_the_particles_at_full_resolution() -> None:
    low = two_touching()
    rois = particle_rois(low, 4, (240, 320))
    assert len(rois) == 2
    full = upsample_labels(low, 4, (240, 320))
    for r in rois:
        y0, x0 = r.origin
        h, w = r.body.shape
        assert (full[y0 : y0 + h, x0 : x0 + w][r.body] == r.label).all()
        assert r.region[r.body].all()
        assert r.neighbours == (3 - r.label,)
    cy, cx = rois[0].centroid
    assert abs(cy - (30 * 4 + 1.5)) < 2 and abs(cx - (25 * 4 + 1.5)) < 2
