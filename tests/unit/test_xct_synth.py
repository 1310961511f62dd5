"""Synthetic XCT slices and volumes: ground truth, determinism, 3-D consistency, growth."""

from __future__ import annotations

import numpy as np

from engines.synth.xct import (
    CLASSES,
    DENDRITE,
    ELECTRODE,
    ELECTROLYTE,
    labels_at,
    make_cell,
    make_slice,
    make_volume,
    render,
    to_counts,
)


def test_slice_is_deterministic_and_has_every_layer() -> None:
    a, la = make_slice((256, 320), seed=11)
    b, lb = make_slice((256, 320), seed=11)
    c, _ = make_slice((256, 320), seed=12)
    assert a.shape == la.shape == (256, 320) and a.dtype == np.float32 and la.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, c)
    assert la.max() < len(CLASSES)
    # Layers: electrode at the top and bottom rows, electrolyte in between.
    assert (la[0] == ELECTRODE).mean() > 0.9 and (la[-1] == ELECTRODE).mean() > 0.9
    assert (la[128] == ELECTROLYTE).mean() + (la[128] == DENDRITE).mean() > 0.6


def test_classes_have_distinct_contrast() -> None:
    """Low-attenuation dendrites are darker than the electrolyte they grow into (same slice)."""
    imgs, labs = [], []
    for s in range(4):
        i, lab = make_slice((256, 256), seed=100 + s)
        imgs.append((i - i.mean()) / i.std())
        labs.append(lab)
    img, lab = np.stack(imgs), np.stack(labs)
    assert (lab == DENDRITE).sum() > 100
    assert img[lab == DENDRITE].mean() < img[lab == ELECTROLYTE].mean() - 0.5


def test_volume_is_consistent_between_neighbouring_slices() -> None:
    imgs, labs = make_volume((192, 192), depth=8, seed=5)
    assert imgs.shape == labs.shape == (8, 192, 192)
    den = labs == DENDRITE
    assert den.any()
    inter = (den[1:] & den[:-1]).sum()
    union = (den[1:] | den[:-1]).sum()
    assert inter / union > 0.5  # dendrites are 3-D objects, not independent per slice
    far = make_volume((192, 192), depth=8, seed=6)[1] == DENDRITE
    assert (den & far).sum() / max((den | far).sum(), 1) < 0.2  # another cell is unrelated


def test_dendrites_only_grow_with_growth_level() -> None:
    cell = make_cell((256, 256), seed=3, depth=16)
    early = labels_at(cell, 8.0, growth=0.3) == DENDRITE
    late = labels_at(cell, 8.0, growth=1.0) == DENDRITE
    assert late.sum() > early.sum()
    assert not (early & ~late).any()  # grown segments never disappear


def test_render_and_counts() -> None:
    cell = make_cell((128, 128), seed=1, depth=4)
    lab = labels_at(cell, 1.0)
    img = render(cell, lab, 1.0)
    assert np.isfinite(img).all()
    counts = to_counts(img)
    assert counts.dtype == np.uint16 and counts.max() > counts.min()
