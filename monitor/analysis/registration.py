"""Per-particle sub-pixel registration, rigid/non-rigid decomposition, and the global baselines.

Centre of mass on the masked ROI (after Su et al. 2024): inside a particle's territory the
optical density ``OD = log(b / I)`` (``b`` the local background level) is scaled by the
particle's own median OD and passed through a ramp that is 0 below ``lo`` and 1 above ``hi``
of it. The weight is a soft silhouette: its partial-volume edge gives sub-pixel precision,
and, being saturated inside, it does not follow the internal contrast that changes with
energy (shrinking or offset cores), which would drag an intensity-weighted centre of mass.

Baselines (one shift for the whole frame): ``skimage.registration.phase_cross_correlation``
and ``skimage.feature.match_template``, both on the same log, high-passed frames.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.feature import match_template
from skimage.registration import phase_cross_correlation

from monitor.analysis.particles import ParticleROI

RAMP = (0.2, 0.35)
"""Silhouette ramp, as fractions of the body's median OD (tuned on held-out seeds 150 010–150 012)."""


@dataclass(frozen=True, slots=True)
class CentreEstimate:
    y: float
    x: float
    weight: float
    """Sum of silhouette weights (≈ area in px); 0 means no estimate."""
    background: float
    level: float
    """Median optical density of the particle body."""


Circle = tuple[float, float, float]
"""(cy, cx, radius) in full-resolution frame coordinates."""


def split_mask(roi: ParticleROI, circles: Mapping[int, Circle]) -> np.ndarray:
    """The ROI pixels that belong to this particle: ``region`` minus pixels nearer (in the sense
    ``|x - c| - r``, whose zero set between two touching discs runs through their contact) to a
    neighbour. Depends on the sub-pixel centres, not on the coarse labels."""
    mask = roi.region.copy()
    if not roi.neighbours:
        return mask
    me = circles.get(roi.label)
    if me is None:
        return mask & ~np.zeros_like(mask)
    h, w = mask.shape
    yy = np.arange(h, dtype=np.float32)[:, None] + np.float32(roi.origin[0])
    xx = np.arange(w, dtype=np.float32)[None, :] + np.float32(roi.origin[1])
    d_me = np.sqrt((yy - me[0]) ** 2 + (xx - me[1]) ** 2) - np.float32(me[2])
    for j in roi.neighbours:
        c = circles.get(j)
        if c is None:
            continue
        d_j = np.sqrt((yy - c[0]) ** 2 + (xx - c[1]) ** 2) - np.float32(c[2])
        mask &= d_me <= d_j
    return mask


