"""Synthetic operando TXM-XANES: NMC-like secondary particles moving through an energy scan.

Each particle is a rigid body (round-ish silhouette, primary-grain texture, optional internal
cracks) with a per-pixel Ni K-edge energy map (uniform, shrinking core, offset core or partly
inactive). A frame at energy E is a transmission image ``I = I0 · flat · exp(-OD)`` with
``OD = thickness · (mu_pre + mu_step · sigmoid((E - E0) / width))`` summed over particles,
plus Gaussian noise with variance proportional to the counts.

Motion: every particle moves by ``rigid(t) + u(c_p, t)``: a common rigid part (slow drift plus
frame-to-frame jitter) and a smooth non-rigid field ``u`` evaluated at the particle's centre
(an affine term plus a low-frequency sine mode, growing over the sequence). Ground truth per
frame: instance labels, per-particle displacement, and the per-pixel edge energy map.

Everything is deterministic per seed. Seed ranges used in this project: training 0–99 999,
held-out evaluation 100 000 and above (see ``engines.train.alignment``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

E_LOW_EV = 8341.5
"""Half-step edge energy of pristine (Ni2+-rich) material."""
E_HIGH_EV = 8346.0
"""Half-step edge energy of charged (Ni3+/4+-rich) material."""
EDGE_WIDTH_EV = 1.2
MU_PRE = 0.45
MU_STEP = 1.0
CHEMISTRIES = ("uniform", "shrinking_core", "offset_core", "partly_inactive")


def default_energies() -> np.ndarray:
    """A typical Ni K-edge XANES scan (eV): coarse pre/post edge, 0.5 eV across the edge."""
    pre = np.arange(8330.0, 8338.0, 2.0)
    edge = np.arange(8338.0, 8352.01, 0.5)
    post = np.arange(8354.0, 8362.01, 2.0)
    return np.concatenate([pre, edge, post])


@dataclass(frozen=True)
class TxmConfig:
    size: int = 460
    n_particles: int = 9
    radius_px: tuple[float, float] = (26.0, 50.0)
    """Particle radius range at 460 px; scaled with ``size / 460``."""
    crack_prob: float = 0.4
    touch_prob: float = 0.5
    counts: float = 1000.0
    noise: float = 1.0
    """Noise scale: 1 gives Poisson-like noise for ``counts`` photons per pixel."""
    flat_amplitude: float = 0.15
    jitter_px: float = 1.5
    drift_px: float = 8.0
    nonrigid_px: float = 3.0
    """Typical spread of the non-rigid displacement across the field at the end of a sequence."""
    energies: tuple[float, ...] = field(default_factory=lambda: tuple(default_energies()))
    scans: int = 1
    """Energy scans per sequence (motion continues across scans)."""


@dataclass
class Particle:
    center: np.ndarray  # (2,) y, x in the reference frame (before any motion)
    radius: float
    thickness: np.ndarray  # body patch (h, w), 0 outside
    mask: np.ndarray  # body patch bool
    edge_eV: np.ndarray  # body patch, per-pixel half-step energy
    origin: np.ndarray  # (2,) patch top-left in frame coordinates (reference, float)
    chemistry: str
    cracked: bool


@dataclass
class Scene:
    config: TxmConfig
    particles: list[Particle]
    flat: np.ndarray  # (H, W) fixed illumination (flat field)


@dataclass
class TxmSequence:
    """Frames with ground truth. Displacements are in px, (dy, dx), relative to frame 0's positions."""

    frames: np.ndarray  # (T, H, W) float32 counts
    energies: np.ndarray  # (T,)
    scan: np.ndarray  # (T,) scan number
    labels: np.ndarray  # (T, H, W) uint16, 0 background, particle p → p + 1
    displacement: np.ndarray  # (T, P, 2) total motion of each particle
    rigid: np.ndarray  # (T, 2) common (rigid) part
    centers: np.ndarray  # (T, P, 2) true particle centres in frame coordinates
    edge_map: np.ndarray  # (H, W) float32, edge energy at the frame-0 positions, NaN outside
    thickness_map: np.ndarray  # (H, W) float32 at frame-0 positions
    chemistry: tuple[str, ...]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return n / (n.std() + 1e-6)


