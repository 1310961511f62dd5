"""Electrodeposition on any electrode geometry: planar electrode on any side, point seeds, a line
of seeds; randomised rendering (scale, polarity, blur, noise, frame interval).

Physics is the same reaction-limited random-walk model as :mod:`engines.synth.growth` (walkers
that step onto the deposit react with probability ``Da / (1 + Da)``; small Da fills the trenches
and stays compact, large Da screens and turns dendritic), but nothing assumes where the deposit
starts: the field is a closed box, the walkers live in a *diffusion layer* made of every site
within ``delta`` of the deposit (a Euclidean distance map, refreshed as the deposit grows), and
a walker that reacts (or is buried) is re-injected on the layer's outer shell (the reservoir).
Galvanostatic: each frame deposits ``per_frame`` particles (randomised per run: the frame interval).

Order parameter (geometry-free, ground truth): ``D0`` is the distance from the nucleation set
(the electrode or the seeds, time 0); every site belongs to a *ray* (its nearest nucleation site
and the direction from it, :func:`ray_ids`: columns for a planar electrode, angular sectors for
a seed). The front's envelope on a ray is the largest ``D0`` of a deposit site on it; ``A(t)``
is the number of sites under the envelope (the area the front has swept). Growth-zone density
``rho = ΔN / ΔA`` over the last ``ORDER_WINDOW`` frames (``ΔA <= 0`` → 1);
``psi = clip(1 - rho, 0, 1)``. For a planar electrode this is the
:mod:`~engines.synth.growth` definition (``A = W · h``); for a point seed ``A = π R²``. Compact
growth fills what it sweeps (``psi ≈ 0``); dendrites sweep far more than they fill.

Transition frame ``t*`` (robust, no flicker): ``s(t)`` is the centred running *median* of
``psi`` over ``SMOOTH`` frames and ``m(t) = min_{u >= t} s(u)`` its future-minimum hull
(monotone non-decreasing); ``t*`` is the first frame with ``s(t) >= PSI_CRIT`` and
``m(t) >= PSI_CRIT - PSI_MARGIN``: the order parameter has crossed and never comes back to the
compact band, so a one-frame excursion cannot set ``t*`` (:func:`robust_transition_frame`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from engines.synth.growth import HORIZON, ORDER_WINDOW, PSI_CRIT, PSI_MARGIN, SMOOTH, sticking_probability

GEOMETRIES = ("planar", "point", "seeds", "line")
SIDES = ("bottom", "top", "left", "right")
_DY = np.array([1, -1, 0, 0], dtype=np.int64)
_DX = np.array([0, 0, 1, -1], dtype=np.int64)
_BLOCK = 64
_REFRESH = 10
"""Refresh a run's diffusion layer after this many new deposit sites."""


@dataclass(frozen=True)
class GeoSpec:
    """One run: geometry, kinetics (constant Da, ramp to ``da_end``), rendering."""

    seed: int
    geometry: str = "planar"
    side: str = "bottom"
    da_start: float = 0.05
    da_end: float | None = None
    size: int = 96
    delta: int = 10
    per_frame: int = 72
    n_frames: int = 64
    walkers: int = 500
    render_size: int = 128
    canvas: float = 1.0
    """Field of view / lattice size (>= 1: the deposit fills less of the image)."""
    polarity: int = 1
    """+1: deposit brighter than the background; -1: darker (absorption contrast)."""
    blur: float = 1.0
    noise: float = 0.06

    def da_at(self, frame: int) -> float:
        if self.da_end is None:
            return self.da_start
        f = frame / max(1, self.n_frames - 1)
        return float(np.exp((1 - f) * np.log(self.da_start) + f * np.log(self.da_end)))


