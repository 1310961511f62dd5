"""Geometry-free window features: invariant to where the deposit is, to polarity and to rotation."""

from __future__ import annotations

import numpy as np
import pytest

from engines.prep.geo_features import FEATURE_NAMES, features, polarity, prepare_window


def _window(kind: str, seed: int = 0) -> np.ndarray:
    """A slab growing compactly from the bottom, or thin fingers growing from it."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(8):
        img = np.zeros((64, 64), np.float32)
        img[56:] = 1.0
        if kind == "compact":
            img[56 - 2 * k : 56] = 1.0
        else:
            for x in range(4, 64, 8):
                img[56 - 5 * k : 56, x] = 1.0
        frames.append(0.2 + 0.5 * img + 0.02 * rng.standard_normal((64, 64)).astype(np.float32))
    return np.stack(frames)


def test_fingers_have_a_lower_growth_zone_density_than_a_compact_slab() -> None:
    zd = FEATURE_NAMES.index("zone_density")
    pg = FEATURE_NAMES.index("perimeter_growth")
    c, d = features(_window("compact"))[-1], features(_window("fingers"))[-1]
    assert c[zd] > 0.8 > 0.5 > d[zd]
    assert d[pg] > c[pg]


@pytest.mark.parametrize("kind", ["compact", "fingers"])
def test_invariant_to_rotation_flip_and_polarity(kind: str) -> None:
    w = _window(kind)
    ref = features(w)
    np.testing.assert_allclose(features(np.rot90(w, 1, axes=(1, 2))), ref, atol=1e-5)
    np.testing.assert_allclose(features(w[:, ::-1]), ref, atol=1e-5)
    assert polarity(w) == 1.0 and polarity(1.0 - w) == -1.0
    np.testing.assert_allclose(features(1.0 - w), ref, atol=1e-5)
    frames, feats = prepare_window(1.0 - w)
    assert frames.mean() < 0  # deposit made bright: the inverted frames multiplied by -1
    np.testing.assert_allclose(feats, ref, atol=1e-5)


def test_a_still_window_has_no_growth() -> None:
    w = np.repeat(_window("compact")[:1], 8, axis=0)
    f = features(w)
    assert np.all(f[:, FEATURE_NAMES.index("advance")] < 0.2)
