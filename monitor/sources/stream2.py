"""stream2 source: DECTRIS SIMPLON Stream V2 (EIGER2, PILATUS4, Jungfraujoch) over ZeroMQ.

One ZeroMQ frame per message, a CBOR map whose ``type`` is ``start``, ``image`` or ``end``
(PROTOCOLS.md §2). :func:`decode_stream2` is a pure function: given the message and what the
last start message said (:class:`SeriesInfo`), it returns a :class:`~monitor.frames.Frame`,
a :class:`SeriesStart`, an end :class:`~monitor.frames.SeriesEvent` or :class:`Ignored` (an
unknown message type), or raises :class:`Stream2Rejected` with a stable reason code
(:data:`REASONS`). Only the routed channel is decompressed.

Bad pixels: a pixel whose ``pixel_mask`` (start message, routed channel) is non-zero is set to 0,
and so is any pixel above ``saturation_value`` (the detector's NODATA value 2^n-1 marks gaps and
masked pixels). Without a start message, only the unsigned dtype's maximum counts as invalid.
Their counts go to ``FrameMeta.extra`` (``masked_pixels``, ``invalid_pixels``), with the
``saturation_value`` (pixels equal to it are kept: they are saturated, not invalid).
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypedDict

import numpy as np
import zmq
import zmq.asyncio

from monitor.config import SourceSettings
from monitor.errors import FrameRejected, SourceError
from monitor.frames import Frame, FrameMeta, Rejection, SeriesEvent
from monitor.logutil import RateLimitedLog
from monitor.sources import cbor_arrays
from monitor.sources.base import Emit, as_rejection
from monitor.sources.pixel_mask import MaskPlan
from monitor.sources.stream2_fields import (
    channels_field,
    clean_error_value,
    clean_pixels,
    count_field,
    error_value_field,
    ids_field,
    is_int,
    number_field,
    rational_field,
    series_name,
    short,
    user_meta,
)
from monitor.sources.zmqsock import GapCounter, ZmqReceiver, max_message_bytes, open_receive_socket

log = logging.getLogger("monitor.sources.stream2")

REASONS = tuple(
    "extra_parts bad_buffer oversize bad_cbor not_a_map bad_type bad_series bad_image_id missing_channel "
    "bad_array bad_dtype bad_shape size_mismatch bad_compression bad_metadata".split()
)
"""Every reason code :func:`decode_stream2` can raise. A malformed ``pixel_mask`` does not reject
its start message: the series keeps its other fields and the problem is counted as
``bad_pixel_mask`` in :attr:`Stream2Source.start_problems` (see :attr:`SeriesInfo.mask_error`)."""
SOURCE_REASONS = (*REASONS, "unknown_type", "internal_error")
"""Every reason :class:`Stream2Source` stores: the decoder's, a message type it does not use
(``unknown_type``: still one row) and an unexpected exception (``internal_error``)."""

MESSAGE_OVERHEAD_BYTES = 1 << 20
"""A message may exceed ``4 * max_frame_bytes`` by this much (start messages carry masks)."""
_EMPTY_INDEX = np.empty(0, dtype=np.intp)


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    """What a start message says about the routed channel's images."""

    series_id: int
    series_unique_id: str
    channels: tuple[str, ...]
    channel: str
    """The routed channel ("" if the start message lists none: the image's first channel)."""
    shape: tuple[int, int] | None
    """``(image_size_y, image_size_x)`` when the start message gives both."""
    number_of_images: int | None = None
    saturation_value: int | None = None
    incident_energy_eV: float | None = None
    threshold_energy_eV: float | None = None
    count_time_s: float | None = None
    frame_time_s: float | None = None
    mask_index: np.ndarray = field(default_factory=lambda: _EMPTY_INDEX)
    """Flat indices of the pixels whose ``pixel_mask`` is non-zero (sorted)."""
    mask_plan: MaskPlan | None = None
    """The same pixels as row/column runs, to zero frames of the mask's shape in place."""
    mask_error: str = ""
    """Why the start message's ``pixel_mask`` was unusable ("" if fine or absent): the series runs
    without a mask rather than losing its saturation, shape, energy and thresholds."""
    error_value: int | None = None
    """Jungfraujoch ``error_value``: pixels equal to it are invalid (like NODATA)."""

    @property
    def name(self) -> str:
        return series_name(self.series_id, self.series_unique_id)


