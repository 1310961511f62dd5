"""Numpy helpers on discrete-time hazards (no torch: the daemon and dashboard use them).

``h`` has shape ``(..., K)``: ``h[k]`` = P(transition ``k`` frames after the window's last
frame | not before); ``k = 0`` means now or already.
"""

from __future__ import annotations

import numpy as np


def survival(h: np.ndarray) -> np.ndarray:
    """``S[k] = P(T > k)`` for ``k = 0 … K-1`` (``(..., K)``)."""
    return np.cumprod(1.0 - np.clip(np.asarray(h, dtype=np.float64), 0.0, 1.0), axis=-1)


def risk_within(h: np.ndarray, horizon: int) -> np.ndarray:
    """P(transition within ``horizon`` frames) = ``1 - S[horizon]``."""
    return 1.0 - survival(h)[..., horizon]


def interval(h: np.ndarray, lo: float = 0.1, hi: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Frames to transition at the ``lo`` and ``hi`` quantiles of the forecast distribution;
    ``K`` (the forecast range, i.e. "later than that") where the quantile lies beyond it."""
    cdf = 1.0 - survival(h)
    k = cdf.shape[-1]

    def q(p: float) -> np.ndarray:
        reached = cdf >= p
        return np.where(reached.any(axis=-1), reached.argmax(axis=-1), k).astype(np.float64)

    return q(lo), q(hi)
