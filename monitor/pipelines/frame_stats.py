"""frame_stats: the simplest real pipeline (mean, percentiles, saturated and dead fractions).

Integer frames of up to 16 bits use one ``np.bincount`` pass, from which every statistic is
exact; other dtypes fall back to ``np.percentile``.

Frames of more than ``exact_pixels`` (option, default 2**21: a 2048² frame is above it) are
summarised in a cheaper way, because a full histogram of 4 M pixels (about 10 ms) is the one
thing that keeps ingest below 0.8 of a bare PULL loop on 2 cores (``bench ingest``): ``mean``,
``min``, ``max``, ``saturated_fraction`` and ``dead_fraction`` stay exact (SIMD reductions; the
saturated and dead pixels are counted only when ``max``/``min`` show there are any), while
``std`` and the percentiles are estimated from the histogram of a regular sub-grid (every
``k``-th row and column, at least 2**18 pixels). Set ``exact_pixels`` higher to get every
statistic exact at any size.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from monitor.config import PipelineSettings, parse_options
from monitor.frames import Frame
from monitor.pipelines.base import Latency, Result, ResultSchema

PERCENTILES = (1.0, 50.0, 99.0)
SCALARS = ("mean", "std", "min", "max", "p1", "p50", "p99", "saturated_fraction", "dead_fraction")


def _percentiles_from_hist(hist: np.ndarray, n: int, offset: int) -> list[float]:
    cdf = np.cumsum(hist)
    out = []
    for q in PERCENTILES:
        # Same convention as np.percentile(method="inverted_cdf").
        rank = max(int(np.ceil(q / 100.0 * n)), 1)
        out.append(float(np.searchsorted(cdf, rank) + offset))
    return out


HIST_CHUNK = 1 << 19
SAMPLE_MIN_PIXELS = 1 << 18
"""The sampled path histograms at least this many pixels."""


@dataclass(frozen=True)
class FrameStatsOptions:
    exact_pixels: int = 1 << 21
    """Frames with more pixels get exact min/max/saturated/dead, sampled mean/std/percentiles."""


def _histogram(flat: np.ndarray, nbins: int) -> np.ndarray:
    """``np.bincount`` in chunks: bincount casts its input to int64, and one 32 MB temporary per
    2048² frame costs fresh pages (kernel page clearing) on every call; chunks reuse memory."""
    if flat.size <= HIST_CHUNK:
        return np.bincount(flat, minlength=nbins)
    hist = np.zeros(nbins, dtype=np.int64)
    for i in range(0, flat.size, HIST_CHUNK):
        hist += np.bincount(flat[i : i + HIST_CHUNK], minlength=nbins)
    return hist


def sample_grid(a: np.ndarray, min_pixels: int = SAMPLE_MIN_PIXELS) -> np.ndarray:
    """Every ``k``-th row and column of a 2-D ``a`` (the largest ``k`` keeping ``min_pixels``)."""
    k = max(1, math.isqrt(max(a.size // max(min_pixels, 1), 1)))
    return a[::k, ::k] if a.ndim == 2 else a.reshape(-1)[:: k * k]


def frame_statistics(
    a: np.ndarray, saturation: float, dead: float, *, exact_pixels: int | None = None
) -> dict[str, float]:
    """The :data:`SCALARS` of ``a``; above ``exact_pixels`` pixels, mean/std/percentiles are sampled."""
    n = a.size
    if n == 0:
        return {k: float("nan") for k in SCALARS}
    if exact_pixels is not None and n > exact_pixels and a.dtype.kind in "uif":
        return _sampled_statistics(a, saturation, dead)
    if a.dtype.kind in "ui" and a.dtype.itemsize <= 2:
        offset = 0 if a.dtype.kind == "u" else 1 << (8 * a.dtype.itemsize - 1)
        flat = a.reshape(-1)
        hist = _histogram(
            flat if offset == 0 else flat.astype(np.int32) + offset, 1 << (8 * a.dtype.itemsize)
        )
        values = np.arange(hist.size, dtype=np.float64) - offset
        # Elementwise products, not `@`: a BLAS dot wakes OpenBLAS's spinning worker threads,
        # which on a small machine steal CPU from ingest (measured in `bench ingest`).
        total = float(np.multiply(hist, values).sum())
        mean = total / n
        var = float(np.multiply(hist, (values - mean) ** 2).sum()) / n
        nz = np.flatnonzero(hist)
        vmin, vmax = float(values[nz[0]]), float(values[nz[-1]])
        p1, p50, p99 = (p - offset for p in _percentiles_from_hist(hist, n, 0))
        sat_idx = int(np.ceil(saturation)) + offset
        sat = float(hist[sat_idx:].sum()) / n if sat_idx < hist.size else 0.0
        dead_idx = int(np.floor(dead)) + offset
        dead_frac = float(hist[: max(dead_idx + 1, 0)].sum()) / n
        return {
            "mean": mean,
            "std": float(np.sqrt(var)),
            "min": vmin,
            "max": vmax,
            "p1": float(p1),
            "p50": float(p50),
            "p99": float(p99),
            "saturated_fraction": sat,
            "dead_fraction": dead_frac,
        }
    f = a.astype(np.float64, copy=False)
    p1, p50, p99 = np.percentile(f, PERCENTILES, method="inverted_cdf")
    return {
        "mean": float(f.mean()),
        "std": float(f.std()),
        "min": float(f.min()),
        "max": float(f.max()),
        "p1": float(p1),
        "p50": float(p50),
        "p99": float(p99),
        "saturated_fraction": float(np.count_nonzero(f >= saturation)) / n,
        "dead_fraction": float(np.count_nonzero(f <= dead)) / n,
    }


def _sampled_statistics(a: np.ndarray, saturation: float, dead: float) -> dict[str, float]:
    """Exact extremes and saturated/dead fractions; the rest from :func:`sample_grid`."""
    n = a.size
    vmin, vmax = a.min(), a.max()
    if a.dtype.kind == "f" and not (math.isfinite(vmin) and math.isfinite(vmax)):
        return frame_statistics(a, saturation, dead)  # NaN/inf: the exact path's conventions
    sat = float(np.count_nonzero(a >= saturation)) / n if vmax >= saturation else 0.0
    dead_frac = float(np.count_nonzero(a <= dead)) / n if vmin <= dead else 0.0
    sub = np.ascontiguousarray(sample_grid(a))
    stats = frame_statistics(sub, saturation, dead)
    return stats | {
        "mean": _exact_sum(a) / n,
        "min": float(vmin),
        "max": float(vmax),
        "saturated_fraction": sat,
        "dead_fraction": dead_frac,
    }


def _exact_sum(a: np.ndarray) -> float:
    """Sum of all pixels: row sums in 32 bits where they cannot overflow (twice as fast)."""
    rows = a.reshape(a.shape[0], -1) if a.ndim >= 2 else a.reshape(1, -1)
    if a.dtype.kind in "ui" and a.dtype.itemsize <= 2 and rows.shape[1] <= 1 << 15:
        acc = np.uint32 if a.dtype.kind == "u" else np.int32
        return float(np.add.reduce(rows, axis=1, dtype=acc).sum(dtype=np.int64))
    if a.dtype.kind in "ui":
        return float(np.add.reduce(rows.reshape(-1), dtype=np.int64))
    return float(np.add.reduce(rows.reshape(-1), dtype=np.float64))


def default_saturation(dtype: np.dtype) -> float:
    if dtype.kind in "ui":
        return float(np.iinfo(dtype).max)
    return float("inf")


class FrameStatsPipeline:
    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.streams = settings.streams
        self.options = parse_options(
            FrameStatsOptions, settings.options, f"pipelines.{settings.name}.options"
        )

    def schema(self) -> ResultSchema:
        return ResultSchema(scalars=SCALARS)

    def process(self, frames: Sequence[Frame]) -> list[Result]:
        out = []
        for frame in frames:
            t0 = time.perf_counter()
            # configured value, else the detector's own (stream2 start message), else the dtype's max
            detector_sat = frame.meta.extra.get("saturation_value")
            sat = (
                self.settings.saturation_value
                or (
                    float(detector_sat) if isinstance(detector_sat, int | float) and detector_sat > 0 else 0.0
                )
                or default_saturation(frame.array.dtype)
            )
            stats = frame_statistics(
                frame.array, sat, self.settings.dead_value, exact_pixels=self.options.exact_pixels
            )
            out.append(
                Result(
                    pipeline=self.name,
                    frame=frame,
                    scalars=stats,
                    latency=Latency(compute=time.perf_counter() - t0, batch_size=len(frames)),
                )
            )
        return out
