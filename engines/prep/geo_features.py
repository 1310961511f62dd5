"""Geometry-free window preprocessing for the early-warning model (numpy + scipy only: the
ONNX-only daemon imports this, never torch).

A window is ``T`` frames ``(T, H, W)`` of one series. Nothing here assumes where the electrode
is: every quantity is measured relative to the deposit *at the window's first frame* (the
window's own nucleation front), so a planar electrode on any side, a point seed, several seeds
or a line of seeds give the same numbers for the same growth physics.

1. **Polarity**: pixels that changed by more than 3 σ (σ from the MAD of the change) between
   the first and last frame are new deposit; the sign of their summed change is the contrast
   polarity (deposit brighter or darker). Frames are multiplied by it (deposit bright).
2. **Binarisation**: threshold half-way between the new-deposit pixels' level in the last frame
   and their (background) level in the first frame; fallback: half-way between the 5th and
   95th percentile.
3. **Per-frame features** (``FEATURE_NAMES``), with ``M0`` the first frame's mask, ``D`` the
   distance (px) from ``M0`` and ``P0`` the perimeter of ``M0``:

   * ``advance`` — new deposit area / ``P0`` (mean thickness grown, px);
   * ``reach`` — 90th percentile of ``D`` over the new deposit (how far the tips got, px);
   * ``zone_density`` — new area / area within ``reach`` of ``M0`` (growth-zone density:
     1 compact … low dendritic; the order parameter's image-space analogue);
   * ``occ1``, ``occ2``, ``occ4`` — fraction of the band ``D`` in (0, 1], (1, 2], (2, 4] that is
     deposit (shape of the growth zone);

   (distances are binned up to whole pixels);
   * ``perimeter_growth`` — perimeter / ``P0`` - 1 (interface lengthening, Mullins–Sekerka);
   * ``fill`` — deposit fraction of the field (scale).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

FEATURE_NAMES = (
    "advance",
    "reach",
    "zone_density",
    "occ1",
    "occ2",
    "occ4",
    "perimeter_growth",
    "fill",
)
N_FEAT = len(FEATURE_NAMES)


def polarity(win: np.ndarray) -> float:
    """+1 if the deposit is brighter than the background, -1 if darker (see module docstring)."""
    d = np.asarray(win[-1], dtype=np.float32) - np.asarray(win[0], dtype=np.float32)
    sigma = 1.4826 * float(np.median(np.abs(d - np.median(d)))) + 1e-6
    big = np.abs(d) > 3.0 * sigma
    s = float(d[big].sum()) if big.any() else float(d.sum())
    return -1.0 if s < 0 else 1.0


def _perimeter(m: np.ndarray) -> np.ndarray:
    """Boundary pixels per mask ``(T, H, W)`` (deposit with a non-deposit 4-neighbour)."""
    inner = m.copy()
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    inner[:, :, 1:] &= m[:, :, :-1]
    inner[:, :, :-1] &= m[:, :, 1:]
    return (m & ~inner).sum(axis=(1, 2)).astype(np.float64)


def masks(win: np.ndarray, pol: float) -> np.ndarray:
    a = np.asarray(win, dtype=np.float32) * pol
    d = a[-1] - a[0]
    sigma = 1.4826 * float(np.median(np.abs(d - np.median(d)))) + 1e-6
    new = d > 3.0 * sigma
    if new.sum() >= 4:
        thr = 0.5 * (float(a[-1][new].mean()) + float(a[0][new].mean()))
    else:
        lo, hi = np.percentile(a[-1], [5, 95])
        thr = 0.5 * (lo + hi)
    return a > thr


def features(win: np.ndarray, pol: float | None = None) -> np.ndarray:
    """``(T, H, W)`` window → ``(T, N_FEAT)`` float32 features (module docstring). Distances
    are binned up to whole pixels (``ceil``), so every quantile is one ``bincount``."""
    p = polarity(win) if pol is None else pol
    m = masks(win, p)
    t, h, w = m.shape
    m0 = m[0]
    dist = ndimage.distance_transform_edt(~m0) if m0.any() else np.full((h, w), float(max(h, w)))
    nb = int(np.ceil(dist.max())) + 2
    dbin = np.ceil(dist).astype(np.int64).ravel()  # 0 on M0, k for k-1 < D <= k
    area_by_bin = np.bincount(dbin, minlength=nb)
    area_cum = np.cumsum(area_by_bin) - area_by_bin[0]  # pixels with 0 < D <= k
    new = (m & ~m0).reshape(t, -1)
    code = (np.arange(t)[:, None] * nb + dbin[None, :])[new]
    counts = np.bincount(code, minlength=t * nb).reshape(t, nb)
    n_new = counts.sum(axis=1)
    cum = np.cumsum(counts, axis=1)
    reach = np.where(n_new > 0, (cum >= 0.9 * np.maximum(n_new, 1)[:, None]).argmax(axis=1), 0)
    zone = area_cum[reach]
    band = np.maximum(area_by_bin, 1)
    p0 = max(float(_perimeter(m0[None])[0]), 1.0)
    perim = _perimeter(m)
    out = np.stack(
        [
            n_new / p0,
            reach.astype(np.float64),
            np.where(zone > 0, np.minimum(n_new / np.maximum(zone, 1), 1.5), 1.0),
            counts[:, 1] / band[1],
            counts[:, 2] / band[2] if nb > 2 else np.zeros(t),
            counts[:, 3:5].sum(axis=1) / max(int(area_by_bin[3:5].sum()), 1),
            perim / p0 - 1.0,
            m.reshape(t, -1).mean(axis=1),
        ],
        axis=1,
    )
    return np.clip(out, -5.0, 50.0).astype(np.float32)


def prepare_window(win: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Window → (polarity-corrected frames ``(T, H, W)`` float32, features ``(T, N_FEAT)``)."""
    p = polarity(win)
    return (np.asarray(win, dtype=np.float32) * p), features(win, p)
