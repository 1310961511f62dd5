"""DECTRIS Stream V2 simulator: encode start/image/end messages as the detector does, and stream them.

Images are CBOR tag 40 ``[[y, x], typed array]`` whose content is raw or tag 56500
``["bslz4", elem_size, bytes]`` / ``["lz4", 0, bytes]``. The compressed bytes are produced by
the HDF5 bitshuffle and LZ4 filters (``hdf5plugin``), written as HDF5 chunks and read back raw
with ``read_direct_chunk``: exactly the HDF5 framing the detector uses and ``dectris-compression``
decodes. Synthetic frames look like a photon-counting detector: module gaps at the NODATA value
2^n-1 (listed in the start message's pixel mask), a few dead pixels, saturated Bragg peaks.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import logging
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import TypedDict

import cbor2
import h5py
import hdf5plugin
import numpy as np
import zmq
import zmq.asyncio

from monitor.aio import poll_async, sleep_unless
from monitor.sim.array10 import synthetic_frames
from monitor.sources.cbor_arrays import (
    TAG_DECTRIS_COMPRESSION,
    TAG_MULTI_DIM,
    TAG_SELF_DESCRIBE,
    TYPED_ARRAY_TAGS,
)

log = logging.getLogger("monitor.sim.stream2")

COMPRESSIONS = ("bslz4", "lz4", "none")
MODULE = (512, 1028)
"""EIGER module size (y, x) in pixels; modules are separated by 38 (y) and 12 (x) gap pixels."""
MODULE_GAP = (38, 12)
EIGER2_4M = (2162, 2068)
"""Array shape (y, x) of an EIGER2 4M: 2068 x 2162 pixels (x by y)."""


class Compressor:
    """bslz4 / lz4 with HDF5 framing through the HDF5 filters; one in-memory dataset per shape."""

    def __init__(self) -> None:
        self._file = h5py.File(io.BytesIO(), "w")
        self._datasets: dict[tuple[str, tuple[int, ...], str], h5py.Dataset] = {}

    def compress(self, array: np.ndarray, algorithm: str) -> bytes:
        a = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        key = (algorithm, a.shape, a.dtype.str)
        dset = self._datasets.get(key)
        if dset is None:
            if algorithm == "bslz4":
                filt = hdf5plugin.Bitshuffle(nelems=0, cname="lz4")
            elif algorithm == "lz4":
                filt = hdf5plugin.LZ4()
            elif algorithm == "bszstd":  # Jungfraujoch: Bitshuffle + Zstandard
                filt = hdf5plugin.Bitshuffle(nelems=0, cname="zstd")
            else:
                raise ValueError(f"unknown compression {algorithm!r} (bslz4 or lz4)")
            name = f"d{len(self._datasets)}"
            dset = self._file.create_dataset(name, shape=a.shape, dtype=a.dtype, chunks=a.shape, **filt)
            self._datasets[key] = dset
        dset[...] = a
        _, chunk = dset.id.read_direct_chunk((0,) * a.ndim)
        return bytes(chunk)

    def close(self) -> None:
        self._file.close()


_default_compressor: Compressor | None = None


def compress(array: np.ndarray, algorithm: str) -> bytes:
    """Compress ``array``'s little-endian bytes with ``bslz4`` or ``lz4`` (HDF5 framing)."""
    global _default_compressor
    if _default_compressor is None:
        _default_compressor = Compressor()
    return _default_compressor.compress(array, algorithm)


def multi_dim_array(array: np.ndarray, compression: str = "bslz4") -> cbor2.CBORTag:
    """Tag 40 ``[[y, x], typed array]``, the typed array's bytes raw or in tag 56500."""
    a = np.asarray(array)
    if a.ndim != 2 or a.dtype.name not in TYPED_ARRAY_TAGS:
        raise ValueError(f"need a 2-D array of {', '.join(TYPED_ARRAY_TAGS)}, got {a.dtype} {a.shape}")
    if compression == "none":
        content: object = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
    else:
        elem_size = a.dtype.itemsize if compression in ("bslz4", "bszstd") else 0
        content = cbor2.CBORTag(TAG_DECTRIS_COMPRESSION, [compression, elem_size, compress(a, compression)])
    typed = cbor2.CBORTag(TYPED_ARRAY_TAGS[a.dtype.name], content)
    return cbor2.CBORTag(TAG_MULTI_DIM, [[int(a.shape[0]), int(a.shape[1])], typed])


def _dumps(message: dict[str, object]) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(TAG_SELF_DESCRIBE, message))


class SeriesIds(TypedDict):
    """The two fields that name a series in every Stream V2 message."""

    series_id: int
    series_unique_id: str


