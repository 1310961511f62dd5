"""replay source: frames from an HDF5 dataset, a multi-page TIFF, or a directory of TIFFs.

Frames are read one at a time (never the whole dataset). :func:`iter_frames` and
:func:`count_frames` serve the offline ``replay`` command; :class:`ReplaySource` streams the
same frames into the daemon at ``rate_hz`` (0: as fast as ``emit`` accepts).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Protocol, TypeGuard

import h5py
import numpy as np
import tifffile

from monitor.aio import sleep_unless
from monitor.config import SourceSettings
from monitor.errors import SourceError
from monitor.frames import Frame, FrameMeta, Rejection, SeriesEvent
from monitor.logutil import RateLimitedLog
from monitor.sources.base import Emit

log = logging.getLogger("monitor.sources.replay")

try:  # registers the bitshuffle/LZ4/... HDF5 filters so compressed datasets can be read
    importlib.import_module("hdf5plugin")
except ImportError:  # pragma: no cover - listed in the dependencies; plain datasets still work
    log.warning("hdf5plugin is not installed: compressed HDF5 datasets cannot be replayed")

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".cxi")
TIFF_SUFFIXES = (".tif", ".tiff")
PREFERRED_DATASET = "/entry/data/data"
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, RuntimeError)
"""What a per-frame read can raise (h5py filter errors are OSError; tifffile's are ValueError)."""


class _Reader(Protocol):
    label: str

    def __len__(self) -> int: ...

    def read(self, i: int) -> np.ndarray: ...

    def name(self, i: int) -> str: ...

    def close(self) -> None: ...


def _as_2d(array: np.ndarray, what: str) -> np.ndarray:
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{what} is not a 2-D image (shape {array.shape})")
    return array


def natural_key(name: str) -> tuple[str | int, ...]:
    """Sort key that orders ``img2.tif`` before ``img10.tif``."""
    return tuple(int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name))


def _find_dataset(f: h5py.File) -> h5py.Dataset:
    def is_image(obj: object, min_ndim: int) -> TypeGuard[h5py.Dataset]:
        return isinstance(obj, h5py.Dataset) and obj.ndim >= min_ndim and obj.dtype.kind in "uifb"

    preferred = f.get(PREFERRED_DATASET)
    if is_image(preferred, 2):
        return preferred
    found: dict[int, h5py.Dataset] = {}

    def visit(_name: str, obj: object) -> None:
        if is_image(obj, 2):
            found.setdefault(3 if obj.ndim >= 3 else 2, obj)

    f.visititems(visit)
    if not found:
        raise SourceError(f"{f.filename}: no numeric dataset with 2 or more dimensions found")
    return found.get(3, found.get(2))


def _select_dataset(f: h5py.File, path: Path, dataset: str | None) -> h5py.Dataset:
    if dataset:
        ds = f.get(dataset)
        if not isinstance(ds, h5py.Dataset):
            what = "does not exist" if ds is None else "is not a dataset"
            raise SourceError(f"{path}: {dataset!r} {what}")
    else:
        ds = _find_dataset(f)
    if ds.ndim < 2 or ds.dtype.kind not in "uifb":
        raise SourceError(f"{path}:{ds.name} is not a numeric image dataset (shape {ds.shape}, {ds.dtype})")
    return ds


class _HDF5Reader:
    def __init__(self, path: Path, dataset: str | None) -> None:
        try:
            self._file = h5py.File(path, "r")
        except OSError as exc:
            raise SourceError(f"cannot open HDF5 file {path}: {exc}") from exc
        try:
            ds = _select_dataset(self._file, path, dataset)
        except (OSError, KeyError, RuntimeError) as exc:
            self._file.close()
            raise SourceError(f"cannot read HDF5 file {path}: {exc}") from exc
        except SourceError:
            self._file.close()
            raise
        self._ds = ds
        self._lead = ds.shape[:-2]
        self._count = math.prod(self._lead)
        self.label = f"{path}:{ds.name}"

    def __len__(self) -> int:
        return self._count

    def read(self, i: int) -> np.ndarray:
        return self._ds[np.unravel_index(i, self._lead) if self._lead else ()]

    def name(self, i: int) -> str:
        return ""

    def close(self) -> None:
        self._file.close()


class _TiffStackReader:
    def __init__(self, path: Path) -> None:
        try:
            self._tif = tifffile.TiffFile(path)
            series = self._tif.series
            self._pages = series[0].pages if series else self._tif.pages
        except (OSError, ValueError) as exc:  # TiffFileError is a ValueError
            raise SourceError(f"cannot read TIFF file {path}: {exc}") from exc
        self.label = str(path)

    def __len__(self) -> int:
        return len(self._pages)

    def read(self, i: int) -> np.ndarray:
        page = self._pages[i]
        if page is None:
            raise ValueError(f"page {i} is missing")
        return _as_2d(page.asarray(), f"page {i}")

    def name(self, i: int) -> str:
        return ""

    def close(self) -> None:
        self._tif.close()