def _place_centres(rng: np.random.Generator, cfg: TxmConfig, radii: np.ndarray) -> np.ndarray:
    """Non-overlapping centres; some particles placed touching an earlier one."""
    size = cfg.size
    centres: list[np.ndarray] = []
    for r in radii:
        placed = None
        for _ in range(400):
            if centres and rng.random() < cfg.touch_prob:
                j = int(rng.integers(len(centres)))
                ang = rng.uniform(0, 2 * np.pi)
                gap = (radii[j] + r) * rng.uniform(0.9, 0.97)
                c = centres[j] + gap * np.array([np.sin(ang), np.cos(ang)])
            else:
                c = rng.uniform(r + 8, size - r - 8, 2)
            if np.any(c < r + 6) or np.any(c > size - r - 6):
                continue
            ok = all(np.hypot(*(c - o)) > (radii[k] + r) * 0.88 for k, o in enumerate(centres))
            if ok:
                placed = c
                break
        if placed is None:
            placed = rng.uniform(r, size - r, 2)  # crowded: accept an overlap
        centres.append(placed)
    return np.array(centres)


def _edge_map(rng: np.random.Generator, kind: str, yy: np.ndarray, xx: np.ndarray, r: float) -> np.ndarray:
    d = np.hypot(yy, xx)
    lo = E_LOW_EV + rng.uniform(-0.5, 0.5)
    hi = E_HIGH_EV + rng.uniform(-0.7, 0.7)
    if kind == "uniform":
        return np.full_like(d, rng.uniform(lo, hi))
    if kind == "shrinking_core":
        rc = rng.uniform(0.35, 0.7) * r
        return lo + (hi - lo) / (1 + np.exp(-(d - rc) / (0.06 * r)))
    if kind == "offset_core":
        rc = rng.uniform(0.3, 0.5) * r
        off = rng.uniform(0.2, 0.4) * r * np.array([np.sin(a := rng.uniform(0, 2 * np.pi)), np.cos(a)])
        dc = np.hypot(yy - off[0], xx - off[1])
        return lo + (hi - lo) / (1 + np.exp(-(dc - rc) / (0.06 * r)))
    # partly inactive: an angular sector stays pristine
    a0 = rng.uniform(-np.pi, np.pi)
    half = rng.uniform(0.4, 1.0)
    ang = np.angle(np.exp(1j * (np.arctan2(yy, xx) - a0)))
    w = 1 / (1 + np.exp(-(np.abs(ang) - half) / 0.12))
    return lo + (hi - lo) * w


def _particle(rng: np.random.Generator, cfg: TxmConfig, centre: np.ndarray, r: float, kind: str) -> Particle:
    half = int(np.ceil(r * 1.25)) + 4
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    theta = np.arctan2(yy, xx)
    rr = np.ones_like(theta)
    for k in (2, 3, 4, 5):
        rr += rng.uniform(0.0, 0.07 / (k - 1) ** 0.5) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    rtheta = r * rr
    d = np.hypot(yy, xx)
    mask = d < rtheta
    thick = np.sqrt(np.clip(rtheta**2 - d**2, 0, None)) / r
    texture = 1 + 0.12 * _smooth_noise(rng, thick.shape, max(1.0, r / 14))
    thick = thick * np.clip(texture, 0.5, 1.5)
    cracked = bool(rng.random() < cfg.crack_prob)
    if cracked:
        for _ in range(int(rng.integers(1, 4))):
            # A slightly curved crack through the body: distance to a parabola-bent chord.
            a = rng.uniform(0, np.pi)
            off = rng.uniform(-0.5, 0.5) * r
            u = xx * np.cos(a) + yy * np.sin(a)
            v = -xx * np.sin(a) + yy * np.cos(a) - off - rng.uniform(-0.3, 0.3) * u**2 / r
            length = rng.uniform(0.5, 0.95) * r
            width = rng.uniform(0.6, 1.6) * max(1.0, r / 40)
            crack = np.exp(-0.5 * (v / width) ** 2) * (np.abs(u) < length)
            thick = thick * (1 - rng.uniform(0.6, 0.95) * crack)
    thick = np.where(mask, thick, 0).astype(np.float32)
    edge = _edge_map(rng, kind, yy, xx, r).astype(np.float32)
    density = rng.uniform(0.8, 1.2)
    return Particle(
        center=centre.astype(np.float64),
        radius=float(r),
        thickness=thick * density,
        mask=mask,
        edge_eV=edge,
        origin=centre - half,
        chemistry=kind,
        cracked=cracked,
    )


