"""array10 against what areaDetector really sends: NDPluginZMQ headers and NDPluginCodec arrays.

The headers are built the way ``NDPluginZMQ::sendNDArray`` / ``getAttributesAsJSON``
(paulscherrerinstitute/ADZMQ) build them with ``std::stringstream <<``: ``htype`` as a
one-element list, ``shape`` in areaDetector's x, y order, ``timeStamp`` in EPICS seconds with
``setprecision(17)``, ``encoding`` = ``NDArray::codec.name``, Float64 attributes through
``%.17g`` (so NaN and infinity print as ``nan`` / ``inf``), Int8/UInt8 as one raw char, strings
between quotes without escaping. The compressed arrays come from the libraries NDPluginCodec
links: LZ4_compress_default (python ``lz4.block``), c-blosc 1 (python ``blosc``), the bitshuffle
and LZ4 HDF5 filters (``hdf5plugin``, raw chunk bytes), zlib ``compress2``.
"""

from __future__ import annotations

import io
import math
import time
import zlib

import blosc
import h5py
import hdf5plugin
import lz4.block
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.errors import FrameRejected
from monitor.frames import Frame
from monitor.sources.ad_codec import bshuf_default_block_bytes, decode_codec
from monitor.sources.ad_header import (
    EPICS_EPOCH_OFFSET_S,
    HeaderUnreadable,
    parse_header_tolerant,
    to_unix_time,
)
from monitor.sources.array10 import decode_array10

T_NOW = time.time()


def cxx_attr(name: str, kind: str, value: object) -> bytes:
    """One ``"name":value`` as getAttributesAsJSON streams it (NDAttr* type ``kind``)."""
    key = b'"' + name.encode() + b'":'
    if kind in ("int8", "uint8"):
        return key + bytes([int(value) & 0xFF])  # epicsInt8/UInt8 streamed as a char  # type: ignore[call-overload]
    if kind == "float64":
        return key + format(float(value), ".17g").encode()  # type: ignore[arg-type]
    if kind == "string":
        return key + b'"' + str(value).encode() + b'"'
    return key + str(int(value)).encode()  # type: ignore[call-overload]


def cxx_header(
    shape_yx: tuple[int, int], dtype: str, frame: int, ts: float, codec: str, attrs: list[bytes]
) -> bytes:
    y, x = shape_yx
    return (
        b'{"htype":["array-1.0"], "type":"' + dtype.encode() + b'", '
        b'"shape":[' + f"{x},{y}".encode() + b"], "  # NDArray dims[0] is x
        b'"frame":' + str(frame).encode() + b", "
        b'"timeStamp":' + format(ts, ".17g").encode() + b", "
        b'"encoding":"' + codec.encode() + b'", '
        b'"ndattr":{' + b",".join(attrs) + b"}}"
    )


def decode(parts: list[bytes], epoch: str = "auto") -> Frame:
    out = decode_array10(
        parts, source="ad", default_stream="frames", max_frame_bytes=1 << 24, t_received=T_NOW,
        timestamp_epoch=epoch,
    )  # fmt: skip
    assert isinstance(out, Frame)
    return out


PIXELS = np.random.default_rng(16).poisson(40, size=(37, 53)).astype(np.uint16)
EPICS_NOW = T_NOW - EPICS_EPOCH_OFFSET_S  # what secPastEpoch + nsec/1e9 reads now


# --- time stamps ----------------------------------------------------------------------------


def test_epics_epoch_offset_is_1990() -> None:
    import datetime as dt

    epoch = dt.datetime(1990, 1, 1, tzinfo=dt.UTC).timestamp()
    assert epoch == EPICS_EPOCH_OFFSET_S


@pytest.mark.parametrize("epoch", ["auto", "epics"])
def test_epics_time_stamp_stored_as_unix(epoch: str) -> None:
    h = cxx_header(PIXELS.shape, "uint16", 5, EPICS_NOW - 0.25, "", [])
    frame = decode([h, PIXELS.tobytes()], epoch)
    assert frame.t_detector == pytest.approx(T_NOW - 0.25, abs=1e-5)
    assert np.array_equal(frame.array, PIXELS)


