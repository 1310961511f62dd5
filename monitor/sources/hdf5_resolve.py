"""Read frames that bluesky documents point at in HDF5 files that may still be growing.

``AD_HDF5`` (classic areaDetector HDF5 plugin, resource/datum) and ``stream_resource`` /
``stream_datum`` (ophyd-async) both name rows of a ``(n, y, x)`` dataset. The writer may not
have flushed those rows yet when the document arrives, so :meth:`Hdf5Frames.read_rows` retries
(SWMR refresh, then reopen) until the rows exist or ``timeout_s`` passes. Blocking: call it
from a worker thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from monitor.errors import FrameRejected

log = logging.getLogger("monitor.sources.hdf5")

AD_HDF5_DATASET = "/entry/data/data"
_OPEN_ATTEMPTS: tuple[dict[str, bool], ...] = (
    {"swmr": True},
    {"swmr": True, "locking": False},
    {},
    {"locking": False},
)


def map_root(path: str, root_map: Mapping[str, str]) -> str:
    """Rewrite the writer's path prefix into this host's mount point (longest match wins)."""
    for src in sorted(root_map, key=len, reverse=True):
        if path == src or path.startswith(src.rstrip("/") + "/"):
            return root_map[src] + path[len(src) :]
    return path


def ad_hdf5_location(
    root: str, resource_path: str, resource_kwargs: Mapping[str, object], datum_kwargs: Mapping[str, object]
) -> tuple[str, int, int]:
    """``AD_HDF5`` resource + datum → (file path, first row, row count)."""
    point = datum_kwargs.get("point_number")
    fpp = resource_kwargs.get("frame_per_point", 1)
    if isinstance(point, bool) or not isinstance(point, int | np.integer) or point < 0:
        raise FrameRejected("bad_datum", f"AD_HDF5 datum needs a non-negative point_number, got {point!r}")
    if isinstance(fpp, bool) or not isinstance(fpp, int | np.integer) or fpp < 1:
        raise FrameRejected("bad_datum", f"AD_HDF5 frame_per_point must be >= 1, got {fpp!r}")
    path = str(Path(root) / resource_path) if root else resource_path
    return path, int(point) * int(fpp), int(fpp)


class Hdf5Frames:
    """Keeps the last file open between reads (events of one run hit the same file)."""

    def __init__(self, timeout_s: float, poll_s: float = 0.02, max_bytes: int = 1 << 30) -> None:
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.max_bytes = max_bytes
        self.retries = 0
        self._path = ""
        self._file: h5py.File | None = None

    def _open(self, path: str) -> h5py.File:
        if self._file is not None and self._path == path:
            return self._file
        self.close()
        # SWMR read of a file written in SWMR mode, else a plain read (the writer flushes per
        # frame); without file locking when the writer holds a lock (areaDetector without SWMR).
        error: OSError | None = None
        for kwargs in _OPEN_ATTEMPTS:
            try:
                f = h5py.File(path, "r", **kwargs)
            except FileNotFoundError:
                raise
            except OSError as exc:
                error = exc
                continue
            self._file, self._path = f, path
            return f
        assert error is not None
        raise error

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:  # a file that vanished underneath us
                log.debug("closing %s: %s", self._path, exc)
            self._file, self._path = None, ""

    def read_rows(self, path: str, dataset: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as a ``(stop - start, y, x)`` array; retries while the file grows."""
        deadline = time.monotonic() + self.timeout_s
        reason, detail = "hdf5_timeout", "no attempt made"
        while True:
            try:
                f = self._open(path)
                node = f.get(dataset)
                if not isinstance(node, h5py.Dataset):
                    reason, detail = "hdf5_missing", f"no dataset {dataset} in {path} (yet)"
                    self.close()  # a writer in non-SWMR mode: reopen to see new objects
                else:
                    if f.swmr_mode:
                        node.refresh()
                    if node.ndim != 3:
                        raise FrameRejected(
                            "bad_external", f"{path}:{dataset} has shape {node.shape}, expected (n, y, x)"
                        )
                    nbytes = (stop - start) * node.shape[1] * node.shape[2] * node.dtype.itemsize
                    if nbytes > self.max_bytes:
                        raise FrameRejected(
                            "oversize", f"rows [{start}, {stop}) of {path} are {nbytes} bytes"
                        )
                    if node.dtype.kind not in "biuf":
                        raise FrameRejected("bad_external", f"{path}:{dataset} has dtype {node.dtype}")
                    if node.shape[0] >= stop:
                        return np.asarray(node[start:stop])
                    reason = "hdf5_timeout"
                    detail = f"{path}:{dataset} has {node.shape[0]} rows, waiting for rows [{start}, {stop})"
                    if not f.swmr_mode:
                        self.close()
            except FileNotFoundError:
                reason, detail = "hdf5_missing", f"file {path} does not exist (yet)"
            except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
                reason, detail = "hdf5_error", f"{path}:{dataset}: {type(exc).__name__}: {exc}"
                self.close()
            if time.monotonic() >= deadline:
                raise FrameRejected(reason, f"{detail} (gave up after {self.timeout_s:g} s)")
            self.retries += 1
            time.sleep(self.poll_s)
