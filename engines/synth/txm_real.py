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

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class RealLike:
    image: np.ndarray  # (H, W) float32, in the frame's own convention
    labels: np.ndarray  # (H, W) uint16 instance labels
    contrast: str  # "transmission" or "absorbance"
    diameter_px: float  # median particle diameter used to draw the frame
    density: np.ndarray  # (H, W) float32 material density map (before the look)


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
    dens = np.ones_like(d) if slice_mode else np.sqrt(np.clip(rt**2 - d**2, 0, None)) / r
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
    return RealLike(image, labels, contrast, float(diameter_px), dens_map)


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


@dataclass(frozen=True)
class Look:
    """The fixed part of how a density map becomes an image (one per stack): background, flat
    field, artefacts, contrast and noise levels."""

    contrast: str
    offset: np.ndarray  # absorbance: background image added; transmission: unused
    flat: np.ndarray  # transmission: I0 · flat field; absorbance: unused
    level: float  # absorbance: value of unit density; transmission: attenuation per unit density
    noise: float
    blur: float
    scale: float
    binder: np.ndarray  # absorbance: faint binder texture outside particles


def make_look(rng: np.random.Generator, shape: tuple[int, int], contrast: str, diameter: float) -> Look:
    low = _smooth(rng, shape, max(shape) / rng.uniform(3, 8))
    if contrast == "absorbance":
        level = float(rng.uniform(0.5, 1.0))
        binder = np.clip(_smooth(rng, shape, max(1.0, diameter / rng.uniform(6, 20))), 0, None)
        offset = rng.uniform(0.0, 0.25) + rng.uniform(0.0, 0.08) * level * low
        offset = offset + rng.uniform(0.0, 0.06) * level * _artefacts(rng, shape)
        return Look(
            contrast, offset.astype(np.float32), np.ones(1, np.float32), level,
            float(rng.uniform(0.02, 0.12) * level), float(rng.uniform(0.3, 1.2)),
            float(rng.choice([255.0, 1.0, 4000.0])),
            (rng.uniform(0.0, 0.15) * level * binder).astype(np.float32),
        )  # fmt: skip
    flat = 1 + rng.uniform(0.02, 0.3) * low + rng.uniform(0.0, 0.03) * _artefacts(rng, shape)
    flat *= 1 + rng.uniform(0.0, 0.03) * _smooth(rng, shape, 1.5)  # flat-field residue (scintillator)
    counts = float(rng.uniform(300, 20000))
    scale = 1.0 / counts if rng.random() < 0.5 else 1.0  # flat-corrected I/I0, or counts
    return Look(
        contrast, np.zeros(1, np.float32), (counts * flat).astype(np.float32), float(rng.uniform(0.4, 1.6)),
        float(rng.uniform(0.5, 2.0)), float(rng.uniform(0.3, 1.0)), scale, np.zeros(1, np.float32),
    )  # fmt: skip


def apply_look(
    look: Look, dens: np.ndarray, rng: np.random.Generator, drift: np.ndarray | float = 0.0
) -> np.ndarray:
    """The image of density map ``dens`` (``drift``: a background change added to the offset or,
    in transmission, multiplied into the flat field as ``exp(drift)``)."""
    shape = dens.shape
    if look.contrast == "absorbance":
        img = look.offset + drift + look.level * dens + look.binder * (dens == 0)
        img = img + look.noise * rng.standard_normal(shape).astype(np.float32)
        img = ndimage.gaussian_filter(img, look.blur)
        return (img * look.scale).astype(np.float32)
    i = look.flat * np.exp(drift) * np.exp(-look.level * dens)
    i = i + look.noise * np.sqrt(np.maximum(i, 0)) * rng.standard_normal(shape).astype(np.float32)
    i = ndimage.gaussian_filter(i, look.blur)
    return (np.clip(i, 0, None) * look.scale).astype(np.float32)


def _render(rng: np.random.Generator, dens: np.ndarray, contrast: str, diameter: float) -> np.ndarray:
    return apply_look(make_look(rng, dens.shape, contrast, diameter), dens, rng)


@dataclass(frozen=True)
class RealStack:
    """A stack of one real-like field under motion, with the ground truth per particle."""

    frames: np.ndarray  # (T, H, W) float32
    labels: np.ndarray  # (H, W) uint16 instance labels of frame 0
    contrast: str
    whole: np.ndarray  # (P,) bool: particle fully inside the field in every frame
    centres: np.ndarray  # (T, P, 2) particle centres (mask centroid moved by the field)
    displacement: np.ndarray  # (T, P, 2) relative to frame 0: mean of the field over the particle
    diameter_px: float


