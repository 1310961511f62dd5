"""The OOD guard for segmentation models: features of one slice and its label map, and the
statistics a model's manifest carries (``extra["ood"]``, :class:`engines.ood.OodStats`).

Features = :func:`engines.ood.image_features` of the normalised slice + the fraction of each
class in the predicted label map (the class-fraction prior) + the structure of that map
(:func:`label_structure`: fragmentation, electrodes in layers) + the mean top-class
probability (how sure the model is). numpy only (runtime side); fitting needs a runner, passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from engines.ood import IMAGE_FEATURES, OodStats, class_fraction_features, fit_stats, image_features
from engines.registry import Manifest

LABEL_FEATURES = ("label_boundary", "layering", "confidence")


def feature_names(classes: Iterable[str]) -> tuple[str, ...]:
    return (*IMAGE_FEATURES, *(f"vf_{c}" for c in classes), *LABEL_FEATURES)


def label_structure(labels: np.ndarray, layered_class: int = 0) -> tuple[float, float]:
    """``label_boundary``: share of neighbouring pixel pairs with different labels (on a label
    map subsampled to about 256 px a side: fragmented, noisy predictions score high);
    ``layering``: share of ``layered_class`` (electrode) pixels in the outer thirds of the rows
    (electrodes top and bottom: near 1; 0.67 when scattered at random; 0.5 without any)."""
    k = max(1, min(labels.shape) // 256)
    lab = np.asarray(labels)[::k, ::k]
    boundary = 0.0
    if min(lab.shape) >= 2:
        boundary = float((lab[1:] != lab[:-1]).mean() + (lab[:, 1:] != lab[:, :-1]).mean())
    rows = (lab == layered_class).sum(axis=1).astype(np.float64)
    total = float(rows.sum())
    h = lab.shape[0]
    outer = float(rows[: h // 3].sum() + rows[h - h // 3 :].sum())
    return boundary, (outer / total if total > 0 else 0.5)


def floors(classes: Iterable[str]) -> np.ndarray:
    """Smallest spread per feature: intensity quantiles 0.03, gradients 0.005 (log ratios 0.1),
    class fractions 0.02, label boundary 0.005, layering 0.03, confidence 0.02."""
    img = [0.03] * 7 + [0.005, 0.005, 0.005, 0.1, 0.1, 0.05]
    assert len(img) == len(IMAGE_FEATURES)
    return np.array([*img, *(0.02 for _ in classes), 0.005, 0.03, 0.02])


def slice_features(x: np.ndarray, labels: np.ndarray, probs_max_mean: float, n_classes: int) -> np.ndarray:
    """Feature vector of one normalised slice ``x``, its label map and its mean top probability."""
    return np.concatenate(
        [
            image_features(x),
            class_fraction_features(labels, n_classes),
            [*label_structure(labels), float(probs_max_mean)],
        ]
    )


def manifest_stats(manifest: Manifest) -> OodStats | None:
    """The model's OOD statistics, or None when its manifest has none (older models)."""
    data = manifest.extra.get("ood")
    if not isinstance(data, dict):
        return None
    return OodStats.from_json(data)


def fit_segmentation_stats(
    images: Iterable[np.ndarray],
    predict: Callable[[np.ndarray], np.ndarray],
    classes: tuple[str, ...],
    source: str,
    min_threshold: float = 2.0,
    quadrants: bool = False,
) -> OodStats:
    """Statistics from normalised training slices; ``predict(x) -> (C, H, W)`` probabilities.
    With ``quadrants`` each slice's four quadrants are rows too (one prediction per slice)."""
    rows = []
    for x in images:
        probs = predict(x)
        h, w = x.shape
        views = [(slice(None), slice(None))]
        if quadrants and min(h, w) >= 128:  # more rows from a few slices: their quadrants too
            views += [
                (ys, xs)
                for ys in (slice(0, h // 2), slice(h // 2, h))
                for xs in (slice(0, w // 2), slice(w // 2, w))
            ]
        for ys, xs in views:
            p, xv = probs[:, ys, xs], x[ys, xs]
            rows.append(
                slice_features(xv, p.argmax(0).astype(np.uint8), float(p.max(0).mean()), len(classes))
            )
    return fit_stats(
        np.array(rows),
        feature_names(classes),
        floors=floors(classes),
        source=source,
        min_threshold=min_threshold,
    )
