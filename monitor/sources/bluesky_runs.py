"""Bluesky run state for :class:`monitor.sources.bluesky.BlueskySource`: open runs, descriptors,
resources and datums, each cache bounded (evictions counted), and how an event's image is found."""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from monitor.config import SourceSettings
from monitor.errors import FrameRejected
from monitor.frames import FrameMeta
from monitor.sources.bluesky_docs import (
    DatumDoc,
    DescriptorDoc,
    EventDoc,
    ResourceDoc,
    StartDoc,
    StopDoc,
    StreamDatumDoc,
    StreamResourceDoc,
)
from monitor.sources.file_specs import FILE_SPECS, check_spec, file_spec_paths
from monitor.sources.hdf5_resolve import AD_HDF5_DATASET, ad_hdf5_location, map_root

log = logging.getLogger("monitor.sources.bluesky")

MAX_DATUMS = 100_000
"""Datums remembered per source (oldest forgotten first); a run rarely holds more in flight."""
MAX_RUNS = 64
"""Open runs remembered; the oldest is forgotten when a publisher died without sending ``stop``."""
MAX_RESOURCES = 10_000
"""Resources and stream resources kept (oldest forgotten first, counted in ``evictions``)."""
MAX_STREAMS = 1_000
"""Descriptors kept across open runs."""
_SCALARS = (str, int, float, bool)


@dataclass(frozen=True, slots=True)
class RunInfo:
    uid: str
    extra: Mapping[str, str | int | float | bool]
    """Run metadata copied into every frame's ``meta.extra``."""


@dataclass(frozen=True, slots=True)
class StreamInfo:
    descriptor: DescriptorDoc
    image_key: str
    """Data key holding the image; empty: this stream has no image (e.g. ``baseline``)."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    """Where one event's image lives: inline (``array``) or rows of an HDF5 dataset."""

    array: np.ndarray | None = None
    path: str = ""
    dataset: str = ""
    start: int = 0
    stop: int = 0
    files: tuple[str, ...] = ()
    """One file per frame (``AD_TIFF``, ``NPY_SEQ``), read as ``spec`` says."""
    spec: str = ""


def image_key(desc: DescriptorDoc, wanted: str) -> str:
    """The configured data key if the descriptor has it, else the first 2-D array key."""
    if wanted:
        return wanted if wanted in desc.data_keys else ""
    for key, dk in desc.data_keys.items():
        dims = [d for d in dk.shape if d > 1]
        if len(dims) == 2 or (dk.external and dk.dtype == "array" and len(dims) != 1):
            return key
    return ""


def _list_dtype(name: str) -> np.dtype | None:
    try:
        dtype = np.dtype(name) if name else None
    except TypeError:
        return None
    return dtype if dtype is not None and dtype.kind in "biuf" else None


def as_image(value: object, max_bytes: int, dtype_numpy: str = "") -> np.ndarray:
    """An inline event value → a 2-D numeric array (``[1, y, x]`` squeezed), or reject.

    Nested lists (JSON) take the descriptor's ``dtype_numpy`` when it holds their values.
    """
    if isinstance(value, np.ndarray):
        array = value
    elif isinstance(value, list):
        try:
            array = np.asarray(value)
        except ValueError as exc:  # ragged nested lists
            raise FrameRejected("bad_image", f"image is not a regular array: {exc}") from None
        dtype = _list_dtype(dtype_numpy)
        if (
            dtype is not None
            and array.dtype.kind in "biu"
            and array.size
            and np.can_cast(np.min_scalar_type(array.max()), dtype)
            and np.can_cast(np.min_scalar_type(array.min()), dtype)
        ):
            array = array.astype(dtype)
    else:
        raise FrameRejected("bad_image", f"image value is a {type(value).__name__}, not an array")
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.dtype.kind not in "biuf" or 0 in array.shape:
        raise FrameRejected(
            "bad_image", f"image must be a 2-D numeric array, got {array.dtype} {array.shape}"
        )
    if array.nbytes > max_bytes:
        raise FrameRejected("oversize", f"image of {array.nbytes} bytes exceeds max_frame_bytes={max_bytes}")
    return array