def start_message(
    *,
    series_id: int,
    series_unique_id: str,
    shape: tuple[int, int],
    dtype: str = "uint32",
    channels: Sequence[str] = ("threshold_1",),
    number_of_images: int = 0,
    saturation_value: int | None = None,
    pixel_mask: Mapping[str, np.ndarray] | None = None,
    compression: str = "bslz4",
    incident_energy: float = 12398.4,
    count_time: float = 0.099,
    frame_time: float = 0.1,
    arm_date: datetime.datetime | None = None,
    user_data: object = None,
) -> bytes:
    """A ``start`` message with ``header_detail`` "all"-style fields (pixel masks if given)."""
    msg: dict[str, object] = {
        "type": "start",
        "series_id": series_id,
        "series_unique_id": series_unique_id,
        "arm_date": arm_date or datetime.datetime.now(datetime.UTC),
        "beam_center_x": shape[1] / 2,
        "beam_center_y": shape[0] / 2,
        "channels": list(channels),
        "count_time": count_time,
        "countrate_correction_enabled": True,
        "detector_description": "operando-monitor simulated EIGER2",
        "detector_serial_number": "SIM-0001",
        "frame_time": frame_time,
        "image_dtype": dtype,
        "image_size_x": shape[1],
        "image_size_y": shape[0],
        "incident_energy": incident_energy,
        "number_of_images": number_of_images,
        "pixel_mask_enabled": pixel_mask is not None,
        "pixel_size_x": 75e-6,
        "pixel_size_y": 75e-6,
        "saturation_value": saturation_value if saturation_value is not None else default_saturation(dtype),
        "sensor_material": "Si",
        "sensor_thickness": 450e-6,
        "threshold_energy": {c: 6200.0 + 1000.0 * i for i, c in enumerate(channels)},
        "user_data": user_data,
    }
    if pixel_mask is not None:
        msg["pixel_mask"] = {
            c: multi_dim_array(m.astype(np.uint32), compression) for c, m in pixel_mask.items()
        }
    return _dumps(msg)


def image_message(
    data: Mapping[str, np.ndarray],
    *,
    series_id: int,
    series_unique_id: str,
    image_id: int,
    compression: str = "bslz4",
    series_date: datetime.datetime | None = None,
    frame_time_ticks: int = 5_000_000,
    start_s: float | None = None,
    user_data: object = None,
) -> bytes:
    """An ``image`` message with one 2-D array per channel (times in 50 MHz ticks, as on EIGER2).

    The image starts ``start_s`` after ``series_date`` (default: ``image_id`` frame times).
    """
    start = image_id * frame_time_ticks if start_s is None else max(0, round(start_s * 50_000_000))
    return _dumps(
        {
            "type": "image",
            "series_id": series_id,
            "series_unique_id": series_unique_id,
            "image_id": image_id,
            "real_time": [frame_time_ticks - 5, 50_000_000],
            "series_date": series_date or datetime.datetime.now(datetime.UTC),
            "start_time": [start, 50_000_000],
            "stop_time": [start + frame_time_ticks - 5, 50_000_000],
            "user_data": user_data,
            "data": {channel: multi_dim_array(a, compression) for channel, a in data.items()},
        }
    )


def end_message(*, series_id: int, series_unique_id: str) -> bytes:
    return _dumps({"type": "end", "series_id": series_id, "series_unique_id": series_unique_id})


def default_saturation(dtype: str) -> int:
    """A plausible ``saturation_value``: below the NODATA value 2^n-1, at most 65534 counts."""
    return int(min(np.iinfo(np.dtype(dtype)).max - 1, 65534))


def detector_mask(shape: tuple[int, int], *, dead: int = 5, seed: int = 0) -> np.ndarray:
    """A uint32 pixel mask: bit 0 for EIGER module gaps, bit 1 for a few dead pixels."""
    ny, nx = shape
    mask = np.zeros(shape, dtype=np.uint32)
    for axis, (size, gap) in enumerate(zip(MODULE, MODULE_GAP, strict=True)):
        n = shape[axis]
        for start in range(size, n, size + gap):
            if axis == 0:
                mask[start : start + gap, :] |= 1
            else:
                mask[:, start : start + gap] |= 1
    rng = np.random.default_rng(seed)
    mask[rng.integers(0, ny, dead), rng.integers(0, nx, dead)] |= 2
    return mask


def detector_frames(
    shape: tuple[int, int],
    *,
    dtype: str = "uint32",
    saturation_value: int | None = None,
    mask: np.ndarray | None = None,
    seed: int = 0,
) -> Iterator[np.ndarray]:
    """Endless images as the detector sends them: clipped at saturation, NODATA where masked."""
    sat = saturation_value if saturation_value is not None else default_saturation(dtype)
    nodata = np.iinfo(np.dtype(dtype)).max
    masked = np.flatnonzero(mask) if mask is not None else np.empty(0, dtype=np.intp)
    for img in synthetic_frames(shape, dtype=dtype, seed=seed):
        np.minimum(img, sat, out=img)
        img.reshape(-1)[masked] = nodata
        yield img


