"""Synthetic XCT cross-sections of Li | polymer electrolyte | Li symmetric cells, with ground truth.

Geometry is 3-D, so consecutive slices of one :class:`XctCell` form a consistent volume: the two
interfaces are smooth surfaces ``y(x, z)``; dendrites are trees of tapered capsules growing from
an interface into the electrolyte (branching, porous, low attenuation); redeposited ("mossy") Li
is a cluster of spheres sitting on an interface; pits are ellipsoidal voids cut into an electrode.
A slice ``z`` rasterises what crosses that plane, then applies what a Gridrec reconstruction
adds: blur, correlated noise, ring artefacts about the rotation axis, and a smooth contrast drift.

Labels (:data:`CLASSES`): 0 Li electrode, 1 electrolyte, 2 dendrite, 3 redeposited Li, 4 pit.
Image axes: rows ``y`` run across the cell (top electrode → electrolyte → bottom electrode),
columns ``x`` run along it. ``growth`` in [0, 1] grows the dendrites (a cycling time axis).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from engines.prep.xct_classes import (  # noqa: F401 - re-exported: the generator's ground truth
    CLASSES,
    DENDRITE,
    ELECTRODE,
    ELECTROLYTE,
    N_CLASSES,
    PIT,
    REDEPOSIT,
)

# Linear attenuation, arbitrary units: porous Li dendrites are the lowest-attenuating solid.
_LEVEL = np.array([0.40, 0.68, 0.26, 0.53, 0.08], dtype=np.float32)


@dataclass(frozen=True)
class Capsule:
    """A tapered cylinder with round ends from ``p0`` to ``p1`` (x, y, z in px)."""

    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    r0: float
    r1: float
    birth: float
    """Growth level in [0, 1] from which this segment exists."""


@dataclass(frozen=True)
class XctCell:
    """One cell's 3-D geometry (shared by all its slices) and imaging settings."""

    shape: tuple[int, int]
    seed: int
    top: tuple[float, ...]
    """Top interface: mean row, then (amplitude, kx, kz, phase) quadruples."""
    bottom: tuple[float, ...]
    dendrites: tuple[Capsule, ...]
    redeposit: tuple[tuple[float, float, float, float], ...]
    """Spheres (x, y, z, r)."""
    pits: tuple[tuple[float, float, float, float, float, float], ...]
    """Ellipsoids (x, y, z, rx, ry, rz)."""
    blur: float
    noise: float
    rings: tuple[tuple[float, float], ...]
    """(radius, amplitude) of ring artefacts."""
    ring_centre: tuple[float, float]
    gain: float
    offset: float
    drift: tuple[float, float]
    """Contrast drift: linear gain slope along y and x (per full slice)."""
    extra: dict[str, float] = field(default_factory=dict)


def _surface(params: tuple[float, ...], x: np.ndarray, z: float) -> np.ndarray:
    y = np.full(x.shape, params[0], dtype=np.float32)
    for i in range(1, len(params), 4):
        a, kx, kz, ph = params[i : i + 4]
        y += a * np.sin(kx * x + kz * z + ph)
    return y


def _interface_params(rng: np.random.Generator, mean: float) -> tuple[float, ...]:
    out = [mean]
    for amp, k in (
        (rng.uniform(2, 8), rng.uniform(0.004, 0.012)),
        (rng.uniform(0.5, 2.5), rng.uniform(0.03, 0.06)),
    ):
        out += [amp, k * rng.choice([-1, 1]), k * rng.uniform(-1, 1), rng.uniform(0, 2 * np.pi)]
    return tuple(out)


def _grow_tree(
    rng: np.random.Generator, root: np.ndarray, down: float, max_depth: float, depth_px: int
) -> list[Capsule]:
    """A branching random walk from ``root`` moving along ``down`` (+1 or -1 in y)."""
    caps: list[Capsule] = []
    r_root = rng.uniform(6.0, 11.0)
    stack = [(root.astype(float), np.array([rng.normal(0, 0.35), down, rng.normal(0, 0.08)]), r_root, 0.0, 0)]
    total = max_depth / 7.0  # rough number of segments along the main stem, for the birth time
    while stack and len(caps) < 80:
        p, d, r, t, gen = stack.pop()
        d = d / np.linalg.norm(d)
        length = rng.uniform(6, 13)
        p1 = p + d * length
        depth = (p1[1] - root[1]) * down
        if depth > max_depth:
            p1 = p + d * max(0.0, (max_depth - (p[1] - root[1]) * down) / max(abs(d[1]), 0.2))
        r1 = max(4.0, r * rng.uniform(0.9, 0.98))
        caps.append(Capsule(tuple(p), tuple(p1), r, r1, min(1.0, t)))
        if (p1[1] - root[1]) * down >= max_depth - 0.5:
            continue
        t1 = t + 1.0 / total
        nd = d + rng.normal(0, 0.25, 3) * (1, 1, 0.3)
        nd[1] = down * max(abs(nd[1]), 0.35)
        stack.append((p1, nd, r1, t1, gen))
        if gen < 4 and rng.random() < 0.28:
            bd = d.copy()
            bd[0] += rng.choice([-1, 1]) * rng.uniform(0.6, 1.3)
            bd[2] += rng.normal(0, 0.15)
            stack.append((p1, bd, r1 * 0.8, t1, gen + 1))
    return caps