def test_unix_time_stamps_untouched_by_auto_and_unix() -> None:
    h = cxx_header(PIXELS.shape, "uint16", 5, T_NOW - 1.0, "", [])
    assert decode([h, PIXELS.tobytes()], "auto").t_detector == pytest.approx(T_NOW - 1.0)
    assert decode([h, PIXELS.tobytes()], "unix").t_detector == pytest.approx(T_NOW - 1.0)
    # a relative clock (neither reading near now) is kept as sent under auto
    assert to_unix_time(12.5, "auto", T_NOW) == 12.5
    assert to_unix_time(12.5, "epics", T_NOW) == 12.5 + EPICS_EPOCH_OFFSET_S


# --- NDPluginZMQ's invalid JSON -------------------------------------------------------------


def test_nan_inf_int8_and_windows_path_are_repaired() -> None:
    attrs = [
        cxx_attr("Temperature", "float64", math.nan),
        cxx_attr("RingCurrent", "float64", 401.25),
        cxx_attr("Limit", "float64", -math.inf),
        cxx_attr("Gain", "int8", 7),  # a BEL control byte
        cxx_attr("Quote", "uint8", ord('"')),
        cxx_attr("Comma", "int8", ord(",")),
        cxx_attr("HighByte", "uint8", 200),  # not UTF-8
        cxx_attr("FilePath", "string", r"C:\data\op\run_01"),
        cxx_attr("Comment", "string", 'cell "B3", 2C rate'),
        cxx_attr("NumImages", "int32", 1200),
        cxx_attr("Last", "int8", ord("}")),
    ]
    h = cxx_header(PIXELS.shape, "uint16", 9, EPICS_NOW, "", attrs)
    with pytest.raises(ValueError):
        import json

        json.loads(h)  # the real thing is not JSON
    frame = decode([h, PIXELS.tobytes()])
    assert np.array_equal(frame.array, PIXELS) and frame.index == 9
    x = frame.meta.extra
    assert x["ndattr_repaired"] is True and "ndattr_dropped" not in x
    assert math.isnan(x["Temperature"]) and x["Limit"] == -math.inf  # type: ignore[arg-type]
    assert x["RingCurrent"] == 401.25 and x["NumImages"] == 1200
    assert (x["Gain"], x["Quote"], x["Comma"], x["HighByte"], x["Last"]) == (7, 34, 44, 200, 125)
    assert x["FilePath"] == r"C:\data\op\run_01"
    assert x["Comment"] == 'cell "B3", 2C rate'


def test_valid_header_is_not_flagged() -> None:
    h = cxx_header(PIXELS.shape, "uint16", 1, EPICS_NOW, "", [cxx_attr("Gain", "int32", 3)])
    frame = decode([h, PIXELS.tobytes()])
    assert dict(frame.meta.extra) == {"Gain": 3}


def test_unscannable_ndattr_is_dropped_pixels_kept() -> None:
    h = cxx_header(PIXELS.shape, "uint16", 2, EPICS_NOW, "", [b'"A":1', b"garbage without a name"])
    frame = decode([h, PIXELS.tobytes()])
    assert np.array_equal(frame.array, PIXELS)
    assert dict(frame.meta.extra) == {"ndattr_dropped": True}
    assert parse_header_tolerant(h).repair == "ndattr_dropped"


def test_broken_header_outside_ndattr_is_still_bad_json() -> None:
    with pytest.raises(FrameRejected) as info:
        decode([b'{"htype":["array-1.0"], "type":uint16, "ndattr":{}}', PIXELS.tobytes()])
    assert info.value.reason == "bad_json"


# --- NDPluginCodec ---------------------------------------------------------------------------


def hdf5_filter_chunk(a: np.ndarray, filt: dict) -> bytes:
    """The raw chunk an HDF5 filter (hdf5plugin) writes for ``a``: the filter's own framing."""
    with h5py.File(io.BytesIO(), "w") as f:
        d = f.create_dataset("x", data=a, chunks=a.shape, **filt)
        return d.id.read_direct_chunk((0,) * a.ndim)[1]