def make_scene(rng: np.random.Generator, cfg: TxmConfig) -> Scene:
    scale = cfg.size / 460.0
    radii = np.sort(rng.uniform(*cfg.radius_px, cfg.n_particles) * scale)[::-1]
    centres = _place_centres(rng, cfg, radii)
    kinds = rng.choice(len(CHEMISTRIES), cfg.n_particles)
    particles = [
        _particle(rng, cfg, c, r, CHEMISTRIES[k]) for c, r, k in zip(centres, radii, kinds, strict=True)
    ]
    small = max(8, cfg.size // 16)
    low = ndimage.gaussian_filter(rng.standard_normal((small, small)), 1.5)
    low = low / (np.abs(low).max() + 1e-6)
    flat = ndimage.zoom(low, cfg.size / small, order=3)[: cfg.size, : cfg.size]
    yy, xx = np.mgrid[0 : cfg.size, 0 : cfg.size] / cfg.size
    flat = 1 + cfg.flat_amplitude * (0.7 * flat + 0.3 * (xx - 0.5)) + 0.02 * _smooth_noise(rng, flat.shape, 3)
    return Scene(cfg, particles, flat.astype(np.float32))


def motion(
    rng: np.random.Generator, cfg: TxmConfig, centres: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(displacement (n, P, 2), rigid (n, 2)) for ``n`` frames; rigid = drift + jitter."""
    s = np.linspace(0.0, 1.0, n)[:, None]
    direction = rng.standard_normal(2)
    direction /= np.linalg.norm(direction) + 1e-9
    curve = rng.standard_normal(2) * 0.3
    drift = cfg.drift_px * (s * direction + s**2 * curve)
    jitter = rng.standard_normal((n, 2)) * cfg.jitter_px
    rigid = drift + jitter
    # Non-rigid: affine strain + one low-frequency mode, amplitude growing over the sequence.
    rel = (centres - cfg.size / 2) / cfg.size  # (P, 2) in [-0.5, 0.5]
    a = rng.standard_normal((2, 2))
    k = rng.uniform(0.8, 1.6) * 2 * np.pi * rng.standard_normal(2) / np.sqrt(2)
    phase = rng.uniform(0, 2 * np.pi)
    amp = rng.standard_normal(2)
    mode = np.sin(rel @ k + phase)[:, None] * amp[None, :]  # (P, 2)
    field = rel @ a.T + 0.6 * mode
    field -= field.mean(axis=0)
    field *= cfg.nonrigid_px / (np.sqrt((field**2).sum(axis=1).mean()) + 1e-9)
    growth = s**1.5
    disp = rigid[:, None, :] + growth[:, :, None] * field[None, :, :]
    return disp, rigid


def render(
    scene: Scene, energy: float, shifts: np.ndarray, rng: np.random.Generator, *, noise: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One frame at ``energy``, particle p displaced by ``shifts[p]`` → (counts float32, labels uint16)."""
    cfg = scene.config
    size = cfg.size
    od = np.zeros((size, size), np.float32)
    labels = np.zeros((size, size), np.uint16)
    best = np.zeros((size, size), np.float32)
    for p, part in enumerate(scene.particles):
        mu = MU_PRE + MU_STEP / (1 + np.exp(-(energy - part.edge_eV) / EDGE_WIDTH_EV))
        body = part.thickness * mu
        pos = part.origin + shifts[p]
        ipos = np.floor(pos).astype(int)
        frac = pos - ipos
        moved = ndimage.shift(body, frac, order=1, mode="constant", prefilter=False)
        m = ndimage.shift(part.mask.astype(np.float32), frac, order=1, mode="constant", prefilter=False)
        h, w = body.shape
        y0, x0 = ipos
        ys, xs = slice(max(y0, 0), min(y0 + h, size)), slice(max(x0, 0), min(x0 + w, size))
        if ys.start >= ys.stop or xs.start >= xs.stop:
            continue
        sub = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
        od[ys, xs] += moved[sub]
        msub = m[sub]
        win = msub > np.maximum(best[ys, xs], 0.5)
        labels[ys, xs][win] = p + 1
        best[ys, xs] = np.maximum(best[ys, xs], msub)
    counts = cfg.counts * scene.flat * np.exp(-od)
    if noise and cfg.noise > 0:
        counts = counts + cfg.noise * np.sqrt(counts) * rng.standard_normal(counts.shape, dtype=np.float32)
    return np.clip(counts, 0, None).astype(np.float32), labels


def _reference_maps(scene: Scene, shifts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    size = scene.config.size
    edge = np.full((size, size), np.nan, np.float32)
    thick = np.zeros((size, size), np.float32)
    for p, part in enumerate(scene.particles):
        pos = part.origin + shifts[p]
        ipos = np.floor(pos).astype(int)
        frac = pos - ipos
        e = ndimage.shift(part.edge_eV, frac, order=1, mode="nearest", prefilter=False)
        t = ndimage.shift(part.thickness, frac, order=1, mode="constant", prefilter=False)
        h, w = e.shape
        y0, x0 = ipos
        ys, xs = slice(max(y0, 0), min(y0 + h, size)), slice(max(x0, 0), min(x0 + w, size))
        if ys.start >= ys.stop or xs.start >= xs.stop:
            continue
        sub = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
        take = t[sub] > thick[ys, xs]
        edge[ys, xs] = np.where(take & (t[sub] > 0), e[sub], edge[ys, xs])
        thick[ys, xs] = np.maximum(thick[ys, xs], t[sub])
    return edge, thick


def generate(seed: int, cfg: TxmConfig | None = None, *, frames: int | None = None) -> TxmSequence:
    """A sequence of ``cfg.scans`` energy scans (or ``frames`` frames cycling through the energies)."""
    cfg = cfg or TxmConfig()
    rng = np.random.default_rng(seed)
    scene = make_scene(rng, cfg)
    energies_one = np.asarray(cfg.energies, dtype=np.float64)
    n = frames if frames is not None else len(energies_one) * cfg.scans
    energies = energies_one[np.arange(n) % len(energies_one)]
    scan = np.arange(n) // len(energies_one)
    centres = np.array([p.center for p in scene.particles])
    disp, rigid = motion(rng, cfg, centres, n)
    out = np.empty((n, cfg.size, cfg.size), np.float32)
    labels = np.empty((n, cfg.size, cfg.size), np.uint16)
    for t in range(n):
        out[t], labels[t] = render(scene, float(energies[t]), disp[t], rng)
    edge, thick = _reference_maps(scene, disp[0])
    rel = disp - disp[0][None]
    return TxmSequence(
        frames=out,
        energies=energies,
        scan=scan,
        labels=labels,
        displacement=rel,
        rigid=rigid - rigid[0][None],
        centers=centres[None] + disp,
        edge_map=edge,
        thickness_map=thick,
        chemistry=tuple(p.chemistry for p in scene.particles),
    )


def random_frame(rng: np.random.Generator, cfg: TxmConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One training frame: a fresh scene at a random energy and noise level → (counts, labels)."""
    cfg = cfg or TxmConfig()
    scene = make_scene(rng, cfg)
    e = float(rng.uniform(cfg.energies[0], cfg.energies[-1]))
    shifts = rng.standard_normal((len(scene.particles), 2)) * 2
    return render(scene, e, shifts, rng)
