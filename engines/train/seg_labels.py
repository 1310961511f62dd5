"""Labelled slices for ``finetune segmentation --data DIR``: the labels people actually have.

A directory holds image + mask pairs, any mix of

* HDF5 files (``*.h5``, ``*.hdf5``) with datasets ``image`` and ``mask`` (2-D or a 3-D stack);
* TIFF or PNG pairs ``NAME_image.EXT`` + ``NAME_mask.EXT`` (``.tif``/``.tiff``/``.png``, masks
  in any of them; multi-page TIFF stacks too);
* ``images/NAME.EXT`` + ``masks/NAME.EXT`` (or ``labels/``), matched by stem.

Mask values are mapped to class ids by ``--class-map VALUE=CLASS[,...]`` (CLASS a name such as
``electrode`` or an id; e.g. ``255=electrode,0=electrolyte``); without a map the values must be
class ids. ``--ignore VALUE`` marks unlabelled pixels (sparse scribbles work). Any other value
is an error naming the mask file and the values found. Slices of any size are kept whole (no
cropping); RGB images are converted to grey.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.tiling import normalise_slice

IGNORE = 255
"""Label of unlabelled pixels after mapping."""
IMAGE_EXTS = (".tif", ".tiff", ".png", ".bmp", ".jpg", ".jpeg")


class FinetuneDataError(ValueError):
    """The --data directory does not hold usable image/mask pairs (one line, names the file)."""


@dataclass(frozen=True)
class LabelledSlice:
    image: np.ndarray
    """Normalised (``engines.tiling.normalise_slice``) float32 (H, W)."""
    mask: np.ndarray
    """Class ids uint8 (H, W); :data:`IGNORE` where unlabelled."""
    source: str
    """``file[:index]`` the slice came from."""


def parse_class_map(text: str | None, classes: Sequence[str]) -> dict[int, int] | None:
    """``"255=electrode,0=electrolyte"`` → ``{255: 0, 0: 1}`` (class names or ids)."""
    if not text:
        return None
    out: dict[int, int] = {}
    for item in text.split(","):
        value, sep, cls = item.strip().partition("=")
        if not sep:
            raise FinetuneDataError(f"--class-map: {item.strip()!r} is not VALUE=CLASS")
        try:
            v = int(value)
        except ValueError:
            raise FinetuneDataError(f"--class-map: mask value {value!r} is not an integer") from None
        c = cls.strip()
        if c in classes:
            out[v] = classes.index(c)
        elif c.isdigit() and int(c) < len(classes):
            out[v] = int(c)
        else:
            raise FinetuneDataError(f"--class-map: unknown class {c!r} (classes: {', '.join(classes)})")
    return out


def _read(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        a = tifffile.imread(path)
    else:
        from PIL import Image

        with Image.open(path) as im:
            a = np.asarray(im)
    return np.asarray(a)


def _grey(a: np.ndarray, path: Path) -> np.ndarray:
    if a.ndim == 3 and a.shape[-1] in (3, 4):  # RGB(A)
        return a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return a


def _mask_2d(a: np.ndarray, path: Path) -> np.ndarray:
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        if not (np.all(a[..., 0] == a[..., 1]) and np.all(a[..., 1] == a[..., 2])):
            raise FinetuneDataError(f"{path}: colour mask; save one channel of class values (grey or index)")
        a = a[..., 0]
    return a


def map_mask(
    mask: np.ndarray, path: str, n_classes: int, class_map: dict[int, int] | None, ignore: int | None
):
    """Class ids (uint8, :data:`IGNORE` for ``ignore``) or one FinetuneDataError line."""
    values = np.unique(mask)
    if mask.dtype.kind == "f" and not np.all(values == np.round(values)):
        raise FinetuneDataError(f"{path}: mask has non-integer values {values[:8].tolist()}")
    values = values.astype(np.int64)
    allowed = set(class_map) if class_map is not None else set(range(n_classes))
    if ignore is not None:
        allowed.add(ignore)
    bad = [int(v) for v in values if int(v) not in allowed]
    if bad:
        found = ", ".join(str(int(v)) for v in values[:12]) + (" …" if values.size > 12 else "")
        hint = (
            f"--class-map maps {sorted(class_map)}"
            if class_map is not None
            else f"values must be class ids 0..{n_classes - 1}; use --class-map VALUE=CLASS,…"
        )
        raise FinetuneDataError(
            f"{path}: mask values {{{found}}}; {bad[:6]} not mapped ({hint}"
            f"{'' if ignore is not None else ' and --ignore VALUE for unlabelled pixels'})"
        )
    lut = np.full(int(values.max()) + 1 if values.size else 1, IGNORE, np.uint8)
    for v in values:
        if ignore is not None and int(v) == ignore:
            continue
        lut[int(v)] = class_map[int(v)] if class_map is not None else int(v)
    return lut[mask.astype(np.int64)]


def _pairs(data: Path) -> list[tuple[Path, Path | None]]:
    """(image, mask) pairs; HDF5 files come with mask None."""
    files = sorted(p for p in data.iterdir() if p.is_file())
    out: list[tuple[Path, Path | None]] = [(p, None) for p in files if p.suffix.lower() in (".h5", ".hdf5")]
    masks = {}
    for p in files:
        stem, ext = p.stem, p.suffix.lower()
        if ext in IMAGE_EXTS and stem.lower().endswith("_mask"):
            masks[stem[: -len("_mask")]] = p
    for p in files:
        stem, ext = p.stem, p.suffix.lower()
        if ext in IMAGE_EXTS and stem.lower().endswith("_image"):
            base = stem[: -len("_image")]
            if base not in masks:
                raise FinetuneDataError(f"{p}: no matching {base}_mask.(tif|png)")
            out.append((p, masks[base]))
    for sub in ("images", "image"):
        idir = data / sub
        if not idir.is_dir():
            continue
        mdir = next((data / m for m in ("masks", "labels", "mask") if (data / m).is_dir()), None)
        if mdir is None:
            raise FinetuneDataError(f"{idir}: no masks/ (or labels/) directory next to it")
        mfiles = {p.stem: p for p in mdir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
        for p in sorted(idir.iterdir()):
            if p.suffix.lower() not in IMAGE_EXTS:
                continue
            if p.stem not in mfiles:
                raise FinetuneDataError(f"{p}: no mask {mdir.name}/{p.stem}.*")
            out.append((p, mfiles[p.stem]))
    return out


def load_labelled(
    data: Path,
    n_classes: int,
    class_map: dict[int, int] | None = None,
    ignore: int | None = None,
    min_side: int = 32,
) -> list[LabelledSlice]:
    """Every labelled slice under ``data`` (whole, any size), normalised like the pipeline."""
    if not data.is_dir():
        raise FinetuneDataError(f"{data}: not a directory")
    out: list[LabelledSlice] = []
    for ip, mp in _pairs(data):
        if mp is None:
            import h5py

            with h5py.File(ip, "r") as f:
                if "image" not in f or "mask" not in f:
                    raise FinetuneDataError(f"{ip}: needs datasets 'image' and 'mask'")
                im, mk = f["image"][()], f["mask"][()]
            mname = f"{ip}:/mask"
        else:
            im, mk = _grey(_read(ip), ip), _mask_2d(_read(mp), mp)
            mname = str(mp)
        im, mk = (im[None] if im.ndim == 2 else im), (mk[None] if mk.ndim == 2 else mk)
        if im.shape != mk.shape:
            raise FinetuneDataError(
                f"{mname}: mask shape {mk.shape[1:]} differs from image {ip.name} {im.shape[1:]}"
            )
        if min(im.shape[1:]) < min_side:
            raise FinetuneDataError(f"{ip}: slices must be at least {min_side} px a side, got {im.shape[1:]}")
        mapped = map_mask(mk, mname, n_classes, class_map, ignore)
        for i in range(im.shape[0]):
            if not np.any(mapped[i] != IGNORE):
                continue  # nothing labelled on this slice
            src = f"{ip.name}" + (f":{i}" if im.shape[0] > 1 else "")
            out.append(LabelledSlice(normalise_slice(im[i]), np.ascontiguousarray(mapped[i]), src))
    if not out:
        raise FinetuneDataError(
            f"{data}: no labelled image/mask pairs (NAME_image.tif|png + NAME_mask.tif|png, images/ + "
            "masks/, or HDF5 with image and mask; see docs/segmentation.md)"
        )
    return out


def data_digest(data: Path) -> tuple[str, list[dict[str, object]]]:
    """sha256 over the data files, and per file name, size and sha256 (provenance)."""
    files = []
    h = hashlib.sha256()
    for p in sorted(q for q in data.rglob("*") if q.is_file()):
        d = hashlib.sha256(p.read_bytes()).hexdigest()
        h.update(f"{p.relative_to(data)}\0{d}\n".encode())
        files.append({"file": str(p.relative_to(data)), "bytes": p.stat().st_size, "sha256": d})
    return h.hexdigest(), files