@dataclass(frozen=True, slots=True)
class SeriesStart:
    """A decoded start message: the event to emit and the state for the series' images."""

    event: SeriesEvent
    info: SeriesInfo


@dataclass(frozen=True, slots=True)
class Ignored:
    """A well-formed message of a type we do not use (Jungfraujoch sends extra types)."""

    type: str


Stream2Event = Frame | SeriesStart | SeriesEvent | Ignored


class Stream2Rejected(FrameRejected):
    """A :class:`FrameRejected` that also carries what was learnt of the message's identity."""

    def __init__(self, reason: str, detail: str, *, index: int = -1, series: str = "", stream: str = ""):
        super().__init__(reason, detail)
        self.index = index
        self.series = series
        self.stream = stream


def _decode_start(
    msg: Mapping[str, object], *, source: str, channel: str, max_frame_bytes: int, t_received: float
) -> SeriesStart:
    sid, uid = ids_field(msg)
    channels = channels_field(msg)
    routed = channel or (channels[0] if channels else "")
    if channel and channels and channel not in channels:
        raise FrameRejected(
            "missing_channel", f"channel {channel!r} is not active (channels: {list(channels)})"
        )
    sx, sy = count_field(msg, "image_size_x"), count_field(msg, "image_size_y")
    shape = (sy, sx) if sx and sy else None
    saturation = count_field(msg, "saturation_value")
    if saturation is None:
        saturation = count_field(msg, "countrate_correction_count_cutoff")  # EIGER1 name
    mask_fields: _MaskFields = {}
    mask_error = ""
    try:
        mask_fields = _pixel_mask(msg, routed, shape, max_frame_bytes)
    except FrameRejected as exc:  # bad_pixel_mask: keep the start, run without a mask
        mask_error = exc.detail
    thresholds = msg.get("threshold_energy", {})
    if not isinstance(thresholds, Mapping):
        raise FrameRejected("bad_metadata", f"'threshold_energy' must be a map, got {short(thresholds)}")
    info = SeriesInfo(
        series_id=sid,
        series_unique_id=uid,
        channels=channels,
        channel=routed,
        shape=shape,
        number_of_images=count_field(msg, "number_of_images"),
        saturation_value=saturation,
        incident_energy_eV=number_field(msg, "incident_energy"),
        threshold_energy_eV=number_field(thresholds, routed) if routed else None,
        count_time_s=number_field(msg, "count_time"),
        frame_time_s=number_field(msg, "frame_time"),
        mask_error=mask_error,
        error_value=error_value_field(msg),
        **mask_fields,
    )
    return SeriesStart(SeriesEvent(source, info.name, "start", t_received), info)


class _MaskFields(TypedDict, total=False):
    mask_index: np.ndarray
    mask_plan: MaskPlan | None


def _pixel_mask(
    msg: Mapping[str, object], channel: str, shape: tuple[int, int] | None, max_frame_bytes: int
) -> _MaskFields:
    """``mask_index`` and ``mask_plan`` of the routed channel's pixel mask (none: empty)."""
    masks = msg.get("pixel_mask")
    if masks is None:
        return {}
    if not isinstance(masks, Mapping):
        raise FrameRejected(
            "bad_pixel_mask", f"'pixel_mask' must be a map channel -> array, got {short(masks)}"
        )
    if not channel or channel not in masks:
        return {}
    try:
        # uint32 masks are up to 4x the size of their (uint8) images
        mask = cbor_arrays.to_ndarray(masks[channel], max_bytes=4 * max_frame_bytes, what="pixel mask")
    except FrameRejected as exc:
        raise FrameRejected("bad_pixel_mask", f"{exc.reason}: {exc.detail}") from None
    if shape is not None and mask.shape != shape:
        raise FrameRejected("bad_pixel_mask", f"pixel mask is {mask.shape}, images are {shape}")
    if mask.dtype.kind not in "ui":
        raise FrameRejected("bad_pixel_mask", f"pixel mask must be integers, got {mask.dtype.name}")
    return {"mask_index": np.flatnonzero(mask), "mask_plan": MaskPlan.from_mask(mask)}


