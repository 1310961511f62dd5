"""Per-particle sub-pixel registration, rigid/non-rigid decomposition, and the global baselines.

Centre of mass on the masked ROI (after Su et al. 2024): inside a particle's territory the
optical density ``OD = log(b / I)`` (``b`` the local background level) is scaled by the
particle's own median OD and passed through a ramp that is 0 below ``lo`` and 1 above ``hi``
of it. The weight is a soft silhouette: its partial-volume edge gives sub-pixel precision,
and, being saturated inside, it does not follow the internal contrast that changes with
energy (shrinking or offset cores), which would drag an intensity-weighted centre of mass.
Work is on each ROI's pixel list (``ParticleROI.pixels``, made once with the masks), gathered
from the frame by flat index: no 2-D masks or ROI copies per frame.

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


@dataclass(frozen=True, slots=True)
class _Gathered:
    """One ROI's region pixels in one frame: local coordinates, log counts and the mask flags."""

    origin: tuple[int, int]
    y: np.ndarray
    x: np.ndarray
    log: np.ndarray
    body: np.ndarray
    background: np.ndarray
    core: np.ndarray
    fits: dict[str, tuple]
    """Plane and level of the last pass (a pass with the same ring and body reuses them)."""


def _gather(flat: np.ndarray, shape: tuple[int, int], roi: ParticleROI) -> _Gathered:
    """Log counts of the ROI's region pixels (those inside the frame), gathered by flat index."""
    pix = roi.pixel_lists()
    y0, x0 = roi.origin
    h, w = shape
    bh, bw = roi.region.shape
    iy, ix, y, x, body, bg, core = pix.iy, pix.ix, pix.y, pix.x, pix.body, pix.background, pix.core
    if y0 < 0 or x0 < 0 or y0 + bh > h or x0 + bw > w:
        gy, gx = iy + y0, ix + x0
        ok = (gy >= 0) & (gy < h) & (gx >= 0) & (gx < w)
        iy, ix, y, x, body, bg, core = (a[ok] for a in (iy, ix, y, x, body, bg, core))
    idx = (iy + y0) * w + (ix + x0)
    log = np.log(np.maximum(flat[idx], np.float32(1e-3)))
    return _Gathered(roi.origin, y, x, log, body, bg, core, {})


def _territory(g: _Gathered, roi: ParticleROI, circles: Mapping[int, Circle]) -> np.ndarray | None:
    """Which pixels belong to this particle (None: all of them): ``region`` minus pixels nearer
    (in the sense ``|x - c| - r``, whose zero set between two touching discs runs through their
    contact) to a neighbour. Depends on the sub-pixel centres, not on the coarse labels."""
    me = circles.get(roi.label) if roi.neighbours else None
    if me is None:
        return None
    y0, x0 = g.origin
    keep: np.ndarray | None = None
    d_me: np.ndarray | None = None
    for j in roi.neighbours:
        c = circles.get(j)
        if c is None:
            continue
        if d_me is None:
            d_me = _dist(g, me[0] - y0, me[1] - x0) - np.float32(me[2])
        k = d_me <= _dist(g, c[0] - y0, c[1] - x0) - np.float32(c[2])
        keep = k if keep is None else keep & k
    return keep


def _dist(g: _Gathered, cy: float, cx: float) -> np.ndarray:
    dy = g.y - np.float32(cy)
    dx = g.x - np.float32(cx)
    dy *= dy
    dx *= dx
    dy += dx
    return np.sqrt(dy, out=dy)


def _median(a: np.ndarray) -> float:
    """Median of a non-empty 1-D array (``np.partition``; ``np.median`` costs several times more)."""
    n = a.size
    k = n // 2
    if n % 2:
        return float(np.partition(a, k)[k])
    part = np.partition(a, (k - 1, k))
    return 0.5 * (float(part[k - 1]) + float(part[k]))


