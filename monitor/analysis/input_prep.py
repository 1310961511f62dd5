"""Per-series input conventions for the alignment pipeline: contrast, particle scale, bad frames.

:class:`SeriesInput` decides once per series (or per new sample / frame shape) which way the
particles go (``options.contrast``; ``auto``: :func:`engines.prep.particle_prep.detect_contrast`)
and how big they are (``options.particle_diameter_px``; 0: granulometry of that first frame),
logs the decision once, and turns each frame into

- the network input at the block factor that brings particles to the training scale, and
- the image the registration measures, in counts: transmission frames as they are; absorbance
  frames (bright particles) as pseudo-counts ``1000 · exp(-(v - p2) / (p98 - p2))`` so the
  registration's optical density ``log(b / I)`` is the absorbance itself, rescaled.

:func:`check_frame` flags frames the pipeline cannot measure (non-finite pixels, constant
frames), each kind logged once per series, and repairs what it can (non-finite pixels → the
frame's median).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from engines.prep.particle_prep import block_factor, detect_contrast, estimate_diameter, normalise

log = logging.getLogger("monitor.analysis.input_prep")

INPUT_OK = 0
INPUT_NONFINITE = 1
"""Some pixels were NaN or infinite (replaced by the frame's median)."""
INPUT_CONSTANT = 2
"""All pixels equal (or none finite): nothing to detect."""
INPUT_NO_PARTICLES = 3
INPUT_ONE_HUGE = 4
"""One particle covers more than half of the frame: no field to register against."""
INPUT_FLAG_NAMES = {
    INPUT_OK: "ok",
    INPUT_NONFINITE: "non-finite pixels (replaced by the frame median)",
    INPUT_CONSTANT: "constant frame",
    INPUT_NO_PARTICLES: "no particles found",
    INPUT_ONE_HUGE: "one particle fills more than half of the frame",
}


@dataclass(frozen=True)
class InputDecision:
    contrast: str
    diameter_px: float
    factor: int
    auto_contrast: bool
    auto_diameter: bool


def check_frame(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """(usable float32 frame, flag): non-finite pixels replaced by the median of the others."""
    a = np.asarray(arr, dtype=np.float32)
    fin = np.isfinite(a)
    flag = INPUT_OK
    if not fin.all():
        if not fin.any():
            return np.zeros(a.shape, np.float32), INPUT_CONSTANT
        a = np.where(fin, a, np.float32(np.median(a[fin])))
        flag = INPUT_NONFINITE
    if a.size == 0 or float(a.max()) == float(a.min()):
        return a, INPUT_CONSTANT
    return a, flag


def featureless(arr: np.ndarray, small: np.ndarray, factor: int, snr: float = 6.0) -> bool:
    """True when the block-averaged frame's contrast (2nd–98th percentile range of ``small``)
    is below ``snr`` times the noise left after averaging (pixel noise from the median absolute
    difference of horizontal neighbours in ``arr``, over the block factor): nothing but noise."""
    d = np.abs(np.diff(arr[:: max(1, arr.shape[0] // 32)], axis=1))  # ~32 rows: enough for a median
    if d.size == 0:
        return True
    sigma = 1.4826 * float(np.median(d)) / np.sqrt(2.0)
    v = small.ravel()
    n = v.size
    k = [int(0.02 * (n - 1)), int(0.98 * (n - 1))]
    lo, hi = np.partition(v, k)[k]
    return float(hi - lo) < snr * sigma / max(factor, 1)


def instance_diameter(labels: np.ndarray, min_area: int = 16) -> float:
    """Median equivalent diameter (px of ``labels``) of instances of at least ``min_area`` px
    that do not touch the border (NaN if none)."""
    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return float("nan")
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    rim = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    keep = area >= min_area
    keep[np.unique(rim[rim > 0]) - 1] = False
    if not keep.any():
        return float("nan")
    return float(np.median(2.0 * np.sqrt(area[keep] / np.pi)))


class SeriesInput:
    """Contrast and scale of the current series; see the module docstring."""

    def __init__(
        self, contrast: str, diameter_px: float, fixed_factor: int, target_px: float, name: str
    ) -> None:
        self.contrast_opt = contrast
        self.diameter_opt = diameter_px
        self.fixed_factor = fixed_factor
        self.target_px = target_px
        self.name = name
        self._key: tuple[object, ...] | None = None
        self.decision: InputDecision | None = None
        self._logged: set[tuple[str, int]] = set()
        self.unconfirmed = False
        """The diameter is the granulometry's estimate; the series' first network pass checks it."""

    def decide(self, key: tuple[object, ...], arr: np.ndarray) -> InputDecision:
        """The decision for this frame (made on the first frame of a new ``key``)."""
        if self.decision is not None and key == self._key:
            return self.decision
        auto_c = self.contrast_opt == "auto"
        contrast = self.contrast_opt
        reason = ""
        if auto_c:
            dec = detect_contrast(arr)
            contrast, reason = dec.contrast, f" (auto, score {dec.score:+.2f}: {dec.reason})"
        auto_d = not self.diameter_opt > 0
        diameter = estimate_diameter(arr, contrast) if auto_d else float(self.diameter_opt)
        factor = self.fixed_factor or block_factor(diameter, arr.shape, self.target_px)
        self.decision = InputDecision(contrast, diameter, factor, auto_c, auto_d)
        self._key = key
        self.unconfirmed = auto_d
        log.info(
            "pipeline %s: series %s: contrast %s%s; particle diameter %.0f px (%s) → block factor %d",
            self.name, key[0], contrast, reason, diameter, "estimated" if auto_d else "option", factor,
        )  # fmt: skip
        return self.decision

    def confirm(self, labels: np.ndarray, factor: int, shape: tuple[int, ...]) -> bool:
        """The series' first network pass (``labels`` at block ``factor``) measures the particle
        diameter: median equivalent diameter of the whole instances. The granulometry of the
        raw frame scatters by ~25 % on textured particles; the network's instances stay within
        a few % whatever the factor. True when that gives another block factor (adopted: the
        caller prepares the frame again and detects once more)."""
        d = self.decision
        if d is None or not self.unconfirmed:
            return False
        self.unconfirmed = False
        measured = instance_diameter(labels) * factor
        if not np.isfinite(measured):
            return False
        new = self.fixed_factor or block_factor(measured, (int(shape[0]), int(shape[1])), self.target_px)
        self.decision = dataclasses.replace(d, diameter_px=measured, factor=new)
        log.info(
            "pipeline %s: series %s: particle diameter %.0f px (network instances; estimate %.0f) → "
            "block factor %d",
            self.name, self._key[0] if self._key else "?", measured, d.diameter_px, new,
        )  # fmt: skip
        return new != d.factor

    def network_input(self, small: np.ndarray) -> np.ndarray:
        assert self.decision is not None
        return normalise(small, self.decision.contrast)

    def registration_image(self, binned: np.ndarray, small: np.ndarray) -> np.ndarray:
        """Counts for the registration (absorbance → pseudo-counts; scale from ``small``)."""
        if self.decision is None or self.decision.contrast == "transmission":
            return binned
        v = small.ravel()
        n = v.size
        k = [int(0.02 * (n - 1)), int(0.98 * (n - 1))]
        lo, hi = np.partition(v, k)[k]
        s = max(float(hi - lo), 1e-6)
        out = binned - np.float32(lo)
        out *= np.float32(-1.0 / s)
        np.exp(out, out=out)
        out *= np.float32(1000.0)
        return out

    def report(self, series: object, flag: int) -> None:
        """One log line per (series, kind of bad input)."""
        if flag == INPUT_OK or (str(series), flag) in self._logged:
            return
        self._logged.add((str(series), flag))
        log.warning(
            "pipeline %s: series %s: %s (flagged in the frame's input_flag; logged once per series)",
            self.name, series, INPUT_FLAG_NAMES.get(flag, str(flag)),
        )  # fmt: skip
