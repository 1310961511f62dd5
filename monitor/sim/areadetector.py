"""An NDPluginZMQ look-alike: frames as areaDetector really sends them
(``operando-monitor simulate --protocol ndpluginzmq``).

The header is written the way ``NDPluginZMQ::sendNDArray`` / ``getAttributesAsJSON``
(paulscherrerinstitute/ADZMQ) write it with ``std::stringstream``: ``htype`` as a one-element
list, ``shape`` in NDArray dimension order (x, y), ``frame`` = ``uniqueId``, ``timeStamp`` in
EPICS-epoch seconds with 17 significant digits, ``encoding`` = NDPluginCodec's codec name, and an
``ndattr`` object that is *not always JSON*: a NaN temperature prints as ``nan``, an Int8 gain as
one raw character, a Windows file path unescaped. The pixels are raw or compressed as
NDPluginCodec does (``lz4``: one LZ4 block; ``blosc``: a blosc chunk; ``zlib``).
Use it to check a monitor configuration against the real thing before beamtime.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import time
import zlib

import numpy as np
import zmq
import zmq.asyncio

from monitor.sim.array10 import synthetic_frames
from monitor.sources.ad_header import EPICS_EPOCH_OFFSET_S

log = logging.getLogger("monitor.sim.areadetector")

CODECS = ("none", "lz4", "blosc", "zlib")


def compress_ndcodec(array: np.ndarray, codec: str) -> bytes:
    raw = np.ascontiguousarray(array).tobytes()
    if codec == "none":
        return raw
    if codec == "lz4":
        import lz4.block

        return lz4.block.compress(raw, store_size=False)  # LZ4_compress_default
    if codec == "blosc":
        import blosc2

        return blosc2.compress(raw, typesize=array.dtype.itemsize)
    if codec == "zlib":
        return zlib.compress(raw, 6)
    raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")


def ndattr_bytes(frame: int, temperature: float, path: str) -> bytes:
    """``getAttributesAsJSON`` output for a few typical attributes (invalid JSON on purpose)."""
    temp = format(temperature, ".17g").encode()  # nan/inf print as such
    gain = bytes([7 + frame % 3])  # NDAttrInt8: streamed as one raw character
    return (
        b'{"Temperature":' + temp + b',"Gain":' + gain + b',"FilePath":"' + path.encode() + b'",'
        b'"NumImagesCounter":' + str(frame + 1).encode() + b"}"
    )


def encode_ndpluginzmq(
    array: np.ndarray, *, frame: int, t_unix: float, codec: str = "none", ndattr: bytes = b"{}"
) -> list[bytes]:
    """``[header, data]`` as NDPluginZMQ sends them (header bytes byte-for-byte in its format)."""
    y, x = array.shape
    header = (
        b'{"htype":["array-1.0"], "type":"' + array.dtype.name.encode() + b'", '
        b'"shape":[' + f"{x},{y}".encode() + b"], "
        b'"frame":' + str(frame).encode() + b", "
        b'"timeStamp":' + format(t_unix - EPICS_EPOCH_OFFSET_S, ".17g").encode() + b", "
        b'"encoding":"' + (b"" if codec == "none" else codec.encode()) + b'", '
        b'"ndattr":' + ndattr + b"}"
    )
    return [header, compress_ndcodec(array, codec)]


async def run_areadetector_simulator(
    endpoint: str, *, rate_hz: float, shape: tuple[int, int], count: int | None, codec: str,
    mode: str = "bind", dtype: str = "uint16", seed: int = 0,
) -> int:  # fmt: skip
    """PUSH NDPluginZMQ-shaped frames; every 10th has a NaN temperature."""
    ctx = zmq.asyncio.Context.instance()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 2000)
    (sock.bind if mode == "bind" else sock.connect)(endpoint)
    frames = synthetic_frames(shape, dtype=dtype, seed=seed)
    period = 1.0 / rate_hz if rate_hz > 0 else 0.0
    sent = 0
    try:
        while count is None or sent < count:
            temp = math.nan if sent % 10 == 9 else 25.0 + 0.01 * sent
            attrs = ndattr_bytes(sent, temp, f"C:\\data\\operando\\run_{sent // 100:04d}.h5")
            await sock.send_multipart(
                encode_ndpluginzmq(
                    next(frames), frame=sent + 1, t_unix=time.time(), codec=codec, ndattr=attrs
                )
            )
            sent += 1
            if period:
                await asyncio.sleep(period)
    finally:
        sock.close()
    return sent


def cli_simulate(args: argparse.Namespace) -> int:
    codec = getattr(args, "codec", "none") or "none"
    sent = asyncio.run(
        run_areadetector_simulator(
            args.endpoint, rate_hz=args.rate, shape=(args.shape[0], args.shape[1]), count=args.count,
            codec=codec, mode=args.mode, dtype=args.dtype, seed=args.seed,
        )
    )  # fmt: skip
    log.info("sent %d NDPluginZMQ frames (%s)", sent, codec)
    return 0
