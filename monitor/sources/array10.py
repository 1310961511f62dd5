"""array10 source: PSI "array-1.0" / areaDetector NDPluginZMQ multipart frames over ZeroMQ.

A message is ``[JSON header, raw pixel bytes]`` (PROTOCOLS.md §1); one-part
``series-start-1.0`` / ``series-end-1.0`` headers bracket a run. :func:`decode_array10` is a
pure function that turns the parts of one message into a :class:`~monitor.frames.Frame` or
:class:`~monitor.frames.SeriesEvent`, or raises :class:`~monitor.errors.FrameRejected` with a
stable reason code. :class:`Array10Source` receives messages and never raises on bad input.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TypeGuard

import numpy as np
import zmq
import zmq.asyncio

from monitor.config import SourceSettings
from monitor.errors import FrameRejected, SourceError
from monitor.frames import Frame, FrameMeta, Rejection, SeriesEvent
from monitor.logutil import RateLimitedLog
from monitor.sources.ad_codec import decode_codec
from monitor.sources.ad_header import NDATTR_DROPPED, HeaderUnreadable, parse_header_tolerant, to_unix_time
from monitor.sources.base import Emit, as_rejection
from monitor.sources.zmqsock import GapCounter, ZmqReceiver, max_message_bytes, open_receive_socket

log = logging.getLogger("monitor.sources.array10")

DATA_HTYPE = "array-1.0"
CONTROL_HTYPES: Mapping[str, str] = MappingProxyType({"series-start-1.0": "start", "series-end-1.0": "end"})
_DTYPE_NAMES = "uint8 uint16 uint32 uint64 int8 int16 int32 int64 float32 float64".split()
DTYPES: Mapping[str, np.dtype] = MappingProxyType({name: np.dtype(name) for name in _DTYPE_NAMES})
MAX_HEADER_BYTES = 1 << 20
"""A JSON header larger than this is rejected (``oversize``) before it is decoded."""

__all__ = ["REASONS", "Array10Rejected", "Array10Source", "GapCounter", "decode_array10"]

REASONS = tuple(
    "missing_parts extra_parts bad_json not_an_object bad_htype bad_dtype bad_shape size_mismatch oversize "
    "bad_endianness unsupported_encoding bad_frame_number bad_metadata bad_buffer bad_compression".split()
)
"""Every reason code :func:`decode_array10` can raise."""

_INT64_MAX = 2**63 - 1
_FLOAT_META = ("energy_eV", "slice_z", "current_mA")
_INT_META = ("cycle", "step")


class Array10Rejected(FrameRejected):
    """A :class:`FrameRejected` that also carries what was learnt of the message's identity."""

    def __init__(
        self, reason: str, detail: str, *, index: int = -1, stream: str | None = None, series: str = ""
    ) -> None:
        super().__init__(reason, detail)
        self.index = index
        self.stream = stream
        self.series = series


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _bytes_view(part: object, what: str) -> memoryview:
    try:
        view = memoryview(part)  # type: ignore[arg-type]  # not a buffer: TypeError, handled below
        if view.ndim != 1 or view.format not in ("B", "b", "c"):
            view = view.cast("B")
    except TypeError as exc:
        raise FrameRejected("bad_buffer", f"{what} is not a contiguous byte buffer: {exc}") from None
    return view


