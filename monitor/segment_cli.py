"""``operando-monitor segment IMAGE --out MASK.tif``: one slice through the segmentation pipeline.

Reads a TIFF/PNG/BMP/JPEG image or an HDF5 dataset (``--dataset``; a 3-D stack needs
``--index``), runs the same code as the daemon (normalisation, tiles, argmax, OOD guard) with
the shipped or a fine-tuned model (``--weights-dir``, ``--model``), writes the full-resolution
uint8 class-id mask (0 electrode, 1 electrolyte, 2 dendrite, 3 redeposit, 4 pit) as TIFF and
prints the volume fractions, the penetration and the OOD score.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from monitor.errors import MonitorError

log = logging.getLogger("monitor.segment")


def read_slice(path: Path, dataset: str | None, index: int | None) -> np.ndarray:
    if not path.is_file():
        raise MonitorError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5", ".nxs"):
        import importlib

        import h5py

        importlib.import_module("hdf5plugin")  # registers bitshuffle/LZ4 filters (results files)

        if not dataset:
            raise MonitorError(f"{path}: HDF5 input needs --dataset PATH")
        with h5py.File(path, "r") as f:
            if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
                raise MonitorError(f"{path}: no dataset {dataset!r}")
            ds = f[dataset]
            if ds.ndim == 3:
                if index is None:
                    raise MonitorError(f"{path}:{dataset} is a stack {ds.shape}; choose a slice with --index")
                return np.asarray(ds[index])
            a = np.asarray(ds[()])
    elif suffix in (".tif", ".tiff"):
        import tifffile

        a = np.asarray(tifffile.imread(path))
        if a.ndim == 3 and a.shape[-1] not in (3, 4):
            a = a[index or 0]
    else:
        from PIL import Image

        with Image.open(path) as im:
            a = np.asarray(im.convert("F") if im.mode not in ("I;16", "I", "F", "L") else im)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if a.ndim != 2:
        raise MonitorError(f"{path}: expected a 2-D slice, got shape {a.shape}")
    return a


def cmd_segment(args: argparse.Namespace) -> int:
    import tifffile

    from monitor.analysis.morphology import slice_morphology
    from monitor.config import PipelineSettings
    from monitor.pipelines.segmentation import SegmentationPipeline

    image = read_slice(Path(args.image), args.dataset, args.index)
    settings = PipelineSettings(
        name="segment",
        kind="segmentation",
        streams=("offline",),
        model=args.model or "",
        weights_dir=args.weights_dir or "",
        threads=args.threads,
    )
    pipe = SegmentationPipeline(settings)
    mask, score = pipe.segment_scored(image)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(out, mask.astype(np.uint8))
    m = slice_morphology(mask, pipe.options.min_component_px)
    classes = list(pipe.manifest.extra.get("classes", []))  # type: ignore[call-overload]
    man = pipe.manifest
    print(f"{out}: {mask.shape[0]}x{mask.shape[1]} uint8 class ids, model {man.name} {man.version}")
    print(
        "volume fractions: " + ", ".join(f"{c} {f:.4f}" for c, f in zip(classes, m.fractions, strict=False))
    )
    print(
        f"penetration {m.penetration:.3f} (electrolyte thickness {m.thickness_px:.0f} px, "
        f"{m.components[0]} dendrite components)"
    )
    if pipe.ood_stats is None:
        print("OOD score: n/a (model manifest has no OOD statistics)")
    else:
        thr = pipe.ood.threshold
        verdict = "OUT OF DISTRIBUTION: results unreliable" if score > thr else "in distribution"
        worst = ", ".join(f"{n} z={z:+.1f}" for n, z in pipe.ood_stats.worst(pipe._features))
        print(f"OOD score {score:.2f} (threshold {thr:.2f}): {verdict}; furthest features: {worst}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    g = sub.add_parser("segment", help="segment one slice offline: full-resolution class-id mask + metrics")
    g.add_argument("image", help="TIFF/PNG/BMP/JPEG image or HDF5 file")
    g.add_argument("--dataset", default=None, help="HDF5 dataset path")
    g.add_argument("--index", type=int, default=None, help="slice of a 3-D stack")
    g.add_argument("--weights-dir", default=None, help="model directory (default: engines/weights)")
    g.add_argument("--model", default=None, help="model name (default: xct_unet_fast)")
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--out", required=True, help="mask TIFF to write")
    g.set_defaults(fn=cmd_segment)
