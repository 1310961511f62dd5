"""CBOR typed arrays (RFC 8746) and the DECTRIS compression tag 56500, as DECTRIS Stream V2 sends them.

:func:`loads` decodes a CBOR message with a tag hook that turns tag 40/1040 into
:class:`MultiDimArray`, tags 64–87 into :class:`TypedArray` and tag 56500 into
:class:`CompressedBytes` *without* decompressing anything: :func:`to_ndarray` decompresses
only the arrays that are actually used (one routed channel, one pixel mask), after checking
the declared sizes against a limit, so a message cannot make us allocate more than we allow.
Decompression is done by ``dectris-compression`` (bslz4, lz4 and Jungfraujoch's bszstd, all with
HDF5 framing), into a writable buffer of our own (:mod:`monitor.sources.decompress_into`) so bad
pixels are zeroed in place.
"""

from __future__ import annotations

import datetime
import functools
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, cast

import cbor2
import numpy as np

from monitor.errors import FrameRejected
from monitor.sources.decompress_into import DecompressError, decompress_into

TAG_MULTI_DIM = 40
TAG_MULTI_DIM_COLUMN_MAJOR = 1040
TAG_DECTRIS_COMPRESSION = 56500
TAG_SELF_DESCRIBE = 55799


def _typed_array_tags() -> dict[int, np.dtype]:
    """RFC 8746 §2.1: tag = 0b010_f_s_e_ll (f: float, s: signed, e: little-endian, ll: size)."""
    tags: dict[int, np.dtype] = {}
    for tag in range(64, 88):
        f, s, e, ll = (tag >> 4) & 1, (tag >> 3) & 1, (tag >> 2) & 1, tag & 3
        if f:
            if ll == 3:
                continue  # binary128: numpy has no portable 128-bit float
            kind = "f"
            size = (2, 4, 8)[ll]
        else:
            if s and ll == 0 and e:
                continue  # tag 76 is reserved
            kind = "i" if s else "u"
            size = 1 << ll
        order = "|" if size == 1 else ("<" if e else ">")
        tags[tag] = np.dtype(f"{order}{kind}{size}")
    return tags


TYPED_ARRAY_DTYPES: Mapping[int, np.dtype] = MappingProxyType(_typed_array_tags())
"""Typed-array tag → dtype (with byte order). Tag 68 (uint8, clamped) decodes as uint8."""
TYPED_ARRAY_TAGS: Mapping[str, int] = MappingProxyType(
    {dt.newbyteorder("=").name: tag for tag, dt in TYPED_ARRAY_DTYPES.items() if (tag >> 2) & 1}
    | {"uint8": 64, "int8": 72}
)
"""Native dtype name → the little-endian typed-array tag an encoder should use."""
ALGORITHMS = ("bslz4", "lz4", "bszstd")
"""``bszstd``: Bitshuffle + Zstandard, HDF5 framing (Jungfraujoch's Stream2 variant)."""
_HEADER_BYTES = 12  # HDF5 framing: 8-byte BE uncompressed size, 4-byte BE block size


@dataclass(frozen=True, slots=True, eq=False)
class CompressedBytes:
    """Tag 56500 ``[algorithm, elem_size, data]``: a byte string, still compressed."""

    algorithm: str
    elem_size: int
    data: bytes | memoryview


@dataclass(frozen=True, slots=True, eq=False)
class TypedArray:
    """A typed array (tags 64–87) whose content may still be compressed."""

    tag: int
    content: bytes | memoryview | CompressedBytes

    @property
    def dtype(self) -> np.dtype:
        return TYPED_ARRAY_DTYPES[self.tag]


@dataclass(frozen=True, slots=True, eq=False)
class MultiDimArray:
    """Tag 40 (row-major) or 1040 (column-major) ``[dims, typed array]``."""

    dims: tuple[int, ...]
    content: object
    column_major: bool = False


