"""Per-particle sub-pixel refinement by phase correlation on the particle's own masked ROI.

The masked centre of mass (``registration``, after Su et al.) measures where each particle's
silhouette is. This module checks and refines it with the particle's texture: for each track
a reference patch is cut when the track starts (centred on its measured centre, windowed by
the particle's mask, dilated and tapered, so neighbours and background stay out); on later
frames a patch is cut at the newly measured centre and
``skimage.registration.phase_cross_correlation`` (sub-pixel, upsampled DFT) gives the residual
shift between the two. ``quality`` in [0, 1] is the normalised correlation of the windowed
patches after that shift (1: the particle looks exactly as it did).

With ``apply`` False only the quality is computed (the normalised correlation of the two
patches centred on their centres of mass: cheap, no phase correlation). The refined centre is
``centre + residual`` when the residual is small (``max_shift_px``) and
the quality is high (``min_quality``); otherwise the centre of mass stands. Only particles of
at least ``min_quality`` count as *confident* (the rigid / non-rigid split uses those).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.fft import fftfreq, fftn, ifftn

from monitor.analysis.particles import ParticleROI
from monitor.analysis.registration import aligned_crop


@dataclass
class _Ref:
    patch: np.ndarray  # windowed reference patch (float32, zero mean inside the window)
    window: np.ndarray  # (n, n) taper
    size: int
    centre: tuple[float, float]
    """Centre of mass when the reference was cut (the patch is at its nearest whole pixel)."""
    texture: float = 0.0
    """Fine texture of the reference: RMS of its high-passed log counts inside the body over the
    RMS of the windowed log counts (0: smooth, no texture to correlate)."""


@dataclass(frozen=True, slots=True)
class Refinement:
    dy: float
    dx: float
    quality: float
    applied: bool


def _window(roi: ParticleROI, centre: tuple[float, float], n: int, rb: int) -> np.ndarray:
    """The particle's body mask, dilated by 2 px and tapered, in an n² patch centred on ``centre``."""
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
    """An n² crop centred (sub-pixel, bilinear) on ``centre`` (None if it leaves the frame)."""
    half = (n - 1) / 2.0
    if centre[0] - half < 1 or centre[1] - half < 1:
        return None
    if centre[0] + half > image.shape[0] - 2 or centre[1] + half > image.shape[1] - 2:
        return None
    return aligned_crop(image, centre, n)


def _texture(p: np.ndarray, win: np.ndarray) -> float:
    """RMS of the high-passed (minus a σ = 2 px blur) log patch where the window is full, over
    the RMS of the windowed, mean-removed log patch."""
    a = np.log(np.maximum(p.astype(np.float32), np.float32(1e-3)))
    inner = win > 0.99
    if inner.sum() < 16:
        return 0.0
    hp = a - ndimage.gaussian_filter(a, 2.0)
    m = float((a * win).sum()) / max(float(win.sum()), 1e-9)
    whole = float(np.sqrt(np.mean(((a - m) * win) ** 2)))
    return float(np.sqrt(np.mean(hp[inner] ** 2))) / max(whole, 1e-9)


def _upsampled_dft(data: np.ndarray, size: int, upsample: float, offsets: np.ndarray) -> np.ndarray:
    """``size``² samples of the DFT of ``data`` upsampled ``upsample`` times, from ``offsets``
    (``skimage.registration._phase_cross_correlation._upsampled_dft``, by ``einsum``: no BLAS
    call, whose idle worker threads spin for ~0.1 s after each call and took a core per frame)."""
    k = [
        np.exp(-2j * np.pi * (np.arange(size) - off)[:, None] * fftfreq(n, upsample)).astype(data.dtype)
        for n, off in zip(data.shape, offsets, strict=True)
    ]
    return np.einsum("am,bm->ab", k[0], np.einsum("bn,mn->bm", k[1], data))


def phase_shift(reference: np.ndarray, moving: np.ndarray, upsample: int) -> tuple[np.ndarray, float]:
    """(shift, error) as ``skimage.registration.phase_cross_correlation(reference, moving,
    upsample_factor=upsample, normalization=None)`` (Guizar-Sicairos et al. 2008) returns them."""
    src, tgt = fftn(reference), fftn(moving)
    product = src * tgt.conj()
    cc = ifftn(product)
    shape = np.array(src.shape)
    peak = np.unravel_index(int(np.argmax(np.abs(cc))), cc.shape)
    shift = np.array(peak, np.float64)
    wrap = shift > np.trunc(shape / 2)
    shift[wrap] -= shape[wrap]
    up = float(upsample)
    shift = np.round(shift * up) / up
    size = int(np.ceil(up * 1.5))
    centre = np.trunc(size / 2.0)
    cc = _upsampled_dft(product.conj(), size, up, centre - shift * up).conj()
    peak = np.unravel_index(int(np.argmax(np.abs(cc))), cc.shape)
    ccmax = cc[peak]
    shift = shift + (np.array(peak, np.float64) - centre) / up
    amp = float(np.sum(np.real(src * src.conj()))) * float(np.sum(np.real(tgt * tgt.conj())))
    if amp <= 0:
        return shift, 1.0
    err = float(np.sqrt(abs(1.0 - float(np.real(ccmax * ccmax.conj())) / amp)))
    return shift, err


class ParticleRefiner:
    """Reference patches per track id; :meth:`refine` one particle of a frame."""

    def __init__(
        self,
        min_quality: float = 0.6,
        max_shift_px: float = 1.5,
        upsample: int = 10,
        apply: bool = True,
        min_texture: float = 0.0,
    ) -> None:
        self.apply = apply
        self.min_texture = min_texture
        """Refine only particles with at least this much fine texture (see ``_Ref.texture``)."""
        """False: quality only (normalised correlation of the patches at the measured centres)."""
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
            prepared = self._prepare(p, win)
            self._refs[track_id] = _Ref(prepared, win, n, centre, _texture(p, win))
            return Refinement(0.0, 0.0, 1.0, False)
        p = _patch(image, centre, ref.size)
        if p is None:
            return Refinement(0.0, 0.0, float("nan"), False)
        cur = self._prepare(p, ref.window)
        den = float(np.sqrt(float(np.sum(cur * cur)) * float(np.sum(ref.patch * ref.patch))))
        if den <= 0:
            return Refinement(0.0, 0.0, 0.0, False)
        quality = max(0.0, float(np.sum(cur * ref.patch)) / den)
        if not self.apply or ref.texture < self.min_texture:
            return Refinement(0.0, 0.0, quality, False)
        shift, err = phase_shift(cur, ref.patch, self.upsample)
        # Both crops are centred on their centre of mass: ``shift`` is what the centre of mass
        # missed (the pattern moved by that much more than the centre of mass says). skimage's
        # error is sqrt(1 - |CC_max|² / (E_ref E_mov)): the normalised correlation at the peak.
        dy, dx = float(shift[0]), float(shift[1])
        quality = float(np.sqrt(max(0.0, 1.0 - float(err) ** 2)))
        ok = quality >= self.min_quality and np.hypot(dy, dx) <= self.max_shift_px
        return Refinement(dy, dx, quality, bool(ok))

    @staticmethod
    def _prepare(p: np.ndarray, win: np.ndarray) -> np.ndarray:
        """Log counts minus their windowed mean, times the window."""
        a = np.log(np.maximum(p.astype(np.float32), np.float32(1e-3)))
        wsum = float(win.sum())
        if wsum <= 0:
            return np.zeros_like(a)
        m = float((a * win).sum()) / wsum
        return ((a - m) * win).astype(np.float32)
