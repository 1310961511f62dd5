"""Synthetic particle images that look like real TXM radiographs and nano-CT slices.

Unlike :mod:`engines.synth.txm_xanes` (clean round NMC particles, one polarity), a frame here
has what real images of cathode particles have:

- both polarities: a *radiograph* in transmission (dark particles, thickness ∝ chord length,
  counts with a flat field) or a *slice* in absorbance (bright particles of uniform density on
  a dark background, as a reconstructed nano-CT slice);
- internal texture: primary grains (Voronoi cells with their own density and darker grain
  boundaries), pores, and cracks that cross the particle and reach its surface;
- touching and overlapping particles, particles cut by the field edge, elongated shapes;
- particle diameters from ~20 to ~250 px (one typical size per frame: scale randomisation);
- uneven background (binder-like blobs in slices), flat-field residue, ring and streak
  artefacts, noise.

:func:`real_like` returns the image and its instance labels (cracks and pores belong to their
particle). Seeds: training uses ``engines.train.alignment_data`` ranges, as for txm_xanes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class RealLike:
    image: np.ndarray  # (H, W) float32, in the frame's own convention
    labels: np.ndarray  # (H, W) uint16 instance labels
    contrast: str  # "transmission" or "absorbance"
    diameter_px: float  # median particle diameter used to draw the frame


def _smooth(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="reflect")
    return n / (float(n.std()) + 1e-6)


def _grains(rng: np.random.Generator, mask: np.ndarray, grain_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(per-pixel grain density factor, grain-boundary mask) inside ``mask``."""
    h, w = mask.shape
    n = max(2, int(mask.sum() / max(grain_px**2, 1.0)))
    seeds = np.zeros((h, w), bool)
    ys, xs = np.nonzero(mask)
    pick = rng.choice(ys.size, size=min(n, ys.size), replace=False)
    seeds[ys[pick], xs[pick]] = True
    _, (iy, ix) = ndimage.distance_transform_edt(~seeds, return_indices=True)
    cell = iy * w + ix
    lev = 1.0 + 0.15 * rng.standard_normal(h * w).astype(np.float32)
    dens = lev[cell]
    bnd = (cell != np.roll(cell, 1, 0)) | (cell != np.roll(cell, 1, 1))
    return dens, bnd & mask


def _particle(rng: np.random.Generator, r: float, slice_mode: bool) -> tuple[np.ndarray, np.ndarray]:
    """(density patch, mask patch) of one particle of mean radius ``r`` centred in the patch."""
    aspect = rng.uniform(1.0, 1.45)
    half = int(np.ceil(r * aspect * 1.2)) + 3
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    a = rng.uniform(0, np.pi)
    u = xx * np.cos(a) + yy * np.sin(a)
    v = -xx * np.sin(a) + yy * np.cos(a)
    d = np.hypot(u / aspect**0.5, v * aspect**0.5)
    theta = np.arctan2(v, u)
    rr = np.ones_like(theta)
    for k in (2, 3, 4, 5, 7):
        rr += rng.uniform(0.0, 0.08 / (k - 1) ** 0.5) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    rt = r * rr
    mask = d < rt
    if slice_mode:
        dens = np.ones_like(d)
    else:
        dens = np.sqrt(np.clip(rt**2 - d**2, 0, None)) / r
    g, bnd = _grains(rng, mask, rng.uniform(0.12, 0.3) * r + 2)
    dens = dens * g
    dens = np.where(bnd, dens * rng.uniform(0.55, 0.85), dens)
    dens = dens * (1 + 0.08 * _smooth(rng, d.shape, max(1.0, r / 10)))
    # Pores: small voids inside.
    for _ in range(int(rng.integers(0, 3 + int(r / 15)))):
        c = rng.uniform(-0.7, 0.7, 2) * r
        pr = rng.uniform(1.0, max(1.5, 0.08 * r))
        dens = np.where(np.hypot(yy - c[0], xx - c[1]) < pr, dens * rng.uniform(0.0, 0.4), dens)
    # Cracks: bent chords that cross the particle (most reach its surface).
    if rng.random() < 0.7:
        for _ in range(int(rng.integers(1, 5))):
            b = rng.uniform(0, np.pi)
            off = rng.uniform(-0.6, 0.6) * r
            cu = xx * np.cos(b) + yy * np.sin(b)
            cv = -xx * np.sin(b) + yy * np.cos(b) - off - rng.uniform(-0.3, 0.3) * cu**2 / r
            length = rng.uniform(0.6, 1.3) * r
            width = rng.uniform(0.5, 2.0) * max(1.0, r / 30)
            crack = (np.abs(cv) < width) & (np.abs(cu) < length)
            dens = np.where(crack, dens * rng.uniform(0.0, 0.35), dens)
    return np.where(mask, np.clip(dens, 0, None), 0).astype(np.float32), mask