def _invalid_above(dtype: np.dtype, info: SeriesInfo | None) -> float | None:
    if info is not None and info.saturation_value is not None:
        return info.saturation_value
    if dtype.kind == "u":
        return np.iinfo(dtype).max - 1  # the NODATA value 2^n - 1
    return None


def _decode_image(
    msg: Mapping[str, object],
    *,
    index: int,
    source: str,
    channel: str,
    stream: str,
    series: SeriesInfo | None,
    max_frame_bytes: int,
    t_received: float,
) -> Frame:
    sid, uid = ids_field(msg)
    name = series_name(sid, uid)
    info = series if series is not None and series.name == name else None
    data = msg.get("data")
    if not isinstance(data, Mapping) or not data:
        raise FrameRejected(
            "missing_channel", f"'data' must be a non-empty map channel -> array, got {short(data)}"
        )
    routed = channel or (info.channel if info is not None and info.channel else next(iter(data)))
    if not isinstance(routed, str) or routed not in data:
        raise FrameRejected("missing_channel", f"no channel {routed!r} in image (has {short(list(data))})")
    array = cbor_arrays.to_ndarray(data[routed], max_bytes=max_frame_bytes, what=f"channel {routed!r}")
    if info is not None and info.shape is not None and array.shape != info.shape:
        raise FrameRejected("bad_shape", f"image is {array.shape}, the start message said {info.shape}")
    mask_index = info.mask_index if info is not None else _EMPTY_INDEX
    if mask_index.size and mask_index[-1] >= array.size:
        mask_index = _EMPTY_INDEX  # (shape checked above when known; a mask never indexes outside)
    plan = info.mask_plan if info is not None and mask_index.size else None
    start, stop, real = (
        rational_field(msg, "start_time"),
        rational_field(msg, "stop_time"),
        rational_field(msg, "real_time"),
    )
    series_date = msg.get("series_date")
    t_detector = t_received
    if isinstance(series_date, datetime.datetime) and series_date.tzinfo is not None:
        offset = stop if stop is not None else start
        t_detector = series_date.timestamp() + (offset or 0.0)
    typed, extra = user_meta(msg.get("user_data"))
    invalid_above = _invalid_above(array.dtype, info)
    array, masked, invalid = clean_pixels(array, mask_index, invalid_above, plan)
    if info is not None and info.error_value is not None:
        array, n_error = clean_error_value(array, info.error_value, invalid_above)
        invalid += n_error
    extra |= {"channel": routed, "masked_pixels": masked, "invalid_pixels": invalid}
    if info is not None:
        for key in ("saturation_value", "threshold_energy_eV", "count_time_s", "frame_time_s"):
            value = getattr(info, key)
            if value is not None:
                extra[key] = value
    if real is not None:
        extra["real_time_s"] = real
    if "energy_eV" not in typed and info is not None and info.incident_energy_eV is not None:
        typed["energy_eV"] = info.incident_energy_eV
    return Frame(
        stream=stream or routed,
        source=source,
        series=name,
        index=index,
        array=array,
        t_detector=t_detector,
        t_received=t_received,
        # user_meta types each key it keeps to its FrameMeta field (cycle/step int, the rest float)
        meta=FrameMeta(extra=MappingProxyType(extra), **typed),  # type: ignore[arg-type]
    )


