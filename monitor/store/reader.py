"""Reading a run file: while its writer is running, after it closed, or after it was killed.

The file is opened with ``swmr=True``, which works in all three cases once the writer has
switched on SWMR. Every read refreshes the dataset first and stops at the row counts in
``/entry/committed`` (the rows of the writer's last ``flush``). A file whose writer died
before SWMR started is opened from a temporary copy with the superblock flags cleared
(see :mod:`monitor.store.recovery`); :attr:`RunReader.recovered` then says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

import h5py
import numpy as np

from monitor.alerts.model import Alarm, AlarmEvent, AlarmState, FrameRef, Severity
from monitor.errors import StoreError
from monitor.frames import ArraySpec, Disposition, ResultSchema, Status
from monitor.store import layout as L
from monitor.store.recovery import cleared_copy, status_flags
from monitor.telemetry import TelemetrySnapshot


@dataclass(frozen=True, slots=True)
class RunAttrs:
    """The run-level attributes of ``/entry``."""

    run: str
    config_toml: str
    versions: Mapping[str, str]
    sources: tuple[str, ...]
    t_start: float
    format_version: int


class RunReader:
    """Typed access to one run file; use as a context manager."""

    def __init__(self, path: Path | str, *, committed_only: bool = True, recover: bool = True) -> None:
        self.path = Path(path)
        self._committed_only = committed_only
        self._tmp: Path | None = None
        if not self.path.is_file():
            raise StoreError(f"run file {self.path} does not exist")
        self._f = self._open(recover)
        self.recovered = self._tmp is not None
        self._swmr = not self.recovered
        try:
            self._entry = self._f[L.ENTRY]
        except KeyError as exc:
            self.close()
            raise StoreError(f"{self.path} is not a run file (no /{L.ENTRY})") from exc
        self._closed = False

    def _open(self, recover: bool) -> h5py.File:
        try:
            return h5py.File(self.path, "r", swmr=True, locking="best-effort")
        except BlockingIOError as exc:
            raise StoreError(f"{self.path} is locked by a writer that has not started SWMR yet") from exc
        except OSError as exc:
            first = exc
        # The writer died before SWMR started: the write-access flag is set, SWMR's is not.
        try:
            stuck = recover and status_flags(self.path) != 0
        except StoreError as exc:
            raise StoreError(f"cannot open run file {self.path}: {first} ({exc})") from first
        if not stuck:
            raise StoreError(f"cannot open run file {self.path}: {first}") from first
        self._tmp = cleared_copy(self.path)
        try:
            return h5py.File(self._tmp, "r", locking="best-effort")
        except OSError as exc:
            self._drop_tmp()
            raise StoreError(f"cannot open run file {self.path} even with cleared flags: {exc}") from exc

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self._f.close()
        self._drop_tmp()

    def _drop_tmp(self) -> None:
        if self._tmp is not None:
            os.unlink(self._tmp)
            self._tmp = None

    def __enter__(self) -> RunReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- structure -------------------------------------------------------------------------

    @property
    def attrs(self) -> RunAttrs:
        a = self._entry.attrs
        return RunAttrs(
            run=str(a["run"]),
            config_toml=str(a["config_toml"]),
            versions=MappingProxyType(json.loads(a["versions"])),
            sources=tuple(json.loads(a.get("sources", "[]"))),
            t_start=float(a["t_start"]),
            format_version=int(a["format_version"]),
        )

    def pipelines(self) -> list[str]:
        return sorted(k for k, v in self._entry.items() if isinstance(v, h5py.Group) and k not in L.RESERVED)

    def schema(self, pipeline: str) -> ResultSchema:
        group = self._group(pipeline)
        arrays = tuple(
            ArraySpec(name=a["name"], shape=tuple(a["shape"]), dtype=a["dtype"])
            for a in json.loads(group.attrs["arrays"])
        )
        return ResultSchema(scalars=tuple(json.loads(group.attrs["scalars"])), arrays=arrays)

    def rows(self) -> dict[str, int]:
        """Readable rows per table (``frames``, ``alarms``, ``telemetry`` and each pipeline)."""
        names = ["frames", "alarms", "telemetry", *self.pipelines()]
        return {n: self._count(n, self._table(n)) for n in names}

    def _group(self, pipeline: str) -> h5py.Group:
        if pipeline not in self.pipelines():
            raise StoreError(f"{self.path} has no pipeline {pipeline!r} (has {self.pipelines()})")
        return self._entry[pipeline]

    def _table(self, key: str) -> h5py.Dataset:
        return self._entry[key] if key in L.RESERVED else self._group(key)[L.RESULTS]

    def _count(self, key: str, ds: h5py.Dataset) -> int:
        if self._swmr:
            ds.refresh()
        n = ds.shape[0]
        if not self._committed_only or L.COMMITTED not in self._entry:
            return n
        committed = self._entry[L.COMMITTED]
        if self._swmr:
            committed.refresh()
        tables = json.loads(committed.attrs["tables"])
        return min(n, int(committed[tables.index(key)])) if key in tables else n

    def _read(self, key: str, ds: h5py.Dataset, start: int, stop: int | None) -> np.ndarray:
        n = self._count(key, ds)
        lo, hi, _ = slice(start, stop).indices(n)
        return ds[lo:hi] if hi > lo else np.zeros((0, *ds.shape[1:]), dtype=ds.dtype)

    # -- tables ----------------------------------------------------------------------------

    def frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Disposition rows as a structured array of :data:`layout.FRAMES_DTYPE`."""
        return self._read(L.FRAMES, self._entry[L.FRAMES], start, stop)

    def dispositions(self, start: int = 0, stop: int | None = None) -> list[Disposition]:
        d = L.decode_str
        return [
            Disposition(
                seq=int(r["seq"]),
                source=d(r["source"]),
                stream=d(r["stream"]),
                series=d(r["series"]),
                index=int(r["index"]),
                pipeline=d(r["pipeline"]),
                status=Status(int(r["status"])),
                reason=d(r["reason"]),
                t_detector=float(r["t_detector"]),
                t_received=float(r["t_received"]),
                t_done=float(r["t_done"]),
            )
            for r in self.frames(start, stop)
        ]

    def results(self, pipeline: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The pipeline's result rows: fixed columns, then one float64 column per scalar."""
        return self._read(pipeline, self._table(pipeline), start, stop)

    def array(self, pipeline: str, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows of one per-frame array, aligned 1:1 with :meth:`results`."""
        group = self._group(pipeline)
        if name == L.RESULTS or name not in group:
            raise StoreError(f"pipeline {pipeline!r} has no array {name!r}")
        n = self._count(pipeline, group[L.RESULTS])
        ds = group[name]
        if self._swmr:
            ds.refresh()
        lo, hi, _ = slice(start, stop).indices(min(n, ds.shape[0]))
        return ds[lo:hi] if hi > lo else np.zeros((0, *ds.shape[1:]), dtype=ds.dtype)

    def alarm_rows(self) -> np.ndarray:
        return self._read(L.ALARMS, self._entry[L.ALARMS], 0, None)

    def alarms(self) -> list[AlarmEvent]:
        d = L.decode_str
        out: list[AlarmEvent] = []
        for r in self.alarm_rows():
            ref = FrameRef(
                source=d(r["frame_source"]),
                stream=d(r["frame_stream"]),
                series=d(r["frame_series"]),
                index=int(r["index"]),
                seq=int(r["seq"]),
            )
            no_frame = ref == FrameRef("", "", "", -1, -1)
            try:
                severity, state = Severity(int(r["severity"])), AlarmState(d(r["state"]))
            except ValueError as exc:
                raise StoreError(f"bad alarm row in {self.path}: {exc}") from exc
            alarm = Alarm(
                id=d(r["id"]),
                rule=d(r["rule"]),
                severity=severity,
                state=state,
                message=d(r["message"]),
                value=float(r["value"]),
                threshold=float(r["threshold"]),
                frame=None if no_frame else ref,
                t_raised=float(r["t_raised"]),
                t_changed=float(r["t_changed"]),
                latched=bool(r["latched"]),
                acked_by=d(r["acked_by"]),
            )
            out.append(AlarmEvent(t=float(r["t"]), transition=d(r["transition"]), alarm=alarm))
        return out

    def telemetry_rows(self) -> np.ndarray:
        return self._read(L.TELEMETRY, self._entry[L.TELEMETRY], 0, None)

    def telemetry(self) -> list[TelemetrySnapshot]:
        ints = {"received", "processed", "skipped", "rejected", "failed", "queue_depth", "upstream_gaps"}
        out: list[TelemetrySnapshot] = []
        for r in self.telemetry_rows():
            fields: dict[str, Any] = {  # int or float, as the snapshot's field is
                n: (int(r[n]) if n in ints else float(r[n]))
                for n in L.field_names(L.TELEMETRY_DTYPE)
                if n != "by_reason"
            }
            rejected, skipped = L.decode_by_reason(bytes(r["by_reason"]))
            out.append(TelemetrySnapshot(**fields, rejected_by_reason=rejected, skipped_by_reason=skipped))
        return out

    # -- accounting ------------------------------------------------------------------------

    def status_counts(self, pipeline: str | None = None) -> dict[str, int]:
        """Disposition rows per status name (every status listed, zeros included)."""
        rows = self.frames()
        if pipeline is not None:
            rows = rows[rows["pipeline"] == L.encode_str(pipeline, 64)]
        counts = np.bincount(rows["status"].astype(np.int64), minlength=len(Status))
        return {s.name: int(counts[int(s)]) for s in Status}

    def accounted_seqs(self) -> set[int]:
        """Every ``seq`` with at least one disposition row."""
        return {int(s) for s in np.unique(self.frames()["seq"])}
