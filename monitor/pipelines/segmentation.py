"""segmentation: per-slice XCT segmentation of Li dendrites → masks, volume fractions, penetration.

Each slice (any size) is normalised by its percentiles (the models' convention), predicted by
overlapping tiles with blended seams (``engines.tiling``; tile settings from the manifest unless
overridden in ``options``), and reduced to a label map (:data:`engines.prep.xct_classes.CLASSES`).
From the map (``monitor.analysis.morphology``):

* ``vf_<class>``: area (volume) fraction of the slice per class;
* ``dendrite_gap_fraction``: dendrite pixels / electrolyte-gap pixels;
* ``penetration``: deepest dendrite reach as a fraction of the electrolyte thickness (0..1;
  1 = the gap is bridged: short circuit); ``thickness_px``;
* ``n_dendrite``, ``n_redeposit``, ``n_pit`` (connected components), ``largest_dendrite_px``;
* ``cum_<class>_vox`` and ``cum_dendrite_gap_fraction``: voxels summed over the slices of the
  current series (a volume), reset when the series changes;
* ``dendrite_vf_growth``: change of ``dendrite_gap_fraction`` since the previous pass over the
  same slice (``slice_z`` from the frame's metadata, else the frame index modulo ``volume_depth``);
  NaN on a first pass. Alarm rules use ``penetration`` and ``dendrite_vf_growth``.

Out-of-distribution guard (``engines.ood``, statistics from the model's manifest): per slice
``ood_score`` (0 = like the model's training inputs) and ``ood`` (1 while the median score of
the series so far is above the threshold; logged once per series). While ``ood`` is 1 the
daemon raises a MINOR ``<pipeline>_ood`` alarm and ignores the metrics in ``ood_gated`` for
alarm rules (penetration, growth, volume fractions), unless ``options.ood_suppress = false``.

Arrays: ``mask``: the label map resampled (nearest) to fit ``options.mask_shape`` square with
the slice's aspect ratio kept (long side = ``mask_shape``), the rest filled with
:data:`NO_DATA` (255), uint8.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engines.errors import EngineError
from engines.ood import OodStats, SeriesOod
from engines.prep.xct_classes import CLASSES, DENDRITE, PIT, REDEPOSIT
from engines.registry import load_manifest
from engines.runtime import create_runner
from engines.seg_ood import manifest_stats, slice_features
from engines.tiling import TileSpec, full_predict, labels_from_probs, normalise_slice, tiled_predict
from monitor.analysis.morphology import CumulativeVolume, slice_morphology
from monitor.config import PipelineSettings, parse_options
from monitor.errors import ConfigError
from monitor.frames import Frame
from monitor.pipelines.base import ArraySpec, Latency, Result, ResultSchema

log = logging.getLogger("monitor.pipelines.segmentation")

DEFAULT_MODEL = "xct_unet_fast"
SCALARS = (
    *(f"vf_{c}" for c in CLASSES),
    "dendrite_gap_fraction",
    "penetration",
    "thickness_px",
    "n_dendrite",
    "n_redeposit",
    "n_pit",
    "largest_dendrite_px",
    "cum_dendrite_vox",
    "cum_redeposit_vox",
    "cum_pit_vox",
    "cum_dendrite_gap_fraction",
    "dendrite_vf_growth",
    "slice_z",
    "ood_score",
    "ood",
)
MAX_SLICES = 8192
NO_DATA = 255
"""Stored-mask value outside the slice (the mask keeps the slice's aspect ratio)."""
OOD_GATED = (
    "penetration",
    "dendrite_vf_growth",
    "dendrite_gap_fraction",
    "cum_dendrite_gap_fraction",
    *(f"vf_{c}" for c in CLASSES),
    *(f"cum_{c}_vox" for c in CLASSES),
    "n_dendrite",
    "n_redeposit",
    "n_pit",
    "largest_dendrite_px",
)
"""Metrics whose alarms are held back while the input is out of distribution."""


@dataclass(frozen=True)
class SegmentationOptions:
    mask_shape: int = 256
    """Side of the stored (downsampled, nearest) label map."""
    min_component_px: int = 4
    """Components smaller than this are ignored in counts and penetration."""
    tile: int = 0
    """Tile side; 0: the manifest's. ``-1``: whole slice at once (fully convolutional models)."""
    overlap: int = 0
    margin: int = 0
    tile_batch: int = 0
    volume_depth: int = 0
    """Slices per volume when frames carry no ``slice_z`` (0: use the frame index as is)."""
    min_size: int = 32
    ood_guard: bool = True
    """Measure how far slices lie from the model's training inputs (needs ``extra.ood``)."""
    ood_threshold: float = 0.0
    """Score above which a series is out of distribution; 0: the manifest's."""
    ood_suppress: bool = True
    """Hold back alarms on :data:`OOD_GATED` metrics while the input is out of distribution."""
    ood_window: int = 16
    """Slices whose median score decides (per series)."""


def resample_nearest(mask: np.ndarray, side: int, width: int | None = None) -> np.ndarray:
    """Nearest-neighbour resampling of a label map to ``side``×``width`` (pixel centres)."""
    h, w = mask.shape
    width = side if width is None else width
    ys = ((np.arange(side) + 0.5) * h / side).astype(np.intp)
    xs = ((np.arange(width) + 0.5) * w / width).astype(np.intp)
    return np.ascontiguousarray(mask[np.ix_(ys, xs)])


def fitted_shape(shape: tuple[int, ...], side: int) -> tuple[int, int]:
    """(rows, columns) of a ``shape`` slice scaled to fit ``side``² with its aspect ratio."""
    h, w = shape[0], shape[1]
    if h >= w:
        return side, max(1, round(side * w / h))
    return max(1, round(side * h / w)), side


def stored_mask(mask: np.ndarray, side: int) -> np.ndarray:
    """The label map fitted into ``side``² (aspect kept, top-left), the rest :data:`NO_DATA`."""
    mh, mw = fitted_shape(mask.shape, side)
    out = np.full((side, side), NO_DATA, np.uint8)
    out[:mh, :mw] = resample_nearest(mask, mh, mw)
    return out


class SegmentationPipeline:
    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.streams = settings.streams
        key = f"pipelines.{settings.name}.options"
        self.options = parse_options(SegmentationOptions, settings.options, key)
        if self.options.mask_shape < 8:
            raise ConfigError(f"{key}.mask_shape", f"must be >= 8, got {self.options.mask_shape}")
        model = settings.model or DEFAULT_MODEL
        wd = settings.weights_dir or None
        try:
            self.manifest = load_manifest(model, wd)
            self.runner = create_runner(
                self.manifest,
                settings.backend,
                threads=settings.threads,
                weights_dir=wd,
                precision=settings.backend_precision,
            )
            self.runner.activate()
        except EngineError as exc:
            raise ConfigError(f"pipelines.{self.name}.model", f"cannot load model {model!r}: {exc}") from exc
        extra = self.manifest.extra
        base = extra.get("tile", {})
        assert isinstance(base, dict)
        o = self.options
        self.whole = o.tile == -1 and bool(extra.get("fully_convolutional"))
        if o.tile == -1 and not self.whole:
            raise ConfigError(
                f"{key}.tile", f"model {model!r} is not fully convolutional; tile = -1 needs one"
            )
        try:
            self.tiles = TileSpec(
                tile=o.tile if o.tile > 0 else int(base.get("tile", 128)),
                overlap=o.overlap or int(base.get("overlap", 32)),
                margin=o.margin or int(base.get("margin", 8)),
                batch=o.tile_batch or int(base.get("batch", 8)),
            )
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from exc
        self.multiple = int(extra.get("multiple", 16))  # type: ignore[call-overload]
        self.cumulative: dict[str, CumulativeVolume] = {}
        self.previous: OrderedDict[tuple[str, int], float] = OrderedDict()
        """(stream, slice z) → dendrite_gap_fraction of its last pass (at most MAX_SLICES kept)."""
        self.ood_stats: OodStats | None = manifest_stats(self.manifest) if o.ood_guard else None
        if o.ood_guard and self.ood_stats is None:
            log.warning("%s: model %s has no OOD statistics in its manifest; no OOD guard", self.name, model)
        threshold = o.ood_threshold or (self.ood_stats.threshold if self.ood_stats else 0.0)
        self.ood = SeriesOod(threshold, window=max(1, o.ood_window))
        self._features = np.zeros(0)
        self.ood_gated: frozenset[str] = frozenset(OOD_GATED) if o.ood_suppress else frozenset()
        """Metrics whose alarms the daemon holds back while ``ood`` is 1 (``monitor.alerts.ood``)."""
        self.mip: dict[str, tuple[str, np.ndarray]] = {}
        """stream → (series, slices with dendrite per stored-mask pixel): the projection through
        the current volume, drawn by the dashboard as a maximum-intensity projection."""

    def schema(self) -> ResultSchema:
        side = self.options.mask_shape
        return ResultSchema(scalars=SCALARS, arrays=(ArraySpec("mask", (side, side), "uint8"),))

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        return self.runner.infer({"image": batch})["probs"]

    def segment(self, image: np.ndarray) -> np.ndarray:
        """Full-resolution label map (uint8) of one raw slice."""
        return self.segment_scored(image)[0]

    def segment_scored(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Full-resolution label map (uint8) of one raw slice and its OOD score (NaN: no guard)."""
        x = normalise_slice(image)
        if self.whole:
            probs = full_predict(x, self._predict, self.multiple)
        else:
            probs = tiled_predict(x, self._predict, self.tiles)
        labels = labels_from_probs(probs)
        if self.ood_stats is None:
            return labels, float("nan")
        conf = float(probs[:, ::4, ::4].max(0).mean())
        self._features = slice_features(x, labels, conf, probs.shape[0])
        return labels, self.ood_stats.score(self._features)

    def _ood_state(self, f: Frame, score: float) -> float:
        if self.ood_stats is None or not np.isfinite(score):
            return 0.0
        state = self.ood.update(f.stream, f.series, score)
        if state.new:
            log.warning(
                "%s: series %r of stream %r is out of distribution for model %s (score %.2f > %.2f; "
                "furthest: %s); alarms on %s held back",
                self.name,
                f.series,
                f.stream,
                self.manifest.name,
                score,
                self.ood.threshold,
                ", ".join(f"{n} z={z:+.1f}" for n, z in self.ood_stats.worst(self._features)),
                "penetration and volume fractions" if self.ood_gated else "nothing (ood_suppress = false)",
            )
        return 1.0 if state.flagged else 0.0

    def _slice_z(self, frame: Frame) -> int:
        z = frame.meta.slice_z
        if z is not None and np.isfinite(z):
            return int(z)
        return frame.index % self.options.volume_depth if self.options.volume_depth > 0 else frame.index

    def process(self, frames: Sequence[Frame]) -> list[Result]:
        for f in frames:  # validate the whole batch first
            a = f.array
            if a.ndim != 2 or min(a.shape) < self.options.min_size:
                raise ValueError(
                    f"frame {f.index} of {f.series!r}: shape {a.shape}; segmentation needs a 2-D slice "
                    f"of at least {self.options.min_size} px per side"
                )
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise ValueError(f"frame {f.index} of {f.series!r} has non-finite pixels")
        out: list[Result] = []
        for f in frames:
            t0 = time.perf_counter()
            mask, ood_score = self.segment_scored(f.array)
            m = slice_morphology(mask, self.options.min_component_px)
            key = f"{f.stream}\x00{f.series}"
            cum = self.cumulative.setdefault(key, CumulativeVolume())
            if len(self.cumulative) > 64:
                self.cumulative.pop(next(iter(self.cumulative)))
            vox = cum.add(f.series, m.counts)
            gap_vox = int(vox.sum() - vox[0] - vox[PIT])
            z = self._slice_z(f)
            pkey = (f.stream, z)
            prev = self.previous.get(pkey)
            self.previous[pkey] = m.dendrite_gap_fraction
            self.previous.move_to_end(pkey)
            if len(self.previous) > MAX_SLICES:
                self.previous.popitem(last=False)
            scalars = {f"vf_{c}": m.fractions[i] for i, c in enumerate(CLASSES)}
            scalars.update(
                dendrite_gap_fraction=m.dendrite_gap_fraction,
                penetration=m.penetration,
                thickness_px=m.thickness_px,
                n_dendrite=float(m.components[0]),
                n_redeposit=float(m.components[1]),
                n_pit=float(m.components[2]),
                largest_dendrite_px=float(m.largest_dendrite_px),
                cum_dendrite_vox=float(vox[DENDRITE]),
                cum_redeposit_vox=float(vox[REDEPOSIT]),
                cum_pit_vox=float(vox[PIT]),
                cum_dendrite_gap_fraction=float(vox[DENDRITE]) / gap_vox if gap_vox else 0.0,
                dendrite_vf_growth=float("nan") if prev is None else m.dendrite_gap_fraction - prev,
                slice_z=float(z),
                ood_score=ood_score,
                ood=self._ood_state(f, ood_score),
            )
            small = stored_mask(mask, self.options.mask_shape)
            series, proj = self.mip.get(f.stream, ("", None))
            if proj is None or series != f.series:
                proj = np.zeros(small.shape, np.uint16)
                self.mip[f.stream] = (f.series, proj)
            proj += small == DENDRITE
            out.append(
                Result(
                    pipeline=self.name,
                    frame=f,
                    scalars=scalars,
                    arrays={"mask": small},
                    latency=Latency(compute=time.perf_counter() - t0, batch_size=len(frames)),
                )
            )
        return out

    def display_overlays(self, result: Result, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        """``mask``: the label map at display size (uint8 class ids); ``mip``: float32 count of
        slices of the current volume with dendrite at each (stored-mask) pixel."""
        mask = result.arrays["mask"]
        mh, mw = fitted_shape(result.frame.array.shape, mask.shape[0])
        mask = mask[:mh, :mw]
        h, w = shape
        ys = ((np.arange(h) + 0.5) * mask.shape[0] / h).astype(np.intp)
        xs = ((np.arange(w) + 0.5) * mask.shape[1] / w).astype(np.intp)
        out = {"mask": np.ascontiguousarray(mask[np.ix_(ys, xs)])}
        series, proj = self.mip.get(result.frame.stream, ("", None))
        if proj is not None and series == result.frame.series:
            out["mip"] = proj[:mh, :mw].astype(np.float32)
        return out
