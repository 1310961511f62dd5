"""bluesky source: documents from a RunEngine's 0MQ ``Publisher`` (through ``bluesky-0MQ-proxy``).

Subscribes (SUB, connect) to the proxy's out-port, decodes each message with
:func:`~monitor.sources.bluesky_docs.decode_message` and tracks documents per run
(:class:`RunTracker`): ``start`` → :class:`SeriesEvent` start; each event row whose descriptor
has an image key → one :class:`Frame` (image inline, from an ``AD_HDF5`` resource/datum, or from
``stream_resource``/``stream_datum`` rows of a growing HDF5 file); ``stop`` → SeriesEvent end.
Frames carry the run in ``series`` (start uid) and ``meta.extra`` (``scan_id``, ``plan_name``,
``sample``, ``descriptor``, ``seq_num`` and the event's scalar readings).

Accounting: every message is counted in ``received`` and ends up as exactly one of: a
document that produced frames (``frames``), a bookkeeping document (``documents[name]``), an
event without an image (``ignored``), or a :class:`Rejection` (``rejected[reason]``). A
subscriber that joins mid-run rejects that run's events as ``unknown_descriptor`` (one log
line) until the next ``start``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import zmq
import zmq.asyncio

from monitor.config import SourceSettings
from monitor.errors import FrameRejected, SourceError
from monitor.frames import Frame, FrameMeta, Rejection, SeriesEvent
from monitor.logutil import RateLimitedLog
from monitor.sources.base import Emit, as_rejection
from monitor.sources.bluesky_docs import (
    DatumDoc,
    DatumPageDoc,
    DescriptorDoc,
    Document,
    EventDoc,
    EventPageDoc,
    ResourceDoc,
    StartDoc,
    StopDoc,
    StreamDatumDoc,
    StreamResourceDoc,
    decode_message,
)
from monitor.sources.hdf5_resolve import AD_HDF5_DATASET, Hdf5Frames, ad_hdf5_location, map_root
from monitor.sources.zmqsock import GapCounter, ZmqReceiver, max_message_bytes

log = logging.getLogger("monitor.sources.bluesky")

MAX_DATUMS = 100_000
MAX_RUNS = 64
MAX_RESOURCES = 10_000
"""Resources and stream resources kept (oldest forgotten first, counted in ``evictions``)."""
MAX_STREAMS = 1_000
"""Descriptors kept across open runs."""
"""Open runs remembered; the oldest is forgotten when a publisher died without sending ``stop``."""
"""Datums remembered per source (oldest forgotten first); a run rarely holds more in flight."""
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
        if dtype is not None and array.dtype.kind in "biu" and array.size:
            if np.can_cast(np.min_scalar_type(array.max()), dtype) and np.can_cast(
                np.min_scalar_type(array.min()), dtype
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
        if resource.spec not in ("AD_HDF5", "AD_HDF5_SWMR"):
            raise FrameRejected("unsupported_spec", f"resource spec {resource.spec!r} (only AD_HDF5)")
        root = map_root(resource.root, self.settings.root_map) if resource.root else ""
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


class BlueskySource:
    """Receive bluesky documents on a SUB socket and emit frames, series events and rejections."""

    def __init__(
        self,
        settings: SourceSettings,
        context: zmq.asyncio.Context | None = None,
        *,
        poll_interval_s: float = 0.05,
    ) -> None:
        if settings.kind != "bluesky":
            raise SourceError(
                f"source {settings.name!r}: BlueskySource needs kind 'bluesky', got {settings.kind!r}"
            )
        if not settings.endpoint:
            raise SourceError(f"source {settings.name!r}: an endpoint (the proxy's out-port) is required")
        self.name = settings.name
        self.settings = settings
        self.last_endpoint = ""
        self.received = 0
        self.disconnects = 0
        """Senders disconnected (ZMQ_MAXMSGSIZE exceeded, or a publisher went away); set at stop."""
        self.frames = 0
        self.ignored = 0
        self.documents: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.rejected_rows: Counter[str] = Counter()
        """Bad rows of otherwise good event pages (each also emitted as a Rejection)."""
        self.tracker = RunTracker(settings)
        self._ctx = context if context is not None else zmq.asyncio.Context.instance()
        self._poll_ms = max(1, int(poll_interval_s * 1000))
        self._socket: zmq.asyncio.Socket | None = None
        self._gaps = GapCounter()
        self._rejections = RateLimitedLog(log, what="rejections")
        self._hdf5 = Hdf5Frames(settings.hdf5_timeout_s, max_bytes=settings.max_frame_bytes)
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"bluesky-hdf5:{settings.name}")

    def upstream_gaps(self) -> int:
        return self._gaps.total

    def accounted(self) -> int:
        """Messages accounted for; equals ``received`` whenever no message is in flight."""
        return sum(self.documents.values()) + sum(self.rejected.values())

    def open(self) -> str:
        if self._socket is not None:
            return self.last_endpoint
        s = self.settings
        sock = self._ctx.socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, max(s.rcvhwm, 1000))  # documents are small except images
            sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes(s))
            sock.setsockopt(zmq.SUBSCRIBE, (s.prefix + " ").encode() if s.prefix else b"")
            if s.mode == "bind":
                sock.bind(s.endpoint)
            else:
                sock.connect(s.endpoint)
            self.last_endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT) or s.endpoint
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise SourceError(
                f"source {self.name!r}: cannot {s.mode} SUB socket to {s.endpoint!r}: {exc}"
            ) from exc
        self._socket = sock
        log.info("source %r: bluesky SUB %s %s", self.name, s.mode, self.last_endpoint)
        return self.last_endpoint

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        self.open()
        sock = self._socket
        assert sock is not None
        receiver = ZmqReceiver(
            self.name, sock, max_message_bytes(self.settings), poll_ms=self._poll_ms, multipart=False
        )

        async def handle(parts: list[zmq.Frame]) -> None:
            await self.handle(parts[0].buffer, emit)

        try:
            await receiver.run(handle, stop)
        finally:
            self.disconnects = receiver.disconnects
            self.close()
            await asyncio.get_running_loop().run_in_executor(self._io, self._hdf5.close)
            self._io.shutdown(wait=False)
            self._rejections.flush(f"source {self.name!r}")
            log.info(
                "source %r stopped: %d messages, %d frames, documents %s, %d events without image, "
                "%d rejected %s, %d upstream gaps",
                self.name,
                self.received,
                self.frames,
                dict(self.documents),
                self.ignored,
                sum(self.rejected.values()),
                dict(self.rejected),
                self._gaps.total,
            )

    async def _reject(self, exc: FrameRejected, emit: Emit, t_received: float, index: int = -1) -> None:
        self.rejected[exc.reason] += 1
        self._rejections.warn(
            exc.reason, f"source {self.name!r}: rejected message #{self.received}: {exc.reason}: {exc.detail}"
        )
        await emit(Rejection(self.name, exc.reason, exc.detail, t_received=t_received, index=index))

    async def handle(self, message: bytes | memoryview, emit: Emit) -> None:
        """Account for and act on one 0MQ message (never raises on bad input)."""
        t_received = time.time()
        self.received += 1
        try:
            prefix, doc = decode_message(
                message,
                fmt=self.settings.format,
                trust_pickle=self.settings.trust_pickle,
                max_bytes=self.settings.max_frame_bytes,
            )
            if self.settings.prefix and prefix != self.settings.prefix.encode():
                raise FrameRejected("wrong_prefix", f"prefix {prefix[:40]!r}")
            await self._dispatch(doc, emit, t_received)
        except Exception as raw:  # noqa: BLE001 - every message gets a disposition (internal_error)
            await self._reject(as_rejection(raw, self.name, log), emit, t_received)

    async def _dispatch(self, doc: Document, emit: Emit, t_received: float) -> None:
        tr = self.tracker
        if isinstance(doc, StartDoc):
            tr.start(doc)
            self.documents["start"] += 1
            log.info("source %r: run %s started (%s)", self.name, doc.uid, dict(tr.runs[doc.uid].extra))
            await emit(SeriesEvent(self.name, doc.uid, "start", t_received))
        elif isinstance(doc, StopDoc):
            run = tr.stop(doc)
            self._gaps.reset(doc.run_start)
            self.documents["stop"] += 1
            if run is not None:
                await emit(SeriesEvent(self.name, doc.run_start, "end", t_received))
        elif isinstance(doc, DescriptorDoc):
            tr.descriptor(doc)
            self.documents["descriptor"] += 1
        elif isinstance(doc, ResourceDoc):
            tr.add_resource(doc)
            self.documents["resource"] += 1
        elif isinstance(doc, StreamResourceDoc):
            tr.add_stream_resource(doc)
            self.documents["stream_resource"] += 1
        elif isinstance(doc, DatumDoc):
            tr.add_datum(doc)
            self.documents["datum"] += 1
        elif isinstance(doc, DatumPageDoc):
            for d in doc.datums:
                tr.add_datum(d)
            self.documents["datum_page"] += 1
        elif isinstance(doc, EventDoc):
            await self._events("event", (doc,), emit, t_received)
        elif isinstance(doc, EventPageDoc):
            await self._events("event_page", doc.events, emit, t_received)
        else:  # StreamDatumDoc
            await self._stream_datum(doc, emit, t_received)

    async def _events(self, name: str, events: tuple[EventDoc, ...], emit: Emit, t_received: float) -> None:
        if not events:
            self.documents[name] += 1
            return
        info = self.tracker.stream(events[0].descriptor)
        if not info.image_key:
            self.documents[name] += 1
            self.ignored += len(events)
            return
        if info.descriptor.data_keys[info.image_key].external == "STREAM:":
            self.documents[name] += 1  # the frames came with this event's stream_datum
            return
        rejected: list[tuple[FrameRejected, int]] = []
        frames: list[Frame] = []
        for ev in events:
            try:
                ref = self.tracker.image_ref(info, ev)
                for array in await self._arrays(ref):
                    frames.append(self._frame(info, ev, array, t_received))
            except FrameRejected as exc:
                rejected.append((exc, ev.seq_num))
        # One message, one disposition when it fails as a whole; a page counts each bad row.
        if rejected and not frames and len(rejected) == 1:
            exc, seq = rejected[0]
            await self._reject(exc, emit, t_received, seq)
            return
        self.documents[name] += 1
        for exc, seq in rejected:
            await self._reject_row(exc, emit, t_received, seq)
        for frame in frames:
            await self._emit_frame(frame, info, emit)

    async def _reject_row(self, exc: FrameRejected, emit: Emit, t_received: float, seq: int) -> None:
        """A bad row inside an accepted page: counted and stored, but not as a whole message."""
        self.rejected_rows[exc.reason] += 1
        self._rejections.warn(
            exc.reason, f"source {self.name!r}: rejected row {seq}: {exc.reason}: {exc.detail}"
        )
        await emit(Rejection(self.name, exc.reason, exc.detail, t_received=t_received, index=seq))

    async def _stream_datum(self, doc: StreamDatumDoc, emit: Emit, t_received: float) -> None:
        info, ref = self.tracker.stream_rows(doc)
        if not info.image_key or ref.stop == ref.start:
            self.documents["stream_datum"] += 1
            self.ignored += doc.stop - doc.start
            return
        arrays = await self._arrays(ref)
        self.documents["stream_datum"] += 1
        for i, array in enumerate(arrays):
            ev = EventDoc(doc.descriptor, doc.seq_start + i, t_received, MappingProxyType({}))
            await self._emit_frame(self._frame(info, ev, array, t_received), info, emit)

    async def _arrays(self, ref: ImageRef) -> Iterator[np.ndarray]:
        if ref.array is not None:
            return iter((ref.array,))
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(
            self._io, self._hdf5.read_rows, ref.path, ref.dataset, ref.start, ref.stop
        )
        return iter(rows)

    def _frame(self, info: StreamInfo, ev: EventDoc, array: np.ndarray, t_received: float) -> Frame:
        return Frame(
            stream=self.settings.stream,
            source=self.name,
            series=info.descriptor.run_start,
            index=ev.seq_num,
            array=array,
            t_detector=ev.time or t_received,
            t_received=t_received,
            meta=self.tracker.meta(info, ev),
        )

    async def _emit_frame(self, frame: Frame, info: StreamInfo, emit: Emit) -> None:
        self.frames += 1
        missing = self._gaps.observe(info.descriptor.uid, frame.series, frame.index)
        if missing:
            log.debug("source %r: %d events missing before seq_num %d", self.name, missing, frame.index)
        await emit(frame)
