"""early_warning: CNN-GRU over a rolling window of growth images → risk, latent, lead time.

Per (stream, series) the pipeline keeps the last ``T`` frames (resized to the model's 64×64 by
block mean, or bilinear when the size is not a multiple; per-frame standardisation happens in
the model). A new series starts an empty window, so one run never leaks into the next. Until a
window is full the result has ``risk = latent = lead_time_frames = NaN`` and ``window_fill`` < 1
(alarm rules ignore NaN). Full windows of one ``process`` batch go through the model in one
``infer`` call.

Scalars: ``risk`` (probability that the compact-to-dendritic transition happens within H
frames, or has happened), ``latent`` (the 1-D surrogate variable of destabilisation),
``lead_time_frames`` (the model's frames-to-transition estimate; with a hazard model the
expectation E[min(T, K)], K meaning "not within the forecast range"), ``window_fill`` (frames in
the window / T). With a forecasting (hazard) model (inputs ``frames`` and ``features``; window
preprocessing in numpy, :mod:`engines.prep.geo_features`) also: ``lead_time_lo`` /
``lead_time_hi`` (10 / 90 % quantiles of the forecast), ``ood_score`` (distance of the window's
features from training, :mod:`monitor.pipelines.early_warning_ood`), ``ood`` (1 while the
series is out of distribution) and ``alarm_risk`` (``risk``, or NaN while ``ood`` = 1: a rule on
it holds its state instead of raising a MAJOR on inputs the model has never seen; the ``ood``
metric raises the MINOR ``early_warning_ood`` instead).

Frames that cannot be used (fewer than ``min_size`` pixels per side, non-finite values) raise
``ValueError`` with the reason, so the router marks them FAILED and counts them.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engines.errors import EngineError
from engines.prep.geo_features import prepare_window
from engines.prep.hazard_math import interval
from engines.registry import load_manifest
from engines.runtime import create_runner
from monitor.config import PipelineSettings, parse_options
from monitor.errors import ConfigError
from monitor.frames import Frame
from monitor.pipelines.base import Latency, Result, ResultSchema
from monitor.pipelines.early_warning_ood import OodMonitor

DEFAULT_MODEL = "early_warning_cnn_gru"
SCALARS = ("risk", "latent", "lead_time_frames", "window_fill")
FORECAST_SCALARS = ("lead_time_lo", "lead_time_hi", "ood_score", "ood", "alarm_risk")


@dataclass(frozen=True)
class EarlyWarningOptions:
    max_series: int = 64
    """Windows kept at once; the least recently seen (stream, series) is dropped beyond this."""
    min_size: int = 16
    """Frames smaller than this on either side are rejected."""


def resize(a: np.ndarray, size: int) -> np.ndarray:
    """2-D frame → ``size``×``size`` float32 (block mean for exact multiples, else bilinear)."""
    a = np.asarray(a, dtype=np.float32)
    h, w = a.shape
    if (h, w) == (size, size):
        return a
    if h % size == 0 and w % size == 0:
        return a.reshape(size, h // size, size, w // size).mean(axis=(1, 3))
    from scipy import ndimage

    out = ndimage.zoom(a, (size / h, size / w), order=1, grid_mode=True, mode="nearest")
    return np.ascontiguousarray(out[:size, :size], dtype=np.float32)


class EarlyWarningPipeline:
    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.streams = settings.streams
        self.options = parse_options(
            EarlyWarningOptions, settings.options, f"pipelines.{settings.name}.options"
        )
        model = settings.model or DEFAULT_MODEL
        try:
            self.manifest = load_manifest(model, settings.weights_dir or None)
            self.runner = create_runner(
                self.manifest,
                settings.backend,
                threads=settings.threads,
                weights_dir=settings.weights_dir or None,
                precision=settings.backend_precision,
            )
            self.runner.activate()
        except EngineError as exc:
            raise ConfigError(f"pipelines.{self.name}.model", f"cannot load model {model!r}: {exc}") from exc
        shape = self.manifest.inputs[0].shape
        self.window = int(shape[1])
        self.size = int(shape[2])
        self.horizon = int(self.manifest.extra.get("horizon", 12))  # type: ignore[call-overload]
        self.forecast = any(t.name == "features" for t in self.manifest.inputs)
        self.ood = OodMonitor(self.manifest.extra.get("ood")) if self.forecast else None
        self._windows: OrderedDict[tuple[str, str], deque[np.ndarray]] = OrderedDict()

    def schema(self) -> ResultSchema:
        return ResultSchema(scalars=SCALARS + (FORECAST_SCALARS if self.forecast else ()))

    def _prepare(self, frame: Frame) -> np.ndarray:
        a = frame.array
        if min(a.shape) < self.options.min_size:
            raise ValueError(
                f"frame {frame.index} of {frame.series!r} is {a.shape[0]}x{a.shape[1]}; "
                f"early_warning needs at least {self.options.min_size} px per side"
            )
        img = resize(a, self.size)
        if not np.isfinite(img).all():
            raise ValueError(f"frame {frame.index} of {frame.series!r} has non-finite pixels")
        return img

    def _push(self, frame: Frame, img: np.ndarray) -> deque[np.ndarray]:
        key = (frame.stream, frame.series)
        win = self._windows.get(key)
        if win is None:
            win = self._windows[key] = deque(maxlen=self.window)
            while len(self._windows) > self.options.max_series:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(key)
        win.append(img)
        return win

    def reset(self) -> None:
        """Forget every window (e.g. after a configuration change)."""
        self._windows.clear()

    def _forecast_scalars(
        self, frame: Frame, outputs: dict[str, np.ndarray], k: int | None
    ) -> dict[str, float]:
        nan = float("nan")
        if k is None or self.ood is None:
            return {"lead_time_lo": nan, "lead_time_hi": nan, "ood_score": nan, "ood": nan, "alarm_risk": nan}
        lo, hi = interval(outputs["hazard"][k])
        score, flag = self.ood.update(
            (frame.stream, frame.series), outputs["_feats"][k], float(outputs["latent"][k, 0])
        )
        risk = float(outputs["risk"][k, 0])
        return {
            "lead_time_lo": float(lo),
            "lead_time_hi": float(hi),
            "ood_score": score,
            "ood": float(flag),
            "alarm_risk": nan if flag else risk,
        }

    def process(self, frames: Sequence[Frame]) -> list[Result]:
        t0 = time.perf_counter()
        prepared = [self._prepare(f) for f in frames]  # validate the whole batch first
        fills: list[float] = []
        full: list[int] = []
        stacks: list[np.ndarray] = []
        for i, (frame, img) in enumerate(zip(frames, prepared, strict=True)):
            win = self._push(frame, img)
            fills.append(len(win) / self.window)
            if len(win) == self.window:
                full.append(i)
                stacks.append(np.stack(win))
        outputs: dict[str, np.ndarray] = {}
        if stacks and self.forecast:
            prepped = [prepare_window(w) for w in stacks]
            outputs = self.runner.infer(
                {
                    "frames": np.stack([p[0] for p in prepped]),
                    "features": np.stack([p[1] for p in prepped]),
                }
            )
            outputs["_feats"] = np.stack([p[1] for p in prepped])
        elif stacks:
            outputs = self.runner.infer({"frames": np.stack(stacks).astype(np.float32, copy=False)})
        compute = (time.perf_counter() - t0) / max(1, len(frames))
        row = {i: k for k, i in enumerate(full)}
        results = []
        for i, frame in enumerate(frames):
            k = row.get(i)
            if k is None:
                scalars = {"risk": float("nan"), "latent": float("nan"), "lead_time_frames": float("nan")}
            else:
                scalars = {
                    "risk": float(outputs["risk"][k, 0]),
                    "latent": float(outputs["latent"][k, 0]),
                    "lead_time_frames": float(outputs["frames_to_transition"][k, 0]),
                }
            if self.forecast:
                scalars.update(self._forecast_scalars(frame, outputs, k))
            scalars["window_fill"] = fills[i]
            results.append(
                Result(
                    pipeline=self.name,
                    frame=frame,
                    scalars=scalars,
                    latency=Latency(compute=compute, batch_size=len(frames)),
                )
            )
        return results
