"""Decompress bslz4 / lz4 (HDF5 framing) into a writable numpy buffer we own.

``dectris.compression.decompress`` returns an immutable ``bytes``: zeroing a detector's module
gaps then means copying the whole frame (18 MB for an EIGER2 4M), which cost a third of the
decode time. The same extension module exports the library's C API,
``compression_decompress_buffer(algorithm, dst, dst_size, src, src_size, elem_size)``
(``dectris_compression/src/compression.h``): we call it through :mod:`ctypes` (which releases
the GIL) into a fresh ``np.empty`` buffer, so masking happens in place.

The C enum values are checked once per process against the Python API on a hand-made stream in
which bslz4 and lz4 decode differently (:func:`self_test`); if the check fails (a future
dectris-compression changed the API) we fall back to the Python API plus one copy, with one log
line. Other bitshuffle libraries were measured and are slower than dectris-compression on the
EIGER2 4M frames (``bitshuffle.decompress_lz4`` 1.35x, hdf5plugin's ``bshuf_decompress_lz4`` 1.7x
the time), so they would not meet the 0.8 target even with free masking.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
import threading

import numpy as np
from dectris import compression as _dectris

log = logging.getLogger("monitor.sources.decompress_into")

COMPRESSION_ERROR = (1 << (8 * ctypes.sizeof(ctypes.c_size_t))) - 1
"""``SIZE_MAX``: the C API's error return."""
ENUM = {"bslz4": 0, "lz4": 1}
"""``CompressionAlgorithm`` values in ``compression.h`` (verified at run time by :func:`self_test`)."""
POOL_MIN_BYTES = 1 << 20
"""Smaller buffers are simply allocated (their page faults cost little)."""


class BufferPool:
    """Reuse decompression buffers once nothing references them any more.

    A fresh 18 MB buffer costs the kernel's page faults and zeroing on first touch (about as
    much as the decompression's own memory traffic); a buffer whose frames are gone is reused
    instead. A buffer is free when the pool holds the only reference to it: every numpy view
    of it (``frame.array``) references it through ``.base``, so while a pipeline, a queue or
    the store still holds a frame, its buffer is not handed out again.
    """

    def __init__(self, keep: int = 6) -> None:
        self.keep = keep
        self.reused = 0
        self.allocated = 0
        self._buffers: dict[int, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        """A writable ``uint8`` array of ``nbytes`` that nobody else references."""
        with self._lock:
            buffers = self._buffers.setdefault(nbytes, [])
            for i in range(len(buffers)):
                # references: the list, and getrefcount's argument
                if sys.getrefcount(buffers[i]) == 2:
                    self.reused += 1
                    return buffers[i]
            self.allocated += 1
            out = np.empty(nbytes, np.uint8)
            if len(buffers) < self.keep:
                buffers.append(out)
            else:
                buffers[self.allocated % self.keep] = out  # (the dropped one lives on with its frames)
            if len(self._buffers) > 4:  # frame sizes changed: forget the old ones
                self._buffers = {nbytes: buffers}
            return out


POOL = BufferPool()
"""The process's pool for frame-sized buffers (thread-safe)."""


class DecompressError(ValueError):
    """The stream is corrupt or does not decode to exactly the expected size."""


def _test_stream(payload: bytes) -> bytes:
    """One HDF5-framed block holding ``payload`` as a single all-literal LZ4 sequence."""
    n = len(payload)
    assert 15 <= n < 15 + 255
    block = bytes([0xF0, n - 15]) + payload  # token: 15+ literals, no match (a valid last sequence)
    return n.to_bytes(8, "big") + n.to_bytes(4, "big") + len(block).to_bytes(4, "big") + block


@functools.cache
def _c_function() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """The C API entry point, or ``None`` when it is missing or fails :func:`self_test`."""
    path = getattr(_dectris, "__file__", None)
    if not path or not os.path.exists(path):
        log.warning("dectris-compression has no shared library file: frames are copied before masking")
        return None
    try:
        fn = ctypes.CDLL(path).compression_decompress_buffer
    except (OSError, AttributeError) as exc:
        log.warning("dectris-compression C API not found (%s): frames are copied before masking", exc)
        return None
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                   ctypes.c_size_t]  # fmt: skip
    if not self_test(fn):
        log.warning(
            "dectris-compression %s: its C API does not decode like its Python API; frames are copied "
            "before masking",
            _version(),
        )
        return None
    return fn


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dectris-compression")
    except PackageNotFoundError:
        return "?"


def self_test(fn: object) -> bool:
    """Whether ``fn`` decodes a stream exactly as ``dectris.compression.decompress`` does."""
    payload = bytes(np.random.default_rng(17).integers(1, 255, 32, dtype=np.uint8))
    stream = _test_stream(payload)
    for algorithm, value in ENUM.items():
        expected = _dectris.decompress(stream, algorithm, elem_size=4)
        out = np.zeros(len(expected), np.uint8)
        src = np.frombuffer(stream, np.uint8)
        n = fn(value, out.ctypes.data, out.nbytes, src.ctypes.data, src.nbytes, 4)  # type: ignore[operator]
        if n != len(expected) or out.tobytes() != expected:
            return False
    return _dectris.decompress(stream, "bslz4", elem_size=4) != _dectris.decompress(stream, "lz4")


def available() -> bool:
    """Whether frames decompress straight into writable buffers (the C API passed its self-test)."""
    return _c_function() is not None


def decompress_into(data: bytes | memoryview, algorithm: str, elem_size: int, nbytes: int) -> np.ndarray:
    """Decompress ``data`` into a new writable ``uint8`` array of exactly ``nbytes``.

    Raises :class:`DecompressError` when the stream is corrupt or decodes to another size.
    Without the C API, the Python API's bytes are copied once (still writable, only slower).
    """
    fn = _c_function()
    if fn is None or algorithm not in ENUM:  # e.g. Jungfraujoch's bszstd: Python API plus one copy
        try:
            raw = _dectris.decompress(data, algorithm, elem_size=elem_size)
        except (RuntimeError, ValueError) as exc:
            raise DecompressError(str(exc)) from None
        if len(raw) != nbytes:
            raise DecompressError(f"decoded {len(raw)} bytes, expected {nbytes}")
        return np.frombuffer(raw, np.uint8).copy()
    src = np.frombuffer(data, np.uint8)
    out = POOL.take(nbytes) if nbytes >= POOL_MIN_BYTES else np.empty(nbytes, np.uint8)
    n = fn(ENUM[algorithm], out.ctypes.data, nbytes, src.ctypes.data, src.nbytes, elem_size)
    if n == COMPRESSION_ERROR:
        raise DecompressError("error decompressing stream")
    if n != nbytes:
        raise DecompressError(f"decoded {n} bytes, expected {nbytes}")
    return out