class _TiffDirReader:
    def __init__(self, path: Path) -> None:
        try:
            files = [p for p in path.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and p.is_file()]
        except OSError as exc:
            raise SourceError(f"cannot list directory {path}: {exc}") from exc
        self._files = sorted(files, key=lambda p: natural_key(p.name))
        self.label = str(path)

    def __len__(self) -> int:
        return len(self._files)

    def read(self, i: int) -> np.ndarray:
        return _as_2d(tifffile.imread(self._files[i]), self._files[i].name)

    def name(self, i: int) -> str:
        return self._files[i].name

    def close(self) -> None:
        pass


def _open(path: str | Path, dataset: str | None = None) -> _Reader:
    p = Path(path)
    if not p.exists():
        raise SourceError(f"replay input {p} does not exist")
    reader: _Reader
    if p.is_dir():
        reader = _TiffDirReader(p)
    elif p.suffix.lower() in TIFF_SUFFIXES:
        reader = _TiffStackReader(p)
    elif p.suffix.lower() in HDF5_SUFFIXES or h5py.is_hdf5(p):
        reader = _HDF5Reader(p, dataset)
    else:
        raise SourceError(f"replay input {p}: not a directory, TIFF or HDF5 file")
    if len(reader) == 0:
        reader.close()
        raise SourceError(f"replay input {reader.label} contains no frames")
    return reader


GLOB_CHARS = ("*", "?", "[")


def is_series_glob(dataset: str | None) -> TypeGuard[str]:
    """A ``dataset`` with glob characters selects many series (one per matching dataset/group)."""
    return dataset is not None and any(c in dataset for c in GLOB_CHARS)


def series_datasets(path: str | Path, pattern: str) -> list[str]:
    """HDF5 datasets matching ``pattern`` (``fnmatch`` on the full path, e.g. ``/run*/data``), one
    series each; a matching *group* contributes its image dataset (``/entry/data/data`` if there,
    else the first one found). Natural order. Raises :class:`SourceError` if none match."""
    from fnmatch import fnmatchcase

    pat = pattern if pattern.startswith("/") else "/" + pattern
    found: list[str] = []
    try:
        with h5py.File(path, "r") as f:

            def visit(name: str, obj: object) -> None:
                full = "/" + name
                if not fnmatchcase(full, pat):
                    return
                if isinstance(obj, h5py.Dataset) and obj.ndim >= 2 and obj.dtype.kind in "uifb":
                    found.append(full)
                elif isinstance(obj, h5py.Group):
                    inner: list[str] = []
                    obj.visititems(
                        lambda n, o: (
                            inner.append(f"{full}/{n}")
                            if isinstance(o, h5py.Dataset) and o.ndim >= 2 and o.dtype.kind in "uifb"
                            else None
                        )
                    )
                    pref = f"{full}{PREFERRED_DATASET}"
                    if inner:
                        found.append(pref if pref in inner else inner[0])

            f.visititems(visit)
    except OSError as exc:
        raise SourceError(f"cannot read HDF5 file {path}: {exc}") from exc
    if not found:
        raise SourceError(f"{path}: no image dataset or group matches {pattern!r}")
    return sorted(dict.fromkeys(found), key=natural_key)


def count_frames(path: str | Path, dataset: str | None = None) -> int:
    """Number of frames :func:`iter_frames` yields (raises :class:`SourceError`); with a series
    glob, over every matching series."""
    if is_series_glob(dataset):
        return sum(count_frames(path, d) for d in series_datasets(path, dataset))
    reader = _open(path, dataset)
    try:
        return len(reader)
    finally:
        reader.close()


def iter_frames(path: str | Path, dataset: str | None = None) -> Iterator[np.ndarray]:
    """Yield the 2-D frames of ``path`` one at a time; a read error raises :class:`SourceError`."""
    reader = _open(path, dataset)
    try:
        for i in range(len(reader)):
            try:
                frame = _as_2d(np.asarray(reader.read(i)), f"frame {i}")
            except READ_ERRORS as exc:
                raise SourceError(f"{reader.label}: cannot read frame {i}: {exc}") from exc
            yield frame
    finally:
        reader.close()


def load_energies(path: str | Path, dataset: str | None, energies_file: str, count: int) -> np.ndarray | None:
    """Per-frame energies (eV) for a replay: from ``energies_file`` (text, one value per frame),
    else from the HDF5 dataset's ``energy_eV`` attribute; None when neither exists. A length
    other than ``count`` is a :class:`SourceError`."""
    if is_series_glob(dataset):  # several series: one energies list would not fit them all
        if energies_file:
            raise SourceError(f"energies file {energies_file}: not supported with a series glob ({dataset})")
        return None
    values: np.ndarray | None = None
    where = ""
    if energies_file:
        try:
            values = np.loadtxt(energies_file, dtype=np.float64, ndmin=1).ravel()
        except (OSError, ValueError) as exc:
            raise SourceError(f"cannot read energies file {energies_file}: {exc}") from exc
        where = energies_file
    else:
        p = Path(path)
        if p.is_file() and (p.suffix.lower() in HDF5_SUFFIXES or h5py.is_hdf5(p)):
            reader = _HDF5Reader(p, dataset)
            try:
                attr = reader._ds.attrs.get("energy_eV")
                if attr is not None:
                    values = np.asarray(attr, dtype=np.float64).ravel()
                    where = f"{reader.label} attribute energy_eV"
            finally:
                reader.close()
    if values is None:
        return None
    if values.size == 1 and count > 1:
        values = np.full(count, float(values[0]))
    if values.size != count:
        raise SourceError(f"{where}: {values.size} energies for {count} frames")
    if not np.all(np.isfinite(values)):
        raise SourceError(f"{where}: energies must be finite numbers")
    return values