def decode_stream2(
    message: bytes | memoryview,
    *,
    source: str,
    channel: str = "",
    stream: str = "frames",
    series: SeriesInfo | None = None,
    max_frame_bytes: int = 256 * 1024 * 1024,
    t_received: float = 0.0,
) -> Stream2Event:
    """Decode one Stream V2 message, or raise :class:`Stream2Rejected` (see :data:`REASONS`).

    ``series`` is the :class:`SeriesInfo` of the last start message (``None`` if none was
    seen); images of another series are decoded without it (no mask, saturation unknown).
    """
    try:
        view = memoryview(message)
        nbytes = view.nbytes
    except TypeError:
        raise Stream2Rejected("bad_buffer", "message is not a byte buffer") from None
    if not view.c_contiguous:
        raise Stream2Rejected("bad_buffer", "message is not a contiguous byte buffer")
    limit = 4 * max_frame_bytes + MESSAGE_OVERHEAD_BYTES
    if nbytes > limit:
        raise Stream2Rejected(
            "oversize", f"message of {nbytes} bytes exceeds {limit} (4 x max_frame_bytes + 1 MiB)"
        )
    try:
        msg = cbor_arrays.loads(view)
    except FrameRejected as exc:
        raise Stream2Rejected(exc.reason, exc.detail) from None
    if not isinstance(msg, Mapping):
        raise Stream2Rejected("not_a_map", f"top-level CBOR item is a {type(msg).__name__}, not a map")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise Stream2Rejected("bad_type", f"message 'type' must be text, got {short(kind)}")
    if kind == "image":
        index = msg.get("image_id")
        if not is_int(index) or not 0 <= index < 2**63:
            raise Stream2Rejected(
                "bad_image_id", f"'image_id' must be a non-negative integer, got {short(index)}"
            )
        name = ""
        try:
            name = series_name(*ids_field(msg))
            return _decode_image(
                msg,
                index=index,
                source=source,
                channel=channel,
                stream=stream,
                series=series,
                max_frame_bytes=max_frame_bytes,
                t_received=t_received,
            )
        except FrameRejected as exc:
            raise Stream2Rejected(
                exc.reason, exc.detail, index=index, series=name, stream=stream or channel
            ) from None
    try:
        if kind == "start":
            return _decode_start(
                msg, source=source, channel=channel, max_frame_bytes=max_frame_bytes, t_received=t_received
            )
        if kind == "end":
            return SeriesEvent(source, series_name(*ids_field(msg)), "end", t_received)
    except FrameRejected as exc:
        raise Stream2Rejected(exc.reason, exc.detail) from None
    return Ignored(kind[:40])