def _plane(y: np.ndarray, x: np.ndarray, v: np.ndarray) -> tuple[float, float, float]:
    """Least-squares plane ``v ≈ a + b·y + c·x`` (normal equations on centred coordinates)."""
    n = v.size
    my, mx, mv = float(y.sum()) / n, float(x.sum()) / n, float(v.sum()) / n
    yc = y - np.float32(my)
    xc = x - np.float32(mx)
    vc = v - np.float32(mv)
    syy, sxx, sxy = float(yc @ yc), float(xc @ xc), float(yc @ xc)
    syv, sxv = float(yc @ vc), float(xc @ vc)
    det = syy * sxx - sxy * sxy
    if not det > 1e-9 * max(syy * sxx, 1e-300):
        return mv, 0.0, 0.0
    by = (sxx * syv - sxy * sxv) / det
    bx = (syy * sxv - sxy * syv) / det
    return mv - by * my - bx * mx, by, bx


def _robust_plane(ry: np.ndarray, rx: np.ndarray, rv: np.ndarray) -> tuple[float, float, float] | None:
    """Background plane of log counts on the ring; the second fit drops pixels far below the
    first (the particle's own faint edge reaching into the ring)."""
    if rv.size < 3:
        return None
    a, by, bx = _plane(ry, rx, rv)
    resid = rv - (np.float32(a) + np.float32(by) * ry + np.float32(bx) * rx)
    mad = _median(np.abs(resid)) * 1.4826
    keep = resid > -2.5 * max(mad, 1e-4)
    n_keep = int(np.count_nonzero(keep))
    if 3 <= n_keep < rv.size:
        return _plane(ry[keep], rx[keep], rv[keep])
    return a, by, bx


def _measure(
    g: _Gathered,
    roi: ParticleROI,
    circles: Mapping[int, Circle],
    ramp: tuple[float, float],
) -> CentreEstimate:
    """Sub-pixel centre of one particle's silhouette (see the module docstring).

    The background plane is fitted to log counts on the background ring (the flat field varies
    across a particle, and a particle moving over that gradient would otherwise bias its
    centre), twice: the second fit drops ring pixels that belong to the particle's own edge.
    Inside the core (the eroded body) the weight is 1: a crack is part of the particle, and its
    faint pixels would otherwise sit on the ramp, where noise and contrast changes move them."""
    y, x, log = g.y, g.x, g.log
    terr = _territory(g, roi, circles)
    if terr is None:
        ring, body, core = g.background, g.body, g.core
    else:
        ring, body, core = g.background & terr, g.body & terr, g.core & terr
    if np.count_nonzero(ring) < 12:
        ring = ~g.body if terr is None else terr & ~g.body
        if np.count_nonzero(ring) < 12:
            ring = np.ones_like(g.body) if terr is None else terr
    cached = g.fits.get("plane")
    if cached is not None and np.array_equal(cached[0], ring):
        a, by, bx = cached[1]
        od = cached[2]
    else:
        fit = _robust_plane(y[ring], x[ring], log[ring])
        if fit is None:
            return CentreEstimate(np.nan, np.nan, 0.0, np.nan, 0.0)
        a, by, bx = fit
        od = np.float32(by) * y
        od += np.float32(bx) * x
        od += np.float32(a)
        od -= log
        g.fits["plane"] = (ring, fit, od)
        g.fits.pop("level", None)
    b = float(np.exp(a))
    cached = g.fits.get("level")
    if cached is not None and np.array_equal(cached[0], body):
        level = cached[1]
    else:
        inside = od[body]
        level = (
            _median(inside)
            if inside.size
            else float(od[terr].max(initial=0.0) if terr is not None else od.max())
        )
        g.fits["level"] = (body, level)
    if level <= 1e-4:
        return CentreEstimate(np.nan, np.nan, 0.0, b, level)
    lo, hi = ramp
    w = od * np.float32(1.0 / (level * (hi - lo)))
    w -= np.float32(lo / (hi - lo))
    np.clip(w, 0, 1, out=w)
    w[core] = 1
    if terr is not None:
        w *= terr
    total = float(w.sum(dtype=np.float64))
    if total <= 0:
        return CentreEstimate(np.nan, np.nan, 0.0, b, level)
    y0, x0 = g.origin
    return CentreEstimate(float(w @ y) / total + y0, float(w @ x) / total + x0, total, b, level)


