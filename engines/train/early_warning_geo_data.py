"""Early-warning data on any electrode geometry (:mod:`engines.synth.growth_geometry`).

Seed ranges (disjoint from each other and from :mod:`engines.train.early_warning_data`):

==========  =============  ===================================================================
split       run seeds      content
==========  =============  ===================================================================
``train``   1 000 000 – …  geometry 40 % planar (any side) / 20 % point / 20 % seeds / 20 % line
``val``     1 100 000 – …  same mix, 50 % stays-compact runs (false-alarm calibration)
``test``    1 200 000 – …  held out: equal parts planar, point, seeds, line (per-geometry bench)
==========  =============  ===================================================================

Kinetics per run: stays compact (Da log-uniform 0.008–0.03), constant Da 0.04–0.4, or a ramp
from 0.01–0.03 to 0.15–0.4; frame interval (particles per frame 40–110), field of view
(lattice fills 16–100 % of the image), polarity, blur, noise, illumination randomised.
Frames are stored at 64×64 (block mean of the 128×128 render), float16.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from engines.synth.growth_geometry import GEOMETRIES, GeoSpec, random_spec, simulate_geo
from engines.train.early_warning_data import RunSet, to_net

GEO_SEED_BASE = {"train": 1_000_000, "val": 1_100_000, "test": 1_200_000}
GEO_CACHE = Path("runs/cache/early_warning_geo")
MAX_CANVAS = 1.5
"""Runs whose lattice fills less than 1/MAX_CANVAS of the field are left out of training and
evaluation: at the network's 64×64 a pixel then covers > 2 lattice sites and the
fingers (1–3 sites wide) are sub-pixel, so no image model can see the morphology (measured: the
growth-zone occupancy ``occ1`` correlates −0.71 with psi at full field, −0.31 over all scales)."""
BATCH = 8


def geo_specs(split: str, n: int, quick: bool = False) -> list[GeoSpec]:
    base = GEO_SEED_BASE[split]
    rng = np.random.default_rng(base + 13)
    out = []
    for i in range(n):
        geo = GEOMETRIES[i % 4] if split == "test" else None
        kin = ("compact" if rng.random() < 0.5 else None) if split == "val" else None
        s = random_spec(base + i, rng, geometry=geo, kinetics=kin)
        if quick:
            s = GeoSpec(
                **{
                    **asdict(s),
                    "size": 48,
                    "delta": 6,
                    "per_frame": max(12, s.per_frame // 4),
                    "n_frames": 24,
                    "walkers": 200,
                    "render_size": 64,
                }
            )
        out.append(s)
    return out


def resolved(specs: list[GeoSpec]) -> list[int]:
    """Indices of runs rendered at a resolution where fingers are visible (``canvas <= MAX_CANVAS``)."""
    return [i for i, s in enumerate(specs) if s.canvas <= MAX_CANVAS]


def _chunk(specs: list[GeoSpec]) -> list[tuple[np.ndarray, int, np.ndarray]]:
    return [(to_net(r.images).astype(np.float16), r.t_star, r.psi) for r in simulate_geo(specs)]


def simulate_geo_set(
    specs: list[GeoSpec], name: str, cache: Path | None = GEO_CACHE, workers: int = 2
) -> tuple[RunSet, np.ndarray]:
    """(RunSet, geometry label per run: ``planar-bottom``, ``planar-side``, ``point``, …)."""
    key = hashlib.sha256(json.dumps([asdict(s) for s in specs], sort_keys=True).encode()).hexdigest()[:16]
    geo = np.array(
        [
            s.geometry + ("-bottom" if s.side == "bottom" else "-side")
            if s.geometry == "planar"
            else s.geometry
            for s in specs
        ]
    )
    path = None if cache is None else Path(cache) / f"{name}-{len(specs)}-{key}.npz"
    if path is not None and path.exists():
        with np.load(path) as z:
            return RunSet(**{k: z[k] for k in RunSet.__dataclass_fields__}), geo
    order = sorted(range(len(specs)), key=lambda i: specs[i].da_start)
    chunks = [[specs[i] for i in order[j : j + BATCH]] for j in range(0, len(order), BATCH)]
    results: dict[int, tuple[np.ndarray, int, np.ndarray]] = {}
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for j, res in enumerate(pool.map(_chunk, chunks)):
                for k, r in enumerate(res):
                    results[order[j * BATCH + k]] = r
    else:
        for j, c in enumerate(chunks):
            for k, r in enumerate(_chunk(c)):
                results[order[j * BATCH + k]] = r
    lens = [len(results[i][0]) for i in range(len(specs))]
    rs = RunSet(
        frames=np.concatenate([results[i][0] for i in range(len(specs))]),
        offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        t_star=np.array([results[i][1] for i in range(len(specs))], dtype=np.int64),
        da_start=np.array([s.da_start for s in specs]),
        da_end=np.array([np.nan if s.da_end is None else s.da_end for s in specs]),
        seeds=np.array([s.seed for s in specs], dtype=np.int64),
        psi=np.concatenate([results[i][2] for i in range(len(specs))]).astype(np.float32),
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, **{k: getattr(rs, k) for k in RunSet.__dataclass_fields__})
        tmp.replace(path)
    return rs, geo


if __name__ == "__main__":  # pre-simulate the splits: python -m engines.train.early_warning_geo_data
    import sys
    import time

    sizes = {"train": 300, "val": 200, "test": 240}
    for split in sys.argv[1:] or list(sizes):
        t0 = time.time()
        rs, g = simulate_geo_set(geo_specs(split, sizes[split]), split)
        print(
            split,
            len(rs),
            "transitioning",
            int((rs.t_star >= 0).sum()),
            f"{time.time() - t0:.0f}s",
            flush=True,
        )
