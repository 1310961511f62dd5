"""The on-disk layout of a run file: names, dtypes and string helpers shared by writer and reader.

See ``docs/store-layout.md`` for the table of every group, dataset and column.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import hdf5plugin
import numpy as np

from monitor.alerts.model import Severity
from monitor.errors import StoreError
from monitor.frames import ResultSchema, Status

FORMAT_VERSION = 2
"""Bumped whenever a dataset, column or attribute changes meaning."""

LIBVER: tuple[str, str] = ("v110", "latest")
"""Lowest format bound that supports SWMR; keeps files readable by any HDF5 >= 1.10."""

ENTRY = "entry"
FRAMES = "frames"
ALARMS = "alarms"
TELEMETRY = "telemetry"
COMMITTED = "committed"
RESULTS = "results"
RESERVED = frozenset({FRAMES, ALARMS, TELEMETRY, COMMITTED})
"""Names under ``/entry`` that no pipeline may take."""

FRAMES_DTYPE = np.dtype(
    [
        ("seq", "<i8"),
        ("source", "S64"),
        ("stream", "S64"),
        ("series", "S64"),
        ("index", "<i8"),
        ("pipeline", "S64"),
        ("status", "i1"),
        ("reason", "S64"),
        ("t_detector", "<f8"),
        ("t_received", "<f8"),
        ("t_done", "<f8"),
    ]
)

ALARMS_DTYPE = np.dtype(
    [
        ("t", "<f8"),
        ("transition", "S32"),
        ("id", "S128"),
        ("rule", "S64"),
        ("severity", "i1"),
        ("state", "S16"),
        ("message", "S256"),
        ("value", "<f8"),
        ("threshold", "<f8"),
        ("frame_source", "S64"),
        ("frame_stream", "S64"),
        ("frame_series", "S64"),
        ("index", "<i8"),
        ("seq", "<i8"),
        ("t_raised", "<f8"),
        ("t_changed", "<f8"),
        ("latched", "?"),
        ("acked_by", "S64"),
    ]
)

TELEMETRY_DTYPE = np.dtype(
    [
        ("t", "<f8"),
        ("received", "<i8"),
        ("processed", "<i8"),
        ("skipped", "<i8"),
        ("rejected", "<i8"),
        ("failed", "<i8"),
        ("fps_in", "<f8"),
        ("fps_out", "<f8"),
        ("latency_p50_ms", "<f8"),
        ("latency_p99_ms", "<f8"),
        ("queue_depth", "<i8"),
        ("upstream_gaps", "<i8"),
        ("by_reason", "S1024"),
    ]
)

RESULT_FIXED: tuple[tuple[str, str], ...] = (
    ("seq", "<i8"),
    ("index", "<i8"),
    ("t_received", "<f8"),
    ("t_done", "<f8"),
    ("latency_compute", "<f8"),
    ("latency_queued", "<f8"),
    ("batch_size", "<i4"),
    # the frame's metadata from the wire (NaN / -1 when absent); extra as JSON (run metadata)
    ("meta_energy_eV", "<f8"),
    ("meta_slice_z", "<f8"),
    ("meta_current_mA", "<f8"),
    ("meta_cycle", "<i8"),
    ("meta_step", "<i8"),
    ("meta_extra", "S512"),
)
META_EXTRA_BYTES = 512

STATUS_NAMES: dict[str, int] = {s.name: int(s) for s in Status}
SEVERITY_NAMES: dict[str, int] = {s.name: int(s) for s in Severity}


def meta_extra_json(extra: Mapping[str, object]) -> bytes:
    """FrameMeta.extra as compact JSON for the ``meta_extra`` column; keys dropped (and counted in
    ``_truncated``) until it fits, so the column never holds half a JSON document."""
    items = dict(extra)
    dropped = 0
    while True:
        doc = dict(items, _truncated=dropped) if dropped else items
        raw = json.dumps(doc, separators=(",", ":"), default=str).encode()
        if len(raw) <= META_EXTRA_BYTES or not items:
            return raw[:META_EXTRA_BYTES]
        items.pop(next(reversed(items)))
        dropped += 1


def check_pipeline_name(name: str) -> None:
    """A pipeline name becomes an HDF5 group name under ``/entry``."""
    if not name or "/" in name or name.startswith(".") or name in RESERVED:
        raise StoreError(f"pipeline name {name!r} cannot be a group under /{ENTRY}")


def results_dtype(pipeline: str, schema: ResultSchema) -> np.dtype:
    """The fixed result columns, then one float64 column per schema scalar (schema order)."""
    fixed = {n for n, _ in RESULT_FIXED}
    seen: set[str] = set()
    for name in schema.scalars:
        if not name or name in fixed or name in seen:
            raise StoreError(f"pipeline {pipeline!r}: scalar name {name!r} is empty, reserved or repeated")
        seen.add(name)
    array_names = [a.name for a in schema.arrays]
    for name in array_names:
        if not name or "/" in name or name == RESULTS or array_names.count(name) > 1:
            raise StoreError(f"pipeline {pipeline!r}: array name {name!r} is empty, reserved or repeated")
    return np.dtype([*RESULT_FIXED, *((n, "<f8") for n in schema.scalars)])


def compression_kwargs(compression: str) -> dict[str, Any]:
    """``create_dataset`` keyword arguments for a ``StoreSettings.compression`` value."""
    if compression == "bslz4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4}
    if compression == "none":
        return {}
    raise StoreError(f"unknown store compression {compression!r} (bslz4, gzip or none)")


def encode_str(text: str, size: int) -> bytes:
    """UTF-8 bytes of ``text``, cut to at most ``size`` bytes without splitting a character."""
    raw = text.encode("utf-8", errors="replace")
    if len(raw) <= size:
        return raw
    return raw[:size].decode("utf-8", errors="ignore").encode("utf-8")


def field_names(dtype: np.dtype) -> tuple[str, ...]:
    """A structured dtype's field names (numpy types ``names`` as optional: None when unstructured)."""
    names = dtype.names
    if names is None:
        raise TypeError(f"{dtype} is not a structured dtype")
    return names


