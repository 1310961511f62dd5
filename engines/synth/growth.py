"""Particle-based 2-D electrodeposition with a Damköhler-number control (lattice random walkers).

Physics (after Jang et al. 2026 and reaction-limited DLA): Li⁺ ions are Brownian particles on a
square lattice (spacing ``a``) above a planar electrode (bottom row, periodic in x). A walker that
tries to step onto the deposit reacts with probability ``p = Da / (1 + Da)`` per attempt, where
``Da = κa/D`` is the Damköhler number; otherwise it stays (and tries again later). Small Da means
reaction-limited growth: a particle touches the front many times before it sticks, so it fills
the trenches and the deposit stays *compact* (Eden-like). Once the front's features exceed the
crossover length ``ξ ≈ a / Da`` (the critical size ∝ D/κ), diffusion screening wins and the
growth turns *dendritic* (DLA fingers).

Transport: walkers live in a Nernst diffusion layer of ``delta`` rows above the highest deposit
site; a walker that leaves it, or that sticks, is re-injected at the top of the layer (a
reservoir), so the walker count — the bulk concentration — is constant. Galvanostatic: every
frame deposits the same number of particles (the charge passed); ``current`` scales it.

Order parameter (ground truth, documented): the *growth-zone density*
``rho(t) = ΔN / (W · Δh̄)``, the particles deposited over the last ``ORDER_WINDOW`` frames divided
by the area swept by the mean top envelope ``h̄`` (mean over columns of each column's highest
deposit site) in that time. Compact growth fills what it sweeps (``rho ≈ 1``); dendritic growth
sweeps far more than it fills. ``psi = 1 - rho`` (clipped to [0, 1]); the transition frame ``t*``
is the first frame where ``psi`` (centred running mean over ``SMOOTH`` frames) reaches
``PSI_CRIT`` and never again falls below ``PSI_CRIT - PSI_MARGIN``. Runs without such a frame
"stay compact" (``t* = -1``). Per-frame label: ``y(t) = 1`` iff ``t* >= 0`` and
``t >= t* - H`` ("transition within H frames, or already happened").

:class:`GrowthSim` is the stepping API (``step(da)`` → next rendered frame + ground truth), so a
controller (issue 8's closed loop) can drive it frame by frame; :func:`simulate_run` runs a whole
:class:`RunSpec` (constant Da, a Da ramp, or a stays-compact run).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

ORDER_WINDOW = 8
PSI_CRIT = 0.25
PSI_MARGIN = 0.05
SMOOTH = 5
HORIZON = 14
"""H: frames ahead the early-warning label looks (``y(t) = 1`` iff ``t >= t* - H``)."""


@dataclass(frozen=True)
class GrowthParams:
    """Lattice, transport and imaging parameters (defaults: a 128×128 image, one pixel per site)."""

    width: int = 96
    height: int = 96
    delta: int = 10
    """Diffusion-layer thickness in sites (reservoir distance above the highest deposit site)."""
    concentration: float = 0.6
    """Walkers per site in the diffusion layer."""
    per_frame: int = 72
    """Particles deposited per frame at current 1.0 (galvanostatic)."""
    n_frames: int = 64
    margin: int = 4
    """The run stops when the highest site is within ``delta + margin`` rows of the top."""
    blur_sigma: float = 1.0
    noise: float = 0.06
    """Gaussian read noise, relative to the deposit contrast."""
    render_size: int = 128


@dataclass(frozen=True)
class StepTruth:
    """Ground truth for one frame."""

    frame: int
    da: float
    particles: int
    mean_height: float
    max_height: int
    psi: float
    """Order parameter 1 - growth-zone density (0 compact … 1 dendritic)."""
    width: float
    """Front width: std of the column heights (sites)."""
    full: bool = False
    """The deposit reached the top of the field of view (the run is over)."""


_DY = np.array([1, -1, 0, 0], dtype=np.int32)
_DX = np.array([0, 0, 1, -1], dtype=np.int32)
_BLOCK = 64


def sticking_probability(da: float | np.ndarray) -> np.ndarray:
    """Per-attempt reaction probability for Damköhler number ``da`` (≈ Da when small)."""
    da = np.maximum(np.asarray(da, dtype=np.float64), 0.0)
    return da / (1.0 + da)


class GrowthBatch:
    """``B`` independent runs advanced together (one vectorised walker loop amortises numpy's
    per-call overhead; runs that have deposited their frame's charge wait for the others).

    A run's trajectory is a deterministic function of the batch's seed list; a batch of one is
    :class:`GrowthSim`.
    """

    def __init__(self, seeds: Sequence[int], params: GrowthParams | None = None) -> None:
        self.p = p = params or GrowthParams()
        self.b = b = len(seeds)
        if b < 1:
            raise ValueError("GrowthBatch needs at least one seed")
        self.rng = np.random.default_rng([int(s) for s in seeds])
        w, h = p.width, p.height
        self.grid = np.zeros((b, h, w), dtype=bool)
        self.grid[:, 0, :] = True  # the electrode
        self.col_h = np.zeros((b, w), dtype=np.int32)
        self.htop = np.zeros(b, dtype=np.int32)
        self.particles = np.zeros(b, dtype=np.int64)
        self.frame = -1
        self.done = np.zeros(b, dtype=bool)
        n = max(16, int(round(p.concentration * w * p.delta)))
        self.rb = np.repeat(np.arange(b, dtype=np.int64), n)
        self.base = self.rb * (h * w)
        self.wy = self.rng.integers(1, p.delta + 1, b * n).astype(np.int64)
        self.wx = self.rng.integers(0, w, b * n).astype(np.int64)
        self._hist: list[list[tuple[int, float]]] = [[(0, 0.0)] for _ in range(b)]
        # Imaging: per-run illumination and contrast, fixed during a run.
        self._gain = self.rng.uniform(0.8, 1.2, b).astype(np.float32)
        s = p.render_size
        yy = np.linspace(0, 1, s, dtype=np.float32)[None, :, None]
        xx = np.linspace(0, 1, s, dtype=np.float32)[None, None, :]
        off = self.rng.uniform(0.05, 0.2, (b, 1, 1)).astype(np.float32)
        gx = self.rng.uniform(-0.08, 0.08, (b, 1, 1)).astype(np.float32)
        gy = self.rng.uniform(-0.08, 0.08, (b, 1, 1)).astype(np.float32)
        self._background = off + gx * xx + gy * yy

    def _tops(self) -> np.ndarray:
        return np.minimum(self.htop + self.p.delta, self.p.height - 1)

    def _walk(self, targets: np.ndarray, p_stick: np.ndarray) -> None:
        """Move the walkers until every run deposited its ``targets`` particles (or is full)."""
        p = self.p
        w, hw = p.width, p.height * p.width
        flat = self.grid.reshape(-1)
        rng, rb, base = self.rng, self.rb, self.base
        n = rb.size
        wrap = np.arange(-1, w + 1, dtype=np.int64) % w  # x + 1 → periodic x
        limit = p.height - 1 - p.margin
        deposited = np.zeros(self.b, dtype=np.int64)
        pw = p_stick.astype(np.float32)[rb]
        active = ~self.done & (targets > 0)
        frozen = ~active[rb]
        topw = self._tops()[rb]
        k = _BLOCK
        while active.any():
            if k == _BLOCK:  # random numbers in blocks: one generator call per _BLOCK steps
                dirs = rng.integers(0, 4, (_BLOCK, n), dtype=np.int8)
                draws = rng.random((_BLOCK, n), dtype=np.float32)
                k = 0
            d = dirs[k]
            ny = self.wy + _DY[d]
            np.minimum(ny, topw, out=ny)  # the reservoir boundary reflects
            nx = wrap[self.wx + _DX[d] + 1]
            hit = flat[base + ny * w + nx]
            # A step onto the deposit is a reaction attempt: it succeeds with probability p and
            # the walker joins the deposit where it stands; otherwise it stays put.
            stay = hit | frozen
            self.wy = np.where(stay, self.wy, ny)
            self.wx = np.where(stay, self.wx, nx)
            stick = hit & (draws[k] < pw)
            stick &= ~frozen
            k += 1
            if not stick.any():
                continue
            idx = np.flatnonzero(stick)
            cells = np.unique(base[idx] + self.wy[idx] * w + self.wx[idx])
            cells = cells[~flat[cells]]
            flat[cells] = True
            run, rem = np.divmod(cells, hw)
            np.maximum.at(self.col_h, (run, rem % w), rem // w)
            deposited += np.bincount(run, minlength=self.b)
            self.htop = self.col_h.max(axis=1)
            topw = self._tops()[rb]
            # Re-inject the reacted walkers (and any a new site buried) at the reservoir.
            buried = np.flatnonzero(flat[base + self.wy * w + self.wx])
            self.wy[buried] = topw[buried]
            self.wx[buried] = rng.integers(0, w, buried.size)
            self.done |= self.htop + p.delta >= limit
            now = ~self.done & (deposited < targets)
            if (now != active).any():
                active = now
                frozen = ~active[rb]
        self.particles += deposited

    def _order_parameter(self, i: int) -> tuple[float, float]:
        mean_h = float(self.col_h[i].mean())
        hist = self._hist[i]
        hist.append((int(self.particles[i]), mean_h))
        n0, h0 = hist[max(0, len(hist) - 1 - ORDER_WINDOW)]
        swept = (mean_h - h0) * self.p.width
        rho = (int(self.particles[i]) - n0) / swept if swept > 0 else 1.0
        return float(np.clip(1.0 - rho, 0.0, 1.0)), float(self.col_h[i].std())

    def step(
        self, da: float | Sequence[float] | np.ndarray, current: float | Sequence[float] | np.ndarray = 1.0
    ) -> tuple[np.ndarray, list[StepTruth]]:
        """Advance every run one frame at Damköhler number(s) ``da`` and relative current(s);
        return the rendered images ``(B, S, S)`` float32 and each run's ground truth."""
        das = np.broadcast_to(np.asarray(da, dtype=np.float64), (self.b,))
        cur = np.broadcast_to(np.asarray(current, dtype=np.float64), (self.b,))
        targets = np.maximum(1, np.round(self.p.per_frame * np.maximum(cur, 0.0))).astype(np.int64)
        self._walk(np.where(self.done, 0, targets), sticking_probability(das))
        self.frame += 1
        truths = []
        for i in range(self.b):
            psi, width = self._order_parameter(i)
            truths.append(
                StepTruth(
                    frame=self.frame,
                    da=float(das[i]),
                    particles=int(self.particles[i]),
                    mean_height=float(self.col_h[i].mean()),
                    max_height=int(self.htop[i]),
                    psi=psi,
                    width=width,
                    full=bool(self.done[i]),
                )
            )
        return self.render(), truths

    def render(self) -> np.ndarray:
        """Deposit images as a detector sees them: electrode at the bottom, blur, gain, noise."""
        p = self.p
        s = p.render_size
        img = self.grid[:, ::-1].astype(np.float32)
        if img.shape[1:] != (s, s):
            img = ndimage.zoom(img, (1, s / p.height, s / p.width), order=1)
        if p.blur_sigma > 0:
            img = ndimage.gaussian_filter(img, (0, p.blur_sigma, p.blur_sigma), mode="nearest")
        img = self._background + (0.7 * self._gain)[:, None, None] * img
        img += p.noise * self.rng.standard_normal(img.shape, dtype=np.float32)
        return img


class GrowthSim:
    """One run, advanced frame by frame: ``image, truth = sim.step(da)`` (the closed-loop API).

    ``da`` is the Damköhler number for the next frame, ``current`` the relative current (charge
    per frame); a controller maps its current set-point to both (Da grows with overpotential).
    """

    def __init__(self, seed: int, params: GrowthParams | None = None) -> None:
        self._batch = GrowthBatch([seed], params)
        self.psi: list[float] = []

    @property
    def params(self) -> GrowthParams:
        return self._batch.p

    @property
    def done(self) -> bool:
        """The deposit reached the top of the field of view; further steps repeat the last state."""
        return bool(self._batch.done[0])

    def step(self, da: float, current: float = 1.0) -> tuple[np.ndarray, StepTruth]:
        images, truths = self._batch.step(da, current)
        self.psi.append(truths[0].psi)
        return images[0], truths[0]

    def transition_frame(self) -> int:
        """Ground-truth transition frame so far (-1: none yet)."""
        return transition_frame(np.asarray(self.psi))


def smoothed_psi(psi: np.ndarray, k: int = SMOOTH) -> np.ndarray:
    """Centred running mean of ``psi`` over ``k`` frames (NaN before ``ORDER_WINDOW``)."""
    p = np.asarray(psi, dtype=np.float64)
    out = np.full(len(p), np.nan)
    for t in range(ORDER_WINDOW, len(p)):
        out[t] = p[max(ORDER_WINDOW, t - k // 2) : min(len(p), t + k // 2 + 1)].mean()
    return out


def transition_frame(psi: np.ndarray, crit: float = PSI_CRIT, margin: float = PSI_MARGIN) -> int:
    """First frame where the smoothed order parameter reaches ``crit`` and never again falls
    below ``crit - margin`` (hysteresis: a fluctuation is not a transition); -1 if none."""
    s = smoothed_psi(psi)
    for t in range(ORDER_WINDOW, len(s)):
        if s[t] >= crit and np.all(s[t:] >= crit - margin):
            return t
    return -1


def labels(n_frames: int, t_star: int, horizon: int = HORIZON) -> np.ndarray:
    """Per-frame 0/1: the transition happens within ``horizon`` frames (or already happened)."""
    t = np.arange(n_frames)
    if t_star < 0:
        return np.zeros(n_frames, dtype=np.uint8)
    return (t >= t_star - horizon).astype(np.uint8)


@dataclass(frozen=True)
class RunSpec:
    """One simulated run: constant ``da_start``; or, with ``da_end``, a geometric ramp from
    ``da_start`` to ``da_end`` over the run; or, with ``step_frame`` too, a current step:
    ``da_start`` before that frame and ``da_end`` from it on."""

    seed: int
    da_start: float
    da_end: float | None = None
    params: GrowthParams = field(default_factory=GrowthParams)
    step_frame: int | None = None

    def da_at(self, frame: int) -> float:
        if self.da_end is None:
            return self.da_start
        if self.step_frame is not None:
            return self.da_start if frame < self.step_frame else self.da_end
        f = frame / max(1, self.params.n_frames - 1)
        return float(math.exp((1 - f) * math.log(self.da_start) + f * math.log(self.da_end)))


@dataclass(frozen=True)
class GrowthRun:
    """A whole run: image stack (n, S, S) float32, per-frame truth, transition frame, labels."""

    spec: RunSpec
    images: np.ndarray
    psi: np.ndarray
    da: np.ndarray
    width: np.ndarray
    mean_height: np.ndarray
    t_star: int
    labels: np.ndarray


def simulate_runs(specs: Sequence[RunSpec]) -> list[GrowthRun]:
    """Simulate runs that share ``params`` together (one batch); each stops when its deposit fills
    the field of view or after ``n_frames``."""
    if not specs:
        return []
    params = specs[0].params
    if any(s.params != params for s in specs):
        raise ValueError("simulate_runs: all specs in a batch must share GrowthParams")
    batch = GrowthBatch([s.seed for s in specs], params)
    frames: list[list[np.ndarray]] = [[] for _ in specs]
    truths: list[list[StepTruth]] = [[] for _ in specs]
    for t in range(params.n_frames):
        live = [i for i in range(len(specs)) if not truths[i] or not truths[i][-1].full]
        if not live:
            break
        images, tr = batch.step([s.da_at(t) for s in specs])
        for i in live:
            frames[i].append(images[i])
            truths[i].append(tr[i])
    out = []
    for spec, imgs, ts in zip(specs, frames, truths, strict=True):
        psi = np.array([x.psi for x in ts], dtype=np.float32)
        t_star = transition_frame(psi)
        out.append(
            GrowthRun(
                spec=spec,
                images=np.stack(imgs),
                psi=psi,
                da=np.array([x.da for x in ts], dtype=np.float32),
                width=np.array([x.width for x in ts], dtype=np.float32),
                mean_height=np.array([x.mean_height for x in ts], dtype=np.float32),
                t_star=t_star,
                labels=labels(len(ts), t_star),
            )
        )
    return out


def simulate_run(spec: RunSpec) -> GrowthRun:
    return simulate_runs([spec])[0]
