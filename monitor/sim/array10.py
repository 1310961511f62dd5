"""array-1.0 simulator: encode frames, synthesise detector images, stream them over ZeroMQ."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import zmq
import zmq.asyncio

from monitor.aio import poll_async, sleep_unless
from monitor.sources.array10 import CONTROL_HTYPES, DATA_HTYPE, DTYPES

log = logging.getLogger("monitor.sim.array10")

TYPED_META = ("energy_eV", "slice_z", "cycle", "step", "current_mA")
"""Metadata keys sent as top-level header fields; any other key goes into ``ndattr``."""

_START = "series-start-1.0"
_END = "series-end-1.0"
assert CONTROL_HTYPES[_START] == "start" and CONTROL_HTYPES[_END] == "end"


def encode_array10(
    array: np.ndarray,
    *,
    frame: int,
    stream: str | None = None,
    series: str | None = None,
    meta: Mapping[str, float | int | str] | None = None,
    timestamp: float | None = None,
) -> list[bytes]:
    """Encode a 2-D array as an array-1.0 message: ``[JSON header, little-endian raw bytes]``."""
    a = np.asarray(array)
    if a.ndim != 2:
        raise ValueError(f"encode_array10 needs a 2-D array, got shape {a.shape}")
    if a.dtype.name not in DTYPES:
        raise ValueError(f"dtype {a.dtype} is not an array-1.0 type ({', '.join(DTYPES)})")
    header: dict[str, object] = {
        "htype": DATA_HTYPE,
        "type": a.dtype.name,
        "shape": [int(a.shape[0]), int(a.shape[1])],
        "frame": int(frame),
        "timeStamp": time.time() if timestamp is None else float(timestamp),
        "encoding": "",
        "endianness": "little",
        "source": "operando-monitor-sim",
    }
    if stream:
        header["stream"] = stream
    if series:
        header["series"] = series
    ndattr: dict[str, float | int | str] = {}
    for key, value in (meta or {}).items():
        if key in TYPED_META:
            header[key] = value
        else:
            ndattr[key] = value
    if ndattr:
        header["ndattr"] = ndattr
    data = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
    return [json.dumps(header).encode(), data]


def _control(htype: str, series: str) -> list[bytes]:
    header: dict[str, str] = {"htype": htype}
    if series:
        header["series"] = series
    return [json.dumps(header).encode()]


def series_start(series: str) -> list[bytes]:
    """A one-part ``series-start-1.0`` control message."""
    return _control(_START, series)


def series_end(series: str) -> list[bytes]:
    """A one-part ``series-end-1.0`` control message."""
    return _control(_END, series)


def _full_scale(dtype: np.dtype) -> float:
    if dtype.kind in "ui":
        return float(min(np.iinfo(dtype).max, 65535))
    return 65535.0


def _gauss_patch(sigma: float, amplitude: float) -> np.ndarray:
    r = max(1, int(3 * sigma))
    g = np.exp(-0.5 * (np.arange(-r, r + 1, dtype=np.float32) / sigma) ** 2)
    return (amplitude * np.outer(g, g)).astype(np.float32)


def synthetic_frames(shape: tuple[int, int], dtype: str = "uint16", seed: int = 0) -> Iterator[np.ndarray]:
    """Endless plausible detector images of ``shape`` and ``dtype`` (deterministic per seed).

    A smooth background with noise (precomputed bank of a few frames, rolled per frame),
    a few bright blobs that drift, a fixed handful of dead pixels (0) and occasional
    saturated pixels. Each yielded array is a fresh, writable, C-contiguous copy.
    """
    ny, nx = int(shape[0]), int(shape[1])
    if ny < 1 or nx < 1:
        raise ValueError(f"shape must be positive, got {shape}")
    dt = np.dtype(dtype)
    if dt.name not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not an array-1.0 type")
    rng = np.random.default_rng(seed)
    full = _full_scale(dt)
    level = 0.04 * full
    # Smooth background: a broad illumination spot on a gentle gradient (outer products: cheap).
    y = np.linspace(-1.0, 1.0, ny, dtype=np.float32)
    x = np.linspace(-1.0, 1.0, nx, dtype=np.float32)
    bg = level * (0.6 + np.outer(np.exp(-(y**2) / 0.8), np.exp(-(x**2) / 0.8)) + 0.1 * x[None, :])
    bank = []
    for _ in range(4):  # Poisson-ish noise: Gaussian with variance equal to the mean
        noisy = bg + np.sqrt(bg) * rng.standard_normal((ny, nx), dtype=np.float32)
        bank.append(np.clip(noisy, 0, full).astype(dt))
    n_blobs = 5
    sigma = max(1.5, min(ny, nx) / 80)
    patches = [_gauss_patch(sigma, rng.uniform(0.2, 0.6) * full) for _ in range(n_blobs)]
    pos = rng.uniform(0, 1, (n_blobs, 2)) * (ny, nx)
    vel = rng.uniform(-1, 1, (n_blobs, 2)) * max(0.5, min(ny, nx) / 400)
    n_dead = min(ny * nx // 4, max(3, min(50, ny * nx // 100_000)))
    dead = (rng.integers(0, ny, n_dead), rng.integers(0, nx, n_dead))
    top = dt.type(full)
    i = 0
    while True:
        # A small shift keeps the smooth background in place but decorrelates the noise.
        img = np.roll(bank[i % len(bank)], tuple(int(v) for v in rng.integers(0, 8, 2)), axis=(0, 1))
        for b, patch in enumerate(patches):
            cy, cx = (pos[b] + vel[b] * i) % (ny, nx)
            _add_patch(img, patch, int(cy), int(cx), full)
        img[dead] = 0
        if rng.random() < 0.3:
            k = int(rng.integers(1, 6))
            img[rng.integers(0, ny, k), rng.integers(0, nx, k)] = top
        yield img
        i += 1


def _add_patch(img: np.ndarray, patch: np.ndarray, cy: int, cx: int, full: float) -> None:
    r = patch.shape[0] // 2
    y0, y1 = max(0, cy - r), min(img.shape[0], cy + r + 1)
    x0, x1 = max(0, cx - r), min(img.shape[1], cx + r + 1)
    if y0 >= y1 or x0 >= x1:
        return
    sub = patch[y0 - (cy - r) : y1 - (cy - r), x0 - (cx - r) : x1 - (cx - r)]
    region = img[y0:y1, x0:x1]
    region[...] = np.clip(region.astype(np.float32) + sub, 0, full).astype(img.dtype)


async def _send(sock: zmq.asyncio.Socket, parts: Sequence[bytes], stop: asyncio.Event | None) -> bool:
    """Send one message, waiting for room (PUSH blocks on slow peers); False if stopped first."""
    while not await poll_async(sock, 100, zmq.POLLOUT):
        if stop is not None and stop.is_set():
            return False
    await sock.send_multipart(parts, copy=False)
    return True


async def run_simulator(
    endpoint: str,
    *,
    rate_hz: float,
    shape: tuple[int, int],
    count: int | None = None,
    socket: str = "push",
    mode: str = "bind",
    stream: str = "frames",
    series: str | None = None,
    dtype: str = "uint16",
    seed: int = 0,
    stop: asyncio.Event | None = None,
    context: zmq.asyncio.Context | None = None,
    pub_settle_s: float = 0.3,
) -> int:
    """Stream synthetic frames as array-1.0 until ``count`` are sent or ``stop`` is set.

    Sends ``series-start``, the frames (numbered from 0), then ``series-end``; returns the
    number of frames sent. ``rate_hz <= 0`` sends as fast as the socket accepts.
    """
    if socket not in ("push", "pub") or mode not in ("bind", "connect"):
        raise ValueError(f"socket must be push|pub and mode bind|connect, got {socket!r}, {mode!r}")
    series = series or f"sim-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
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
        log.info("simulator: %s %s %s, %s %s at %s Hz", socket.upper(), mode, where, shape, dtype, rate_hz)
        if socket == "pub" and await sleep_unless(stop, pub_settle_s):  # let subscribers join
            return 0
        if not await _send(sock, series_start(series), stop):
            return 0
        loop = asyncio.get_running_loop()
        period = 1.0 / rate_hz if rate_hz > 0 else 0.0
        t0 = loop.time()
        frames = synthetic_frames(shape, dtype=dtype, seed=seed)
        while count is None or sent < count:
            if stop is not None and stop.is_set():
                break
            if period:
                delay = t0 + sent * period - loop.time()
                if delay < -period:  # fell behind by more than a frame: rebase, don't burst
                    t0 = loop.time() - sent * period
                elif delay > 0 and await sleep_unless(stop, delay):
                    break
            msg = encode_array10(next(frames), frame=sent, stream=stream, series=series)
            if not await _send(sock, msg, stop):
                break
            sent += 1
        await _send(sock, series_end(series), None if socket == "pub" else stop)
    finally:
        sock.close()
    log.info("simulator: sent %d frames of series %s", sent, series)
    return sent


def send_raw(
    endpoint: str,
    messages: Iterable[Sequence[bytes]],
    *,
    socket: str = "push",
    mode: str = "connect",
    settle_s: float = 0.3,
    timeout_s: float = 5.0,
) -> int:
    """Blocking test helper: send each message (a sequence of raw parts) in order; return the count.

    Uses its own synchronous context, so call it from a thread (``asyncio.to_thread``) when
    the receiver runs on the same event loop. For PUB, waits ``settle_s`` for subscribers.
    """
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH if socket == "push" else zmq.PUB)
    sock.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
    sock.setsockopt(zmq.LINGER, int(timeout_s * 1000))
    n = 0
    try:
        if mode == "bind":
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
        if socket == "pub":
            time.sleep(settle_s)
        for parts in messages:
            sock.send_multipart(list(parts))
            n += 1
    finally:
        sock.close()
        ctx.term()  # returns once queued messages are delivered (or linger expires)
    return n