def _parse_header(part: object) -> tuple[dict[str, object], str]:
    """Return (header, repair); repair names how NDPluginZMQ's invalid JSON was salvaged, or ""."""
    view = _bytes_view(part, "header part")
    if view.nbytes > MAX_HEADER_BYTES:
        raise FrameRejected("oversize", f"JSON header of {view.nbytes} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        parsed = parse_header_tolerant(view)
    except HeaderUnreadable as exc:
        raise FrameRejected("bad_json", _short(str(exc), 160)) from None
    header = parsed.header
    if not isinstance(header, dict):
        raise FrameRejected("not_an_object", f"JSON header is a {type(header).__name__}, not an object")
    return header, parsed.repair


def _htype(header: Mapping[str, object]) -> tuple[str, bool]:
    """Return (htype, legacy); legacy: the pre-1.4 ADZMQ one-element list (shape in x,y order)."""
    raw = header.get("htype")
    legacy = isinstance(raw, list) and len(raw) == 1
    value = raw[0] if legacy else raw  # type: ignore[index]  # legacy: raw is a one-element list
    if value is None and "htype" not in header:
        raise FrameRejected("bad_htype", "header has no 'htype'")
    if not isinstance(value, str) or (value != DATA_HTYPE and value not in CONTROL_HTYPES):
        raise FrameRejected("bad_htype", f"unknown htype {_short(raw)}")
    return value, legacy


def _opt_str(header: Mapping[str, object], key: str) -> str | None:
    if key not in header:
        return None
    value = header[key]
    if not isinstance(value, str) or not value:
        raise FrameRejected("bad_metadata", f"'{key}' must be a non-empty string, got {_short(value)}")
    return value


def _frame_number(header: Mapping[str, object]) -> int:
    if "frame" not in header:
        return -1
    value = header["frame"]
    if not _is_int(value) or not 0 <= value <= _INT64_MAX:
        raise FrameRejected(
            "bad_frame_number", f"'frame' must be a non-negative integer, got {_short(value)}"
        )
    return value


def _shape(header: Mapping[str, object], legacy: bool) -> tuple[int, int]:
    raw = header.get("shape")
    if not isinstance(raw, list) or not raw or not all(_is_int(d) and d > 0 for d in raw):
        raise FrameRejected("bad_shape", f"'shape' must be a list of positive integers, got {_short(raw)}")
    dims = raw[::-1] if legacy else list(raw)  # ADZMQ < 1.4 sent [x, y]
    if len(dims) == 3 and dims[0] == 1:
        dims = dims[1:]
    if len(dims) != 2:
        raise FrameRejected("bad_shape", f"expected a 2-D [y, x] (or [1, y, x]) shape, got {_short(raw)}")
    return dims[0], dims[1]


def _codec(header: Mapping[str, object]) -> str:
    """NDPluginCodec's codec name from ``encoding`` (NDPluginZMQ) or ``codec``; "" for raw pixels."""
    value = header.get("encoding", header.get("codec", ""))
    if not isinstance(value, str):
        raise FrameRejected("unsupported_encoding", f"encoding must be a string, got {_short(value)}")
    return value


def _dtype(header: Mapping[str, object]) -> np.dtype:
    name = header.get("type")
    if not isinstance(name, str) or name not in DTYPES:
        raise FrameRejected(
            "bad_dtype", f"unsupported 'type' {_short(name)} (expected one of {', '.join(DTYPES)})"
        )
    key = "endianness" if "endianness" in header else "endianess"
    order = header.get(key, "little")
    if order not in ("little", "big"):
        raise FrameRejected("bad_endianness", f"'{key}' must be 'little' or 'big', got {_short(order)}")
    return DTYPES[name].newbyteorder("<" if order == "little" else ">")


def _meta(header: Mapping[str, object], repair: str = "") -> FrameMeta:
    values: dict[str, object] = {}
    for key in _FLOAT_META:
        if key in header:
            number = header[key]
            if not _is_number(number):
                raise FrameRejected("bad_metadata", f"'{key}' must be a finite number, got {_short(number)}")
            values[key] = float(number)
    for key in _INT_META:
        if key in header:
            value = header[key]
            if not _is_int(value) or not -_INT64_MAX <= value <= _INT64_MAX:
                raise FrameRejected("bad_metadata", f"'{key}' must be an integer, got {_short(value)}")
            values[key] = value
    extra: Mapping[str, str | int | float | bool] = MappingProxyType({})
    if "ndattr" in header:
        ndattr = header["ndattr"]
        if not isinstance(ndattr, dict):
            raise FrameRejected("bad_metadata", f"'ndattr' must be an object, got {_short(ndattr)}")
        extra = MappingProxyType({k: v for k, v in ndattr.items() if isinstance(v, str | int | float | bool)})
    if repair:
        extra = MappingProxyType({**extra, repair: True})
    return FrameMeta(extra=extra, **values)  # type: ignore[arg-type]  # float/int fields, typed above


def _timestamp(header: Mapping[str, object], default: float, epoch: str) -> float:
    if "timeStamp" not in header:
        return default
    value = header["timeStamp"]
    if not _is_number(value):
        raise FrameRejected("bad_metadata", f"'timeStamp' must be a finite number, got {_short(value)}")
    return to_unix_time(float(value), epoch, default)


def _pixels(
    data: object, dtype: np.dtype, shape: tuple[int, int], max_frame_bytes: int, codec: str = ""
) -> np.ndarray:
    declared = shape[0] * shape[1] * dtype.itemsize
    if declared > max_frame_bytes:
        raise FrameRejected(
            "oversize", f"declared frame of {declared} bytes exceeds max_frame_bytes={max_frame_bytes}"
        )
    view = _bytes_view(data, "data part")
    if view.nbytes > max_frame_bytes:
        raise FrameRejected(
            "oversize", f"data part of {view.nbytes} bytes exceeds max_frame_bytes={max_frame_bytes}"
        )
    if codec:
        view = memoryview(decode_codec(codec, view, declared, dtype.itemsize))
    if view.nbytes != declared:
        raise FrameRejected(
            "size_mismatch",
            f"data part has {view.nbytes} bytes; shape {list(shape)} x {dtype.name} needs {declared}",
        )
    array = np.frombuffer(view, dtype=dtype).reshape(shape)  # zero-copy, read-only
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    return array


def decode_array10(
    parts: Sequence[bytes | memoryview],
    *,
    source: str,
    default_stream: str,
    max_frame_bytes: int,
    t_received: float,
    timestamp_epoch: str = "unix",
) -> Frame | SeriesEvent:
    """Decode one array-1.0 message, or raise :class:`FrameRejected` (see :data:`REASONS`).

    Little-endian pixels are a read-only zero-copy view of ``parts[1]``; big-endian pixels
    are converted to native order. A frame without ``frame`` gets ``index == -1``.
    NDPluginCodec arrays (``encoding`` lz4, blosc, bslz4, lz4hdf5, zlib) are decompressed;
    ``timeStamp`` is converted to Unix time per ``timestamp_epoch`` (``auto``/``epics``/``unix``).
    A header NDPluginZMQ made invalid JSON is salvaged (``meta.extra`` flags
    ``ndattr_repaired`` or ``ndattr_dropped``).
    """
    if len(parts) == 0:
        raise FrameRejected("missing_parts", "empty message (no parts)")
    header, repair = _parse_header(parts[0])
    htype, legacy = _htype(header)
    if htype in CONTROL_HTYPES:
        if len(parts) > 1:
            raise FrameRejected("extra_parts", f"{htype} control message has {len(parts)} parts, expected 1")
        series = _opt_str(header, "series") or ""
        return SeriesEvent(source=source, series=series, kind=CONTROL_HTYPES[htype], t_received=t_received)
    if len(parts) == 1:
        raise FrameRejected("missing_parts", "array-1.0 header without a data part")
    if len(parts) > 2:
        raise FrameRejected("extra_parts", f"array-1.0 message has {len(parts)} parts, expected 2")
    index = _frame_number(header)
    stream = _opt_str(header, "stream") or default_stream
    series = _opt_str(header, "series") or ""
    try:
        codec = _codec(header)
        dtype = _dtype(header)
        shape = _shape(header, legacy)
        meta = _meta(header, repair)
        t_detector = _timestamp(header, t_received, timestamp_epoch)
        array = _pixels(parts[1], dtype, shape, max_frame_bytes, codec)
    except FrameRejected as exc:
        raise Array10Rejected(exc.reason, exc.detail, index=index, stream=stream, series=series) from None
    return Frame(
        stream=stream,
        source=source,
        series=series,
        index=index,
        array=array,
        t_detector=t_detector,
        t_received=t_received,
        meta=meta,
    )


class Array10Source:
    """Receive array-1.0 messages on a PULL or SUB socket and emit ingest events."""

    def __init__(
        self,
        settings: SourceSettings,
        context: zmq.asyncio.Context | None = None,
        *,
        poll_interval_s: float = 0.05,
    ) -> None:
        if settings.kind != "array10":
            raise SourceError(
                f"source {settings.name!r}: Array10Source needs kind 'array10', got {settings.kind!r}"
            )
        if not settings.endpoint:
            raise SourceError(f"source {settings.name!r}: an endpoint is required")
        self.name = settings.name
        self.settings = settings
        self.last_endpoint = ""
        """The endpoint actually connected or bound (a port-0 bind shows the real port)."""
        self.received = 0
        self.frames = 0
        self.series_events = 0
        self.disconnects = 0
        """Senders disconnected (ZMQ_MAXMSGSIZE exceeded, or a sender went away); set at stop."""
        self.rejected: Counter[str] = Counter()
        self.salvaged: Counter[str] = Counter()
        """Frames kept though NDPluginZMQ's header was not JSON: ``ndattr_repaired`` / ``ndattr_dropped``."""
        self._ctx = context if context is not None else zmq.asyncio.Context.instance()
        self._poll_ms = max(1, int(poll_interval_s * 1000))
        self._socket: zmq.asyncio.Socket | None = None
        self._gaps = GapCounter()
        self._rejections = RateLimitedLog(log, what="rejections")

    def upstream_gaps(self) -> int:
        return self._gaps.total

    def salvaged_frame(self, frame: Frame) -> bool:
        """Count a frame whose header needed salvage; True if it did."""
        for flag in ("ndattr_repaired", NDATTR_DROPPED):
            if flag in frame.meta.extra:
                self.salvaged[flag] += 1
                return True
        return False

    def open(self) -> str:
        """Create, configure and connect/bind the socket (``run`` does this if needed)."""
        if self._socket is not None:
            return self.last_endpoint
        s = self.settings
        sock, self.last_endpoint = open_receive_socket(self._ctx, s)
        self._socket = sock
        log.info("source %r: %s %s %s", self.name, s.socket.upper(), s.mode, self.last_endpoint)
        return self.last_endpoint

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

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
                "source %r stopped: %d received, %d frames, %d rejected, %d upstream gaps, %d disconnects",
                self.name,
                self.received,
                self.frames,
                sum(self.rejected.values()),
                self._gaps.total,
                self.disconnects,
            )

    async def _handle(self, parts: Sequence[zmq.Frame], emit: Emit) -> None:
        t_received = time.time()
        self.received += 1
        try:
            event = decode_array10(
                [p.buffer for p in parts],
                source=self.name,
                default_stream=self.settings.stream,
                max_frame_bytes=self.settings.max_frame_bytes,
                t_received=t_received,
                timestamp_epoch=self.settings.timestamp_epoch,
            )
        except Exception as raw:  # noqa: BLE001 - every message gets a disposition (internal_error)
            exc = as_rejection(raw, self.name, log)
            index = -1
            if isinstance(exc, Array10Rejected):
                index = exc.index
                if exc.stream is not None:
                    self._gaps.observe(exc.stream, exc.series, index)
            self.rejected[exc.reason] += 1
            where = f" (frame {index})" if index >= 0 else ""
            self._rejections.warn(
                exc.reason,
                f"source {self.name!r}: rejected message #{self.received}{where}: {exc.reason}: {exc.detail}",
            )
            await emit(Rejection(self.name, exc.reason, exc.detail, t_received=t_received, index=index))
            return
        if isinstance(event, SeriesEvent):
            self.series_events += 1
            self._gaps.reset(event.series)
        else:
            self.frames += 1
            if self.salvaged_frame(event):
                what = "dropped" if NDATTR_DROPPED in event.meta.extra else "repaired"
                self._rejections.warn(
                    f"ndattr_{what}",
                    f"source {self.name!r}: frame {event.index}: header was not valid JSON (NDPluginZMQ "
                    f"writes nan/inf, raw Int8 chars and unescaped strings); pixels kept, attributes {what}",
                )
            missing = self._gaps.observe(event.stream, event.series, event.index)
            if missing:
                log.debug(
                    "source %r: %d frame numbers missing before frame %d", self.name, missing, event.index
                )
        await emit(event)
