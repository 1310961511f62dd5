"""Bluesky 0MQ messages → typed document records, or :class:`FrameRejected` with a reason code.

A message is one ZMQ frame ``prefix + b" " + name + b" " + serialized_doc`` (PROTOCOLS.md §3).
The document is msgpack (msgpack-numpy arrays), JSON, or pickle; pickle is refused unless the
caller trusts the network, and even then it goes through :class:`RestrictedUnpickler`, which
resolves only builtins containers and numpy array/dtype/scalar reconstruction.
Only the fields the monitor uses are kept; unknown keys are ignored.
"""

from __future__ import annotations

import io
import json
import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import msgpack
import numpy as np

from monitor.errors import FrameRejected

Format = Literal["auto", "msgpack", "json", "pickle"]

DOC_NAMES = frozenset(
    "start descriptor event event_page stop resource datum datum_page stream_resource stream_datum".split()
)
REASONS = tuple(
    "bad_framing bad_name unknown_document pickle_untrusted unsafe_pickle bad_pickle bad_msgpack bad_json "
    "bad_array not_a_document bad_document oversize".split()
)
"""Every reason code :func:`decode_message` can raise."""

PICKLE_ADVICE = (
    "pickled document refused (bluesky's Publisher pickles by default). Safe fix, on the publishing "
    "side: `from functools import partial; import msgpack, msgpack_numpy` then "
    "`RE.subscribe(Publisher(addr, serializer=partial(msgpack.packb, default=msgpack_numpy.encode)))`. "
    "Only on a trusted network: trust_pickle = true"
)
"""The ``pickle_untrusted`` detail: the safe fix (msgpack-numpy on the Publisher) before trust_pickle."""