class RunTracker:
    """Per-run document state: runs, descriptors, resources and datums (forgotten at ``stop``)."""

    def __init__(self, settings: SourceSettings) -> None:
        self.settings = settings
        self.runs: dict[str, RunInfo] = {}
        self.streams: dict[str, StreamInfo] = {}
        self.resources: dict[str, ResourceDoc] = {}
        self.stream_resources: dict[str, StreamResourceDoc] = {}
        self.datums: OrderedDict[str, DatumDoc] = OrderedDict()
        self.evictions: Counter[str] = Counter()
        """Cache entries forgotten to bound memory (a run without ``stop``, a resource flood)."""

    def _bound(self, cache: dict[str, object], limit: int, what: str) -> None:
        while len(cache) > limit:
            del cache[next(iter(cache))]  # dicts keep insertion order: the oldest goes first
            if not self.evictions[what]:
                log.warning("bluesky: more than %d %s cached; forgetting the oldest (counted)", limit, what)
            self.evictions[what] += 1

    def add_resource(self, doc: ResourceDoc) -> None:
        self.resources[doc.uid] = doc
        self._bound(self.resources, MAX_RESOURCES, "resources")  # type: ignore[arg-type]

    def add_stream_resource(self, doc: StreamResourceDoc) -> None:
        self.stream_resources[doc.uid] = doc
        self._bound(self.stream_resources, MAX_RESOURCES, "stream_resources")  # type: ignore[arg-type]

    def start(self, doc: StartDoc) -> None:
        extra: dict[str, str | int | float | bool] = {"run_uid": doc.uid}
        if doc.scan_id is not None:
            extra["scan_id"] = doc.scan_id
        if doc.plan_name:
            extra["plan_name"] = doc.plan_name
        if doc.sample:
            extra["sample"] = doc.sample
        self.runs[doc.uid] = RunInfo(doc.uid, MappingProxyType(extra))
        while len(self.runs) > MAX_RUNS:
            oldest = next(iter(self.runs))
            log.warning("forgetting run %s: no stop document after %d newer runs", oldest, MAX_RUNS)
            self.stop(StopDoc(oldest, "unknown"))

    def stop(self, doc: StopDoc) -> RunInfo | None:
        run = self.runs.pop(doc.run_start, None)
        self.streams = {k: v for k, v in self.streams.items() if v.descriptor.run_start != doc.run_start}
        gone = {k for k, r in self.resources.items() if r.run_start == doc.run_start}
        self.resources = {k: v for k, v in self.resources.items() if k not in gone}
        self.stream_resources = {
            k: v for k, v in self.stream_resources.items() if v.run_start != doc.run_start
        }
        for key in [k for k, d in self.datums.items() if d.resource in gone]:
            del self.datums[key]
        return run

    def descriptor(self, doc: DescriptorDoc) -> None:
        if doc.run_start not in self.runs:
            raise FrameRejected("unknown_run", f"descriptor {doc.uid[:8]} of a run whose start we missed")
        self.streams[doc.uid] = StreamInfo(doc, image_key(doc, self.settings.data_key))
        self._bound(self.streams, MAX_STREAMS, "descriptors")  # type: ignore[arg-type]

    def add_datum(self, doc: DatumDoc) -> None:
        self.datums[doc.datum_id] = doc
        self._bound(self.datums, MAX_DATUMS, "datums")  # type: ignore[arg-type]

    def stream(self, descriptor: str) -> StreamInfo:
        info = self.streams.get(descriptor)
        if info is None:
            raise FrameRejected(
                "unknown_descriptor",
                f"event of descriptor {descriptor[:8]} that we never saw (joined mid-run?)",
            )
        return info

    def image_ref(self, info: StreamInfo, event: EventDoc) -> ImageRef:
        key = info.image_key
        if key not in event.data:
            raise FrameRejected("missing_image", f"event {event.seq_num} has no {key!r}")
        value = event.data[key]
        dk = info.descriptor.data_keys[key]
        if not dk.external or event.filled.get(key) is True or isinstance(value, np.ndarray | list):
            return ImageRef(array=as_image(value, self.settings.max_frame_bytes, dk.dtype_numpy))
        datum = self.datums.get(value) if isinstance(value, str) else None
        if datum is None:
            raise FrameRejected("unknown_datum", f"event {event.seq_num}: no datum {str(value)[:40]!r}")
        resource = self.resources.get(datum.resource)
        if resource is None:
            raise FrameRejected("unknown_resource", f"datum {datum.datum_id[:40]!r}: resource never seen")
        check_spec(resource.spec)
        root = map_root(resource.root, self.settings.root_map) if resource.root else ""
        if resource.spec in FILE_SPECS:
            files = file_spec_paths(
                resource.spec, root, resource.resource_path, resource.resource_kwargs, datum.datum_kwargs
            )
            if not root:
                files = tuple(map_root(f, self.settings.root_map) for f in files)
            return ImageRef(files=files, spec=resource.spec)
        path, start, n = ad_hdf5_location(
            root, resource.resource_path, resource.resource_kwargs, datum.datum_kwargs
        )
        if not root:
            path = map_root(path, self.settings.root_map)
        return ImageRef(path=path, dataset=AD_HDF5_DATASET, start=start, stop=start + n)

    def stream_rows(self, doc: StreamDatumDoc) -> tuple[StreamInfo, ImageRef]:
        info = self.stream(doc.descriptor)
        sres = self.stream_resources.get(doc.stream_resource)
        if sres is None:
            raise FrameRejected(
                "unknown_resource", f"stream_datum of unknown stream_resource {doc.stream_resource[:8]}"
            )
        if info.image_key and sres.data_key and sres.data_key != info.image_key:
            return StreamInfo(info.descriptor, ""), ImageRef()  # another detector's rows
        path = map_root(sres.path, self.settings.root_map)
        return info, ImageRef(path=path, dataset=sres.dataset, start=doc.start, stop=doc.stop)

    def meta(self, info: StreamInfo, event: EventDoc) -> FrameMeta:
        run = self.runs.get(info.descriptor.run_start)
        extra: dict[str, str | int | float | bool] = dict(run.extra) if run else {}
        extra["descriptor"] = info.descriptor.name
        extra["seq_num"] = event.seq_num
        current = None
        for key, value in event.data.items():
            if isinstance(value, np.generic):
                value = value.item()
            if key != info.image_key and isinstance(value, _SCALARS) and key not in extra:
                extra[key] = value
                if key == self.settings.current_field and isinstance(value, int | float):
                    current = float(value)
        return FrameMeta(current_mA=current, extra=MappingProxyType(extra))
