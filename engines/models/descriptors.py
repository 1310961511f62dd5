"""Hand-made morphological descriptors of growth images and the descriptor baselines.

Per frame (image with the electrode at the bottom, deposit bright), vectorised over frames:
the frame is thresholded half-way between its 5th and 95th percentile; each column's front
height ``h(x)`` is the distance from the bottom edge to its topmost deposit pixel. Descriptors
(``DESCRIPTOR_NAMES``):

* ``mean_height`` — mean of ``h``, in pixels / image height;
* ``roughness`` — std of ``h`` (interface width), / image height;
* ``front_width`` — 90th − 10th percentile of ``h``, / image height;
* ``perimeter_area`` — boundary pixels (deposit with a non-deposit 4-neighbour) / deposit pixels;
* ``fractal_dim`` — box-counting dimension of the boundary (boxes of 1, 2, 4, 8 px);
* ``fill`` — deposit pixels / area under the front (1 compact … low for open dendrites).

Baselines (the paper's ablation): :class:`DescriptorGru` (GRU over the window's descriptor
vectors) and :class:`DescriptorLogistic` (logistic regression on the last frame's descriptors and
their change over the window). numpy and torch only.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

DESCRIPTOR_NAMES = ("mean_height", "roughness", "front_width", "perimeter_area", "fractal_dim", "fill")
N_DESC = len(DESCRIPTOR_NAMES)
_BOXES = (1, 2, 4, 8)


def _box_counts(edge: np.ndarray) -> np.ndarray:
    """Occupied boxes per scale for boolean images ``(N, H, W)`` (H, W divisible by 8)."""
    n, h, w = edge.shape
    counts = []
    for s in _BOXES:
        boxes = edge.reshape(n, h // s, s, w // s, s).any(axis=(2, 4))
        counts.append(boxes.sum(axis=(1, 2)))
    return np.stack(counts, axis=1).astype(np.float64)


def descriptors(frames: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` frames → ``(N, N_DESC)`` float32 descriptors (see module docstring)."""
    a = np.asarray(frames, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    n, h, w = a.shape
    lo = np.percentile(a, 5, axis=(1, 2), keepdims=True)
    hi = np.percentile(a, 95, axis=(1, 2), keepdims=True)
    mask = a > 0.5 * (lo + hi)
    any_col = mask.any(axis=1)  # (N, W)
    top = np.argmax(mask, axis=1)  # first deposit row from the top
    heights = np.where(any_col, h - top, 0).astype(np.float32)
    mean_h = heights.mean(axis=1)
    rough = heights.std(axis=1)
    p10, p90 = np.percentile(heights, [10, 90], axis=1)
    area = mask.sum(axis=(1, 2)).astype(np.float64)
    interior = mask.copy()
    interior[:, 1:, :] &= mask[:, :-1, :]
    interior[:, :-1, :] &= mask[:, 1:, :]
    interior[:, :, 1:] &= mask[:, :, :-1]
    interior[:, :, :-1] &= mask[:, :, 1:]
    edge = mask & ~interior
    perim = edge.sum(axis=(1, 2)).astype(np.float64)
    hh, ww = (h // 8) * 8, (w // 8) * 8
    counts = _box_counts(edge[:, :hh, :ww])
    x = np.log(1.0 / np.asarray(_BOXES, dtype=np.float64))
    y = np.log(np.maximum(counts, 1.0))
    xc = x - x.mean()
    slope = ((y - y.mean(axis=1, keepdims=True)) * xc).sum(axis=1) / (xc**2).sum()
    under = heights.sum(axis=1).astype(np.float64)
    fill = np.where(under > 0, area / np.maximum(under, 1.0), 1.0)
    out = np.stack(
        [mean_h / h, rough / h, (p90 - p10) / h, perim / np.maximum(area, 1.0), slope, np.minimum(fill, 2.0)],
        axis=1,
    )
    return out.astype(np.float32)


class DescriptorScaler:
    """Standardise descriptors with statistics of the training set."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.maximum(np.asarray(std, dtype=np.float32), 1e-6)

    @classmethod
    def fit(cls, desc: np.ndarray) -> DescriptorScaler:
        return cls(desc.mean(axis=0), desc.std(axis=0))

    def __call__(self, desc: np.ndarray) -> np.ndarray:
        return ((desc - self.mean) / self.std).astype(np.float32)


class DescriptorGru(nn.Module):
    """Baseline: GRU over standardised descriptor windows ``(B, T, N_DESC)`` → logit ``(B, 1)``."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.gru = nn.GRU(N_DESC, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, desc: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(desc)
        return self.head(h[-1])


def logistic_features(desc_windows: np.ndarray) -> np.ndarray:
    """``(B, T, N_DESC)`` → last frame's descriptors and their change over the window."""
    return np.concatenate([desc_windows[:, -1], desc_windows[:, -1] - desc_windows[:, 0]], axis=1)


class DescriptorLogistic(nn.Module):
    """Baseline: logistic regression on :func:`logistic_features` → logit ``(B, 1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * N_DESC, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)
