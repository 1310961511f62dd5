"""Instance labels of one 2-D image with ParticleNet: ``operando-monitor particles`` and the benches.

Same steps as the alignment pipeline's detection: contrast (``auto``: decided from the image),
particle diameter (0: estimated) → block factor, normalisation, one network call, the
crack-safe watershed split, labels back at full resolution (nearest neighbour, cropped).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.prep.particle_prep import (
    TRAINING_DIAMETER_PX,
    block_factor,
    detect_contrast,
    estimate_diameter,
    normalise,
)
from engines.prep.particles import downsample, pad_to_multiple, split_instances
from engines.registry import Manifest, load_manifest
from engines.runtime import create_runner
from engines.runtime.base import BaseRunner
from monitor.analysis.input_prep import check_frame
from monitor.analysis.particles import upsample_labels

log = logging.getLogger("monitor.analysis.particle_labels")

DEFAULT_MODEL = "txm_particle_net"


@dataclass(frozen=True)
class LabelInfo:
    count: int
    contrast: str
    contrast_auto: bool
    diameter_px: float
    factor: int


class ParticleLabeller:
    """Loads the model once; :meth:`label` any number of images."""

    def __init__(
        self, model: str = "", weights_dir: str | None = None, backend: str = "onnxruntime", threads: int = 1
    ) -> None:
        self.manifest: Manifest = load_manifest(model or DEFAULT_MODEL, weights_dir or None)
        self.runner: BaseRunner = create_runner(
            self.manifest, backend, threads=threads, weights_dir=weights_dir or None
        )
        self.runner.activate()
        split = self.manifest.extra.get("split", {})
        self.fg_thr = float(split.get("fg_threshold", 0.5)) if isinstance(split, dict) else 0.5
        self.seed_thr = float(split.get("seed_threshold", 0.45)) if isinstance(split, dict) else 0.45
        self.multiple = int(self.manifest.extra.get("multiple", 4))  # type: ignore[call-overload]
        self.target = float(self.manifest.normalisation.get("training_diameter_px", TRAINING_DIAMETER_PX))

    def close(self) -> None:
        self.runner.deactivate()

    def label(
        self, image: np.ndarray, contrast: str = "auto", diameter_px: float = 0.0
    ) -> tuple[np.ndarray, LabelInfo]:
        """(uint16 labels at the image's size, what was decided)."""
        arr, _flag = check_frame(np.asarray(image))
        auto = contrast == "auto"
        if auto:
            contrast = detect_contrast(arr).contrast
        d = float(diameter_px) if diameter_px > 0 else estimate_diameter(arr, contrast)
        f = block_factor(d, arr.shape, self.target)
        small = normalise(downsample(arr, f), contrast)
        h, w = small.shape
        x = pad_to_multiple(small, self.multiple)[None, None]
        out = self.runner.infer({"image": np.ascontiguousarray(x, dtype=np.float32)})
        low = split_instances(
            out["fg"][0, 0, :h, :w],
            out["dist"][0, 0, :h, :w],
            fg_threshold=self.fg_thr,
            seed_threshold=self.seed_thr,
        )
        full = upsample_labels(low, f, arr.shape).astype(np.uint16)
        return full, LabelInfo(int(low.max()), contrast, auto, d, f)


def read_image(path: Path, dataset: str = "") -> np.ndarray:
    """One 2-D image from a TIFF (first page) or an HDF5 dataset (``dataset``; a 3-D dataset
    gives its first frame)."""
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5", ".nxs", ".hdf"):
        import h5py

        with h5py.File(path, "r") as f:
            if not dataset:
                raise ValueError(f"{path}: --dataset PATH is required for HDF5 input")
            ds = f[dataset]
            a = np.asarray(ds[0] if ds.ndim == 3 else ds[...])
    else:
        import tifffile

        a = np.asarray(tifffile.imread(path, key=0))
        if a.ndim == 3 and a.shape[-1] in (3, 4):
            a = a[..., :3].mean(axis=-1)  # an RGB export of a grey image
    if a.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D image, got shape {a.shape}")
    return a


def write_labels(path: Path, labels: np.ndarray) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, labels.astype(np.uint16), compression="zlib")