class Stream2Source:
    """Receive Stream V2 messages (PULL, or SUB behind a relay) and emit ingest events.

    Large messages are decoded in a dedicated thread (decompression releases the GIL), one at
    a time, so frames stay in order and the event loop stays responsive.
    """

    def __init__(
        self,
        settings: SourceSettings,
        context: zmq.asyncio.Context | None = None,
        *,
        poll_interval_s: float = 0.05,
        inline_bytes: int = 1 << 16,
    ) -> None:
        if settings.kind != "stream2":
            raise SourceError(
                f"source {settings.name!r}: Stream2Source needs kind 'stream2', got {settings.kind!r}"
            )
        if not settings.endpoint:
            raise SourceError(f"source {settings.name!r}: an endpoint is required")
        self.name = settings.name
        self.settings = settings
        self.last_endpoint = ""
        self.received = 0
        self.frames = 0
        self.series_events = 0
        self.disconnects = 0
        """Senders disconnected (ZMQ_MAXMSGSIZE exceeded, or a sender went away); set at stop."""
        self.rejected: Counter[str] = Counter()
        self.ignored: Counter[str] = Counter()
        """Well-formed messages of types we do not use, by type."""
        self.start_problems: Counter[str] = Counter()
        """Start-message fields that were unusable but did not lose the start (``bad_pixel_mask``)."""
        self.series: SeriesInfo | None = None
        """The last start message's series (kept after its end message)."""
        self._ctx = context if context is not None else zmq.asyncio.Context.instance()
        self._poll_ms = max(1, int(poll_interval_s * 1000))
        self._inline_bytes = inline_bytes
        self._socket: zmq.asyncio.Socket | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._gaps = GapCounter()
        self._rejections = RateLimitedLog(log, what="rejections")
        self._notices = RateLimitedLog(log, interval_s=60.0, what="messages")

    def upstream_gaps(self) -> int:
        return self._gaps.total

    def open(self) -> str:
        """Create, configure and connect/bind the socket (``run`` does this if needed)."""
        if self._socket is not None:
            return self.last_endpoint
        s = self.settings
        sock, self.last_endpoint = open_receive_socket(self._ctx, s)
        self._socket = sock
        log.info("source %r: Stream V2, %s %s %s", self.name, s.socket.upper(), s.mode, self.last_endpoint)
        return self.last_endpoint

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        self.open()
        sock = self._socket
        assert sock is not None
        receiver = ZmqReceiver(self.name, sock, max_message_bytes(self.settings), poll_ms=self._poll_ms)

        async def handle(parts: list[zmq.Frame]) -> None:
            await self._handle(parts, emit)

        try:
            await receiver.run(handle, stop)
        finally:
            self.disconnects = receiver.disconnects
            self.close()
            self._rejections.flush(f"source {self.name!r}")
            log.info(
                "source %r stopped: %d received, %d frames, %d series events, %d rejected, %d ignored, "
                "%d upstream gaps, %d disconnects",
                self.name, self.received, self.frames, self.series_events, sum(self.rejected.values()),
                sum(self.ignored.values()), self._gaps.total, self.disconnects,
            )  # fmt: skip

    async def _decode(self, buffer: memoryview, t_received: float) -> Stream2Event:
        s = self.settings
        decode = functools.partial(
            decode_stream2,
            buffer,
            source=self.name,
            channel=s.channel,
            stream=s.stream,
            series=self.series,
            max_frame_bytes=s.max_frame_bytes,
            t_received=t_received,
        )
        if buffer.nbytes <= self._inline_bytes:
            return decode()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stream2-{self.name}")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, decode)

    async def _reject(self, exc: FrameRejected, t_received: float, emit: Emit) -> None:
        index = -1
        if isinstance(exc, Stream2Rejected):
            index = exc.index
            if index >= 0:
                self._gaps.observe(exc.stream, exc.series, index)
        self.rejected[exc.reason] += 1
        where = f" (image {index})" if index >= 0 else ""
        self._rejections.warn(
            exc.reason,
            f"source {self.name!r}: rejected message #{self.received}{where}: {exc.reason}: {exc.detail}",
        )
        await emit(Rejection(self.name, exc.reason, exc.detail, t_received=t_received, index=index))

    async def _handle(self, parts: list[zmq.Frame], emit: Emit) -> None:
        t_received = time.time()
        self.received += 1
        if len(parts) != 1:
            exc = FrameRejected("extra_parts", f"Stream V2 messages have one part, got {len(parts)}")
            await self._reject(exc, t_received, emit)
            return
        try:
            event = await self._decode(parts[0].buffer, t_received)
        except Exception as raw:  # noqa: BLE001 - every message gets a disposition (internal_error)
            await self._reject(as_rejection(raw, self.name, log), t_received, emit)
            return
        if isinstance(event, Frame):
            self.frames += 1
            self._gaps.observe(event.stream, event.series, event.index)
            if self.series is None or self.series.name != event.series:
                self._notices.warn(
                    f"no-start:{event.series}",
                    f"source {self.name!r}: image {event.index} of series {event.series!r} arrived without "
                    "its start message (joined mid-series?): pixel mask and saturation value unknown",
                )
            await emit(event)
        elif isinstance(event, SeriesStart):
            self.series_events += 1
            self.series = event.info
            self._gaps.reset(event.info.name)
            info = event.info
            if info.mask_error:
                self.start_problems["bad_pixel_mask"] += 1
                log.warning(
                    "source %r: series %r: pixel_mask unusable (%s); the series runs WITHOUT a pixel "
                    "mask (saturation, shape, energy and thresholds kept)",
                    self.name, info.name, info.mask_error,
                )  # fmt: skip
            log.info(
                "source %r: series %r started: channel %r, %s images of %s, saturation %s, %d masked pixels",
                self.name, info.name, info.channel, info.number_of_images, info.shape, info.saturation_value,
                info.mask_index.size,
            )  # fmt: skip
            await emit(event.event)
        elif isinstance(event, SeriesEvent):
            self.series_events += 1
            self._gaps.reset(event.series)
            await emit(event)
        else:
            # A message type we do not use still gets its row (rejected, reason unknown_type).
            self.ignored[event.type] += 1
            self._notices.warn(
                f"ignored:{event.type}", f"source {self.name!r}: ignoring message type {event.type!r}"
            )
            detail = f"message type {event.type!r} is not start, image or end"
            self.rejected["unknown_type"] += 1
            await emit(Rejection(self.name, "unknown_type", detail, t_received=t_received))
