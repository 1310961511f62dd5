"""Fine-tune a shipped XCT segmentation model on a few labelled real slices.

``--data DIR`` holds image + mask pairs, any mix of:

* HDF5 files (``*.h5``, ``*.hdf5``) with datasets ``image`` and ``mask`` of equal shape, 2-D
  (one slice) or 3-D (a stack, slices along axis 0);
* TIFF pairs ``NAME_image.tif`` + ``NAME_mask.tif`` (``.tiff`` too), 2-D or multi-page.

Images are raw reconstructions (any dtype); each slice is normalised like the pipeline does
(``engines.tiling.normalise_slice``). Masks hold class ids 0 electrode, 1 electrolyte,
2 dendrite, 3 redeposited Li, 4 pit, every pixel labelled; slices must be ≥ 128 px a side and
oriented with the cell's layers horizontal (electrodes top and bottom). One slice in five (at
least one, when there are two or more) is held out for the metrics in the new manifest.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from pathlib import Path

import h5py
import numpy as np
import torch

from engines.registry import WEIGHTS_DIR, load_manifest
from engines.synth.xct import N_CLASSES
from engines.tiling import normalise_slice
from engines.train.segmentation_core import SPECS, train
from engines.train.segmentation_export import export_model

log = logging.getLogger("engines.train.segmentation")
DEFAULT_MODEL = "xct_unet_fast"
DEFAULT_OUT = Path("runs") / "finetune" / "segmentation"


class FinetuneDataError(ValueError):
    """The --data directory does not hold usable image/mask pairs."""


def _stack(a: np.ndarray) -> np.ndarray:
    return a[None] if a.ndim == 2 else a


def load_pairs(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """All labelled slices under ``data``: normalised images (n, h, w) float32, masks uint8."""
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for p in sorted(data.iterdir()):
        if p.suffix.lower() in (".h5", ".hdf5"):
            with h5py.File(p, "r") as f:
                if "image" not in f or "mask" not in f:
                    raise FinetuneDataError(f"{p}: needs datasets 'image' and 'mask'")
                im, mk = _stack(f["image"][()]), _stack(f["mask"][()])
        elif p.name.lower().endswith(("_image.tif", "_image.tiff")):
            import tifffile

            stem = p.name[: p.name.lower().rindex("_image.")]
            cands = [p.with_name(f"{stem}_mask{ext}") for ext in (".tif", ".tiff")]
            mp = next((c for c in cands if c.exists()), None)
            if mp is None:
                raise FinetuneDataError(f"{p}: no matching {stem}_mask.tif")
            im, mk = _stack(tifffile.imread(p)), _stack(tifffile.imread(mp))
        else:
            continue
        if im.shape != mk.shape:
            raise FinetuneDataError(f"{p}: image {im.shape} and mask {mk.shape} differ")
        if min(im.shape[1:]) < 128:
            raise FinetuneDataError(f"{p}: slices must be at least 128 px a side, got {im.shape[1:]}")
        if mk.min() < 0 or mk.max() >= N_CLASSES:
            raise FinetuneDataError(f"{p}: mask values must be class ids 0..{N_CLASSES - 1}")
        for a, b in zip(im, mk, strict=True):
            images.append(normalise_slice(a))
            masks.append(b.astype(np.uint8))
    if not images:
        raise FinetuneDataError(f"no image/mask pairs in {data} (see docs/segmentation.md)")
    shape = images[0].shape
    if any(i.shape != shape for i in images):  # crop to a common shape (top-left)
        h, w = min(i.shape[0] for i in images), min(i.shape[1] for i in images)
        images, masks = [i[:h, :w] for i in images], [m[:h, :w] for m in masks]
    return np.stack(images), np.stack(masks)


def load_torch(name: str, weights: Path | None) -> torch.nn.Module:
    """Rebuild the logits model of a shipped manifest from its saved torch state dict."""
    m = load_manifest(name, weights)
    info = m.extra.get("torch")
    if not isinstance(info, dict):
        raise FinetuneDataError(f"{name} has no torch weights to fine-tune")
    mod, _, attr = str(info["factory"]).partition(":")
    wrapped = getattr(importlib.import_module(mod), attr)(**info["kwargs"])
    state = torch.load(
        (weights or WEIGHTS_DIR) / str(info["state_dict"]), map_location="cpu", weights_only=True
    )
    wrapped.load_state_dict(state)
    return wrapped.model


def finetune(
    data: Path,
    out: Path,
    *,
    model: str = DEFAULT_MODEL,
    weights: Path | None = None,
    budget_s: float = 180.0,
    seed: int = 0,
    progress: bool = True,
    threads: int = 2,
) -> dict[str, float]:
    torch.set_num_threads(threads)
    images, masks = load_pairs(data)
    n = len(images)
    n_val = max(1, n // 5) if n >= 2 else 0
    train_data = (images[n_val:], masks[n_val:])
    val_data = (images[:n_val], masks[:n_val]) if n_val else train_data
    log.info("fine-tuning %s on %d slices (%d held out) from %s", model, n - n_val, n_val, data)
    spec = SPECS[model]
    manifest = load_manifest(model, weights)
    loss = str(manifest.training.get("config", {}).get("loss", "bce"))  # type: ignore[union-attr]
    net, hist = train(
        spec,
        train_data,
        val_data,
        loss=loss,
        seed=seed,
        budget_s=budget_s,
        progress=progress,
        model=load_torch(model, weights),
        lr=spec.lr / 5,
    )
    cmd = f"operando-monitor finetune segmentation --data {data} --out {out}"
    config = {
        "finetuned_from": f"{model} {manifest.version} sha256 {manifest.sha256[:12]}",
        "data": str(data),
        "loss": loss,
    }
    config["held_out"] = (
        f"{n_val} of {n} labelled slices" if n_val else "none (a single slice: metrics are on training data)"
    )
    return export_model(spec, net, out, val_data, command=cmd, seed=seed, config=config, history=hist)


def finetune_cli(args: argparse.Namespace) -> int:
    if not args.data:
        raise SystemExit(
            "finetune segmentation needs --data DIR (image/mask pairs; see docs/segmentation.md)"
        )
    budget = 60.0 * args.epochs if args.epochs else 180.0
    if args.quick:
        budget = 5.0
    out = Path(args.out) if args.out else DEFAULT_OUT
    metrics = finetune(
        Path(args.data),
        out,
        weights=Path(args.weights) if args.weights else None,
        budget_s=budget,
        seed=args.seed,
        progress=not args.no_progress,
        threads=args.threads or 2,
    )
    print(f"{DEFAULT_MODEL} fine-tuned → {out}: {metrics}")
    return 0
