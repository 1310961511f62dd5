"""Tiled full-slice inference: exact at seams for a translation-equivariant model, any size."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from engines.tiling import TileSpec, full_predict, normalise_slice, tiled_predict

RADIUS = 3  # receptive-field radius of the model below


def conv_model(batch: np.ndarray) -> np.ndarray:
    """A fully convolutional 'identity-ish' model: two channels from zero-padded local filters."""
    out = []
    for x in batch[:, 0]:
        a = ndimage.uniform_filter(x, 2 * RADIUS + 1, mode="constant")
        b = x + 0.5 * ndimage.laplace(x, mode="constant") ** 2
        out.append(np.stack([a, b]))
    return np.stack(out).astype(np.float32)


@pytest.mark.parametrize("shape", [(300, 517), (128, 128), (97, 60), (256, 1024), (129, 383)])
@pytest.mark.parametrize("spec", [TileSpec(128, 32, 8, 5), TileSpec(64, 24, 4, 1), TileSpec(96, 40, 20, 64)])
def test_tiled_equals_whole_image_away_from_borders(shape: tuple[int, int], spec: TileSpec) -> None:
    img = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    tiled = tiled_predict(img, conv_model, spec)
    assert tiled.shape == (2, *shape) and tiled.dtype == np.float32
    whole = conv_model(img[None, None])[0]
    inner = (slice(None), slice(RADIUS, shape[0] - RADIUS), slice(RADIUS, shape[1] - RADIUS))
    if min(shape) >= spec.tile:  # no padding: exact everywhere off the image border
        np.testing.assert_allclose(tiled[inner], whole[inner], rtol=0, atol=1e-5)
    else:  # reflect padding changes the context near the padded edge only
        near = (slice(None), slice(RADIUS, shape[0] // 2), slice(RADIUS, shape[1] // 2))
        np.testing.assert_allclose(tiled[near], whole[near], atol=1e-5)


def test_margin_smaller_than_receptive_field_is_not_exact() -> None:
    """The check above can fail: with no zero-weight margin, seams show the tiles' zero padding."""
    img = np.random.default_rng(1).random((256, 256), dtype=np.float32)
    tiled = tiled_predict(img, conv_model, TileSpec(64, 16, 0, 4))
    whole = conv_model(img[None, None])[0]
    assert np.abs(tiled - whole)[:, RADIUS:-RADIUS, RADIUS:-RADIUS].max() > 1e-3


def test_batches_are_bounded_and_all_tiles_run() -> None:
    seen: list[int] = []

    def model(b: np.ndarray) -> np.ndarray:
        seen.append(b.shape[0])
        assert b.shape[1:] == (1, 128, 128) and b.flags.c_contiguous
        return b.repeat(3, axis=1)

    img = np.random.default_rng(2).random((2560, 700), dtype=np.float32)
    out = tiled_predict(img, model, TileSpec(128, 32, 8, 7))
    assert max(seen) <= 7 and sum(seen) == 27 * 7  # ceil((2560-128)/96)+1 = 27 rows, 7 columns
    np.testing.assert_allclose(out[2], img, atol=1e-6)  # identity model: exact everywhere


def test_full_predict_pads_to_multiple_and_crops() -> None:
    img = np.random.default_rng(3).random((100, 70), dtype=np.float32)

    def model(b: np.ndarray) -> np.ndarray:
        assert b.shape[2] % 32 == 0 and b.shape[3] % 32 == 0
        return b

    np.testing.assert_array_equal(full_predict(img, model, 32)[0], img)


def test_bad_specs_and_inputs() -> None:
    with pytest.raises(ValueError):
        TileSpec(128, 128, 8)
    with pytest.raises(ValueError):
        TileSpec(128, 32, 17)
    with pytest.raises(ValueError):
        tiled_predict(np.zeros((2, 64, 64), np.float32), conv_model)


def test_normalise_slice_maps_percentiles_to_unit_range() -> None:
    img = np.random.default_rng(4).normal(5000, 300, (512, 512)).astype(np.uint16)
    x = normalise_slice(img)
    assert x.dtype == np.float32
    assert abs(np.percentile(x, 1)) < 0.05 and abs(np.percentile(x, 99) - 1) < 0.05
    assert np.isfinite(normalise_slice(np.zeros((64, 64), np.uint16))).all()  # flat slice: no division by 0


def test_labels_from_probs_is_argmax() -> None:
    from engines.tiling import labels_from_probs

    p = np.random.default_rng(5).random((5, 70, 45), dtype=np.float32)
    p[:, 0, 0] = 0.5  # a tie: the first class wins, as with np.argmax
    np.testing.assert_array_equal(labels_from_probs(p, rows=16), p.argmax(0))
    assert labels_from_probs(p).dtype == np.uint8
