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
import functools
import logging
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType

import numpy as np
import zmq
import zmq.asyncio

from monitor.config import SourceSettings
from monitor.errors import FrameRejected, SourceError
from monitor.frames import Frame, Rejection, SeriesEvent
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
from monitor.sources.bluesky_runs import (  # noqa: F401 - re-exported
    MAX_DATUMS,
    MAX_RESOURCES,
    MAX_RUNS,
    MAX_STREAMS,
    ImageRef,
    RunInfo,
    RunTracker,
    StreamInfo,
    as_image,
    image_key,
)
from monitor.sources.file_specs import read_file_frames
from monitor.sources.hdf5_resolve import Hdf5Frames
from monitor.sources.zmqsock import GapCounter, ZmqReceiver, max_message_bytes

log = logging.getLogger("monitor.sources.bluesky")


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
            first, seq = rejected[0]
            await self._reject(first, emit, t_received, seq)
            return
        self.documents[name] += 1
        for row_error, seq in rejected:
            await self._reject_row(row_error, emit, t_received, seq)
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
        if ref.files:
            s = self.settings
            read = functools.partial(
                read_file_frames, ref.files, ref.spec, timeout_s=s.hdf5_timeout_s, max_bytes=s.max_frame_bytes
            )
            return iter(await loop.run_in_executor(self._io, read))
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
