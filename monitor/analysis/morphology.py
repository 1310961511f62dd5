"""Morphology of a segmented XCT slice: volume fractions, components, dendrite penetration.

Class ids follow :data:`engines.prep.xct_classes.CLASSES` (0 electrode, 1 electrolyte, 2 dendrite,
3 redeposited Li, 4 pit). Rows ``y`` cross the cell: top electrode, electrolyte gap, bottom
electrode. The *gap* is every pixel that is neither electrode nor pit; per column its first and
last rows are the two interfaces (median-filtered along x against stray pixels).

Penetration depth of a dendrite component = how far it reaches from the interface it grows
from (the one nearer to it) towards the other, as a fraction of the local electrolyte
thickness; 1.0 means it bridges the gap (a short circuit). The slice's value is the maximum
over components of at least ``min_px`` pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from engines.prep.xct_classes import CLASSES, DENDRITE, ELECTRODE, N_CLASSES, PIT

EIGHT = np.ones((3, 3), bool)


@dataclass(frozen=True)
class SliceMorphology:
    fractions: tuple[float, ...]
    """Area (per slice: volume) fraction of each class over the whole slice."""
    dendrite_gap_fraction: float
    """Dendrite pixels / electrolyte-gap pixels."""
    penetration: float
    """Deepest dendrite reach as a fraction of the electrolyte thickness (0..1)."""
    thickness_px: float
    """Median electrolyte thickness (px); 0 when no gap is visible."""
    components: tuple[int, ...]
    """Connected components (8-connected, ≥ min_px) of dendrite, redeposit, pit."""
    largest_dendrite_px: int
    counts: tuple[int, ...]
    """Pixels per class."""


def class_counts(mask: np.ndarray, n: int = N_CLASSES) -> np.ndarray:
    return np.bincount(mask.ravel(), minlength=n)[:n]


def interfaces(mask: np.ndarray, smooth: int = 31) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column: top interface row, bottom interface row (exclusive), and whether a gap exists."""
    gap = (mask != ELECTRODE) & (mask != PIT)
    h = mask.shape[0]
    has = gap.any(axis=0)
    top = np.argmax(gap, axis=0).astype(np.float32)
    bot = (h - np.argmax(gap[::-1], axis=0)).astype(np.float32)
    if has.any() and not has.all():  # fill gapless columns from their neighbours
        idx = np.arange(mask.shape[1])
        top = np.interp(idx, idx[has], top[has]).astype(np.float32)
        bot = np.interp(idx, idx[has], bot[has]).astype(np.float32)
    if smooth > 1 and mask.shape[1] >= smooth:
        top = ndimage.median_filter(top, smooth, mode="nearest")
        bot = ndimage.median_filter(bot, smooth, mode="nearest")
    return top, bot, has


def penetration_depth(mask: np.ndarray, min_px: int = 4) -> tuple[float, float, int, int]:
    """(penetration fraction, median thickness px, dendrite components, largest component px)."""
    top, bot, has = interfaces(mask)
    if not has.any():
        return 0.0, 0.0, 0, 0
    lab, n = ndimage.label(mask == DENDRITE, structure=EIGHT)
    thickness = float(np.median((bot - top)[has]))
    if n == 0:
        return 0.0, thickness, 0, 0
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = np.flatnonzero(sizes >= min_px)
    keep = keep[keep > 0]
    if keep.size == 0:
        return 0.0, thickness, 0, 0
    ys, xs = np.nonzero(lab)
    ids = lab[ys, xs]
    span = np.maximum(bot[xs] - top[xs], 1.0)
    d_top = (ys - top[xs] + 1) / span
    d_bot = (bot[xs] - ys) / span
    min_top = ndimage.minimum(d_top, ids, keep)
    min_bot = ndimage.minimum(d_bot, ids, keep)
    max_top = ndimage.maximum(d_top, ids, keep)
    max_bot = ndimage.maximum(d_bot, ids, keep)
    reach = np.where(np.asarray(min_top) <= np.asarray(min_bot), max_top, max_bot)
    pen = float(np.clip(np.max(reach), 0.0, 1.0))
    return pen, thickness, int(keep.size), int(sizes[keep].max())


def count_components(mask: np.ndarray, cls: int, min_px: int = 4) -> int:
    lab, n = ndimage.label(mask == cls, structure=EIGHT)
    if n == 0:
        return 0
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    return int(np.count_nonzero(sizes >= min_px))


def slice_morphology(mask: np.ndarray, min_px: int = 4) -> SliceMorphology:
    """Everything the segmentation pipeline reports for one label map."""
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D label map, got shape {mask.shape}")
    counts = class_counts(mask)
    total = max(int(mask.size), 1)
    gap_px = int(total - counts[ELECTRODE] - counts[PIT])
    pen, thick, n_den, largest = penetration_depth(mask, min_px)
    comps = (n_den, count_components(mask, 3, min_px), count_components(mask, PIT, min_px))
    return SliceMorphology(
        fractions=tuple(float(c) / total for c in counts),
        dendrite_gap_fraction=float(counts[DENDRITE]) / gap_px if gap_px else 0.0,
        penetration=pen,
        thickness_px=thick,
        components=comps,
        largest_dendrite_px=largest,
        counts=tuple(int(c) for c in counts),
    )


class CumulativeVolume:
    """Voxels per class summed over the slices of a series (reset when the series changes)."""

    def __init__(self, n: int = N_CLASSES) -> None:
        self.n = n
        self.series = ""
        self.voxels = np.zeros(n, np.int64)
        self.slices = 0

    def add(self, series: str, counts: tuple[int, ...] | np.ndarray) -> np.ndarray:
        if series != self.series:
            self.series = series
            self.voxels[:] = 0
            self.slices = 0
        self.voxels += np.asarray(counts, np.int64)[: self.n]
        self.slices += 1
        return self.voxels.copy()

    def fractions(self) -> np.ndarray:
        total = max(int(self.voxels.sum()), 1)
        return self.voxels / total


__all__ = [
    "CLASSES",
    "CumulativeVolume",
    "SliceMorphology",
    "interfaces",
    "penetration_depth",
    "slice_morphology",
]
