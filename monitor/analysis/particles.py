"""Particle instances from ParticleNet's maps: watershed split, properties, full-resolution ROIs.

The network runs at reduced resolution (block factor ``factor``); :func:`split` turns its
foreground and distance maps into instance labels (seeded watershed, from the model's own
module so training metrics and the monitor use the same code), and :func:`particle_rois`
turns labels into full-resolution regions of interest for sub-pixel registration:

- ``region``: pixels of any particle's territory (labels expanded by ``ring`` low-resolution
  pixels) inside the box around this particle's territory;
- ``body``: the particle's own (upsampled) label pixels, used for its intensity level;
- ``neighbours``: other particles whose territory reaches into the box. Registration splits
  contested pixels between them at full resolution (see ``registration._territory``), so the
  4-pixel steps of the low-resolution labels never enter a centre of mass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.segmentation import expand_labels

from engines.prep.particles import split_instances

_CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class RoiPixels:
    """The ROI's ``region`` pixels as flat lists (local coordinates), for registration without
    2-D masks: computed once when the masks are made, shared by every whole-pixel move."""

    y: np.ndarray  # float32 local row of each region pixel
    x: np.ndarray  # float32 local column
    iy: np.ndarray  # int32 local row (for gathering)
    ix: np.ndarray  # int32 local column
    body: np.ndarray  # bool per pixel
    background: np.ndarray  # bool per pixel
    core: np.ndarray  # bool per pixel

    @staticmethod
    def of(region: np.ndarray, body: np.ndarray, background: np.ndarray, core: np.ndarray) -> RoiPixels:
        iy, ix = np.nonzero(region)
        iy, ix = iy.astype(np.int32), ix.astype(np.int32)
        return RoiPixels(
            iy.astype(np.float32),
            ix.astype(np.float32),
            iy,
            ix,
            body[iy, ix],
            background[iy, ix],
            core[iy, ix],
        )


@dataclass(frozen=True)
class ParticleROI:
    """One detected particle. Coordinates are full-resolution pixels (y, x)."""

    label: int
    centroid: tuple[float, float]
    """Centroid of the (upsampled) label mask: coarse, for tracking and the first split."""
    area_px: float
    origin: tuple[int, int]
    region: np.ndarray  # bool (h, w) full resolution, at ``origin``
    body: np.ndarray  # bool (h, w)
    background: np.ndarray  # bool (h, w): own territory at least ``gap`` away from any particle
    core: np.ndarray  # bool (h, w): body eroded by one low-resolution pixel (cracks inside count)
    neighbours: tuple[int, ...] = ()
    anchor: tuple[float, float] = (float("nan"), float("nan"))
    """Sub-pixel centre measured when the masks were made (set by the caller)."""
    offset: tuple[int, int] = (0, 0)
    """Whole-pixel shift applied to the masks since then (mask propagation)."""
    pixels: RoiPixels | None = None
    """``region`` as pixel lists (set by :func:`particle_rois`; derived on demand otherwise)."""
    edge_cut: bool = False
    """The particle touches the field edge (only part of it is seen): tracked, but kept out of
    the rigid/non-rigid statistics, and given a slot only after the whole particles."""

    def pixel_lists(self) -> RoiPixels:
        return self.pixels or RoiPixels.of(self.region, self.body, self.background, self.core)

    @property
    def radius(self) -> float:
        return float(np.sqrt(self.area_px / np.pi))

    def anchored(self, centre: tuple[float, float]) -> ParticleROI:
        """This ROI with its masks' reference centre set to ``centre`` (a measured sub-pixel centre)."""
        return dataclasses.replace(self, anchor=centre, centroid=centre, offset=(0, 0))

    def follow(self, centre: tuple[float, float]) -> ParticleROI:
        """The masks moved by whole pixels so they sit on a particle now centred at ``centre``."""
        ty, tx = int(round(centre[0] - self.anchor[0])), int(round(centre[1] - self.anchor[1]))
        dy, dx = ty - self.offset[0], tx - self.offset[1]
        return dataclasses.replace(
            self, origin=(self.origin[0] + dy, self.origin[1] + dx), centroid=centre, offset=(ty, tx)
        )


def split(
    fg: np.ndarray, dist: np.ndarray, fg_threshold: float = 0.5, seed_threshold: float = 0.45
) -> np.ndarray:
    """Instance labels (int32) at the network's resolution."""
    return split_instances(fg, dist, fg_threshold=fg_threshold, seed_threshold=seed_threshold)


def _upsample(a: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)


def upsample_labels(labels: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour labels at full resolution, cropped or zero-padded to ``shape``."""
    up = _upsample(labels, factor)
    out = np.zeros(shape, up.dtype)
    h, w = min(shape[0], up.shape[0]), min(shape[1], up.shape[1])
    out[:h, :w] = up[:h, :w]
    return out


def particle_rois(
    labels: np.ndarray, factor: int, shape: tuple[int, int], ring: int = 3, gap: int = 1
) -> list[ParticleROI]:
    """Full-resolution ROIs of every instance in ``labels`` (low resolution).

    Territories reach ``ring`` low-resolution pixels beyond each particle; the background ring
    leaves a ``gap`` next to the particle so its faint edge never counts as background."""
    n = int(labels.max())
    if n == 0:
        return []
    terr = expand_labels(labels, distance=ring)
    near = expand_labels(labels, distance=gap) if gap > 0 else labels
    boxes = ndimage.find_objects(terr, max_label=n)
    flat = labels.ravel()
    yy, xx = np.indices(labels.shape)
    areas = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    sy = np.bincount(flat, weights=yy.ravel(), minlength=n + 1)[1:]
    sx = np.bincount(flat, weights=xx.ravel(), minlength=n + 1)[1:]
    cents = np.stack([sy, sx], axis=1) / np.maximum(areas, 1)[:, None]
    lh, lw = labels.shape
    # The low-resolution grid may reach past the frame (padded block): the frame's last
    # row/column of blocks is the border.
    by, bx = min(lh, -(-shape[0] // factor)) - 1, min(lw, -(-shape[1] // factor)) - 1
    border = np.zeros(n + 1, bool)
    border[
        np.concatenate([labels[0, : bx + 1], labels[by, : bx + 1], labels[: by + 1, 0], labels[: by + 1, bx]])
    ] = True
    rois = []
    for k, box in enumerate(boxes, start=1):
        if box is None or areas[k - 1] == 0:
            continue
        tb = terr[box]
        t = tb > 0
        b = labels[box] == k
        g = (tb == k) & (near[box] == 0)
        core = ndimage.binary_erosion(b, structure=_CROSS)
        others = tuple(int(j) for j in np.unique(tb) if j and j != k)
        y0, x0 = box[0].start * factor, box[1].start * factor
        ty, tx, tg, tc = (_upsample(m, factor) for m in (t, b, g, core))
        h = min(ty.shape[0], shape[0] - y0)
        w = min(ty.shape[1], shape[1] - x0)
        if h <= 0 or w <= 0:
            continue
        cy, cx = cents[k - 1]
        region, body, bg, core_ = ty[:h, :w], tx[:h, :w], tg[:h, :w], tc[:h, :w]
        rois.append(
            ParticleROI(
                label=k,
                centroid=((cy + 0.5) * factor - 0.5, (cx + 0.5) * factor - 0.5),
                area_px=float(areas[k - 1]) * factor * factor,
                origin=(y0, x0),
                region=region,
                body=body,
                background=bg,
                core=core_,
                neighbours=others,
                pixels=RoiPixels.of(region, body, bg, core_),
                edge_cut=bool(border[k]),
            )
        )
    return rois