class UnsupportedTag(Exception):
    """Raised inside the tag hook; :func:`loads` turns it into a rejection."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _tag_hook(first: object, second: object) -> object:
    """cbor2 hook: wrap arrays lazily. cbor2 >= 6 calls ``(tag, immutable)``, 5.x ``(decoder, tag)``."""
    tag = first if isinstance(first, cbor2.CBORTag) else cast(cbor2.CBORTag, second)  # 5.x: (decoder, tag)
    number, value = tag.tag, tag.value
    if number == TAG_DECTRIS_COMPRESSION:
        if not isinstance(value, list | tuple) or len(value) != 3:
            raise UnsupportedTag("bad_compression", "tag 56500 content must be [algorithm, elem_size, bytes]")
        algorithm, elem_size, data = value
        if not isinstance(algorithm, str) or not isinstance(data, bytes | memoryview):
            raise UnsupportedTag("bad_compression", "tag 56500 needs a text algorithm and a byte string")
        if not isinstance(elem_size, int) or isinstance(elem_size, bool):
            raise UnsupportedTag(
                "bad_compression", f"tag 56500 elem_size must be an integer, got {elem_size!r}"
            )
        return CompressedBytes(algorithm, elem_size, data)
    if 64 <= number <= 87:
        if number not in TYPED_ARRAY_DTYPES:
            raise UnsupportedTag("bad_dtype", f"typed-array tag {number} is not supported")
        if not isinstance(value, bytes | memoryview | CompressedBytes):
            raise UnsupportedTag("bad_array", f"typed-array tag {number} must wrap a byte string")
        return TypedArray(number, value)
    if number in (TAG_MULTI_DIM, TAG_MULTI_DIM_COLUMN_MAJOR):
        if not isinstance(value, list | tuple) or len(value) != 2 or not isinstance(value[0], list | tuple):
            raise UnsupportedTag("bad_array", f"tag {number} content must be [dims, array]")
        dims = value[0]
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
            raise UnsupportedTag("bad_shape", f"tag {number} dims must be non-negative integers")
        return MultiDimArray(tuple(dims), value[1], number == TAG_MULTI_DIM_COLUMN_MAJOR)
    return tag  # unknown tags stay CBORTag objects; fields we read are type-checked


def loads(message: bytes | memoryview, *, max_depth: int = 64, fast: bool = True) -> object:
    """Decode one CBOR message (a leading 55799 self-describe tag is skipped).

    With ``fast``, :func:`read_fast` decodes the common subset without copying byte strings
    (large image payloads stay views of ``message``); anything else goes to cbor2. Raises
    :class:`FrameRejected` (``bad_cbor`` or a tag problem's reason) on any malformed input.
    """
    if fast:
        try:
            return read_fast(message, max_depth=max_depth)
        except UnsupportedTag as exc:
            raise FrameRejected(exc.reason, exc.detail) from None
        except _Fallback:
            pass
    try:
        return cbor2.loads(message, tag_hook=_tag_hook, **_cbor2_options(max_depth))
    except UnsupportedTag as exc:
        raise FrameRejected(exc.reason, exc.detail) from None
    except cbor2.CBORDecodeError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, UnsupportedTag):
            raise FrameRejected(cause.reason, cause.detail) from None
        raise FrameRejected("bad_cbor", f"not valid CBOR: {_short(exc)}") from None
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError, LookupError) as exc:
        # cbor2's semantic decoders (dates, bignums, regexes, ...) raise these on bad content.
        raise FrameRejected("bad_cbor", f"not valid CBOR: {type(exc).__name__}: {_short(exc)}") from None


@functools.cache
def _cbor2_options(max_depth: int) -> dict[str, Any]:
    """The hardening options this cbor2 version accepts (``max_depth`` and hashable-key checks)."""
    options: dict[str, Any] = {}
    for key, value in (("max_depth", max_depth), ("strict_hashable_types", True)):
        probe: dict[str, Any] = {key: value}
        try:
            cbor2.loads(b"\xa0", **probe)
        except TypeError:
            continue
        options[key] = value
    return options


class _Fallback(Exception):
    """The fast reader met something it leaves to cbor2 (or malformed input cbor2 will name)."""


_FLOATS = {25: struct.Struct(">e"), 26: struct.Struct(">f"), 27: struct.Struct(">d")}
_SIMPLE = {20: False, 21: True, 22: None}
_FAST_TAGS = frozenset(
    {TAG_MULTI_DIM, TAG_MULTI_DIM_COLUMN_MAJOR, TAG_DECTRIS_COMPRESSION, *TYPED_ARRAY_DTYPES}
)


def read_fast(message: bytes | memoryview, *, max_depth: int = 64) -> object:
    """Zero-copy CBOR reader for what Stream V2 uses: definite-length items, text-keyed maps,
    floats, tag 0 dates and the array tags. Byte strings come back as ``memoryview`` slices.

    Raises ``_Fallback`` for anything else (including malformed input), ``UnsupportedTag``
    for bad array tags. Trailing bytes after the item are ignored, as cbor2 does.
    """
    try:
        buf = memoryview(message).cast("B")
    except TypeError:  # not a contiguous buffer
        raise _Fallback from None
    try:
        value, _ = _item(buf, 0, max_depth)
    except (IndexError, ValueError, struct.error):  # truncated, bad UTF-8 or date
        raise _Fallback from None
    return value


def _item(buf: memoryview, pos: int, depth: int) -> tuple[object, int]:
    if depth < 0:
        raise _Fallback
    ib = buf[pos]
    major, info = ib >> 5, ib & 31
    pos += 1
    if info < 24:
        arg = info
    elif info < 28:
        n = 1 << (info - 24)
        if major == 7:
            if info == 24:
                raise _Fallback  # simple values 32..255
            end = pos + n
            if end > len(buf):
                raise _Fallback
            return _FLOATS[info].unpack(buf[pos:end])[0], end
        arg = int.from_bytes(buf[pos : pos + n], "big")
        if pos + n > len(buf):
            raise _Fallback
        pos += n
    else:
        raise _Fallback  # indefinite lengths, reserved values
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major in (2, 3):
        end = pos + arg
        if end > len(buf):
            raise _Fallback
        return (buf[pos:end] if major == 2 else str(buf[pos:end], "utf-8")), end
    if major == 4:
        if arg > len(buf) - pos:
            raise _Fallback
        items = []
        for _ in range(arg):
            value, pos = _item(buf, pos, depth - 1)
            items.append(value)
        return items, pos
    if major == 5:
        if arg > len(buf) - pos:
            raise _Fallback
        mapping: dict[str, object] = {}
        for _ in range(arg):
            key, pos = _item(buf, pos, depth - 1)
            if not isinstance(key, str):
                raise _Fallback
            mapping[key], pos = _item(buf, pos, depth - 1)
        return mapping, pos
    if major == 6:
        if arg == TAG_SELF_DESCRIBE and pos == 3:
            return _item(buf, pos, depth)
        if arg == 0:
            text, pos = _item(buf, pos, depth - 1)
            if not isinstance(text, str):
                raise _Fallback
            return datetime.datetime.fromisoformat(text), pos
        if arg not in _FAST_TAGS:
            raise _Fallback
        value, pos = _item(buf, pos, depth - 1)
        return _tag_hook(cbor2.CBORTag(arg, value), False), pos
    if info in _SIMPLE:
        return _SIMPLE[info], pos
    raise _Fallback  # undefined, other simple values


def _short(exc: BaseException, limit: int = 100) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _declared_size(data: bytes | memoryview) -> int:
    if len(data) < _HEADER_BYTES:
        raise FrameRejected(
            "bad_compression", f"compressed stream of {len(data)} bytes has no HDF5-framing header"
        )
    return int.from_bytes(data[:8], "big")


def to_ndarray(value: object, *, max_bytes: int, what: str = "array") -> np.ndarray:
    """Decode a :class:`MultiDimArray` into a 2-D native-endian array, decompressing if needed.

    A decompressed array is a writable buffer of its own (callers may clean it in place); an
    uncompressed one is a read-only zero-copy view of the message. Raises
    :class:`FrameRejected` (``bad_array``, ``bad_dtype``, ``bad_shape``, ``oversize``,
    ``size_mismatch``, ``bad_compression``).
    """
    if not isinstance(value, MultiDimArray):
        raise FrameRejected("bad_array", f"{what} is not a tag-40 multi-dimensional array")
    if not isinstance(value.content, TypedArray):
        raise FrameRejected("bad_dtype", f"{what} holds a generic CBOR array, not a typed array")
    dims = value.dims
    if len(dims) != 2 or dims[0] < 1 or dims[1] < 1:
        raise FrameRejected("bad_shape", f"{what} dims must be 2 positive integers [y, x], got {list(dims)}")
    dtype = value.content.dtype
    expected = math.prod(dims) * dtype.itemsize
    if expected > max_bytes:
        raise FrameRejected("oversize", f"{what} of {list(dims)} x {dtype.name} exceeds {max_bytes} bytes")
    content = value.content.content
    owned = isinstance(content, CompressedBytes)
    raw = _decompress(content, expected, what) if isinstance(content, CompressedBytes) else content
    if len(raw) != expected:
        raise FrameRejected(
            "size_mismatch", f"{what} has {len(raw)} bytes; {list(dims)} x {dtype.name} needs {expected}"
        )
    shape = dims[::-1] if value.column_major else dims
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if not owned:
        array.flags.writeable = False  # a view of the caller's message: never cleaned in place
    if value.column_major:
        array = np.ascontiguousarray(array.T)  # pipelines and the store expect C order
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    return array


def _decompress(content: CompressedBytes, expected: int, what: str) -> np.ndarray:
    if content.algorithm not in ALGORITHMS:
        raise FrameRejected(
            "bad_compression", f"{what}: unknown compression {content.algorithm[:20]!r} (bslz4, lz4, bszstd)"
        )
    if content.algorithm in ("bslz4", "bszstd") and content.elem_size not in (1, 2, 4, 8, 16):
        raise FrameRejected(
            "bad_compression",
            f"{what}: {content.algorithm} elem_size {content.elem_size} is not 1, 2, 4 or 8",
        )
    declared = _declared_size(content.data)
    if declared != expected:  # checked before the library allocates what the header declares
        raise FrameRejected(
            "size_mismatch",
            f"{what}: compressed stream declares {declared} bytes, the array needs {expected}",
        )
    try:
        return decompress_into(content.data, content.algorithm, max(content.elem_size, 1), expected)
    except DecompressError as exc:
        raise FrameRejected(
            "bad_compression", f"{what}: {content.algorithm} stream is corrupt: {exc}"
        ) from None