def _plane(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Least-squares plane through (a = [1, y, x], v) by the 3×3 normal equations."""
    ata = a.T @ a
    try:
        return np.linalg.solve(ata.astype(np.float64), (a.T @ v).astype(np.float64))
    except np.linalg.LinAlgError:
        return np.array([float(np.mean(v)), 0.0, 0.0])


def silhouette(
    roi_image: np.ndarray,
    territory: np.ndarray,
    body: np.ndarray,
    ramp: tuple[float, float] = RAMP,
    background: np.ndarray | None = None,
    core: np.ndarray | None = None,
) -> tuple[np.ndarray, float, float]:
    """(weights, background, body OD) for one ROI; weights are 0 outside ``territory``.

    The background plane is fitted on ``background`` (default: territory minus body). Inside
    ``core`` (the eroded body) the weight is 1: a crack is part of the particle, and its faint
    pixels would otherwise sit on the ramp, where noise and contrast changes move them."""
    log = np.log(np.maximum(roi_image.astype(np.float32, copy=False), 1e-3))
    ring = (background & territory) if background is not None else territory & ~body
    if ring.sum() < 12:
        ring = territory & ~body
    if ring.sum() < 12:
        ring = territory
    ys, xs = np.nonzero(ring)
    vals = log[ys, xs]
    if vals.size < 3:
        return np.zeros_like(log), float("nan"), 0.0
    # Background: a plane fitted to log counts in the ring (the flat field varies across a
    # particle, and a particle moving over that gradient would otherwise bias its centre).
    # Two passes; the second drops ring pixels that belong to the particle's own edge.
    a = np.stack([np.ones_like(vals), ys.astype(np.float32), xs.astype(np.float32)], axis=1)
    coef = _plane(a, vals)
    resid = vals - a @ coef
    keep = resid > -2.5 * max(float(np.median(np.abs(resid))) * 1.4826, 1e-4)
    if keep.sum() >= 3:
        coef = _plane(a[keep], vals[keep])
    yy = np.arange(log.shape[0], dtype=np.float32)[:, None]
    xx = np.arange(log.shape[1], dtype=np.float32)[None, :]
    plane = np.float32(coef[0]) + np.float32(coef[1]) * yy + np.float32(coef[2]) * xx
    b = float(np.exp(coef[0]))
    od = plane - log
    inside = body & territory
    level = float(np.median(od[inside])) if inside.any() else float(od.max())
    if level <= 1e-4:
        return np.zeros_like(od), b, level
    lo, hi = ramp
    w = np.clip((od / np.float32(level) - np.float32(lo)) / np.float32(hi - lo), 0, 1)
    if core is not None:
        w[core] = 1
    w[~territory] = 0
    return w, b, level


def centre_of_mass(
    image: np.ndarray,
    roi: ParticleROI,
    circles: Mapping[int, Circle] | None = None,
    ramp: tuple[float, float] = RAMP,
) -> CentreEstimate:
    """Sub-pixel centre (full-resolution frame coordinates) of one particle's silhouette."""
    y0, x0 = roi.origin
    h, w = roi.region.shape
    ys0, xs0 = max(y0, 0), max(x0, 0)
    ys1, xs1 = min(y0 + h, image.shape[0]), min(x0 + w, image.shape[1])
    if ys1 <= ys0 or xs1 <= xs0:
        return CentreEstimate(np.nan, np.nan, 0.0, np.nan, np.nan)
    sub = (slice(ys0 - y0, ys1 - y0), slice(xs0 - x0, xs1 - x0))
    territory = split_mask(roi, circles or {})[sub]
    wts, b, level = silhouette(
        image[ys0:ys1, xs0:xs1], territory, roi.body[sub], ramp, roi.background[sub], roi.core[sub]
    )
    total = float(wts.sum())
    if total <= 0:
        return CentreEstimate(np.nan, np.nan, 0.0, b, level)
    py = wts.sum(axis=1)
    px = wts.sum(axis=0)
    cy = float(py @ np.arange(py.size, dtype=np.float32)) / total
    cx = float(px @ np.arange(px.size, dtype=np.float32)) / total
    return CentreEstimate(cy + ys0, cx + xs0, total, b, level)


def register_all(
    image: np.ndarray,
    rois: Sequence[ParticleROI],
    passes: int = 2,
    ramp: tuple[float, float] = RAMP,
    *,
    redo: Sequence[int] | None = None,
    previous: Sequence[CentreEstimate] | None = None,
) -> list[CentreEstimate]:
    """Centres of all particles of a frame. Touching particles are split by circles at the
    ROIs' centroids first, then (``passes`` > 1) at the refined centres of the previous pass.

    With ``redo`` and ``previous``, only the ROIs listed in ``redo`` are measured; the others
    keep their ``previous`` estimate (and split the neighbours at those centres)."""
    circles: dict[int, Circle] = {r.label: (r.centroid[0], r.centroid[1], r.radius) for r in rois}
    out: list[CentreEstimate] = [CentreEstimate(np.nan, np.nan, 0.0, np.nan, np.nan)] * len(rois)
    todo = list(range(len(rois)))
    if redo is not None and previous is not None:
        out = list(previous)
        for i, roi in enumerate(rois):
            if out[i].weight > 0:
                circles[roi.label] = (out[i].y, out[i].x, roi.radius)
        todo = list(redo)
    for p in range(passes):
        for i in todo:
            out[i] = centre_of_mass(image, rois[i], circles, ramp)
        for i, roi in enumerate(rois):
            if out[i].weight > 0:
                circles[roi.label] = (out[i].y, out[i].x, roi.radius)
        todo = [i for i in todo if rois[i].neighbours]
        if not todo or p + 1 >= passes:
            break
    return out


def decompose(increments: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split per-particle displacements (P, 2) into the common (rigid) part and the residual.

    The rigid part is the mean over ``valid`` particles; the residual is zero where not valid.
    """
    rigid = increments[valid].mean(axis=0) if valid.any() else np.zeros(2)
    resid = np.where(valid[:, None], increments - rigid[None, :], 0.0)
    return rigid, resid


def aligned_crop(image: np.ndarray, centre: tuple[float, float], size: int, binning: int = 1) -> np.ndarray:
    """A ``size``×``size`` crop centred (sub-pixel, bilinear) at ``centre``, block-binned by ``binning``."""
    extent = size * binning
    half = (extent - 1) / 2.0
    y0, x0 = centre[0] - half, centre[1] - half
    iy, ix = int(np.floor(y0)), int(np.floor(x0))
    fy, fx = y0 - iy, x0 - ix
    pad = 2
    ys, xs = iy - pad, ix - pad
    n = extent + 2 * pad
    win = np.full((n, n), np.nan, np.float32)
    a0, a1 = max(ys, 0), min(ys + n, image.shape[0])
    b0, b1 = max(xs, 0), min(xs + n, image.shape[1])
    if a1 > a0 and b1 > b0:
        win[a0 - ys : a1 - ys, b0 - xs : b1 - xs] = image[a0:a1, b0:b1]
    # Bilinear shift by the fractional part (the integer part is in the window origin).
    top = win[pad : pad + extent + 1, pad : pad + extent + 1]
    out = (
        (1 - fy) * (1 - fx) * top[:-1, :-1]
        + (1 - fy) * fx * top[:-1, 1:]
        + fy * (1 - fx) * top[1:, :-1]
        + fy * fx * top[1:, 1:]
    )
    if binning > 1:
        out = out.reshape(size, binning, size, binning).mean(axis=(1, 3))
    return out.astype(np.float32)


# -- global baselines ------------------------------------------------------------------------


def highpass_log(frame: np.ndarray, sigma: float = 20.0) -> np.ndarray:
    """log counts minus a broad Gaussian blur: removes the fixed flat field that would pin a
    global registration to zero shift (applied to both baselines, so the comparison is fair)."""
    log = np.log(np.maximum(frame.astype(np.float32), 1e-3))
    return log - ndimage.gaussian_filter(log, sigma)


def phase_correlation_shift(reference: np.ndarray, moving: np.ndarray, upsample: int = 20) -> np.ndarray:
    """Global (dy, dx) that moves ``reference`` onto ``moving`` (skimage phase correlation)."""
    shift, _err, _phase = phase_cross_correlation(
        moving, reference, upsample_factor=upsample, normalization="phase"
    )
    return np.asarray(shift, dtype=np.float64)


def template_matching_shift(reference: np.ndarray, moving: np.ndarray, fraction: float = 0.6) -> np.ndarray:
    """Global (dy, dx) by normalised cross-correlation of the central ``fraction`` of ``reference``
    over ``moving`` (skimage ``match_template``), peak refined by a parabola fit."""
    h, w = reference.shape
    th, tw = int(h * fraction), int(w * fraction)
    y0, x0 = (h - th) // 2, (w - tw) // 2
    templ = reference[y0 : y0 + th, x0 : x0 + tw]
    cc = match_template(moving, templ)
    py, px = np.unravel_index(int(np.argmax(cc)), cc.shape)

    def refine(c_m: float, c_0: float, c_p: float) -> float:
        den = c_m - 2 * c_0 + c_p
        return 0.0 if den >= 0 else 0.5 * (c_m - c_p) / den

    dy = refine(cc[py - 1, px], cc[py, px], cc[py + 1, px]) if 0 < py < cc.shape[0] - 1 else 0.0
    dx = refine(cc[py, px - 1], cc[py, px], cc[py, px + 1]) if 0 < px < cc.shape[1] - 1 else 0.0
    return np.array([py + dy - y0, px + dx - x0], dtype=np.float64)