def field_size(dtype: np.dtype, field: str) -> int:
    """The item size in bytes of one field of a structured dtype."""
    fields = dtype.fields
    if fields is None:
        raise TypeError(f"{dtype} is not a structured dtype")
    return fields[field][0].itemsize


def encode_column(values: list[str], dtype: np.dtype, field: str) -> np.ndarray:
    size = field_size(dtype, field)
    return np.array([encode_str(v, size) for v in values], dtype=f"S{size}")


def decode_str(raw: bytes | np.bytes_) -> str:
    return bytes(raw).decode("utf-8", errors="replace")


def encode_by_reason(
    rejected: tuple[tuple[str, int], ...], skipped: tuple[tuple[str, int], ...], size: int = 1024
) -> bytes:
    """Per-reason counters as JSON that always parses: the smallest counts go first if too long."""
    rej, skip = dict(rejected), dict(skipped)
    doc: dict[str, Any] = {"rejected": rej, "skipped": skip}
    raw = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    while len(raw) > size:
        doc["truncated"] = True
        candidates = [(c, k, d) for d in (rej, skip) for k, c in d.items()]
        if not candidates:
            return b'{"truncated":true}'
        _, key, owner = min(candidates, key=lambda item: item[0])
        del owner[key]
        raw = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    return raw


def decode_by_reason(raw: bytes) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, int], ...]]:
    try:
        doc = json.loads(decode_str(raw) or "{}")
    except json.JSONDecodeError:
        return (), ()
    return _pairs(doc.get("rejected")), _pairs(doc.get("skipped"))


def _pairs(obj: object) -> tuple[tuple[str, int], ...]:
    if not isinstance(obj, Mapping):
        return ()
    return tuple(sorted((str(k), int(v)) for k, v in obj.items()))
