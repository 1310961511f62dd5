"""Out-of-distribution (OOD) guard: how far an input lies from a model's training inputs.

A model's manifest carries ``extra["ood"]`` (:class:`OodStats`): per feature the median and a
robust spread (1.4826·MAD, floored) over the model's training inputs, and a threshold on the
score. The score of one input is the root-mean-square of its ``TOP_K`` largest robust z-scores, each
clipped at ``Z_CLIP`` so that one wild feature cannot decide alone::

    z_i = min(|f_i − median_i| / spread_i, Z_CLIP),   score = sqrt(mean of the TOP_K largest z_i²)

The threshold is set from the training inputs' own scores (a high quantile times a margin).

Features are generic for 2-D images (:func:`image_features`: intensity quantiles of the
percentile-normalised image, gradient energy at three scales, layer anisotropy) plus, for a
segmentation model, the predicted class fractions (:func:`class_fraction_features`: the
class-fraction prior). Any pipeline that can describe its input by a feature vector can use
:class:`OodStats` and :class:`SeriesOod` as they are. numpy only.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("engines.ood")

Z_CLIP = 12.0
TOP_K = 4
"""The score looks at the features furthest out: a foreign input differs in a few of them."""
IMAGE_FEATURES = (
    "q02",
    "q10",
    "q25",
    "q50",
    "q75",
    "q90",
    "q98",
    "grad_s1",
    "grad_s2",
    "grad_s4",
    "fine_to_coarse",
    "layer_anisotropy",
    "row_variance_share",
)
"""Names of :func:`image_features`, in order."""
WORK_SIDE = 256
"""Images are block-averaged to at most about this many pixels a side before measuring."""


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    if k <= 1:
        return a
    h, w = (a.shape[0] // k) * k, (a.shape[1] // k) * k
    return a[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))


def _mean_abs_grad(a: np.ndarray) -> tuple[float, float]:
    if min(a.shape) < 2:
        return 0.0, 0.0
    return float(np.abs(np.diff(a, axis=0)).mean()), float(np.abs(np.diff(a, axis=1)).mean())


def image_features(x: np.ndarray) -> np.ndarray:
    """:data:`IMAGE_FEATURES` of one percentile-normalised 2-D image (float64 vector).

    Scale-free by construction: the image is block-averaged to about :data:`WORK_SIDE` px a
    side first, so a 512² and a 2048² slice of the same material give similar values.
    """
    if x.ndim != 2:
        raise ValueError(f"image_features needs a 2-D image, got shape {x.shape}")
    a = np.asarray(x, np.float64)
    k = max(1, min(a.shape) // WORK_SIDE)
    a = _block_mean(a, k)
    q = np.percentile(a[:: max(1, a.shape[0] // 128), :], (2, 10, 25, 50, 75, 90, 98))
    g = []
    for s in (1, 2, 4):
        gy, gx = _mean_abs_grad(_block_mean(a, s))
        g.append(gy + gx)
    coarse = _block_mean(a, 8)
    gy, gx = _mean_abs_grad(coarse)
    aniso = float(np.log((gy + 1e-3) / (gx + 1e-3)))
    var = float(a.var())
    row_share = float(a.mean(axis=1).var() / var) if var > 1e-12 else 0.0
    fine_to_coarse = float(np.log((g[0] + 1e-4) / (g[2] + 1e-4)))
    return np.array([*q, *g, fine_to_coarse, aniso, row_share], np.float64)


def class_fraction_features(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Fraction of pixels per class id (``0..n_classes-1``) of a label map."""
    counts = np.bincount(np.asarray(labels).ravel(), minlength=n_classes)[:n_classes]
    return counts / max(int(counts.sum()), 1)