def _field(rng: np.random.Generator, shape: tuple[int, int], amplitude: float) -> np.ndarray:
    """A smooth zero-mean displacement field (2, H, W) whose largest magnitude is ``amplitude``."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros((2, h, w), np.float32)
    for c in range(2):
        for _ in range(3):
            k = rng.uniform(0.5, 1.5, 2) * 2 * np.pi / np.array([h, w]) * rng.choice([-1, 1], 2)
            out[c] += rng.standard_normal() * np.sin(k[0] * yy + k[1] * xx + rng.uniform(0, 2 * np.pi))
        a = rng.standard_normal(2) * 0.5
        out[c] += a[0] * (yy / h - 0.5) + a[1] * (xx / w - 0.5)
    out -= out.mean(axis=(1, 2), keepdims=True)
    return out * (amplitude / (float(np.hypot(out[0], out[1]).max()) + 1e-9))


def real_stack(
    seed: int,
    frames: int = 100,
    shape: tuple[int, int] = (460, 460),
    diameter_px: float | None = None,
    contrast: str | None = None,
    *,
    jitter_px: float = 0.6,
    nonrigid_px: float = 4.0,
) -> RealStack:
    """``frames`` frames of one real-like field: a rigid random walk (steps of ``jitter_px``),
    a smooth non-rigid field growing to ``nonrigid_px`` at its largest, per-particle contrast
    change through a XANES-like edge (each particle its own amplitude, core and shell
    differently), slow background drift and fresh noise in every frame."""
    rng = np.random.default_rng(seed)
    if diameter_px is None:
        diameter_px = float(rng.uniform(45, 80))
    base = real_like(rng, shape, diameter_px, contrast=contrast, fill=float(rng.uniform(0.2, 0.35)))
    look = make_look(rng, shape, base.contrast, diameter_px)
    h, w = shape
    lab = base.labels.astype(np.int64)
    n = int(lab.max())
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    area = np.bincount(lab.ravel(), minlength=n + 1).astype(np.float64)
    cy = np.bincount(lab.ravel(), weights=yy.ravel(), minlength=n + 1) / np.maximum(area, 1)
    cx = np.bincount(lab.ravel(), weights=xx.ravel(), minlength=n + 1) / np.maximum(area, 1)
    # Per-pixel radius from its particle's centre (normalised), for core/shell contrast.
    rad = np.hypot(yy - cy[lab], xx - cx[lab]) / np.sqrt(np.maximum(area[lab], 1) / np.pi)
    amp = rng.uniform(-0.25, 0.35, n + 1)
    shell = rng.uniform(-0.3, 0.3, n + 1)
    onset = rng.uniform(0.2, 0.8, n + 1)
    steps = rng.standard_normal((frames, 2)) * jitter_px
    steps[0] = 0
    rigid = np.cumsum(steps, axis=0)
    field = _field(rng, shape, nonrigid_px)
    drift_map = _smooth(rng, shape, max(shape) / 4)
    growth = np.linspace(0.0, 1.0, frames) ** 1.5
    out = np.empty((frames, h, w), np.float32)
    centres = np.zeros((frames, n, 2))
    disp = np.zeros((frames, n, 2))
    fy_mean = np.bincount(lab.ravel(), weights=field[0].ravel(), minlength=n + 1) / np.maximum(area, 1)
    fx_mean = np.bincount(lab.ravel(), weights=field[1].ravel(), minlength=n + 1) / np.maximum(area, 1)
    border = np.zeros(n + 1, bool)
    for t in range(frames):
        s = t / max(frames - 1, 1)
        uy = rigid[t, 0] + growth[t] * field[0]
        ux = rigid[t, 1] + growth[t] * field[1]
        # Backward map: the value at x comes from x - u(x) (u is smooth, so the inverse is close).
        src = np.stack([yy - uy, xx - ux])
        xanes = 1 + (amp + shell * 0)[lab] / (1 + np.exp(-(s - onset[lab]) / 0.08))
        xanes = xanes + (shell[lab] * rad * (s > onset[lab])) * (lab > 0)
        dens_t = ndimage.map_coordinates(
            base.density * np.where(lab > 0, xanes, 1.0), src, order=1, mode="constant"
        )
        drift = 0.05 * s * drift_map
        # Binder is sample material: it moves with the particles (rings and flat field do not).
        look_t = look
        if look.binder.size > 1:
            look_t = dataclasses.replace(
                look, binder=ndimage.map_coordinates(look.binder, src, order=1, mode="nearest")
            )
        bg_drift = drift if base.contrast == "transmission" else drift * look.level
        out[t] = apply_look(look_t, dens_t.astype(np.float32), rng, bg_drift)
        d = rigid[t][None, :] + growth[t] * np.stack([fy_mean[1:], fx_mean[1:]], axis=1)
        disp[t] = d
        centres[t] = np.stack([cy[1:], cx[1:]], axis=1) + d
        moved = ndimage.map_coordinates(lab, src, order=0, mode="constant")
        for arr in (moved[0], moved[-1], moved[:, 0], moved[:, -1]):
            border[arr] = True
    for arr in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
        border[arr] = True
    whole = ~border[1:] & (area[1:] > 0)
    return RealStack(
        out, base.labels, base.contrast, whole, centres, disp - disp[0][None], float(diameter_px)
    )