def codec_bytes(codec: str, a: np.ndarray) -> bytes:
    if codec == "lz4":
        return lz4.block.compress(a.tobytes(), store_size=False)  # LZ4_compress_default
    if codec == "blosc":  # blosc_compress_ctx(clevel 5, byte shuffle, typesize, ..., "lz4")
        return blosc.compress(a.tobytes(), typesize=a.itemsize, clevel=5, shuffle=blosc.SHUFFLE, cname="lz4")
    if codec == "bslz4":  # bshuf_compress_lz4(block_size=0): the filter chunk minus its 12-byte header
        chunk = hdf5_filter_chunk(a, hdf5plugin.Bitshuffle(cname="lz4"))
        assert int.from_bytes(chunk[8:12], "big") == bshuf_default_block_bytes(a.itemsize)
        return chunk[12:]
    if codec == "lz4hdf5":
        return hdf5_filter_chunk(a, hdf5plugin.LZ4(nbytes=4096))
    if codec == "zlib":
        return zlib.compress(a.tobytes(), 6)
    raise AssertionError(codec)


@pytest.mark.parametrize("codec", ["lz4", "blosc", "bslz4", "lz4hdf5", "zlib"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int32", "uint32"])
def test_codec_frames_decode_pixel_for_pixel(codec: str, dtype: str) -> None:
    a = (PIXELS * (3 if dtype != "uint8" else 1)).astype(dtype)
    data = codec_bytes(codec, a)
    assert len(data) != a.nbytes
    h = cxx_header(a.shape, dtype, 3, EPICS_NOW, codec, [cxx_attr("Codec", "string", codec)])
    frame = decode([h, data])
    assert frame.array.dtype == np.dtype(dtype) and np.array_equal(frame.array, a)


@pytest.mark.parametrize("codec", ["lz4", "blosc", "bslz4", "lz4hdf5", "zlib"])
def test_codec_frame_of_another_size_is_rejected(codec: str) -> None:
    bigger = np.zeros((40, 53), np.uint16)
    h = cxx_header(PIXELS.shape, "uint16", 3, EPICS_NOW, codec, [])
    with pytest.raises(FrameRejected) as info:
        decode([h, codec_bytes(codec, bigger)])
    assert info.value.reason in ("bad_compression", "size_mismatch")


def test_jpeg_is_refused_with_a_reason() -> None:
    h = cxx_header(PIXELS.shape, "uint8", 3, EPICS_NOW, "jpeg", [])
    with pytest.raises(FrameRejected) as info:
        decode([h, b"\xff\xd8\xff\xe0" + bytes(100)])
    assert info.value.reason == "unsupported_encoding" and "jpeg" in info.value.detail


def test_blosc_bomb_refused_before_decompressing() -> None:
    data = bytearray(codec_bytes("blosc", PIXELS))
    data[4:8] = (1 << 31).to_bytes(4, "little")  # claims 2 GiB
    with pytest.raises(FrameRejected) as info:
        decode_codec("blosc", memoryview(bytes(data)), PIXELS.nbytes, 2)
    assert info.value.reason == "bad_compression"


# --- fuzz: bytes in, a header / frame or a stable rejection out ----------------------------

_PREFIX = b'{"htype":["array-1.0"], "type":"uint8", "shape":[4,2], "frame":1, "ndattr":{'


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=80))
def test_fuzzed_ndattr_never_escapes(tail: bytes) -> None:
    try:
        parsed = parse_header_tolerant(_PREFIX + tail + b"}}")
    except HeaderUnreadable:
        return
    assert isinstance(parsed.header, dict) and parsed.repair in ("", "ndattr_repaired", "ndattr_dropped")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["lz4", "blosc", "bslz4", "lz4hdf5", "zlib", "jpeg", "h264"]), st.binary(max_size=200))
def test_fuzzed_codec_bytes_only_reject(codec: str, data: bytes) -> None:
    try:
        out = decode_codec(codec, memoryview(data), 64, 2)
    except FrameRejected as exc:
        assert exc.reason in ("bad_compression", "size_mismatch", "unsupported_encoding")
        return
    assert len(out) == 64
