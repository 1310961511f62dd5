"""Input conventions of ParticleNet: contrast (which way particles go) and scale (how big they are).

**What the network expects.** One channel in which particles are *positive* on a background near
0, scaled so that the 2nd–98th percentile range of the image is 1 (:func:`normalise`), with the
particles about :data:`TRAINING_DIAMETER_PX` pixels across at its input (the block factor of
:func:`block_factor` brings them there).

**Contrast conventions** (``contrast``):

- ``"transmission"``: counts or I/I0, particles *dark* on a bright field (TXM radiographs,
  raw counts with a flat field: the log removes the flat field's gain, the normalisation its
  offset). The network sees the optical density ``-log I``.
- ``"absorbance"``: optical density, absorbance, or a reconstructed CT slice: particles *bright*
  on a dark background. The network sees the values themselves (no log: CT values may be 0 or
  negative).
- ``"auto"``: :func:`detect_contrast` decides from the image itself (which class of an Otsu
  split forms separate compact objects, which one surrounds them and fills the border).

All functions here need only numpy, scipy and scikit-image (runtime dependencies).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

CONTRASTS = ("auto", "transmission", "absorbance")
TRAINING_DIAMETER_PX = 20.0
"""Typical particle diameter (px) at the network's input in training (the scale it knows best)."""


def density(image: np.ndarray, contrast: str) -> np.ndarray:
    """The image as a quantity in which particles are bright (float32; NaN and inf kept as NaN)."""
    a = np.asarray(image, dtype=np.float32)
    if contrast == "transmission":
        with np.errstate(invalid="ignore", divide="ignore"):
            out = -np.log(np.maximum(a, np.float32(1e-3)))
        return np.where(np.isfinite(a), out, np.float32(np.nan)).astype(np.float32)
    if contrast == "absorbance":
        return np.where(np.isfinite(a), a, np.float32(np.nan)).astype(np.float32)
    raise ValueError(f"contrast must be 'transmission' or 'absorbance', got {contrast!r}")


def _otsu(v: np.ndarray) -> float:
    """Otsu threshold of a 1-D finite array (256-bin histogram)."""
    lo, hi = float(v.min()), float(v.max())
    if hi - lo <= 1e-12:
        return lo
    hist, edges = np.histogram(v, bins=256, range=(lo, hi))
    centres = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centres)
    mu0 = m / np.maximum(w0, 1)
    mu1 = (m[-1] - m) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def normalise(small: np.ndarray, contrast: str = "transmission") -> np.ndarray:
    """Network input from a (block-averaged) image: ``(v - background) / spread`` with ``v``
    the :func:`density`, ``background`` the median of the pixels below the Otsu threshold of
    ``v`` (the background class, also when particles fill most of the field) and ``spread`` the
    2nd–98th percentile range of ``v`` (at least 1e-3). Non-finite pixels become 0."""
    v = density(small, contrast)
    fin = np.isfinite(v)
    vals = v[fin] if not fin.all() else v.ravel()
    if vals.size == 0:
        return np.zeros(v.shape, np.float32)
    n = vals.size
    k = [int(0.02 * (n - 1)), int(0.98 * (n - 1))]
    lo, hi = np.partition(vals, k)[k]
    s = max(float(hi - lo), 1e-3)
    t = _otsu(vals)
    below = vals[vals <= t]
    bg = float(np.median(below)) if below.size else float(np.median(vals))
    out = (v - np.float32(bg)) / np.float32(s)
    if not fin.all():
        out = np.where(fin, out, np.float32(0.0))
    return out.astype(np.float32)


