"""NDPluginCodec-compressed arrays as NDPluginZMQ sends them (header ``encoding`` = codec name).

areaDetector/ADCore ``NDCodec.cpp`` names the codecs ``""``, ``jpeg``, ``zlib``, ``blosc``, ``lz4``,
``lz4hdf5`` and ``bslz4``; NDPluginZMQ copies ``NDArray::codec.name`` into the header's
``encoding`` and sends ``compressedSize`` bytes. The formats (``NDPluginCodec.cpp``):

- ``lz4``: one raw LZ4 block (``LZ4_compress_default``), no size prefix;
- ``blosc``: a c-blosc 1.x chunk (``blosc_compress_ctx``), 16-byte header with the sizes;
- ``bslz4``: ``bshuf_compress_lz4(..., block_size=0)``, the bitshuffle blocks without the
  12-byte HDF5-filter header;
- ``lz4hdf5``: the HDF5 LZ4 filter framing (8-byte total size, 4-byte block size, then per
  block a 4-byte compressed size, all big-endian);
- ``zlib``: ``compress2`` (a zlib stream).

Each is decoded by a maintained library (``lz4``, ``blosc2``, ``dectris-compression``, ``zlib``) into
exactly the declared ``prod(shape) * itemsize`` bytes; sizes are checked before decompressing,
so a bomb cannot allocate more than that. ``jpeg`` is refused: it is lossy 8-bit only and its
pixels are unfit for quantitative monitoring.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Mapping
from types import MappingProxyType

from monitor.errors import FrameRejected

REFUSED: Mapping[str, str] = MappingProxyType(
    {
        "jpeg": "NDPluginCodec 'jpeg' is lossy (8-bit, quantised pixels): unusable for quantitative "
        "monitoring; set the codec plugin's Compressor to None, LZ4, BSLZ4 or Blosc",
    }
)


def _lz4(data: memoryview, nbytes: int, itemsize: int) -> bytes:
    import lz4.block

    try:
        return lz4.block.decompress(data, uncompressed_size=nbytes)
    except lz4.block.LZ4BlockError as exc:
        raise FrameRejected(
            "bad_compression", f"lz4 block does not decode to {nbytes} bytes: {exc}"
        ) from None


def _blosc(data: memoryview, nbytes: int, itemsize: int) -> bytes:
    import blosc2

    if len(data) < 16:
        raise FrameRejected("bad_compression", f"blosc chunk of {len(data)} bytes is shorter than its header")
    declared, _blocksize, cbytes = struct.unpack_from("<III", data, 4)
    if declared != nbytes or cbytes != len(data):
        raise FrameRejected(
            "bad_compression",
            f"blosc header says {declared} bytes from {cbytes}; the frame needs {nbytes} from {len(data)}",
        )
    try:
        out = blosc2.decompress(bytes(data))
    except (RuntimeError, ValueError) as exc:
        raise FrameRejected("bad_compression", f"blosc chunk does not decode: {exc}") from None
    return out


def bshuf_default_block_bytes(itemsize: int) -> int:
    """bitshuffle's block size for ``block_size=0`` (``bshuf_default_block_size``), in bytes."""
    elements = max(128, (8192 // itemsize) // 8 * 8)
    return elements * itemsize


def _bslz4(data: memoryview, nbytes: int, itemsize: int) -> bytes:
    from dectris.compression import decompress

    # NDPluginCodec sends bshuf_compress_lz4's blocks without the HDF5 filter's 12-byte header
    # (total size, block size); put it back and let dectris-compression decode it.
    header = struct.pack(">QI", nbytes, bshuf_default_block_bytes(itemsize))
    try:
        return decompress(header + bytes(data), "bslz4", elem_size=itemsize)
    except (RuntimeError, ValueError) as exc:
        raise FrameRejected("bad_compression", f"bslz4 data does not decode: {exc}") from None


def _lz4hdf5(data: memoryview, nbytes: int, itemsize: int) -> bytes:
    import lz4.block

    if len(data) < 12:
        raise FrameRejected("bad_compression", "lz4hdf5 data is shorter than its 12-byte header")
    total, block = struct.unpack_from(">QI", data, 0)
    if total != nbytes or block == 0:
        raise FrameRejected("bad_compression", f"lz4hdf5 header says {total} bytes in blocks of {block}")
    out = bytearray()
    pos = 12
    while len(out) < total:
        want = min(block, total - len(out))
        if pos + 4 > len(data):
            raise FrameRejected("bad_compression", "lz4hdf5 data ends inside a block header")
        (size,) = struct.unpack_from(">I", data, pos)
        chunk = data[pos + 4 : pos + 4 + size]
        if len(chunk) != size:
            raise FrameRejected("bad_compression", "lz4hdf5 data ends inside a block")
        pos += 4 + size
        if size == want:
            out += chunk  # stored uncompressed (incompressible block)
            continue
        try:
            out += lz4.block.decompress(chunk, uncompressed_size=want)
        except lz4.block.LZ4BlockError as exc:
            raise FrameRejected("bad_compression", f"lz4hdf5 block does not decode: {exc}") from None
    return bytes(out)


def _zlib(data: memoryview, nbytes: int, itemsize: int) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, nbytes + 1)
    except zlib.error as exc:
        raise FrameRejected("bad_compression", f"zlib stream does not decode: {exc}") from None
    return out


DECODERS: Mapping[str, Callable[[memoryview, int, int], bytes]] = MappingProxyType(
    {"lz4": _lz4, "blosc": _blosc, "bslz4": _bslz4, "lz4hdf5": _lz4hdf5, "zlib": _zlib}
)
"""Codec name (NDPluginZMQ's ``encoding``) → decoder of the bytes into ``nbytes`` raw bytes."""


def decode_codec(codec: str, data: memoryview, nbytes: int, itemsize: int) -> bytes:
    """Decompress one NDPluginCodec array to exactly ``nbytes``, or raise :class:`FrameRejected`."""
    if codec in REFUSED:
        raise FrameRejected("unsupported_encoding", REFUSED[codec])
    decoder = DECODERS.get(codec)
    if decoder is None:
        known = ", ".join(["''", *DECODERS])
        raise FrameRejected(
            "unsupported_encoding",
            f"encoding {codec[:30]!r} is not an NDPluginCodec codec we decode ({known})",
        )
    out = decoder(data, nbytes, itemsize)
    if len(out) != nbytes:
        raise FrameRejected(
            "size_mismatch", f"{codec} data decodes to {len(out)} bytes; shape x type needs {nbytes}"
        )
    return out
