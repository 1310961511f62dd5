"""Per-frame file resource specs of ophyd / areaDetector: ``AD_TIFF`` and ``NPY_SEQ``.

Beside ``AD_HDF5`` (see :mod:`monitor.sources.hdf5_resolve`), bluesky runs name images in
one-file-per-frame resources. The paths follow the handlers that databroker uses:

- ``AD_TIFF`` (bluesky/area-detector-handlers ``AreaDetectorTiffHandler``): resource
  ``resource_path`` is a directory, ``resource_kwargs`` = ``template`` (C printf, e.g.
  ``%s%s_%6.6d.tiff``), ``filename``, ``frame_per_point``; datum ``point_number``; the files are
  ``template % (dir + "/", filename, j)`` for ``j`` in ``[point * fpp, (point + 1) * fpp)``.
- ``NPY_SEQ`` (ophyd.sim ``NumpySeqHandler``, written by ``SynSignalWithRegistry`` such as
  ``ophyd.sim.img``): ``root`` + ``resource_path`` is a file stem; datum ``index``; the file is
  ``f"{stem}_{index}.npy"``, loaded with ``allow_pickle=False``.

Any other spec is refused by :func:`check_spec` with a reason naming it. Reading is blocking
and retries while a file is missing or still being written (call it from a worker thread).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import numpy as np

from monitor.errors import FrameRejected

HDF5_SPECS = frozenset({"AD_HDF5", "AD_HDF5_SWMR"})
FILE_SPECS = frozenset({"AD_TIFF", "NPY_SEQ"})
SUPPORTED_SPECS = HDF5_SPECS | FILE_SPECS


def check_spec(spec: str) -> None:
    if spec not in SUPPORTED_SPECS:
        raise FrameRejected(
            "unsupported_spec",
            f"resource spec {spec[:40]!r} is not supported (supported: "
            f"{', '.join(sorted(SUPPORTED_SPECS))}); AD_CBF, AD_SPE and detector-specific specs need "
            "their own handler",
        )


def _nonneg_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise FrameRejected("bad_datum", f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


def file_spec_paths(
    spec: str,
    root: str,
    resource_path: str,
    resource_kwargs: Mapping[str, object],
    datum_kwargs: Mapping[str, object],
) -> tuple[str, ...]:
    """The files holding one datum's frames, in order."""
    base = os.path.join(root, resource_path) if root else resource_path
    if spec == "NPY_SEQ":
        index = _nonneg_int(datum_kwargs.get("index"), "NPY_SEQ datum 'index'")
        return (f"{base}_{index}.npy",)
    if spec == "AD_TIFF":
        point = _nonneg_int(datum_kwargs.get("point_number"), "AD_TIFF datum 'point_number'")
        fpp = resource_kwargs.get("frame_per_point", 1)
        per_point = _nonneg_int(fpp, "AD_TIFF 'frame_per_point'")
        if per_point < 1 or per_point > 10_000:
            raise FrameRejected("bad_datum", f"AD_TIFF frame_per_point must be 1..10000, got {fpp!r}")
        template, filename = resource_kwargs.get("template"), resource_kwargs.get("filename")
        if not isinstance(template, str) or not isinstance(filename, str):
            raise FrameRejected("bad_datum", "AD_TIFF resource needs string 'template' and 'filename'")
        directory = os.path.join(base, "")
        try:
            return tuple(
                template % (directory, filename, j) for j in range(point * per_point, (point + 1) * per_point)
            )
        except (TypeError, ValueError) as exc:
            raise FrameRejected("bad_datum", f"AD_TIFF template {template[:40]!r}: {exc}") from None
    check_spec(spec)
    raise FrameRejected("unsupported_spec", f"{spec} is not a per-frame file spec")


def _load(path: str, spec: str) -> np.ndarray:
    if spec == "NPY_SEQ":
        return np.load(path, allow_pickle=False)
    import tifffile

    return tifffile.imread(path)


def read_file_frames(paths: tuple[str, ...], spec: str, *, timeout_s: float, max_bytes: int) -> np.ndarray:
    """Load the files as a ``(n, y, x)`` array; retry while a file is missing or incomplete."""
    frames = []
    for path in paths:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                array = np.asarray(_load(path, spec))
                break
            except (OSError, ValueError, EOFError) as exc:  # missing, or still being written
                if time.monotonic() >= deadline:
                    raise FrameRejected(
                        "file_timeout", f"{spec} file {path} unreadable after {timeout_s} s: {exc}"
                    ) from None
                time.sleep(0.02)
        while array.ndim > 2 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 2 or array.dtype.kind not in "biuf":
            raise FrameRejected("bad_external", f"{path}: {array.dtype} {array.shape} is not a 2-D image")
        if array.nbytes > max_bytes:
            raise FrameRejected("oversize", f"{path}: {array.nbytes} bytes exceeds max_frame_bytes")
        frames.append(array)
    return np.stack(frames)