def nucleation_mask(spec: GeoSpec, rng: np.random.Generator) -> np.ndarray:
    """The electrode / seeds at time 0, ``(size, size)`` bool (row 0 is the image top)."""
    n = spec.size
    m = np.zeros((n, n), dtype=bool)
    if spec.geometry == "planar":
        {"bottom": m[-1, :], "top": m[0, :], "left": m[:, 0], "right": m[:, -1]}[spec.side][...] = True
    elif spec.geometry in ("point", "seeds"):
        k = 1 if spec.geometry == "point" else int(rng.integers(2, 6))
        lo, hi = (n // 4, 3 * n // 4) if spec.geometry == "point" else (n // 8, 7 * n // 8)
        ys, xs = rng.integers(lo, hi, k), rng.integers(lo, hi, k)
        m[ys, xs] = True
    elif spec.geometry == "line":
        step = int(rng.integers(4, 13))
        pos = int(rng.integers(n // 6, 5 * n // 6)) if rng.random() < 0.5 else n - 1
        idx = np.arange(int(rng.integers(0, step)), n, step)
        if spec.side in ("left", "right"):
            m[idx, pos if spec.side == "right" else n - 1 - pos] = True
        else:
            m[pos if spec.side == "bottom" else n - 1 - pos, idx] = True
    else:
        raise ValueError(f"unknown geometry {spec.geometry!r}; one of {GEOMETRIES}")
    return m


class GeoBatch:
    """``B`` runs (same lattice size) advanced together; each run has its own geometry."""

    def __init__(self, specs: Sequence[GeoSpec]) -> None:
        self.specs = list(specs)
        self.b = b = len(specs)
        n = specs[0].size
        if any(s.size != n for s in specs):
            raise ValueError("GeoBatch: all specs need the same lattice size")
        self.n = n
        self.rng = np.random.default_rng([s.seed for s in specs] + [7919])
        self.grid = np.zeros((b, n, n), dtype=bool)
        for i, s in enumerate(specs):
            self.grid[i] = nucleation_mask(s, np.random.default_rng(s.seed))
        self.d0 = np.zeros((b, n, n), dtype=np.float32)
        self.rays: list[np.ndarray] = []
        for i, g in enumerate(self.grid):
            d, rid = ray_ids(g)
            self.d0[i] = d
            self.rays.append(rid)
        self.raymax = [np.zeros(int(r.max()) + 1, dtype=np.float32) for r in self.rays]
        self.n0 = self.grid.sum(axis=(1, 2))
        self.layer = np.zeros((b, n, n), dtype=bool)
        self.shell: list[np.ndarray] = [np.zeros(0, np.int64)] * b
        self.fresh = np.zeros(b, dtype=np.int64)
        self.done = np.zeros(b, dtype=bool)
        self.reach_limit = np.array([d.max() for d in self.d0]) - np.array([s.delta for s in specs]) - 3
        for i in range(b):
            self._refresh(i)
        k = max(s.walkers for s in specs)
        self.rb = np.repeat(np.arange(b, dtype=np.int64), k)
        self.base = self.rb * n * n
        self.pos = np.concatenate([self._sample_shell(i, k) for i in range(b)])
        self.hist: list[list[tuple[int, float]]] = [[] for _ in range(b)]
        self.psi: list[list[float]] = [[] for _ in range(b)]

    def _refresh(self, i: int) -> None:
        s = self.specs[i]
        d = ndimage.distance_transform_edt(~self.grid[i])
        self.layer[i] = (d <= s.delta) & ~self.grid[i]
        shell = np.flatnonzero((self.layer[i] & (d > s.delta - 1.5)).ravel())
        if shell.size == 0:
            shell = np.flatnonzero(self.layer[i].ravel())
        self.shell[i] = shell
        self.fresh[i] = 0

    def _sample_shell(self, i: int, k: int) -> np.ndarray:
        sh = self.shell[i]
        if sh.size == 0:
            return np.zeros(k, dtype=np.int64)
        return sh[self.rng.integers(0, sh.size, k)]

    def _walk(self, targets: np.ndarray, p_stick: np.ndarray) -> np.ndarray:
        n, nn_ = self.n, self.n * self.n
        flat, layer = self.grid.reshape(-1), self.layer.reshape(-1)
        rng, rb, base = self.rng, self.rb, self.base
        m = rb.size
        pw = p_stick.astype(np.float32)[rb]
        deposited = np.zeros(self.b, dtype=np.int64)
        active = ~self.done & (targets > 0)
        k = _BLOCK
        guard = 0
        while active.any() and guard < 400_000:
            guard += 1
            if k == _BLOCK:
                dirs = rng.integers(0, 4, (_BLOCK, m), dtype=np.int8)
                draws = rng.random((_BLOCK, m), dtype=np.float32)
                k = 0
            d = dirs[k]
            y, x = np.divmod(self.pos, n)
            ny, nx = y + _DY[d], x + _DX[d]
            inside = (ny >= 0) & (ny < n) & (nx >= 0) & (nx < n)
            tgt = base + np.clip(ny, 0, n - 1) * n + np.clip(nx, 0, n - 1)
            live = active[rb] & inside
            hit = live & flat[tgt]
            move = live & layer[tgt] & ~hit
            self.pos = np.where(move, tgt - base, self.pos)
            stick = hit & (draws[k] < pw)
            k += 1
            if not stick.any():
                continue
            cells = np.unique(base[stick] + self.pos[stick])
            cells = cells[~flat[cells]]
            flat[cells] = True
            layer[cells] = False
            run = cells // nn_
            cnt = np.bincount(run, minlength=self.b)
            deposited += cnt
            self.fresh += cnt
            for i in np.flatnonzero(cnt):
                if self.fresh[i] >= _REFRESH:
                    self._refresh(int(i))
            buried = np.flatnonzero(flat[base + self.pos] | ~layer[base + self.pos])
            for i in np.unique(rb[buried]):
                w = buried[rb[buried] == i]
                self.pos[w] = self._sample_shell(int(i), w.size)
            now = ~self.done & (deposited < targets)
            for i in np.flatnonzero(cnt):
                reach = self._reach(int(i))
                if reach >= self.reach_limit[i]:
                    self.done[i] = True
            active = now & ~self.done
        return deposited

    def _reach(self, i: int) -> float:
        d = self.d0[i][self.grid[i]]
        return float(np.percentile(d, 99)) if d.size else 0.0

    def _order(self, i: int) -> float:
        npart = int(self.grid[i].sum() - self.n0[i])
        g, rays, d0 = self.grid[i].ravel(), self.rays[i].ravel(), self.d0[i].ravel()
        top = self.raymax[i]
        np.maximum.at(top, rays[g], d0[g])
        area = float((d0 <= top[rays]).sum())
        h = self.hist[i]
        h.append((npart, area))
        if len(h) <= ORDER_WINDOW:
            return 0.0
        n0, a0 = h[-1 - ORDER_WINDOW]
        swept = area - a0
        rho = (npart - n0) / swept if swept > 0 else 1.0
        return float(np.clip(1.0 - rho, 0.0, 1.0))

    def step(self) -> list[bool]:
        """Advance every live run one frame; returns which runs recorded a frame."""
        t = len(self.psi[0])
        targets = np.array([s.per_frame for s in self.specs], dtype=np.int64)
        das = np.array([s.da_at(t) for s in self.specs])
        live = ~self.done
        self._walk(np.where(self.done, 0, targets), sticking_probability(das))
        for i in range(self.b):
            self.psi[i].append(self._order(i))
        return list(live)


N_ANGLES = 48


def ray_ids(nucleus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance ``D0`` from the nucleation set and a *ray* id per site: its nearest nucleation
    site (foot) and the direction from the foot (``N_ANGLES`` bins). For a planar electrode the
    rays are the columns normal to it; for a point seed, angular sectors."""
    d, (fy, fx) = ndimage.distance_transform_edt(~nucleus, return_indices=True)
    n = nucleus.shape[1]
    yy, xx = np.indices(nucleus.shape)
    ang = np.arctan2(yy - fy, xx - fx)
    abin = np.floor((ang + np.pi) / (2 * np.pi) * N_ANGLES).astype(np.int64) % N_ANGLES
    foot = fy * n + fx
    _, rid = np.unique(foot * N_ANGLES + abin, return_inverse=True)
    return d.astype(np.float32), rid.reshape(nucleus.shape).astype(np.int64)


def render(spec: GeoSpec, grid: np.ndarray, rng: np.random.Generator, look: dict[str, float]) -> np.ndarray:
    """One lattice ``(n, n)`` → detector image ``(render_size,)*2`` float32 with the run's look."""
    n = grid.shape[0]
    c = int(round(n * spec.canvas))
    img = np.zeros((c, c), dtype=np.float32)
    oy, ox = int(look["oy"] * (c - n)), int(look["ox"] * (c - n))
    img[oy : oy + n, ox : ox + n] = grid
    s = spec.render_size
    img = ndimage.zoom(img, s / c, order=1)[:s, :s]
    if img.shape != (s, s):
        img = np.pad(img, ((0, s - img.shape[0]), (0, s - img.shape[1])), mode="edge")
    if spec.blur > 0:
        img = ndimage.gaussian_filter(img, spec.blur * s / c, mode="nearest")
    yy = np.linspace(0, 1, s, dtype=np.float32)[:, None]
    xx = np.linspace(0, 1, s, dtype=np.float32)[None, :]
    bg = look["off"] + look["gx"] * xx + look["gy"] * yy
    out = bg + spec.polarity * look["gain"] * img
    out += spec.noise * rng.standard_normal(out.shape).astype(np.float32)
    return out.astype(np.float32)


@dataclass(frozen=True)
class GeoRun:
    spec: GeoSpec
    images: np.ndarray
    psi: np.ndarray
    t_star: int


def robust_transition_frame(psi: np.ndarray, crit: float = PSI_CRIT, margin: float = PSI_MARGIN) -> int:
    """``t*``: first frame ``t >= ORDER_WINDOW`` with smoothed psi ``s(t) >= crit`` and
    ``min_{u >= t} s(u) >= crit - margin`` (the future-minimum hull: the order parameter has
    left the compact band for good); ``s`` is the centred running median over ``SMOOTH``
    frames. -1 if none."""
    p = np.asarray(psi, dtype=np.float64)
    n = len(p)
    if n <= ORDER_WINDOW:
        return -1
    s = np.array(
        [
            np.median(p[max(ORDER_WINDOW, t - SMOOTH // 2) : min(n, t + SMOOTH // 2 + 1)])
            for t in range(ORDER_WINDOW, n)
        ]
    )
    hull = np.minimum.accumulate(s[::-1])[::-1]
    ok = np.flatnonzero((s >= crit) & (hull >= crit - margin))
    return int(ok[0]) + ORDER_WINDOW if ok.size else -1


def simulate_geo(specs: Sequence[GeoSpec]) -> list[GeoRun]:
    """Simulate runs with the same lattice size together; each stops when the front nears the
    far side of the field (or after ``n_frames``)."""
    batch = GeoBatch(specs)
    looks = []
    rngs = []
    for s in specs:
        r = np.random.default_rng([s.seed, 11])
        looks.append(
            {
                "oy": r.random(),
                "ox": r.random(),
                "off": r.uniform(0.05, 0.6),
                "gx": r.uniform(-0.1, 0.1),
                "gy": r.uniform(-0.1, 0.1),
                "gain": r.uniform(0.3, 1.0),
            }
        )
        rngs.append(r)
    frames: list[list[np.ndarray]] = [[] for _ in specs]
    for _ in range(max(s.n_frames for s in specs)):
        if batch.done.all():
            break
        live = batch.step()
        for i, s in enumerate(specs):
            if live[i] and len(frames[i]) < s.n_frames:
                frames[i].append(render(s, batch.grid[i], rngs[i], looks[i]))
    out = []
    for i, s in enumerate(specs):
        psi = np.array(batch.psi[i][: len(frames[i])], dtype=np.float32)
        out.append(GeoRun(s, np.stack(frames[i]), psi, robust_transition_frame(psi)))
    return out


def random_spec(
    seed: int, rng: np.random.Generator, geometry: str | None = None, kinetics: str | None = None
) -> GeoSpec:
    """A randomised run: geometry, side, kinetics (``compact``/``constant``/``ramp``), look."""
    geo = geometry or str(rng.choice(GEOMETRIES, p=[0.4, 0.2, 0.2, 0.2]))
    side = str(rng.choice(SIDES))
    u = rng.random()
    kin = kinetics or ("compact" if u < 0.35 else "constant" if u < 0.75 else "ramp")

    def logu(lo: float, hi: float) -> float:
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    if kin == "compact":
        da, da_end = logu(0.008, 0.03), None
    elif kin == "constant":
        da, da_end = logu(0.04, 0.4), None
    else:
        da, da_end = logu(0.01, 0.03), logu(0.15, 0.4)
    per_frame = int(rng.integers(40, 110))
    return GeoSpec(
        seed=seed,
        geometry=geo,
        side=side,
        da_start=da,
        da_end=da_end,
        per_frame=per_frame,
        n_frames=int(np.clip(4600 // per_frame, 40, 80)),
        canvas=float(rng.choice([1.0, 1.0, rng.uniform(1.0, 2.5)])),
        polarity=int(rng.choice([1, -1])),
        blur=float(rng.uniform(0.3, 2.0)),
        noise=float(rng.uniform(0.01, 0.12)),
    )


def labels(n: int, t_star: int, horizon: int = HORIZON) -> np.ndarray:
    t = np.arange(n)
    return np.zeros(n, np.uint8) if t_star < 0 else (t >= t_star - horizon).astype(np.uint8)
