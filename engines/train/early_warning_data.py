"""Early-warning data: run specs by split (documented seed ranges), simulation, caching, windows.

Seed ranges (a run's seed never appears in two splits):

======================  ==============  ===============================================
split                   run seeds       Da
======================  ==============  ===============================================
``train``               0 – 99 999      in-distribution (below)
``val``                 100 000 – …     in-distribution (early stopping, threshold check)
``test``                200 000 – …     in-distribution, held out (bench, manifest metrics)
``ood``                 300 000 – …     unseen band: a current step into Da in [0.5, 1.5]
``ood_finetune``        400 000 – …     the same kind of runs, ≤ 10 for fine-tuning
======================  ==============  ===============================================

In-distribution runs: 30 % "stay compact" (constant Da log-uniform in [0.008, 0.04]), 45 %
constant Da log-uniform in [0.04, 0.4] (compact, then dendritic for the larger Da), 25 % current
ramps (Da rising geometrically from [0.01, 0.03] to [0.15, 0.4] over the run). So the training Da
range is [0.008, 0.4]. The ``ood`` runs grow compact at Da in [0.01, 0.02] and then, at a frame
between n/4 and n/2, the current steps up so that Da jumps into [0.5, 1.5], entirely above the
training range (faster kinetics; a constant Da that high is dendritic from the first frames,
so there would be nothing to warn about).

Frames are stored as the network sees them: block-averaged to ``NET_SIZE`` (64×64), float16.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engines.synth.growth import HORIZON, GrowthParams, RunSpec, simulate_runs, transition_frame

NET_SIZE = 64
WINDOW = 8
"""T: frames per window."""
SPLIT_SEED_BASE = {"train": 0, "val": 100_000, "test": 200_000, "ood": 300_000, "ood_finetune": 400_000}
TRAIN_DA = (0.008, 0.4)
OOD_DA = (0.5, 1.5)
CACHE_DIR = Path("runs/cache/early_warning")
BATCH = 12
"""Runs simulated together (one vectorised walker loop)."""


def _logu(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def make_specs(split: str, n: int, params: GrowthParams | None = None) -> list[RunSpec]:
    """``n`` run specs of ``split``; deterministic; seeds from the split's range."""
    base = SPLIT_SEED_BASE[split]
    params = params or GrowthParams()
    rng = np.random.default_rng(base + 7)
    specs = []
    for i in range(n):
        seed = base + i
        if split in ("ood", "ood_finetune"):
            # Compact growth at low Da, then a current step into the unseen band.
            step = int(rng.integers(params.n_frames // 4, params.n_frames // 2 + 1))
            specs.append(RunSpec(seed, _logu(rng, 0.01, 0.02), _logu(rng, *OOD_DA), params, step_frame=step))
            continue
        u = rng.random()
        if u < 0.30:
            specs.append(RunSpec(seed, _logu(rng, 0.008, 0.04), None, params))
        elif u < 0.75:
            specs.append(RunSpec(seed, _logu(rng, 0.04, TRAIN_DA[1]), None, params))
        else:
            specs.append(RunSpec(seed, _logu(rng, 0.01, 0.03), _logu(rng, 0.15, TRAIN_DA[1]), params))
    return specs


def to_net(images: np.ndarray, size: int = NET_SIZE) -> np.ndarray:
    """Resize frames ``(..., H, W)`` to ``size``×``size`` float32: block mean when H, W are
    multiples of ``size``, else bilinear. This is the pipeline's resize too."""
    a = np.asarray(images, dtype=np.float32)
    h, w = a.shape[-2:]
    if (h, w) == (size, size):
        return a
    if h % size == 0 and w % size == 0:
        fy, fx = h // size, w // size
        return a.reshape(*a.shape[:-2], size, fy, size, fx).mean(axis=(-3, -1))
    from scipy import ndimage

    zoom = (1,) * (a.ndim - 2) + (size / h, size / w)
    out = ndimage.zoom(a, zoom, order=1, grid_mode=True, mode="nearest")
    return out[..., :size, :size].astype(np.float32)


@dataclass(frozen=True)
class RunSet:
    """Simulated runs of one split: frames concatenated, ``offsets[i]:offsets[i+1]`` is run ``i``."""

    frames: np.ndarray  # (N, NET_SIZE, NET_SIZE) float16
    offsets: np.ndarray  # (R + 1,) int64
    t_star: np.ndarray  # (R,) int64, -1: stays compact
    da_start: np.ndarray
    da_end: np.ndarray  # NaN: constant Da
    seeds: np.ndarray
    psi: np.ndarray  # (N,) order parameter per frame

    def __len__(self) -> int:
        return len(self.t_star)

    def run(self, i: int) -> np.ndarray:
        return self.frames[self.offsets[i] : self.offsets[i + 1]]

    def labels(self, i: int, horizon: int = HORIZON) -> np.ndarray:
        n = int(self.offsets[i + 1] - self.offsets[i])
        t = np.arange(n)
        return (
            (t >= self.t_star[i] - horizon).astype(np.float32)
            if self.t_star[i] >= 0
            else np.zeros(n, np.float32)
        )

    def subset(self, idx: Sequence[int]) -> RunSet:
        runs = [self.run(i) for i in idx]
        psis = [self.psi[self.offsets[i] : self.offsets[i + 1]] for i in idx]
        lens = [len(r) for r in runs]
        return RunSet(
            frames=np.concatenate(runs) if runs else self.frames[:0],
            offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
            t_star=self.t_star[list(idx)],
            da_start=self.da_start[list(idx)],
            da_end=self.da_end[list(idx)],
            seeds=self.seeds[list(idx)],
            psi=np.concatenate(psis) if psis else self.psi[:0],
        )


def _simulate_chunk(specs: list[RunSpec]) -> list[tuple[np.ndarray, int, np.ndarray]]:
    return [(to_net(r.images).astype(np.float16), r.t_star, r.psi) for r in simulate_runs(specs)]


def _key(specs: Sequence[RunSpec]) -> str:
    dicts = [{k: v for k, v in asdict(s).items() if v is not None or k != "step_frame"} for s in specs]
    blob = json.dumps(dicts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def simulate_set(
    specs: Sequence[RunSpec],
    *,
    workers: int = 2,
    cache_dir: Path | None = CACHE_DIR,
    name: str = "runs",
    progress: Callable[[int], None] | None = None,
) -> RunSet:
    """Simulate ``specs`` (batches of similar Da, ``workers`` processes), cached by content hash."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{name}-{len(specs)}-{_key(specs)}.npz"
        if path.exists():
            with np.load(path) as z:
                if progress:
                    progress(len(specs))
                cached = RunSet(**{k: z[k] for k in RunSet.__dataclass_fields__})
            # The label rule may have changed since the cache was written: t* from the stored psi.
            off = cached.offsets
            t_star = [transition_frame(cached.psi[off[i] : off[i + 1]]) for i in range(len(cached))]
            return dataclasses.replace(cached, t_star=np.array(t_star, dtype=np.int64))
    order = sorted(range(len(specs)), key=lambda i: specs[i].da_start)  # similar speed per batch
    chunks = [[specs[i] for i in order[j : j + BATCH]] for j in range(0, len(order), BATCH)]
    results: dict[int, tuple[np.ndarray, int, np.ndarray]] = {}
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [(j, pool.submit(_simulate_chunk, c)) for j, c in enumerate(chunks)]
            for j, fut in futures:
                for k, res in enumerate(fut.result()):
                    results[order[j * BATCH + k]] = res
                if progress:
                    progress(len(chunks[j]))
    else:
        for j, c in enumerate(chunks):
            for k, res in enumerate(_simulate_chunk(c)):
                results[order[j * BATCH + k]] = res
            if progress:
                progress(len(c))
    frames = [results[i][0] for i in range(len(specs))]
    lens = [len(f) for f in frames]
    rs = RunSet(
        frames=np.concatenate(frames),
        offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        t_star=np.array([results[i][1] for i in range(len(specs))], dtype=np.int64),
        da_start=np.array([s.da_start for s in specs], dtype=np.float64),
        da_end=np.array([np.nan if s.da_end is None else s.da_end for s in specs], dtype=np.float64),
        seeds=np.array([s.seed for s in specs], dtype=np.int64),
        psi=np.concatenate([results[i][2] for i in range(len(specs))]).astype(np.float32),
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **{k: getattr(rs, k) for k in RunSet.__dataclass_fields__})
        tmp.replace(path)
    return rs


def windows_of_run(frames: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """All full windows of a run, ``(n - window + 1, window, H, W)``; window ``j`` ends at frame
    ``j + window - 1``."""
    n = len(frames)
    if n < window:
        return np.zeros((0, window, *frames.shape[1:]), dtype=frames.dtype)
    return np.lib.stride_tricks.sliding_window_view(frames, window, axis=0).transpose(0, 3, 1, 2)
