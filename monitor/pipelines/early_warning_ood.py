"""Per-series out-of-distribution check for the forecasting early-warning model.

The manifest's ``extra.ood`` holds training statistics of the window-mean geometry-free features
(``feature_mean``, ``feature_std``), the per-window score threshold (the training 99.5th
percentile of the RMS z-score) and the training range of the latent. A window is *far* when its
score exceeds the threshold or its latent leaves the training range widened by that range's own
width. A series is flagged OOD once ``min_count`` consecutive windows are far and stays flagged
until ``min_count`` consecutive windows are near again (no flicker).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


class OodMonitor:
    def __init__(self, stats: object, min_count: int = 3, max_series: int = 256) -> None:
        d = stats if isinstance(stats, dict) else {}
        self.enabled = "feature_mean" in d
        self.mean = np.asarray(d.get("feature_mean", [0.0]), dtype=np.float64)
        self.std = np.maximum(np.asarray(d.get("feature_std", [1.0]), dtype=np.float64), 1e-6)
        self.threshold = float(d.get("score_threshold", np.inf))
        lo, hi = d.get("latent_range", [-np.inf, np.inf])
        width = float(hi) - float(lo)
        self.latent_lo, self.latent_hi = float(lo) - width, float(hi) + width
        self.min_count = min_count
        self.max_series = max_series
        self._state: OrderedDict[tuple[str, str], tuple[bool, int]] = OrderedDict()

    def score(self, feats: np.ndarray) -> float:
        """RMS z-score of the window-mean features ``feats (T, F)``."""
        if not self.enabled:
            return 0.0
        z = (np.asarray(feats, dtype=np.float64).mean(axis=0) - self.mean) / self.std
        return float(np.sqrt((z**2).mean()))

    def update(self, key: tuple[str, str], feats: np.ndarray, latent: float) -> tuple[float, bool]:
        """Score one window of series ``key``; returns (score, series flagged OOD)."""
        s = self.score(feats)
        far = s > self.threshold or not (self.latent_lo <= latent <= self.latent_hi)
        flagged, streak = self._state.get(key, (False, 0))
        streak = streak + 1 if far != flagged else 0
        if streak >= self.min_count:
            flagged, streak = far, 0
        self._state[key] = (flagged, streak)
        self._state.move_to_end(key)
        while len(self._state) > self.max_series:
            self._state.popitem(last=False)
        return s, flagged
