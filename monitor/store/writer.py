"""The run-file writer: one HDF5 file per run, every dataset created up front, then SWMR.

:class:`RunStore` is synchronous and not thread-safe: the daemon owns one writer thread
that calls it. Appends are batched (one resize and one write per table per call).

Durability contract: rows become visible to readers (live or after a crash) at the next
:meth:`RunStore.flush`. ``flush`` flushes the data, then records each table's row count in
``/entry/committed`` and flushes again; readers never read past those counts, so a crash
between two flushes cannot expose half-written or fill-value rows.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from monitor.alerts.model import AlarmEvent
from monitor.config import StoreSettings
from monitor.errors import InvalidResult, StoreError
from monitor.frames import Disposition, Result, ResultSchema
from monitor.store import layout as L
from monitor.store.nexus import add_nexus_logged
from monitor.telemetry import TelemetrySnapshot


class RunStore:
    """Creates ``path`` and appends dispositions, results, alarm events and telemetry to it."""

    def __init__(
        self,
        path: Path,
        settings: StoreSettings,
        schemas: Mapping[str, ResultSchema],
        config_toml: str,
        versions: Mapping[str, str],
        sources: Sequence[str],
        *,
        run: str | None = None,
        t_start: float | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self._schemas = dict(schemas)
        for name in self._schemas:
            L.check_pipeline_name(name)
        self._result_dtypes = {name: L.results_dtype(name, s) for name, s in self._schemas.items()}
        compression = L.compression_kwargs(settings.compression)
        if settings.chunk_rows < 1:
            raise StoreError(f"store.chunk_rows must be >= 1, got {settings.chunk_rows}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = h5py.File(self.path, "w" if overwrite else "w-", libver=L.LIBVER)
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot create run file {self.path}: {exc}") from exc
        self._closed = False
        try:
            self._tables: dict[str, h5py.Dataset] = {}
            self._arrays: dict[str, dict[str, h5py.Dataset]] = {}
            self._create(settings, compression, config_toml, versions, sources, run, t_start)
            self._f.swmr_mode = True
        except (OSError, ValueError, TypeError) as exc:
            self._abandon()
            raise StoreError(f"cannot lay out run file {self.path}: {exc}") from exc
        except BaseException:
            self._abandon()
            raise
        self._rows = dict.fromkeys(self._tables, 0)

    def _abandon(self) -> None:
        """Creation failed: close and remove the half-made file so a retry can create it."""
        self._closed = True
        self._f.close()
        self.path.unlink(missing_ok=True)

    # -- creation (before SWMR) ---------------------------------------------------------

    def _create(
        self,
        settings: StoreSettings,
        compression: dict[str, Any],
        config_toml: str,
        versions: Mapping[str, str],
        sources: Sequence[str],
        run: str | None,
        t_start: float | None,
    ) -> None:
        entry = self._f.create_group(L.ENTRY)
        entry.attrs["run"] = run if run is not None else self.path.stem
        entry.attrs["config_toml"] = config_toml
        entry.attrs["versions"] = json.dumps(dict(versions), sort_keys=True)
        entry.attrs["sources"] = json.dumps(list(sources))
        entry.attrs["t_start"] = float(time.time() if t_start is None else t_start)
        entry.attrs["format_version"] = L.FORMAT_VERSION

        rows = settings.chunk_rows
        frames = self._table(entry, L.FRAMES, L.FRAMES_DTYPE, rows)
        frames.attrs["status_names"] = json.dumps(L.STATUS_NAMES)
        alarms = self._table(entry, L.ALARMS, L.ALARMS_DTYPE, rows)
        alarms.attrs["severity_names"] = json.dumps(L.SEVERITY_NAMES)
        self._table(entry, L.TELEMETRY, L.TELEMETRY_DTYPE, rows)

        for name, schema in self._schemas.items():
            group = entry.create_group(name)
            group.attrs["scalars"] = json.dumps(list(schema.scalars))
            group.attrs["arrays"] = json.dumps(
                [
                    {"name": a.name, "shape": list(a.shape), "dtype": np.dtype(a.dtype).str}
                    for a in schema.arrays
                ]
            )
            self._table(group, L.RESULTS, self._result_dtypes[name], rows, key=name)
            self._arrays[name] = {}
            for spec in schema.arrays:
                shape = tuple(int(n) for n in spec.shape)
                self._arrays[name][spec.name] = group.create_dataset(
                    spec.name,
                    shape=(0, *shape),
                    maxshape=(None, *shape),
                    chunks=(1, *shape) if shape else (rows,),
                    dtype=np.dtype(spec.dtype),
                    **compression,
                )

        names = list(self._tables)
        committed = entry.create_dataset(L.COMMITTED, data=np.zeros(len(names), dtype="<i8"))
        committed.attrs["tables"] = json.dumps(names)
        self._committed = committed

    def _table(self, group: h5py.Group, name: str, dtype: np.dtype, rows: int, key: str = "") -> h5py.Dataset:
        ds = group.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(rows,), dtype=dtype)
        self._tables[key or name] = ds
        return ds

    # -- appends -----------------------------------------------------------------------

    def write_dispositions(self, rows: Sequence[Disposition]) -> None:
        if not rows:
            return
        dt = L.FRAMES_DTYPE
        out = np.zeros(len(rows), dtype=dt)
        out["seq"] = [r.seq for r in rows]
        out["index"] = [r.index for r in rows]
        out["status"] = [int(r.status) for r in rows]
        for col in ("t_detector", "t_received", "t_done"):
            out[col] = [getattr(r, col) for r in rows]
        for col in ("source", "stream", "series", "pipeline", "reason"):
            out[col] = L.encode_column([getattr(r, col) for r in rows], dt, col)
        self._append(L.FRAMES, out)

    def write_results(self, pipeline: str, results: Sequence[Result]) -> None:
        """Append the results of one pipeline (rows align 1:1 with its array datasets).

        A scalar missing from a result is stored as NaN and a missing array as the dataset's
        fill value (zeros); an unknown scalar, a wrong pipeline or a wrongly shaped array is
        an :class:`InvalidResult` and nothing of the batch is written.
        """
        if pipeline not in self._schemas:
            raise InvalidResult(f"pipeline {pipeline!r} has no schema in this run file")
        if not results:
            return
        schema = self._schemas[pipeline]
        known = set(schema.scalars)
        for r in results:
            if r.pipeline != pipeline:
                raise InvalidResult(f"result of pipeline {r.pipeline!r} written to {pipeline!r}")
            unknown = set(r.scalars) - known
            if unknown:
                raise InvalidResult(f"pipeline {pipeline!r}: scalars {sorted(unknown)} not in its schema")
        stacks = {spec.name: self._stack(pipeline, spec.name, results) for spec in schema.arrays}

        out = np.zeros(len(results), dtype=self._result_dtypes[pipeline])
        out["seq"] = [r.frame.seq for r in results]
        out["index"] = [r.frame.index for r in results]
        out["t_received"] = [r.frame.t_received for r in results]
        out["latency_compute"] = [r.latency.compute for r in results]
        out["latency_queued"] = [r.latency.queued for r in results]
        out["t_done"] = out["t_received"] + out["latency_queued"] + out["latency_compute"]
        out["batch_size"] = [r.latency.batch_size for r in results]
        nan, none = math.nan, -1
        metas = [r.frame.meta for r in results]
        out["meta_energy_eV"] = [nan if m.energy_eV is None else m.energy_eV for m in metas]
        out["meta_slice_z"] = [nan if m.slice_z is None else m.slice_z for m in metas]
        out["meta_current_mA"] = [nan if m.current_mA is None else m.current_mA for m in metas]
        out["meta_cycle"] = [none if m.cycle is None else m.cycle for m in metas]
        out["meta_step"] = [none if m.step is None else m.step for m in metas]
        out["meta_extra"] = [L.meta_extra_json(m.extra) if m.extra else b"" for m in metas]
        for name in schema.scalars:
            out[name] = [float(r.scalars.get(name, math.nan)) for r in results]

        start = self._rows[pipeline]
        self._append(pipeline, out)
        for name, stack in stacks.items():
            ds = self._arrays[pipeline][name]
            try:
                ds.resize(start + len(results), axis=0)
                ds[start : start + len(results)] = stack
            except (OSError, ValueError, TypeError) as exc:
                raise StoreError(f"cannot append to /entry/{pipeline}/{name}: {exc}") from exc

    def _stack(self, pipeline: str, name: str, results: Sequence[Result]) -> np.ndarray:
        ds = self._arrays[pipeline][name]
        shape, dtype = ds.shape[1:], ds.dtype
        stack = np.zeros((len(results), *shape), dtype=dtype)
        for i, r in enumerate(results):
            arr = r.arrays.get(name)
            if arr is None:
                continue
            arr = np.asarray(arr)
            if arr.shape != shape:
                raise InvalidResult(
                    f"pipeline {pipeline!r}: array {name!r} has shape {arr.shape}, schema says {shape}"
                )
            stack[i] = arr
        return stack

    def write_alarm_events(self, events: Sequence[AlarmEvent]) -> None:
        if not events:
            return
        dt = L.ALARMS_DTYPE
        alarms = [e.alarm for e in events]
        refs = [a.frame for a in alarms]
        out = np.zeros(len(events), dtype=dt)
        out["t"] = [e.t for e in events]
        out["severity"] = [int(a.severity) for a in alarms]
        for col in ("value", "threshold", "t_raised", "t_changed"):
            out[col] = [getattr(a, col) for a in alarms]
        out["latched"] = [a.latched for a in alarms]
        out["index"] = [-1 if f is None else f.index for f in refs]
        out["seq"] = [-1 if f is None else f.seq for f in refs]
        columns: dict[str, list[str]] = {
            "transition": [e.transition for e in events],
            "id": [a.id for a in alarms],
            "rule": [a.rule for a in alarms],
            "state": [a.state.value for a in alarms],
            "message": [a.message for a in alarms],
            "acked_by": [a.acked_by for a in alarms],
            "frame_source": ["" if f is None else f.source for f in refs],
            "frame_stream": ["" if f is None else f.stream for f in refs],
            "frame_series": ["" if f is None else f.series for f in refs],
        }
        for col, values in columns.items():
            out[col] = L.encode_column(values, dt, col)
        self._append(L.ALARMS, out)

    def write_telemetry(self, snaps: Sequence[TelemetrySnapshot]) -> None:
        if not snaps:
            return
        out = np.zeros(len(snaps), dtype=L.TELEMETRY_DTYPE)
        for col in L.field_names(L.TELEMETRY_DTYPE):
            if col != "by_reason":
                out[col] = [getattr(s, col) for s in snaps]
        size = L.field_size(L.TELEMETRY_DTYPE, "by_reason")
        out["by_reason"] = [
            L.encode_by_reason(s.rejected_by_reason, s.skipped_by_reason, size) for s in snaps
        ]
        self._append(L.TELEMETRY, out)

    def _append(self, key: str, rows: np.ndarray) -> None:
        self._check_open()
        ds = self._tables[key]
        start = self._rows[key]
        try:
            ds.resize((start + len(rows),))
            ds[start:] = rows
        except (OSError, ValueError, TypeError) as exc:
            raise StoreError(f"cannot append to {ds.name}: {exc}") from exc
        self._rows[key] = start + len(rows)

    # -- durability and lifetime ---------------------------------------------------------

    @property
    def rows(self) -> Mapping[str, int]:
        """Rows written so far per table (``frames``, ``alarms``, ``telemetry``, each pipeline)."""
        return dict(self._rows)

    @property
    def closed(self) -> bool:
        return self._closed

    def flush(self) -> None:
        """Make every row written so far durable and visible to readers."""
        self._check_open()
        try:
            self._f.flush()
            self._committed[:] = np.array(list(self._rows.values()), dtype="<i8")
            self._f.flush()
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot flush {self.path}: {exc}") from exc

    def close(self) -> None:
        """Flush and close; calling it again does nothing."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._f.close()
        add_nexus_logged(self.path)  # NeXus classes + NXdata (needs the file out of SWMR)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"run file {self.path} is closed")

    def __enter__(self) -> RunStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