@dataclass(frozen=True)
class OodStats:
    """Training-input statistics of one model (``manifest.extra["ood"]``)."""

    features: tuple[str, ...]
    median: tuple[float, ...]
    spread: tuple[float, ...]
    threshold: float
    n_samples: int
    source: str = ""
    """Where the statistics come from (e.g. "240 synthetic training slices, generator v2")."""

    def z(self, f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, np.float64)
        if f.shape != (len(self.features),):
            raise ValueError(f"expected {len(self.features)} features, got shape {f.shape}")
        z = (f - np.asarray(self.median)) / np.asarray(self.spread)
        return np.where(np.isfinite(z), z, Z_CLIP)

    def score(self, f: np.ndarray) -> float:
        """RMS of the ``TOP_K`` largest clipped robust z-scores (0 = typical training input)."""
        z = np.sort(np.minimum(np.abs(self.z(f)), Z_CLIP))[-TOP_K:]
        return float(np.sqrt(np.mean(z * z)))

    def worst(self, f: np.ndarray, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` features furthest from the training inputs (name, z) — for log lines."""
        z = self.z(f)
        order = np.argsort(-np.abs(z))[:k]
        return [(self.features[i], round(float(z[i]), 1)) for i in order]

    def to_json(self) -> dict[str, object]:
        return {
            "features": list(self.features),
            "median": [round(v, 6) for v in self.median],
            "spread": [round(v, 6) for v in self.spread],
            "threshold": round(self.threshold, 4),
            "n_samples": self.n_samples,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> OodStats:
        feats = tuple(str(v) for v in data["features"])  # type: ignore[attr-defined]
        med = tuple(float(v) for v in data["median"])  # type: ignore[attr-defined]
        spr = tuple(float(v) for v in data["spread"])  # type: ignore[attr-defined]
        if not len(feats) == len(med) == len(spr) or not feats:
            raise ValueError("ood statistics: features, median and spread must have the same length")
        if min(spr) <= 0:
            raise ValueError("ood statistics: spreads must be positive")
        return cls(
            features=feats,
            median=med,
            spread=spr,
            threshold=float(data["threshold"]),  # type: ignore[arg-type]
            n_samples=int(data.get("n_samples", 0)),  # type: ignore[call-overload]
            source=str(data.get("source", "")),
        )


def fit_stats(
    rows: np.ndarray | Sequence[Sequence[float]],
    names: Iterable[str],
    *,
    floors: np.ndarray | Sequence[float] | float = 0.02,
    quantile: float = 0.99,
    margin: float = 1.5,
    min_threshold: float = 2.0,
    source: str = "",
) -> OodStats:
    """Statistics of training feature rows ``(n, f)``.

    ``spread = max(1.4826·MAD, floor)`` per feature (floors keep a feature that barely varies in
    training from flagging every tiny change); threshold = max(``min_threshold``,
    ``margin`` × the ``quantile`` of the training rows' own scores).
    """
    x = np.asarray(rows, np.float64)
    names = tuple(names)
    if x.ndim != 2 or x.shape[1] != len(names) or x.shape[0] < 2:
        raise ValueError(f"fit_stats needs (n >= 2, {len(names)}) rows, got {x.shape}")
    med = np.median(x, axis=0)
    mad = 1.4826 * np.median(np.abs(x - med), axis=0)
    spread = np.maximum(mad, np.broadcast_to(np.asarray(floors, np.float64), mad.shape))
    stats = OodStats(names, tuple(map(float, med)), tuple(map(float, spread)), 0.0, int(x.shape[0]), source)
    own = np.array([stats.score(r) for r in x])
    thr = max(min_threshold, margin * float(np.quantile(own, quantile)))
    return OodStats(names, stats.median, stats.spread, thr, int(x.shape[0]), source)


@dataclass(frozen=True)
class OodState:
    """The guard's view of one input: its score, and whether its series counts as OOD."""

    score: float
    flagged: bool
    """The series' median score so far is above the threshold."""
    new: bool
    """The series just became OOD with this input (log / raise once)."""


class SeriesOod:
    """Per (stream, series) decision: OOD while the median of the last ``window`` scores exceeds
    the threshold. The median makes one odd slice in a good series (or one good-looking slice
    in a foreign series) change nothing."""

    def __init__(self, threshold: float, window: int = 16, max_series: int = 64) -> None:
        self.threshold = threshold
        self.window = window
        self.max_series = max_series
        self._scores: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._flagged: dict[tuple[str, str], bool] = {}

    def update(self, stream: str, series: str, score: float) -> OodState:
        key = (stream, series)
        hist = self._scores.get(key)
        if hist is None:
            hist = self._scores[key] = deque(maxlen=self.window)
            if len(self._scores) > self.max_series:
                old, _ = self._scores.popitem(last=False)
                self._flagged.pop(old, None)
        hist.append(score)
        flagged = float(np.median(hist)) > self.threshold
        was = self._flagged.get(key, False)
        self._flagged[key] = flagged
        return OodState(score, flagged, flagged and not was)
