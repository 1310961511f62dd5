"""One view of several ingest daemons' run files (ingest fan-out, docs/scale-out.md).

When one node cannot receive a detector stream, several daemons each take a share (array-1.0
PUSH and DECTRIS Stream V2 round-robin frames over their PULL clients) and each writes its own
run file. :func:`merge_runs` writes a small HDF5 file whose tables are *virtual datasets* over
the per-daemon files (no pixel or result is copied; plain h5py reads them, as does
:class:`~monitor.store.RunReader`), plus a ``daemons`` table saying which rows came from which
file. :func:`merge_journals` interleaves the alarm journals by time into one alarm view.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from monitor.errors import StoreError
from monitor.store import layout as L
from monitor.store.reader import RunReader

DAEMONS_DTYPE = np.dtype([("file", "S256"), ("table", "S64"), ("start", "<i8"), ("stop", "<i8")])


def _tables(path: Path) -> dict[str, tuple[int, dict[str, tuple[tuple[int, ...], np.dtype]]]]:
    """Per table (``frames``, ``alarms``, ``telemetry``, each pipeline): committed rows, and the
    datasets holding it (dataset path inside the entry → (row shape, dtype))."""
    out: dict[str, tuple[int, dict[str, tuple[tuple[int, ...], np.dtype]]]] = {}
    with RunReader(path) as r:
        rows = r.rows()
    with h5py.File(path, "r", locking="best-effort") as f:
        entry = f[L.ENTRY]
        for name, n in rows.items():
            obj = entry[name]
            if isinstance(obj, h5py.Dataset):
                out[name] = (n, {name: (obj.shape[1:], obj.dtype)})
            else:
                sets = {
                    f"{name}/{k}": (d.shape[1:], d.dtype)
                    for k, d in obj.items()
                    if isinstance(d, h5py.Dataset)
                }
                out[name] = (n, sets)
    return out


def merge_runs(out: Path | str, runs: Sequence[Path | str]) -> dict[str, int]:
    """Write ``out`` with each table the concatenation (virtual) of the runs' committed rows, in
    the order given. Returns rows per table. Tables must match (same pipelines and schemas)."""
    out = Path(out)
    paths = [Path(p) for p in runs]
    if len(paths) < 1:
        raise StoreError("merge needs at least one run file")
    infos = [_tables(p) for p in paths]
    names = list(infos[0])
    for p, info in zip(paths[1:], infos[1:], strict=True):
        if list(info) != names:
            raise StoreError(
                f"{p} has tables {sorted(info)}, {paths[0]} has {sorted(names)}: not one experiment"
            )
    totals: dict[str, int] = {}
    daemons: list[tuple[bytes, bytes, int, int]] = []
    with h5py.File(out, "w", libver="latest") as f, h5py.File(paths[0], "r", locking="best-effort") as first:
        entry = f.create_group(L.ENTRY)
        for k, v in first[L.ENTRY].attrs.items():
            entry.attrs[k] = v
        entry.attrs["merged_from"] = json.dumps([str(p) for p in paths])
        for name in names:
            group_src = first[L.ENTRY][name]
            if isinstance(group_src, h5py.Group):
                g = entry.create_group(name)
                for k, v in group_src.attrs.items():
                    g.attrs[k] = v
            total = sum(info[name][0] for info in infos)
            totals[name] = total
            start = 0
            for p, info in zip(paths, infos, strict=True):
                n = info[name][0]
                daemons.append((str(p).encode()[:256], name.encode(), start, start + n))
                start += n
            for ds_path, (shape, dtype) in infos[0][name][1].items():
                for p, info in zip(paths, infos, strict=True):
                    got = info[name][1].get(ds_path)
                    if got is None or got[0] != shape or got[1] != dtype:
                        want = (shape, dtype)
                        raise StoreError(f"{p}: {ds_path} differs from {paths[0]} ({got} vs {want})")
                layout = h5py.VirtualLayout(shape=(total, *shape), dtype=dtype)
                at = 0
                for p, info in zip(paths, infos, strict=True):
                    n = info[name][0]
                    if n:
                        rel = os.path.relpath(p.resolve(), out.resolve().parent)
                        src = h5py.VirtualSource(rel, f"{L.ENTRY}/{ds_path}", shape=(n, *shape), dtype=dtype)
                        layout[at : at + n] = src
                    at += n
                entry.create_virtual_dataset(ds_path, layout, fillvalue=None)
        f.create_dataset(f"{L.ENTRY}/daemons", data=np.array(daemons, dtype=DAEMONS_DTYPE))
    return totals


def merge_journals(out: Path | str, journals: Sequence[Path | str]) -> int:
    """One alarm journal: every record of every daemon's journal, ordered by time, each tagged
    with ``daemon`` (its journal's path as given). Returns the records written."""
    records: list[dict[str, object]] = []
    for j in journals:
        name = str(j)
        for line_no, line in enumerate(Path(j).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StoreError(f"{j}:{line_no}: not JSON ({exc.msg})") from None
            rec["daemon"] = name
            records.append(rec)
    records.sort(key=lambda r: float(r.get("t", 0.0)))  # type: ignore[arg-type]
    with open(out, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, allow_nan=True) + "\n")
    return len(records)