def _preview(image: np.ndarray, max_side: int = 384) -> tuple[np.ndarray, int]:
    """Block mean so the larger side is at most ``max_side``; NaNs replaced by the median."""
    a = np.asarray(image, dtype=np.float32)
    fin = np.isfinite(a)
    if not fin.all():
        a = np.where(fin, a, np.float32(np.nanmedian(a)) if fin.any() else np.float32(0))
    f = max(1, int(np.ceil(max(a.shape) / max_side)))
    if f > 1:
        h, w = (a.shape[0] // f) * f, (a.shape[1] // f) * f
        a = a[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    return a, f


@dataclass(frozen=True)
class ContrastDecision:
    contrast: str
    """``"transmission"`` or ``"absorbance"``."""
    score: float
    """> 0 favours bright particles (absorbance), < 0 dark ones; |score| is the confidence."""
    reason: str


def _class_stats(mask: np.ndarray) -> tuple[float, float, int]:
    """(fraction of the class in its largest 8-connected component, fraction of the image border
    in the class, number of components of at least 4 px)."""
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return 1.0, 0.0, 0
    sizes = np.bincount(lab.ravel())[1:]
    border = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    return float(sizes.max() / sizes.sum()), float(border.mean()), int((sizes >= 4).sum())


def detect_contrast(image: np.ndarray) -> ContrastDecision:
    """Bright particles on dark (absorbance, CT) or dark particles on bright (transmission)?

    On a smoothed preview, the Otsu split gives a bright and a dark class. Particles are the
    class that breaks into separate objects (a smaller share in its largest connected
    component), reaches the border less (the background surrounds them) and forms the tail of
    the histogram (skew towards it). Each cue votes in [-1, 1]; the sum decides."""
    a, _ = _preview(image)
    if a.size < 16 or float(a.max() - a.min()) <= 1e-9:
        return ContrastDecision("transmission", 0.0, "flat image: default transmission")
    a = ndimage.uniform_filter(a, 3)
    # Remove the slow background (flat-field residue, illumination), which can be larger than
    # the particle contrast in raw counts.
    a = a - ndimage.gaussian_filter(a, max(a.shape) / 4, mode="reflect")
    t = _otsu(a.ravel())
    bright = a > t
    lb, bb, nb = _class_stats(bright)
    ld, bd, nd = _class_stats(~bright)
    # Cue 1: the background is one connected sea; particles are many objects.
    c1 = float(np.clip((ld - lb) * 2, -1, 1))
    # Cue 2: the background owns more of the border.
    c2 = float(np.clip((bd - bb) * 2, -1, 1))
    # Cue 3: histogram skew towards the particle class (the background is the narrow peak).
    v = a.ravel()
    sd = float(v.std())
    skew = float(np.mean(((v - v.mean()) / max(sd, 1e-12)) ** 3))
    c3 = float(np.clip(skew, -1, 1))
    score = c1 + c2 + 0.5 * c3
    contrast = "absorbance" if score > 0 else "transmission"
    reason = (
        f"largest-component share bright {lb:.2f} / dark {ld:.2f}, border bright {bb:.2f} / dark "
        f"{bd:.2f}, objects bright {nb} / dark {nd}, skew {skew:+.2f}"
    )
    return ContrastDecision(contrast, score, reason)


def estimate_diameter(image: np.ndarray, contrast: str) -> float:
    """Typical particle diameter (px of ``image``), by granulometry of the particle mask.

    The Otsu mask of the :func:`density` (cracks and pores closed, holes filled) is split into
    connected objects; each object's largest inscribed radius (maximum of the distance
    transform) is the radius of its biggest particle, so touching particles do not inflate it.
    Returns the median diameter over objects of at least 3 px radius (NaN if none)."""
    v = density(image, contrast)
    a, f = _preview(v)
    if float(a.max() - a.min()) <= 1e-9:
        return float("nan")
    a = ndimage.uniform_filter(a, 3)
    mask = a > _otsu(a.ravel())
    mask = ndimage.binary_opening(mask, iterations=1)
    mask = ndimage.binary_closing(mask, iterations=2, border_value=0)
    mask = ndimage.binary_fill_holes(mask)
    lab, n = ndimage.label(mask)
    if n == 0:
        return float("nan")
    edt = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    peaks = np.asarray(ndimage.maximum(edt, lab, index=np.arange(1, n + 1)), np.float64)
    peaks = peaks[peaks >= 3]
    if peaks.size == 0:
        return float("nan")
    # A disc's distance-transform maximum is its radius (+0.5 px of pixel centres).
    # Inscribed radius of an irregular or elongated particle is below its equivalent-area
    # radius: 1.15 brings the median to the drawn diameter on engines.synth.txm_real frames.
    return float(2.3 * np.median(peaks) * f)


BLOCK_TOLERANCE = 1.25
"""Particles within this factor of :data:`TRAINING_DIAMETER_PX` at the network input (16–25 px)
are at a trained scale (the synthetic training frames span ~13–25 px at their block factor);
wider than the 1.155 either side of the midpoint between two factors, so estimates scattering
around the frame-size factor's scale keep it. (1.5 was tried: 58-px textured particles then
stayed at factor 4, 14.5 px at the input, and registered at 0.85 px instead of 0.35 px.)"""


def block_factor(
    diameter_px: float,
    shape: tuple[int, int],
    target: float = TRAINING_DIAMETER_PX,
    tolerance: float = BLOCK_TOLERANCE,
) -> int:
    """Block factor that brings particles of ``diameter_px`` to about ``target`` px at the
    network input, kept between 1 and ``max(shape) / 32`` (the network needs some field).

    The frame-size factor (``max(shape) / 128``, the one training frames of that size used) is
    kept while it puts the particles within ``tolerance`` of ``target``: the granulometry's
    estimate scatters by ~20 % between frames and samples, and rounding ``diameter / target``
    alone would flip between neighbouring factors for particles at the training scale.
    Otherwise ``round(diameter / target)``."""
    hi = max(1, max(shape) // 32)
    by_shape = max(1, min(hi, int(round(max(shape) / 128))))
    if not np.isfinite(diameter_px) or diameter_px <= 0:
        return by_shape
    if target / tolerance <= diameter_px / by_shape <= target * tolerance:
        return by_shape
    return int(min(hi, max(1, round(diameter_px / target))))
