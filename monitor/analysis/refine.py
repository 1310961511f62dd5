"""Per-particle sub-pixel refinement by phase correlation on the particle's own masked ROI.

The masked centre of mass (``registration``, after Su et al.) measures where each particle's
silhouette is. This module checks and refines it with the particle's texture: for each track
a reference patch is cut when the track starts (centred on its measured centre, windowed by
the particle's mask, dilated and tapered, so neighbours and background stay out); on later
frames a patch is cut at the newly measured centre and
``skimage.registration.phase_cross_correlation`` (sub-pixel, upsampled DFT) gives the residual
shift between the two. ``quality`` in [0, 1] is the normalised correlation of the windowed
patches after that shift (1: the particle looks exactly as it did).

The refined centre is ``centre + residual`` when the residual is small (``max_shift_px``) and
the quality is high (``min_quality``); otherwise the centre of mass stands. Only particles of
at least ``min_quality`` count as *confident* (the rigid / non-rigid split uses those).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from monitor.analysis.particles import ParticleROI


@dataclass
class _Ref:
    patch: np.ndarray  # windowed reference patch (float32, zero mean inside the window)
    window: np.ndarray  # (n, n) taper
    size: int


@dataclass(frozen=True, slots=True)
class Refinement:
    dy: float
    dx: float
    quality: float
    applied: bool


def _window(roi: ParticleROI, centre: tuple[float, float], n: int, rb: int) -> np.ndarray:
    """The particle's body mask (binned grid), dilated by 2 px and tapered, in an n² patch centred on ``centre``."""
    body = roi.body
    y0, x0 = roi.origin
    cy, cx = int(round(centre[0])), int(round(centre[1]))
    out = np.zeros((n, n), np.float32)
    half = n // 2
    ys, xs = y0 - (cy - half), x0 - (cx - half)
    h, w = body.shape
    a0, a1 = max(ys, 0), min(ys + h, n)
    b0, b1 = max(xs, 0), min(xs + w, n)
    if a1 > a0 and b1 > b0:
        out[a0:a1, b0:b1] = body[a0 - ys : a1 - ys, b0 - xs : b1 - xs]
    out = ndimage.binary_dilation(out > 0, iterations=2).astype(np.float32)
    return ndimage.gaussian_filter(out, 1.5)


def _patch(image: np.ndarray, centre: tuple[float, float], n: int) -> np.ndarray | None:
    """An n² crop at the whole pixel nearest ``centre`` (None if it leaves the frame)."""
    cy, cx = int(round(centre[0])), int(round(centre[1]))
    half = n // 2
    y0, x0 = cy - half, cx - half
    if y0 < 0 or x0 < 0 or y0 + n > image.shape[0] or x0 + n > image.shape[1]:
        return None
    return image[y0 : y0 + n, x0 : x0 + n]


class ParticleRefiner:
    """Reference patches per track id; :meth:`refine` one particle of a frame."""

    def __init__(self, min_quality: float = 0.6, max_shift_px: float = 1.5, upsample: int = 10) -> None:
        self.min_quality = min_quality
        self.max_shift_px = max_shift_px
        self.upsample = upsample
        self._refs: dict[int, _Ref] = {}

    def reset(self) -> None:
        self._refs.clear()

    def forget(self, track_ids: set[int]) -> None:
        for tid in [t for t in self._refs if t not in track_ids]:
            del self._refs[tid]

    @staticmethod
    def _size(roi: ParticleROI) -> int:
        r = roi.radius
        n = int(2 * r + 12)
        return max(16, n + (n % 2))

    def refine(
        self, track_id: int, image: np.ndarray, roi: ParticleROI, centre: tuple[float, float], rb: int = 1
    ) -> Refinement:
        """Residual shift and quality of one particle whose centre of mass is ``centre``
        (coordinates of ``image``, the registration image). The first call for a track stores
        its reference and returns quality 1, no shift."""
        ref = self._refs.get(track_id)
        if ref is None:
            n = self._size(roi)
            p = _patch(image, centre, n)
            if p is None:
                return Refinement(0.0, 0.0, float("nan"), False)
            win = _window(roi, centre, n, rb)
            self._refs[track_id] = _Ref(self._prepare(p, win, centre), win, n)
            return Refinement(0.0, 0.0, 1.0, False)
        p = _patch(image, centre, ref.size)
        if p is None:
            return Refinement(0.0, 0.0, float("nan"), False)
        cur = self._prepare(p, ref.window, centre)
        if not np.any(cur):
            return Refinement(0.0, 0.0, 0.0, False)
        shift, _err, _ph = phase_cross_correlation(
            cur, ref.patch, upsample_factor=self.upsample, normalization=None
        )
        dy, dx = float(shift[0]), float(shift[1])
        moved = ndimage.shift(ref.patch, (dy, dx), order=1, mode="constant")
        num = float(np.sum(moved * cur))
        den = float(np.sqrt(np.sum(moved * moved) * np.sum(cur * cur)))
        quality = max(0.0, num / den) if den > 0 else 0.0
        ok = quality >= self.min_quality and np.hypot(dy, dx) <= self.max_shift_px
        return Refinement(dy, dx, quality, bool(ok))

    @staticmethod
    def _prepare(p: np.ndarray, win: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
        """Log counts, sub-pixel centred on ``centre`` (the crop is at the nearest whole pixel),
        minus the windowed mean, times the window."""
        a = np.log(np.maximum(p.astype(np.float32), np.float32(1e-3)))
        fy, fx = centre[0] - round(centre[0]), centre[1] - round(centre[1])
        if fy or fx:
            a = ndimage.shift(a, (-fy, -fx), order=1, mode="nearest")
        wsum = float(win.sum())
        if wsum <= 0:
            return np.zeros_like(a)
        m = float((a * win).sum()) / wsum
        return ((a - m) * win).astype(np.float32)