async def _send(sock: zmq.asyncio.Socket, message: bytes, stop: asyncio.Event | None) -> bool:
    while not await poll_async(sock, 100, zmq.POLLOUT):
        if stop is not None and stop.is_set():
            return False
    await sock.send(message, copy=False)
    return True


async def run_simulator(
    endpoint: str,
    *,
    rate_hz: float,
    shape: tuple[int, int],
    count: int | None = None,
    socket: str = "push",
    mode: str = "bind",
    channels: Sequence[str] = ("threshold_1",),
    compression: str = "bslz4",
    dtype: str = "uint32",
    seed: int = 0,
    series_id: int = 1,
    stop: asyncio.Event | None = None,
    context: zmq.asyncio.Context | None = None,
    pub_settle_s: float = 0.3,
) -> int:
    """Stream a Stream V2 series (start, ``count`` images, end) like a detector; return images sent.

    The detector binds PUSH (``mode="bind"``, port 31001 on a real one). Every channel gets the
    same module-gap mask; channel k's image is channel 0's divided by k+1 (a higher threshold).
    """
    if socket not in ("push", "pub") or mode not in ("bind", "connect"):
        raise ValueError(f"socket must be push|pub and mode bind|connect, got {socket!r}, {mode!r}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    uid = f"sim-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    ids: SeriesIds = {"series_id": series_id, "series_unique_id": uid}
    mask = detector_mask(shape, seed=seed)
    sat = default_saturation(dtype)
    ctx = context if context is not None else zmq.asyncio.Context.instance()
    sock = ctx.socket(zmq.PUSH if socket == "push" else zmq.PUB)
    sent = 0
    try:
        sock.setsockopt(zmq.LINGER, 2000)
        if mode == "bind":
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
        where = sock.getsockopt_string(zmq.LAST_ENDPOINT) or endpoint
        log.info("stream2 simulator: %s %s %s, %s %s %s at %s Hz", socket.upper(), mode, where, shape, dtype,
                 compression, rate_hz)  # fmt: skip
        if socket == "pub" and await sleep_unless(stop, pub_settle_s):
            return 0
        start = start_message(
            **ids, shape=shape, dtype=dtype, channels=channels, number_of_images=count or 0,
            saturation_value=sat, pixel_mask=dict.fromkeys(channels, mask), compression=compression,
        )  # fmt: skip
        if not await _send(sock, start, stop):
            return 0
        loop = asyncio.get_running_loop()
        period = 1.0 / rate_hz if rate_hz > 0 else 0.0
        t0 = loop.time()
        series_date = datetime.datetime.now(datetime.UTC)
        frames = detector_frames(shape, dtype=dtype, saturation_value=sat, mask=mask, seed=seed)
        while count is None or sent < count:
            if stop is not None and stop.is_set():
                break
            if period:
                delay = t0 + sent * period - loop.time()
                if delay < -period:
                    t0 = loop.time() - sent * period
                elif delay > 0 and await sleep_unless(stop, delay):
                    break
            img = next(frames)
            data = {c: img if k == 0 else _higher_threshold(img, k + 1, mask) for k, c in enumerate(channels)}
            elapsed = max(0.0, time.time() - series_date.timestamp() - 0.1)  # exposure just ended
            msg = image_message(
                data, **ids, image_id=sent, compression=compression, series_date=series_date, start_s=elapsed
            )
            if not await _send(sock, msg, stop):
                break
            sent += 1
        await _send(sock, end_message(**ids), None if socket == "pub" else stop)
    finally:
        sock.close()
    log.info("stream2 simulator: sent %d images of series %s", sent, uid)
    return sent


def _higher_threshold(img: np.ndarray, divisor: int, mask: np.ndarray) -> np.ndarray:
    out = img // divisor
    out[mask != 0] = np.iinfo(img.dtype).max
    return out


def cli_simulate(args: argparse.Namespace) -> int:
    """``operando-monitor simulate --protocol stream2``: a detector binding PUSH (like port 31001)."""
    sent = asyncio.run(
        run_simulator(
            args.endpoint,
            rate_hz=args.rate,
            shape=(args.shape[0], args.shape[1]),
            count=args.count,
            socket=args.socket,
            mode=args.mode,
            channels=tuple(args.channels),
            compression=args.compression,
            dtype=args.dtype,
            seed=args.seed,
        )
    )
    print(f"sent {sent} images", file=sys.stderr)
    return 0