def make_cell(shape: tuple[int, int] = (512, 512), seed: int = 0, depth: int = 64) -> XctCell:
    """Draw one cell. ``depth`` is the number of slices (z) the 3-D structures are spread over."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    gap = ny * rng.uniform(0.32, 0.5)
    centre = ny * rng.uniform(0.45, 0.55)
    y_top, y_bot = centre - gap / 2, centre + gap / 2
    top = _interface_params(rng, y_top)
    bottom = _interface_params(rng, y_bot)
    area = nx * max(depth, 1)
    caps: list[Capsule] = []
    n_trees = rng.poisson(area / 700 * rng.uniform(0.3, 1.5)) + 1
    for _ in range(n_trees):
        side = rng.integers(2)
        x, z = rng.uniform(0, nx), rng.uniform(-8, depth + 8)
        params = top if side == 0 else bottom
        y0 = float(_surface(params, np.array([x], np.float32), z)[0])
        down = 1.0 if side == 0 else -1.0
        root = np.array([x, y0 - down * 3.0, z])
        frac = rng.uniform(0.08, 0.95) if rng.random() < 0.8 else rng.uniform(0.05, 0.3)
        caps += _grow_tree(rng, root, down, frac * gap, depth)
    red: list[tuple[float, float, float, float]] = []
    for _ in range(rng.poisson(area / 1800) + 1):
        side = rng.integers(2)
        x, z = rng.uniform(0, nx), rng.uniform(-5, depth + 5)
        params = top if side == 0 else bottom
        down = 1.0 if side == 0 else -1.0
        for _ in range(rng.integers(4, 12)):
            xs, zs = x + rng.normal(0, 9), z + rng.normal(0, 6)
            r = rng.uniform(6, 13)
            ys = float(_surface(params, np.array([xs], np.float32), zs)[0]) + down * r * rng.uniform(0.2, 0.7)
            red.append((xs, ys, zs, r))
    pits: list[tuple[float, float, float, float, float, float]] = []
    for _ in range(rng.poisson(area / 9000) + rng.integers(0, 2)):
        side = rng.integers(2)
        x, z = rng.uniform(0, nx), rng.uniform(0, depth)
        params = top if side == 0 else bottom
        down = 1.0 if side == 0 else -1.0
        rx, ry = rng.uniform(12, 30), rng.uniform(8, 18)
        y = float(_surface(params, np.array([x], np.float32), z)[0]) - down * ry * rng.uniform(0.1, 0.5)
        pits.append((x, y, z, rx, ry, rng.uniform(8, 16)))
    n_rings = rng.integers(3, 9)
    diag = float(np.hypot(ny, nx))
    rings = tuple(
        (float(rng.uniform(5, diag)), float(rng.uniform(0.01, 0.04) * rng.choice([-1, 1])))
        for _ in range(n_rings)
    )
    return XctCell(
        shape=(ny, nx),
        seed=seed,
        top=top,
        bottom=bottom,
        dendrites=tuple(caps),
        redeposit=tuple(red),
        pits=tuple(pits),
        blur=float(rng.uniform(0.5, 0.9)),
        noise=float(rng.uniform(0.025, 0.06)),
        rings=rings,
        ring_centre=(float(rng.uniform(0.2, 0.8) * ny), float(rng.uniform(0.2, 0.8) * nx)),
        gain=float(rng.uniform(0.75, 1.3)),
        offset=float(rng.uniform(-0.1, 0.15)),
        drift=(float(rng.uniform(-0.15, 0.15)), float(rng.uniform(-0.15, 0.15))),
    )


def _box(lo: float, hi: float, n: int) -> tuple[int, int]:
    return max(0, int(np.floor(lo))), min(n, int(np.ceil(hi)) + 1)


def _paint_capsules(mask: np.ndarray, caps: tuple[Capsule, ...], z: float, growth: float) -> None:
    ny, nx = mask.shape
    for c in caps:
        if c.birth > growth:
            continue
        p0, p1 = np.asarray(c.p0), np.asarray(c.p1)
        r = max(c.r0, c.r1)
        if min(p0[2], p1[2]) - r > z or max(p0[2], p1[2]) + r < z:
            continue
        y0, y1 = _box(min(p0[1], p1[1]) - r, max(p0[1], p1[1]) + r, ny)
        x0, x1 = _box(min(p0[0], p1[0]) - r, max(p0[0], p1[0]) + r, nx)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        d = p1 - p0
        dd = float(d @ d) or 1e-6
        t = ((xx - p0[0]) * d[0] + (yy - p0[1]) * d[1] + (z - p0[2]) * d[2]) / dd
        t = np.clip(t, 0.0, 1.0)
        dist2 = (xx - p0[0] - t * d[0]) ** 2 + (yy - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2
        rad = c.r0 + t * (c.r1 - c.r0)
        mask[y0:y1, x0:x1] |= dist2 <= rad * rad


def _paint_ellipsoids(mask: np.ndarray, items: tuple[tuple[float, ...], ...], z: float) -> None:
    ny, nx = mask.shape
    for it in items:
        if len(it) == 4:
            x, y, zc, rx = it
            ry = rz = rx
        else:
            x, y, zc, rx, ry, rz = it
        if abs(z - zc) >= rz:
            continue
        s = np.sqrt(1 - ((z - zc) / rz) ** 2)
        ax, ay = rx * s, ry * s
        y0, y1 = _box(y - ay, y + ay, ny)
        x0, x1 = _box(x - ax, x + ax, nx)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        mask[y0:y1, x0:x1] |= ((xx - x) / ax) ** 2 + ((yy - y) / ay) ** 2 <= 1.0


def labels_at(cell: XctCell, z: float, growth: float = 1.0) -> np.ndarray:
    """Ground-truth label map (uint8, :data:`CLASSES`) of slice ``z``."""
    ny, nx = cell.shape
    x = np.arange(nx, dtype=np.float32)
    yt, yb = _surface(cell.top, x, z), _surface(cell.bottom, x, z)
    rows = np.arange(ny, dtype=np.float32)[:, None]
    lab = np.zeros((ny, nx), np.uint8)
    gap = (rows >= yt[None, :]) & (rows < yb[None, :])
    lab[gap] = ELECTROLYTE
    m = np.zeros((ny, nx), bool)
    _paint_ellipsoids(m, cell.pits, z)
    lab[m & ~gap] = PIT
    m[:] = False
    _paint_ellipsoids(m, cell.redeposit, z)
    lab[m & gap] = REDEPOSIT
    m[:] = False
    _paint_capsules(m, cell.dendrites, z, growth)
    lab[m & gap] = DENDRITE
    return lab


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    return n / (n.std() + 1e-6)


def render(cell: XctCell, lab: np.ndarray, z: float) -> np.ndarray:
    """The reconstructed slice (float32, roughly 0..1 before drift) for a label map."""
    rng = np.random.default_rng((cell.seed, int(round(z * 16)) & 0xFFFFFFFF, 1))
    ny, nx = lab.shape
    img = _LEVEL[lab]
    # Textures: porous dendrites, granular redeposit, slight electrolyte inhomogeneity.
    tex = _smooth_noise(rng, (ny, nx), 1.2)
    den = lab == DENDRITE
    img = np.where(den & (tex > 0.7), np.float32(0.14), img)
    img = np.where(lab == REDEPOSIT, img + 0.09 * _smooth_noise(rng, (ny, nx), 0.7), img)
    img = img + 0.015 * _smooth_noise(rng, (ny, nx), 6.0)
    img = ndimage.gaussian_filter(img, cell.blur)
    if cell.rings:
        cy, cx = cell.ring_centre
        r = np.hypot(
            np.arange(ny, dtype=np.float32)[:, None] - cy, np.arange(nx, dtype=np.float32)[None, :] - cx
        )
        for radius, amp in cell.rings:
            img += amp * np.exp(-0.5 * ((r - radius) / 0.9) ** 2)
    noise = rng.standard_normal((ny, nx), dtype=np.float32)
    noise = noise + 0.6 * ndimage.gaussian_filter(noise, 1.0) * 2.0
    img += cell.noise * noise / 1.5
    gy, gx = cell.drift
    ramp = (
        1.0
        + gy * np.linspace(-1, 1, ny, dtype=np.float32)[:, None]
        + gx * np.linspace(-1, 1, nx, dtype=np.float32)
    )
    return (cell.gain * img * ramp + cell.offset).astype(np.float32)


def make_slice(
    shape: tuple[int, int] = (512, 512), seed: int = 0, z: float | None = None, growth: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """One independent slice: ``(image float32, labels uint8)``; deterministic per seed."""
    cell = make_cell(shape, seed, depth=48)
    zz = 24.0 if z is None else z
    lab = labels_at(cell, zz, growth)
    return render(cell, lab, zz), lab


def make_volume(
    shape: tuple[int, int] = (512, 512), depth: int = 32, seed: int = 0, growth: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """``depth`` consecutive slices of one cell: ``(images (depth, ny, nx), labels)``."""
    cell = make_cell(shape, seed, depth=depth)
    labs = np.stack([labels_at(cell, float(z), growth) for z in range(depth)])
    imgs = np.stack([render(cell, labs[z], float(z)) for z in range(depth)])
    return imgs, labs


def to_counts(image: np.ndarray, scale: float = 20000.0, offset: float = 8000.0) -> np.ndarray:
    """Detector-like uint16 values for streaming (the pipeline normalises per slice anyway)."""
    return np.clip(image * scale + offset, 0, 65535).astype(np.uint16)