def real_like(
    rng: np.random.Generator,
    shape: tuple[int, int],
    diameter_px: float,
    *,
    contrast: str | None = None,
    fill: float | None = None,
) -> RealLike:
    """One frame of ``shape`` with particles of typical diameter ``diameter_px``."""
    h, w = shape
    if contrast is None:
        contrast = "absorbance" if rng.random() < 0.5 else "transmission"
    slice_mode = contrast == "absorbance" if rng.random() < 0.85 else contrast != "absorbance"
    r0 = diameter_px / 2
    fill = float(rng.uniform(0.12, 0.5)) if fill is None else fill
    dens_map = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint16)
    owner_d = np.full(shape, np.inf, np.float32)
    centres: list[tuple[float, float, float]] = []
    covered = 0.0
    k = 0
    for _ in range(400):
        if covered >= fill * h * w or k >= 60000:
            break
        r = float(r0 * np.exp(rng.normal(0, 0.25)))
        if centres and rng.random() < 0.45:
            cy, cx, cr = centres[int(rng.integers(len(centres)))]
            ang = rng.uniform(0, 2 * np.pi)
            gap = (cr + r) * rng.uniform(0.8, 1.02)  # touching or overlapping
            c = (cy + gap * np.sin(ang), cx + gap * np.cos(ang))
        else:
            c = (rng.uniform(-0.3 * r, h + 0.3 * r), rng.uniform(-0.3 * r, w + 0.3 * r))
        if any(np.hypot(c[0] - oy, c[1] - ox) < 0.78 * (r + orr) for oy, ox, orr in centres):
            continue
        dens, mask = _particle(rng, r, slice_mode)
        ph = dens.shape[0] // 2
        y0, x0 = int(round(c[0])) - ph, int(round(c[1])) - ph
        ys = slice(max(y0, 0), min(y0 + dens.shape[0], h))
        xs = slice(max(x0, 0), min(x0 + dens.shape[1], w))
        if ys.start >= ys.stop or xs.start >= xs.stop:
            continue
        sub = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
        m = mask[sub]
        if not m.any():
            continue
        k += 1
        centres.append((c[0], c[1], r))
        yy, xx = np.mgrid[ys, xs]
        dn = np.hypot(yy - c[0], xx - c[1]) / r
        win = m & (dn < owner_d[ys, xs])
        labels[ys, xs][win] = k
        owner_d[ys, xs] = np.where(win, dn, owner_d[ys, xs])
        if slice_mode:  # a slice: the nearer particle's material
            dens_map[ys, xs] = np.where(win, dens[sub], dens_map[ys, xs])
        else:  # a projection: thicknesses add up
            dens_map[ys, xs] += dens[sub]
        covered += float(m.sum())
    image = _render(rng, dens_map, contrast, diameter_px)
    return RealLike(image, labels, contrast, float(diameter_px))


def _artefacts(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Rings (around a centre, maybe outside the field) and streaks, zero mean, unit-ish scale."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.5:
        cy, cx = rng.uniform(-0.2, 1.2) * h, rng.uniform(-0.2, 1.2) * w
        rad = np.hypot(yy - cy, xx - cx)
        for _ in range(int(rng.integers(2, 10))):
            r = rng.uniform(0, max(h, w))
            out += rng.uniform(-1, 1) * np.exp(-0.5 * ((rad - r) / rng.uniform(0.6, 2.0)) ** 2)
    if rng.random() < 0.4:
        for _ in range(int(rng.integers(1, 4))):
            a = rng.uniform(0, np.pi)
            off = rng.uniform(-0.5, 0.5) * max(h, w)
            v = -(xx - w / 2) * np.sin(a) + (yy - h / 2) * np.cos(a) - off
            out += rng.uniform(-1, 1) * np.exp(-0.5 * (v / rng.uniform(0.7, 3.0)) ** 2)
    return out


def _render(rng: np.random.Generator, dens: np.ndarray, contrast: str, diameter: float) -> np.ndarray:
    shape = dens.shape
    low = _smooth(rng, shape, max(shape) / rng.uniform(3, 8))
    if contrast == "absorbance":
        bg = rng.uniform(0.0, 0.25)
        level = rng.uniform(0.5, 1.0)
        binder = np.clip(_smooth(rng, shape, max(1.0, diameter / rng.uniform(6, 20))), 0, None)
        img = bg + level * dens + rng.uniform(0.0, 0.15) * level * binder * (dens == 0)
        img += rng.uniform(0.0, 0.08) * level * low
        img += rng.uniform(0.0, 0.06) * level * _artefacts(rng, shape)
        img += rng.uniform(0.02, 0.12) * level * rng.standard_normal(shape).astype(np.float32)
        img = ndimage.gaussian_filter(img, rng.uniform(0.3, 1.2))
        scale = rng.choice([255.0, 1.0, 4000.0])
        return (img * scale).astype(np.float32)
    mu = rng.uniform(0.4, 1.6)
    flat = 1 + rng.uniform(0.02, 0.3) * low + rng.uniform(0.0, 0.03) * _artefacts(rng, shape)
    flat *= 1 + rng.uniform(0.0, 0.03) * _smooth(rng, shape, 1.5)  # flat-field residue (scintillator)
    counts = rng.uniform(300, 20000)
    i = counts * flat * np.exp(-mu * dens)
    i = i + rng.uniform(0.5, 2.0) * np.sqrt(np.maximum(i, 0)) * rng.standard_normal(shape).astype(np.float32)
    i = ndimage.gaussian_filter(i, rng.uniform(0.3, 1.0))
    if rng.random() < 0.5:  # flat-corrected I/I0
        i = i / counts
    return np.clip(i, 0, None).astype(np.float32)
