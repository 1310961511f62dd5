"""Numpy pre- and post-processing of the particle network (no torch): block-reduce a frame,
pad it, split the network's foreground + distance output into instances, score instances.

Used by the ONNX-only daemon (alignment pipeline, ``particles`` command) and by training; the
torch module itself lives in :mod:`engines.models.particle_net`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def downsample(frame: np.ndarray, factor: int) -> np.ndarray:
    """Block mean by ``factor`` (edges padded by replication to a multiple of ``factor``)."""
    a = np.asarray(frame, dtype=np.float32)
    if factor <= 1:
        return a
    h, w = a.shape
    ph, pw = (-h) % factor, (-w) % factor
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw)), mode="edge")
    h2, w2 = a.shape[0] // factor, a.shape[1] // factor
    # Summing the factor² strided sub-grids is several times faster than reshape(...).mean().
    out = np.zeros((h2, w2), np.float32)
    for i in range(factor):
        for j in range(factor):
            out += a[i::factor, j::factor]
    out *= np.float32(1.0 / (factor * factor))
    return out


def normalise(small: np.ndarray, contrast: str = "transmission") -> np.ndarray:
    """Network input (see :mod:`engines.prep.particle_prep`): particles positive, background
    near 0, the 2nd–98th percentile range scaled to 1. ``contrast`` says which way the input
    goes: ``"transmission"`` (counts or I/I0, dark particles; the network sees ``-log I``) or
    ``"absorbance"`` (optical density or CT values, bright particles)."""
    from engines.prep.particle_prep import normalise as _normalise

    return _normalise(small, contrast)


def pad_to_multiple(a: np.ndarray, multiple: int) -> np.ndarray:
    h, w = a.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return a
    pad = [(0, 0)] * (a.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(a, pad, mode="reflect")


def auto_downsample(shape: tuple[int, int], target: int = 128) -> int:
    """Block factor that brings the larger side close to ``target`` (4 for 460², 8 for 1024²)."""
    return max(1, int(round(max(shape) / target)))


def split_instances(
    fg: np.ndarray,
    dist: np.ndarray,
    *,
    fg_threshold: float = 0.5,
    seed_threshold: float = 0.45,
    min_seed_px: int = 3,
    min_size_px: int = 12,
    close_px: int = 1,
    merge_ratio: float = 0.7,
    merge_dist: float = 0.3,
) -> np.ndarray:
    """Instance labels (int32, 0 = background) from the two output maps by seeded watershed.

    Seeds are connected components of ``dist > seed_threshold`` inside the foreground (one per
    particle: the distance map dips where particles touch). Cracks must not cut a particle:

    - the foreground is closed by ``close_px`` and its holes filled, so a crack or pore the
      network left out is inside the particle again;
    - the watershed grows the seeds on the distance transform of that closed mask, and two
      adjacent regions are merged when the mask's inscribed radius where they meet (the neck)
      is at least ``merge_ratio`` of the smaller region's inscribed radius (a crack leaves the
      closed mask as wide as the particle, two touching particles meet at a narrow neck) *and*
      either their border runs mostly through a gap in the network's foreground (a crack it
      left out; touching particles are foreground up to their contact) or the network's
      distance map stays above ``merge_dist`` somewhere along it (it was trained to go to 0
      where two particles touch), *and* together they are convex (solidity ≥ 0.92: two
      overlapping particles leave notches where they meet, the halves of a cracked one do not).

    Tiny seeds and instances are dropped; labels are then restricted to the network's own
    foreground with each particle's holes filled."""
    from skimage.segmentation import watershed

    raw = fg > fg_threshold
    if not raw.any():
        return np.zeros(fg.shape, np.int32)
    mask = raw
    if close_px > 0:
        pad = close_px + 1
        mask = ndimage.binary_closing(np.pad(raw, pad), iterations=close_px)[pad:-pad, pad:-pad]
    mask = ndimage.binary_fill_holes(mask)
    markers, n = ndimage.label((dist > seed_threshold) & mask)
    if n == 0:
        return np.zeros(fg.shape, np.int32)
    sizes = np.bincount(markers.ravel(), minlength=n + 1)
    small = sizes < min_seed_px
    small[0] = False
    if small.any():
        markers[small[markers]] = 0
    edt = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1].astype(np.float32)
    # Watershed on the network's distance map, with the mask's own inscribed radius as a tie
    # breaker (the network's map is flat across a crack it did not see).
    labels = watershed(-(dist + 0.05 * edt / max(float(edt.max()), 1.0)), markers, mask=mask).astype(np.int32)
    if merge_ratio > 0 and labels.max() > 1:
        labels = _merge_wide_necks(labels, edt, dist, raw, merge_ratio, merge_dist)
    labels = np.where(raw | (labels > 0) & ~_outer_gaps(raw, mask), labels, 0).astype(np.int32)
    sizes = np.bincount(labels.ravel(), minlength=labels.max() + 1)
    keep = sizes >= min_size_px
    keep[0] = False
    remap = np.zeros(len(sizes), np.int32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return remap[labels]


def _outer_gaps(raw: np.ndarray, closed: np.ndarray) -> np.ndarray:
    """Pixels the closing added that are not enclosed by the raw foreground (gaps between
    particles, not cracks inside one): closed minus raw, excluding what filling raw's holes adds
    and what lies deeper than one pixel inside the closed mask."""
    added = closed & ~raw
    if not added.any():
        return added
    filled = ndimage.binary_fill_holes(raw)
    inner = ndimage.binary_erosion(closed, iterations=2, border_value=0)
    return added & ~filled & ~inner


def _solidity(labels: np.ndarray, a: int, b: int) -> float:
    """Area of regions ``a`` and ``b`` together over the area of their convex hull."""
    from skimage.morphology import convex_hull_image

    m = (labels == a) | (labels == b)
    ys, xs = np.nonzero(m)
    crop = m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    hull = convex_hull_image(crop)
    return float(crop.sum()) / max(float(hull.sum()), 1.0)


def _merge_wide_necks(
    labels: np.ndarray,
    edt: np.ndarray,
    dist: np.ndarray,
    raw: np.ndarray,
    ratio: float,
    min_dist: float,
    min_solidity: float = 0.92,
) -> np.ndarray:
    """Merge adjacent regions whose contact (the largest inscribed radius along their common
    border) is at least ``ratio`` of the smaller region's largest inscribed radius and along
    whose border the network's distance map reaches ``min_dist``."""
    n = int(labels.max())
    peak = np.zeros(n + 1, np.float32)
    peak[1:] = np.asarray(ndimage.maximum(edt, labels, index=np.arange(1, n + 1)), np.float32)
    keys: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    dvals: list[np.ndarray] = []
    gaps: list[np.ndarray] = []
    for a, b, ea, eb, da, db, ra, rb in (
        (
            labels[:, :-1],
            labels[:, 1:],
            edt[:, :-1],
            edt[:, 1:],
            dist[:, :-1],
            dist[:, 1:],
            raw[:, :-1],
            raw[:, 1:],
        ),
        (
            labels[:-1, :],
            labels[1:, :],
            edt[:-1, :],
            edt[1:, :],
            dist[:-1, :],
            dist[1:, :],
            raw[:-1, :],
            raw[1:, :],
        ),
    ):
        m = (a != b) & (a > 0) & (b > 0)
        if m.any():
            lo, hi = np.minimum(a[m], b[m]), np.maximum(a[m], b[m])
            keys.append(lo.astype(np.int64) * (n + 1) + hi)
            vals.append(np.minimum(ea[m], eb[m]))
            dvals.append(np.minimum(da[m], db[m]))
            gaps.append(~(ra[m] & rb[m]))
    if not keys:
        return labels
    k, v, dv = np.concatenate(keys), np.concatenate(vals), np.concatenate(dvals).astype(np.float32)
    uniq, inv = np.unique(k, return_inverse=True)
    neck = np.zeros(uniq.size, np.float32)
    np.maximum.at(neck, inv, v)
    dneck = np.zeros(uniq.size, np.float32)
    np.maximum.at(dneck, inv, dv)
    # Weighted bincount is float64 (numpy's stub says intp), so divide into a new array
    gap_sum = np.bincount(inv, weights=np.concatenate(gaps).astype(np.float64), minlength=uniq.size)
    gap = gap_sum / np.maximum(np.bincount(inv, minlength=uniq.size), 1)
    parent = np.arange(n + 1)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for key, nk, dk, gk in zip(uniq, neck, dneck, gap, strict=True):
        pa, pb = int(key // (n + 1)), int(key % (n + 1))
        wide = nk >= ratio * min(peak[pa], peak[pb]) and (dk >= min_dist or gk >= 0.5)
        if wide and _solidity(labels, pa, pb) >= min_solidity:
            root_a, root_b = root(pa), root(pb)
            if root_a != root_b:
                parent[max(root_a, root_b)] = min(root_a, root_b)
    lut = np.array([root(i) for i in range(n + 1)])
    return lut[labels].astype(np.int32)


def instance_targets(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training targets from an instance label map: (foreground, normalised distance), float32."""
    from skimage.segmentation import find_boundaries

    fg = labels > 0
    inner = fg & ~find_boundaries(labels, mode="inner")
    d = ndimage.distance_transform_edt(inner).astype(np.float32)
    n = int(labels.max())
    if n:
        peak = np.asarray(ndimage.maximum(d, labels, index=np.arange(1, n + 1)), np.float32)
        scale = np.concatenate([[1.0], np.maximum(peak, 1.0)]).astype(np.float32)
        d = d / scale[labels]
    return fg.astype(np.float32), np.clip(d, 0, 1)


def instance_f1(pred: np.ndarray, true: np.ndarray, iou: float = 0.5) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) matching instances at IoU > ``iou``."""
    n_p, n_t = int(pred.max()), int(true.max())
    if n_p == 0 or n_t == 0:
        return 0, n_p, n_t
    joint = np.bincount(
        pred.ravel().astype(np.int64) * (n_t + 1) + true.ravel(), minlength=(n_p + 1) * (n_t + 1)
    )
    joint = joint.reshape(n_p + 1, n_t + 1)
    area_p, area_t = joint.sum(axis=1), joint.sum(axis=0)
    inter = joint[1:, 1:].astype(np.float64)
    union = area_p[1:, None] + area_t[None, 1:] - inter
    ious = inter / np.maximum(union, 1)
    tp = int((ious > iou).sum())  # IoU > 0.5 matches are unique on both sides
    return tp, n_p - tp, n_t - tp