_EMPTY: Mapping[str, object] = MappingProxyType({})
_SAFE_GLOBALS = frozenset(
    [
        ("builtins", name)
        for name in ("dict", "list", "tuple", "set", "frozenset", "bytearray", "complex", "slice")
    ]
    + [("collections", "OrderedDict"), ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")]
    + [
        (f"numpy.{core}.{mod}", fn)
        for core in ("core", "_core")
        for mod, fn in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
    ]
)
"""The only globals a pickled document may reference."""
_NUMERIC_KINDS = frozenset("biufc")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles documents: builtins containers and numpy arrays only, nothing that runs code."""

    def find_class(self, module: str, name: str) -> object:
        checked = "builtins" if module == "__builtin__" else module  # protocol 2 spells it this way
        if (checked, name) in _SAFE_GLOBALS or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def restricted_loads(data: bytes | memoryview) -> object:
    return RestrictedUnpickler(io.BytesIO(data)).load()


# ---- typed documents --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DataKey:
    name: str
    dtype: str
    shape: tuple[int, ...]
    external: str = ""
    """Empty for inline data; ``FILESTORE:`` (resource/datum) or ``STREAM:`` (stream_resource)."""
    dtype_numpy: str = ""
    """numpy dtype string when the descriptor gives one (restores JSON-decoded images' dtype)."""


@dataclass(frozen=True, slots=True)
class StartDoc:
    uid: str
    time: float
    scan_id: int | None = None
    plan_name: str = ""
    sample: str = ""


@dataclass(frozen=True, slots=True)
class DescriptorDoc:
    uid: str
    run_start: str
    name: str
    data_keys: Mapping[str, DataKey]


@dataclass(frozen=True, slots=True)
class EventDoc:
    descriptor: str
    seq_num: int
    time: float
    data: Mapping[str, object]
    filled: Mapping[str, object] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class EventPageDoc:
    """An ``event_page`` expanded row by row (all rows share one descriptor)."""

    descriptor: str
    events: tuple[EventDoc, ...]


@dataclass(frozen=True, slots=True)
class StopDoc:
    run_start: str
    exit_status: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ResourceDoc:
    uid: str
    spec: str
    root: str
    resource_path: str
    resource_kwargs: Mapping[str, object]
    run_start: str = ""


@dataclass(frozen=True, slots=True)
class DatumDoc:
    datum_id: str
    resource: str
    datum_kwargs: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class DatumPageDoc:
    datums: tuple[DatumDoc, ...]


@dataclass(frozen=True, slots=True)
class StreamResourceDoc:
    uid: str
    data_key: str
    path: str
    """Local file path (from ``uri``, or the older ``root``/``resource_path``)."""
    dataset: str
    run_start: str = ""


@dataclass(frozen=True, slots=True)
class StreamDatumDoc:
    stream_resource: str
    descriptor: str
    start: int
    stop: int
    """Rows ``[start, stop)`` of the resource's dataset."""
    seq_start: int


Document = (
    StartDoc
    | DescriptorDoc
    | EventDoc
    | EventPageDoc
    | StopDoc
    | ResourceDoc
    | DatumDoc
    | DatumPageDoc
    | StreamResourceDoc
    | StreamDatumDoc
)


# ---- framing and deserialisation ---------------------------------------------------------------
def split_message(message: bytes | memoryview, max_bytes: int) -> tuple[bytes, str, memoryview]:
    """``prefix name doc`` → (prefix, name, doc bytes); raises ``bad_framing`` / ``bad_name``."""
    view = memoryview(message).cast("B")
    if view.nbytes > max_bytes:
        raise FrameRejected("oversize", f"message of {view.nbytes} bytes exceeds max_frame_bytes={max_bytes}")
    head = bytes(view[:256])  # prefix and name are short; never copy the document itself
    first = head.find(b" ")
    second = head.find(b" ", first + 1) if first >= 0 else -1
    if second < 0:
        raise FrameRejected("bad_framing", "message is not 'prefix name document' (fewer than two spaces)")
    try:
        name = head[first + 1 : second].decode("ascii")
    except UnicodeDecodeError:
        raise FrameRejected(
            "bad_name", f"document name {_short(head[first + 1 : second])} is not ASCII"
        ) from None
    if name not in DOC_NAMES:
        raise FrameRejected("unknown_document", f"unknown document name {_short(name)}")
    return head[:first], name, view[second + 1 :]


def sniff(payload: memoryview) -> Literal["msgpack", "json", "pickle"]:
    """Tell the serialisations apart: pickle ≥ 2 starts ``80 0x``; JSON ``{``; else msgpack."""
    if len(payload) >= 2 and payload[0] == 0x80 and 2 <= payload[1] <= 5:
        return "pickle"
    if len(payload) >= 1 and payload[0] in b"{[ \t\r\n":
        return "json"
    return "msgpack"


def _msgpack_hook(obj: dict[object, object]) -> object:
    """msgpack-numpy's encoding (``{b"nd": True, b"type", b"kind", b"shape", b"data"}``), safely."""
    nd = obj.get(b"nd", obj.get("nd"))
    if nd is None or not isinstance(nd, bool):
        return obj

    def get(key: str) -> object:
        return obj.get(key.encode(), obj.get(key))

    descr, data = get("type"), get("data")
    kind = get("kind") or b""
    if kind not in (b"", ""):
        raise FrameRejected("bad_array", f"msgpack-numpy array of kind {_short(kind)} is not accepted")
    if not isinstance(descr, str | bytes) or not isinstance(data, bytes):
        raise FrameRejected("bad_array", "msgpack-numpy entry without a dtype string and data bytes")
    try:
        dtype = np.dtype(descr.decode() if isinstance(descr, bytes) else descr)
    except (TypeError, ValueError) as exc:
        raise FrameRejected("bad_array", f"bad dtype {_short(descr)}: {exc}") from None
    if dtype.kind not in _NUMERIC_KINDS or dtype.hasobject:
        raise FrameRejected("bad_array", f"dtype {dtype} is not numeric")
    if not nd:
        if len(data) != dtype.itemsize:
            raise FrameRejected("bad_array", "msgpack-numpy scalar of the wrong size")
        return np.frombuffer(data, dtype=dtype)[0].item()
    shape = get("shape")
    if not isinstance(shape, list | tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise FrameRejected("bad_array", f"bad shape {_short(shape)}")
    if math.prod(shape) * dtype.itemsize != len(data):
        raise FrameRejected("bad_array", f"{len(data)} data bytes do not fit shape {list(shape)} x {dtype}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def deserialize(payload: memoryview, fmt: Format, *, trust_pickle: bool, max_bytes: int) -> object:
    kind = sniff(payload) if fmt == "auto" else fmt
    if kind == "pickle":
        if not trust_pickle:
            raise FrameRejected("pickle_untrusted", PICKLE_ADVICE)
        try:
            return restricted_loads(payload)
        except pickle.UnpicklingError as exc:
            reason = "unsafe_pickle" if "is not allowed" in str(exc) else "bad_pickle"
            raise FrameRejected(reason, _short(str(exc), 120)) from None
        except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError) as exc:
            raise FrameRejected("bad_pickle", f"{type(exc).__name__}: {_short(str(exc), 100)}") from None
        except RecursionError:
            raise FrameRejected("bad_pickle", "pickle nests too deeply") from None
    if kind == "json":
        try:
            return json.loads(str(payload, "utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise FrameRejected("bad_json", _short(str(exc), 120)) from None
    try:
        return msgpack.unpackb(payload, raw=False, object_hook=_msgpack_hook, strict_map_key=False)
    except FrameRejected:
        raise
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        # ExtraData, FormatError, StackError are ValueError subclasses; unhashable keys are TypeError.
        raise FrameRejected("bad_msgpack", f"{type(exc).__name__}: {_short(str(exc), 100)}") from None


# ---- document validation ----------------------------------------------------------------------
def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bad(name: str, key: str, what: str, value: object) -> FrameRejected:
    return FrameRejected("bad_document", f"{name}.{key} must be {what}, got {_short(value)}")


def _str(doc: Mapping[str, object], name: str, key: str, default: str | None = None) -> str:
    value = doc.get(key, default)
    if not isinstance(value, str):
        raise _bad(name, key, "a string", value)
    return value


def _int(value: object, name: str, key: str) -> int:
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, key, "an integer", value)
    if not -(2**63) <= value < 2**63:
        raise _bad(name, key, "a 64-bit integer", value)
    return value


def _float(doc: Mapping[str, object], name: str, key: str, default: float) -> float:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise _bad(name, key, "a number", value)
    try:
        return float(value)
    except OverflowError:  # an integer beyond the float range (10**400)
        raise _bad(name, key, "a finite number", value) from None


def _map(doc: Mapping[str, object], name: str, key: str, required: bool = True) -> Mapping[str, object]:
    value = doc.get(key) if required or key in doc else {}
    if not isinstance(value, dict):
        raise _bad(name, key, "a mapping", value)
    return value


def _sample(value: object) -> str:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, dict):
        for key in ("name", "uid", "id"):
            if isinstance(value.get(key), str):
                return value[key]
    return ""


def _data_keys(doc: Mapping[str, object]) -> Mapping[str, DataKey]:
    out: dict[str, DataKey] = {}
    for key, spec in _map(doc, "descriptor", "data_keys").items():
        if not isinstance(spec, dict):
            raise _bad("descriptor", f"data_keys.{key}", "a mapping", spec)
        shape = spec.get("shape") or []
        if not isinstance(shape, list | tuple) or not all(isinstance(d, int) for d in shape):
            shape = []  # shape is informative only; the array itself is checked when it arrives
        external = spec.get("external") or ""
        np_dtype = spec.get("dtype_numpy")
        out[str(key)] = DataKey(
            str(key),
            str(spec.get("dtype", "")),
            tuple(shape),
            external if isinstance(external, str) else "",
            np_dtype if isinstance(np_dtype, str) else "",
        )
    return MappingProxyType(out)


def _uri_path(doc: Mapping[str, object]) -> str:
    if "uri" in doc:
        uri = _str(doc, "stream_resource", "uri")
        if uri.startswith("file://"):
            rest = uri[len("file://") :]
            return rest[rest.find("/") :] if not rest.startswith("/") else rest  # drop the host part
        return uri
    root = _str(doc, "stream_resource", "root", "")
    rel = _str(doc, "stream_resource", "resource_path")
    return f"{root.rstrip('/')}/{rel.lstrip('/')}" if root else rel


def _pages(doc: Mapping[str, object], name: str, key: str) -> tuple[dict[str, list[object]], int]:
    columns = _map(doc, name, key)
    lengths = set()
    pages: dict[str, list[object]] = {}
    for k, col in columns.items():
        if not isinstance(col, list | tuple | np.ndarray):
            raise _bad(name, f"{key}.{k}", "a column (list)", col)
        lengths.add(len(col))
        pages[str(k)] = list(col)
    if len(lengths) > 1:
        raise FrameRejected("bad_document", f"{name}.{key} columns have different lengths {sorted(lengths)}")
    return pages, (lengths.pop() if lengths else 0)


def to_document(name: str, doc: object) -> Document:
    """Validate one deserialised document and keep what the monitor needs."""
    if not isinstance(doc, dict):
        raise FrameRejected("not_a_document", f"{name} document is a {type(doc).__name__}, not a mapping")
    if name == "start":
        scan_id = doc.get("scan_id")
        return StartDoc(
            uid=_str(doc, name, "uid"),
            time=_float(doc, name, "time", 0.0),
            scan_id=_int(scan_id, name, "scan_id") if scan_id is not None else None,
            plan_name=doc["plan_name"] if isinstance(doc.get("plan_name"), str) else "",
            sample=_sample(doc.get("sample")),
        )
    if name == "descriptor":
        return DescriptorDoc(
            uid=_str(doc, name, "uid"),
            run_start=_str(doc, name, "run_start"),
            name=_str(doc, name, "name", "primary"),
            data_keys=_data_keys(doc),
        )
    if name == "event":
        return EventDoc(
            descriptor=_str(doc, name, "descriptor"),
            seq_num=_int(doc.get("seq_num"), name, "seq_num"),
            time=_float(doc, name, "time", 0.0),
            data=MappingProxyType(dict(_map(doc, name, "data"))),
            filled=MappingProxyType(dict(_map(doc, name, "filled", required=False))),
        )
    if name == "event_page":
        descriptor = _str(doc, name, "descriptor")
        data, n = _pages(doc, name, "data")
        filled, nf = _pages(doc, name, "filled") if "filled" in doc else ({}, n)
        seq = doc.get("seq_num")
        times = doc.get("time")
        if not isinstance(seq, list | tuple) or len(seq) != n or nf != n:
            raise FrameRejected("bad_document", f"event_page.seq_num must list {n} sequence numbers")
        if not isinstance(times, list | tuple) or len(times) != n:
            times = [0.0] * n
        events = tuple(
            EventDoc(
                descriptor=descriptor,
                seq_num=_int(seq[i], name, "seq_num"),
                time=_float({"time": times[i]}, name, "time", 0.0),
                data=MappingProxyType({k: col[i] for k, col in data.items()}),
                filled=MappingProxyType({k: col[i] for k, col in filled.items()}),
            )
            for i in range(n)
        )
        return EventPageDoc(descriptor, events)
    if name == "stop":
        return StopDoc(
            run_start=_str(doc, name, "run_start"),
            exit_status=_str(doc, name, "exit_status", ""),
            reason=doc["reason"] if isinstance(doc.get("reason"), str) else "",
        )
    if name == "resource":
        return ResourceDoc(
            uid=_str(doc, name, "uid"),
            spec=_str(doc, name, "spec"),
            root=_str(doc, name, "root", ""),
            resource_path=_str(doc, name, "resource_path"),
            resource_kwargs=MappingProxyType(dict(_map(doc, name, "resource_kwargs", required=False))),
            run_start=_str(doc, name, "run_start", ""),
        )
    if name == "datum":
        return DatumDoc(
            datum_id=_str(doc, name, "datum_id"),
            resource=_str(doc, name, "resource"),
            datum_kwargs=MappingProxyType(dict(_map(doc, name, "datum_kwargs", required=False))),
        )
    if name == "datum_page":
        resource = _str(doc, name, "resource")
        kwargs, n = _pages(doc, name, "datum_kwargs")
        ids = doc.get("datum_id")
        if not isinstance(ids, list | tuple) or len(ids) != n or not all(isinstance(i, str) for i in ids):
            raise FrameRejected("bad_document", f"datum_page.datum_id must list {n} ids")
        return DatumPageDoc(
            tuple(
                DatumDoc(ids[i], resource, MappingProxyType({k: col[i] for k, col in kwargs.items()}))
                for i in range(n)
            )
        )
    if name == "stream_resource":
        params = doc.get("parameters", doc.get("resource_kwargs", {}))
        dataset = params.get("dataset", "/entry/data/data") if isinstance(params, dict) else None
        if not isinstance(dataset, str):
            raise _bad(name, "parameters.dataset", "a string", dataset)
        return StreamResourceDoc(
            uid=_str(doc, name, "uid"),
            data_key=_str(doc, name, "data_key", ""),
            path=_uri_path(doc),
            dataset=dataset,
            run_start=_str(doc, name, "run_start", ""),
        )
    # stream_datum
    indices = _map(doc, name, "indices")
    seq_nums = _map(doc, name, "seq_nums", required=False)
    start = _int(indices.get("start"), name, "indices.start")
    stop = _int(indices.get("stop"), name, "indices.stop")
    if not 0 <= start <= stop:
        raise FrameRejected("bad_document", f"stream_datum.indices [{start}, {stop}) is not a range")
    seq_start = seq_nums.get("start", start + 1)
    return StreamDatumDoc(
        stream_resource=_str(doc, name, "stream_resource"),
        descriptor=_str(doc, name, "descriptor"),
        start=start,
        stop=stop,
        seq_start=_int(seq_start, name, "seq_nums.start"),
    )


def decode_message(
    message: bytes | memoryview, *, fmt: Format, trust_pickle: bool, max_bytes: int
) -> tuple[bytes, Document]:
    """One 0MQ message → (prefix, typed document); raises :class:`FrameRejected` (see :data:`REASONS`)."""
    prefix, name, payload = split_message(message, max_bytes)
    doc = deserialize(payload, fmt, trust_pickle=trust_pickle, max_bytes=max_bytes)
    return prefix, to_document(name, doc)
