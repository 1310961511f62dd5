"""Data for the XCT segmentation models: synthetic slices (cached), patch sampling, metrics.

Seed ranges (never mixed): training slices ``TRAIN_SEED0 + i``, validation ``VAL_SEED0 + i``
(early stopping, loss choice, ensemble weights), held-out test ``TEST_SEED0 + i`` (manifest
metrics and ``bench segmentation`` only). Slices are normalised with
:func:`engines.tiling.normalise_slice`, exactly as the pipeline does.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.synth.xct import CLASSES, make_slice
from engines.tiling import normalise_slice

log = logging.getLogger("engines.train.segmentation")

TRAIN_SEED0 = 1_000
VAL_SEED0 = 500_000
TEST_SEED0 = 900_000
CACHE_DIR = Path(__file__).resolve().parents[2] / "build" / "cache" / "xct"
GENERATOR_VERSION = "2"


def slice_growth(seed: int) -> float:
    """Dendrite growth level of an independent slice (varied so early and late stages appear)."""
    return float(np.random.default_rng((seed, 7)).uniform(0.3, 1.0))


def build_slices(
    seed0: int, n: int, shape: tuple[int, int] = (512, 512), cache: Path | None = CACHE_DIR
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` normalised slices ``(n, H, W) float32`` and labels ``uint8``, cached as .npz."""
    key = hashlib.sha1(f"{GENERATOR_VERSION}-{seed0}-{n}-{shape}".encode()).hexdigest()[:12]
    path = None if cache is None else cache / f"xct-{seed0}-{n}-{shape[0]}x{shape[1]}-{key}.npz"
    if path is not None and path.exists():
        with np.load(path) as f:
            return f["images"], f["labels"]
    imgs = np.empty((n, *shape), np.float32)
    labs = np.empty((n, *shape), np.uint8)
    for i in range(n):
        img, lab = make_slice(shape, seed0 + i, growth=slice_growth(seed0 + i))
        imgs[i] = normalise_slice(img)
        labs[i] = lab
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, images=imgs, labels=labs)
        tmp.replace(path)
    return imgs, labs


class PatchSampler:
    """Random ``size``-px crops with random flips, class-balanced: with probability ``focus`` a
    crop is centred (with jitter) on a random pixel of a randomly chosen minority class."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, size: int = 128, seed: int = 0, focus: float = 0.7
    ) -> None:
        self.images, self.labels, self.size, self.focus = images, labels, size, focus
        self.rng = np.random.default_rng(seed)
        self.pools: list[np.ndarray] = []
        for c in range(2, len(CLASSES)):
            idx = np.flatnonzero(labels == c)  # flat indices into (n, h, w)
            if idx.size:
                self.pools.append(idx[:: max(1, idx.size // 200_000)])

    def _origin(self) -> tuple[int, int, int]:
        n, h, w = self.images.shape
        s = self.size
        if self.pools and self.rng.random() < self.focus:
            pool = self.pools[int(self.rng.integers(len(self.pools)))]
            i, yc, xc = np.unravel_index(int(pool[int(self.rng.integers(pool.size))]), (n, h, w))
            y = int(np.clip(yc - s // 2 + self.rng.integers(-s // 3, s // 3 + 1), 0, h - s))
            x = int(np.clip(xc - s // 2 + self.rng.integers(-s // 3, s // 3 + 1), 0, w - s))
            return int(i), y, x
        return (
            int(self.rng.integers(n)),
            int(self.rng.integers(0, h - s + 1)),
            int(self.rng.integers(0, w - s + 1)),
        )

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.size
        xb = np.empty((n, 1, s, s), np.float32)
        yb = np.empty((n, s, s), np.int64)
        for k in range(n):
            i, y, x = self._origin()
            img = self.images[i, y : y + s, x : x + s]
            lab = self.labels[i, y : y + s, x : x + s]
            if self.rng.random() < 0.5:
                img, lab = img[:, ::-1], lab[:, ::-1]
            if self.rng.random() < 0.5:
                img, lab = img[::-1], lab[::-1]
            xb[k, 0] = img
            yb[k] = lab
        return xb, yb


def confusion(pred: np.ndarray, gt: np.ndarray, n: int = len(CLASSES)) -> np.ndarray:
    """``(n, n)`` int64 confusion matrix, rows = ground truth, columns = prediction."""
    idx = gt.astype(np.int64).ravel() * n + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=n * n).reshape(n, n)


@dataclass(frozen=True)
class SegScores:
    iou: tuple[float, ...]
    dsc: tuple[float, ...]

    @property
    def miou(self) -> float:
        return float(np.nanmean(self.iou))

    @property
    def mdsc(self) -> float:
        return float(np.nanmean(self.dsc))

    def as_dict(self) -> dict[str, float]:
        out = {"mIoU": round(self.miou, 4), "mDSC": round(self.mdsc, 4)}
        for c, i, d in zip(CLASSES, self.iou, self.dsc, strict=True):
            out[f"IoU_{c}"] = round(float(i), 4)
            out[f"DSC_{c}"] = round(float(d), 4)
        return out


def scores(conf: np.ndarray) -> SegScores:
    """Per-class IoU = TP/(TP+FP+FN) and DSC = 2TP/(2TP+FP+FN), pooled over all pixels given.

    Means are unweighted over classes (background classes included, as in the paper); a class
    absent from both prediction and ground truth is left out (NaN).
    """
    tp = np.diag(conf).astype(np.float64)
    fp = conf.sum(0) - tp
    fn = conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
        dsc = np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    return SegScores(tuple(float(v) for v in iou), tuple(float(v) for v in dsc))