class ReplaySource:
    """Replay recorded frames as a Source (series start/end around each pass)."""

    def __init__(self, settings: SourceSettings) -> None:
        if settings.kind != "replay":
            raise SourceError(
                f"source {settings.name!r}: ReplaySource needs kind 'replay', got {settings.kind!r}"
            )
        if not settings.path:
            raise SourceError(f"source {settings.name!r}: a path is required")
        if settings.rate_hz < 0 or not math.isfinite(settings.rate_hz):
            raise SourceError(f"source {settings.name!r}: rate_hz must be >= 0, got {settings.rate_hz}")
        self.name = settings.name
        self.settings = settings
        self.path = Path(settings.path)
        self.frames = 0
        self.rejected = 0
        self.passes = 0
        self.count = count_frames(self.path, settings.dataset or None)  # fail early: SourceError
        self.multi = series_datasets(self.path, settings.dataset) if is_series_glob(settings.dataset) else []
        """Datasets replayed one after the other, each its own series (``dataset`` is a glob)."""
        self.energies = (
            None  # several series: each dataset would need its own energies (not read for now)
            if self.multi
            else load_energies(self.path, settings.dataset or None, settings.energies, self.count)
        )
        self._rejections = RateLimitedLog(log, what="rejections")

    def upstream_gaps(self) -> int:
        return 0

    def series_id(self, n_pass: int) -> str:
        stem = self.path.name if self.path.is_dir() else self.path.stem
        return stem if n_pass == 0 else f"{stem}#{n_pass}"

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.settings.rate_hz if self.settings.rate_hz > 0 else 0.0
        t0 = loop.time()
        sent = 0  # frames scheduled since t0 (across passes: the schedule is absolute)
        try:
            while not stop.is_set():
                for dataset, series in self._series_plan():
                    if stop.is_set():
                        break
                    sent, t0 = await self._replay_one(emit, stop, dataset, series, sent, t0, period)
                self.passes += 1
                if not self.settings.loop:
                    break
        finally:
            self._rejections.flush(f"source {self.name!r}")
        log.info("source %r: replayed %d frames in %d passes", self.name, self.frames, self.passes)

    def _series_plan(self) -> list[tuple[str | None, str]]:
        """(dataset, series id) per series of this pass."""
        if not self.multi:
            return [(self.settings.dataset or None, self.series_id(self.passes))]
        suffix = "" if self.passes == 0 else f"#{self.passes}"
        return [(d, d.strip("/") + suffix) for d in self.multi]

    async def _replay_one(
        self,
        emit: Emit,
        stop: asyncio.Event,
        dataset: str | None,
        series: str,
        sent: int,
        t0: float,
        period: float,
    ) -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        reader = await asyncio.to_thread(_open, self.path, dataset)
        try:
            await emit(SeriesEvent(self.name, series, "start"))
            for i in range(len(reader)):
                if stop.is_set():
                    break
                if period:
                    delay = t0 + sent * period - loop.time()
                    if delay < -period:  # more than a frame late: rebase instead of bursting
                        t0 = loop.time() - sent * period
                    elif delay > 0 and await sleep_unless(stop, delay):
                        break
                sent += 1
                await emit(await self._read(reader, i, series))
            await emit(SeriesEvent(self.name, series, "end"))
        finally:
            reader.close()
        return sent, t0

    async def _read(self, reader: _Reader, i: int, series: str) -> Frame | Rejection:
        try:
            array = await asyncio.to_thread(lambda: _as_2d(np.asarray(reader.read(i)), f"frame {i}"))
        except READ_ERRORS as exc:
            self.rejected += 1
            detail = f"{reader.label}: cannot read frame {i}: {exc}"
            self._rejections.warn(
                "read_error", f"source {self.name!r}: rejected frame {i}: read_error: {detail}"
            )
            return Rejection(self.name, "read_error", detail, index=i)
        now = time.time()
        name = reader.name(i)
        energy = float(self.energies[i]) if self.energies is not None else None
        meta = FrameMeta(
            energy_eV=energy, extra=MappingProxyType({"file": name}) if name else MappingProxyType({})
        )
        self.frames += 1
        return Frame(
            stream=self.settings.stream,
            source=self.name,
            series=series,
            index=i,
            array=array,
            t_detector=now,
            t_received=now,
            meta=meta,
        )