def centre_of_mass(
    image: np.ndarray,
    roi: ParticleROI,
    circles: Mapping[int, Circle] | None = None,
    ramp: tuple[float, float] = RAMP,
) -> CentreEstimate:
    """Sub-pixel centre (full-resolution frame coordinates) of one particle's silhouette."""
    img = np.ascontiguousarray(image, dtype=np.float32)
    return _measure(_gather(img.ravel(), img.shape, roi), roi, circles or {}, ramp)


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
    keep their ``previous`` estimate (and split the neighbours at those centres). Each ROI's
    pixels are gathered once per call; a pass whose ring and body are unchanged reuses the
    background plane and level of the one before."""
    img = np.ascontiguousarray(image, dtype=np.float32)
    flat = img.ravel()
    circles: dict[int, Circle] = {r.label: (r.centroid[0], r.centroid[1], r.radius) for r in rois}
    out: list[CentreEstimate] = [CentreEstimate(np.nan, np.nan, 0.0, np.nan, np.nan)] * len(rois)
    todo = list(range(len(rois)))
    if redo is not None and previous is not None:
        out = list(previous)
        for i, roi in enumerate(rois):
            if out[i].weight > 0:
                circles[roi.label] = (out[i].y, out[i].x, roi.radius)
        todo = list(redo)
    gathered: dict[int, _Gathered] = {}

    def run(items: Sequence[int]) -> None:
        for i in items:
            g = gathered.get(i)
            if g is None:
                g = gathered[i] = _gather(flat, img.shape, rois[i])
            out[i] = _measure(g, rois[i], circles, ramp)

    for p in range(passes):
        run(todo)
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


def box_mean(image: np.ndarray, size: int) -> np.ndarray:
    """``size``² moving average (float32), edges mirrored: ``ndimage.uniform_filter(image, size)``
    by shifted-slice sums, several times faster for the small sizes used here."""
    a = np.asarray(image, dtype=np.float32)
    r = size // 2
    if r < 1:
        return a.copy()
    p = np.pad(a, r, mode="symmetric")
    h, w = a.shape
    rows = p[0:h].copy()
    for i in range(1, 2 * r + 1):
        rows += p[i : i + h]
    out = rows[:, 0:w].copy()
    for j in range(1, 2 * r + 1):
        out += rows[:, j : j + w]
    out *= np.float32(1.0 / ((2 * r + 1) ** 2))
    return out


class ShiftTracker:
    """Common shift of consecutive frames by phase correlation of their high-passed versions
    (the previous frame's spectrum is kept; peak refined by a parabola on each axis)."""

    def __init__(self, highpass: int = 9) -> None:
        self.highpass = highpass
        self._prev: np.ndarray | None = None
        self._prev_spec: np.ndarray | None = None

    def reset(self) -> None:
        self._prev = self._prev_spec = None

    def _spectrum(self, a: np.ndarray) -> np.ndarray:
        return np.fft.rfft2(a - box_mean(a, self.highpass))

    def update(self, image: np.ndarray, measure: bool = True) -> np.ndarray:
        """(dy, dx) the content moved since the previous call (zeros on the first call, on a new
        shape, or when not ``measure``: the frame is only remembered)."""
        a = np.asarray(image, dtype=np.float32)
        prev, prev_spec = self._prev, self._prev_spec
        self._prev, self._prev_spec = a, None
        if not measure or prev is None or prev.shape != a.shape:
            return np.zeros(2)
        if prev_spec is None:
            prev_spec = self._spectrum(prev)
        spec = self._prev_spec = self._spectrum(a)
        prod = prev_spec * spec.conj()
        prod /= np.maximum(np.abs(prod), 1e-12)
        cc = np.fft.irfft2(prod, s=a.shape)
        py, px = np.unravel_index(int(np.argmax(cc)), cc.shape)
        h, w = cc.shape

        def refine(c_m: float, c_0: float, c_p: float) -> float:
            den = c_m - 2 * c_0 + c_p
            return 0.0 if den >= 0 else float(np.clip(0.5 * (c_m - c_p) / den, -0.5, 0.5))

        dy = py + refine(cc[py - 1, px], cc[py, px], cc[(py + 1) % h, px])
        dx = px + refine(cc[py, px - 1], cc[py, px], cc[py, (px + 1) % w])
        shift = np.array([dy - h if dy > h / 2 else dy, dx - w if dx > w / 2 else dx])
        return -shift


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
