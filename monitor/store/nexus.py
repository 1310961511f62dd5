"""NeXus structure for run files, so generic viewers (NeXpy, silx, h5web) plot the results.

Applied when a run file is closed (the live file is SWMR, which allows no new objects): the
file is reopened and gets

- ``/`` ``NX_class = NXroot``, ``@default = "entry"``;
- ``/entry`` ``NX_class = NXentry``, ``title`` (run name), ``start_time`` (ISO 8601), and
  ``@default`` naming the first pipeline;
- ``/entry/<pipeline>`` ``NX_class = NXprocess`` with ``program``, ``version``, ``date``, and
  ``@default = "data"``;
- ``/entry/<pipeline>/data`` ``NX_class = NXdata``: one plain float64 dataset per result scalar
  (copied from the compound ``results`` table, which stays the monitor's own format),
  ``@signal`` = the pipeline's first scalar, ``@auxiliary_signals`` = the others,
  ``@axes = ["time"]`` with ``time`` in seconds since ``t_start`` and ``frame_index`` as an
  alternative axis (``@time_indices = @frame_index_indices = 0``).

No NeXus application definition fits monitoring results (they are not a measurement technique),
so ``definition`` is not written. Copying costs one read of each results table at close; nothing
is added per frame. Idempotent.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np

from monitor.store import layout as L

log = logging.getLogger("monitor.store.nexus")

NXDATA = "data"


def _set_text(group: h5py.Group, name: str, text: str) -> None:
    if name in group:
        del group[name]
    group.create_dataset(name, data=text, dtype=h5py.string_dtype())


def _nxdata_name(group: h5py.Group) -> str:
    """``data``, unless the pipeline has an array of that name (then ``nx_data``)."""
    existing = group.get(NXDATA)
    if existing is None or (isinstance(existing, h5py.Group) and existing.attrs.get("NX_class") == "NXdata"):
        return NXDATA
    return "nx_data"


def add_nexus(path: str | Path) -> list[str]:
    """Add the NeXus classes and one NXdata per pipeline to a closed run file; return the pipelines."""
    done: list[str] = []
    with h5py.File(path, "r+") as f:
        entry = f[L.ENTRY]
        f.attrs["NX_class"] = "NXroot"
        f.attrs["default"] = L.ENTRY
        entry.attrs["NX_class"] = "NXentry"
        t_start = float(entry.attrs.get("t_start", 0.0))
        _set_text(entry, "title", str(entry.attrs.get("run", "")))
        _set_text(entry, "start_time", datetime.fromtimestamp(t_start, UTC).isoformat())
        versions = json.loads(entry.attrs.get("versions", "{}"))
        counts = entry[L.COMMITTED]
        committed = dict(zip(json.loads(counts.attrs["tables"]), counts[()].tolist(), strict=False))
        for name in sorted(entry):
            group = entry[name]
            if not isinstance(group, h5py.Group) or name in L.RESERVED or L.RESULTS not in group:
                continue
            scalars = json.loads(group.attrs.get("scalars", "[]"))
            rows = int(committed.get(name, group[L.RESULTS].shape[0]))
            table = group[L.RESULTS][:rows]
            group.attrs["NX_class"] = "NXprocess"
            _set_text(group, "program", f"operando-monitor pipeline {name}")
            _set_text(group, "version", str(versions.get("operando-monitor", versions.get("monitor", ""))))
            _set_text(group, "date", datetime.fromtimestamp(t_start, UTC).isoformat())
            if not scalars:
                continue  # nothing scalar to plot (arrays only)
            nxname = _nxdata_name(group)
            if nxname in group:
                del group[nxname]  # ours, from an earlier call
            data = group.create_group(nxname)
            data.attrs["NX_class"] = "NXdata"
            for s in scalars:
                data.create_dataset(s, data=np.asarray(table[s], dtype="<f8"))
            time = data.create_dataset("time", data=np.asarray(table["t_received"], dtype="<f8") - t_start)
            time.attrs["units"] = "s"
            time.attrs["long_name"] = "time since run start (s)"
            data.create_dataset("frame_index", data=np.asarray(table["index"], dtype="<i8"))
            data.attrs["signal"] = scalars[0]
            if len(scalars) > 1:
                data.attrs["auxiliary_signals"] = np.array(scalars[1:], dtype=h5py.string_dtype())
            data.attrs["axes"] = np.array(["time"], dtype=h5py.string_dtype())
            data.attrs["time_indices"] = 0
            data.attrs["frame_index_indices"] = 0
            group.attrs["default"] = nxname
            done.append(name)
        if done:
            entry.attrs["default"] = done[0]
    return done


def add_nexus_logged(path: str | Path) -> None:
    """:func:`add_nexus` for the store's close path: a failure is one log line, the file stays valid."""
    try:
        add_nexus(path)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        log.error("NeXus structure not added to %s: %s (the run file itself is complete)", path, exc)
