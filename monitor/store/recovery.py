"""Clearing the superblock's "open for write" flags of a file whose writer died (``h5clear -s``).

A writer that has switched on SWMR and is then killed leaves the file openable with
``h5py.File(path, "r", swmr=True)``: nothing here is needed. A writer killed *before*
``swmr_mode = True`` (during :class:`~monitor.store.writer.RunStore` creation) leaves only the
write-access flag set, and HDF5 then refuses every open mode ("file is already open for
write" / "file is not already open for SWMR writing"). h5py has no binding for clearing the
flags and ``h5clear`` is often not installed, so we patch the superblock directly:
version 2/3 superblocks hold the flags in byte 11 and end with a Jenkins lookup3 checksum.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from monitor.errors import StoreError

SIGNATURE = b"\x89HDF\r\n\x1a\n"
_FLAGS_OFFSET = 11
_M = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``, as HDF5's ``H5_checksum_lookup3``."""
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & _M
    if n == 0:
        return c
    i = 0
    while n - i > 12:
        a = (a + int.from_bytes(data[i : i + 4], "little")) & _M
        b = (b + int.from_bytes(data[i + 4 : i + 8], "little")) & _M
        c = (c + int.from_bytes(data[i + 8 : i + 12], "little")) & _M
        a = (a - c) & _M ^ _rot(c, 4)
        c = (c + b) & _M
        b = (b - a) & _M ^ _rot(a, 6)
        a = (a + c) & _M
        c = (c - b) & _M ^ _rot(b, 8)
        b = (b + a) & _M
        a = (a - c) & _M ^ _rot(c, 16)
        c = (c + b) & _M
        b = (b - a) & _M ^ _rot(a, 19)
        a = (a + c) & _M
        c = (c - b) & _M ^ _rot(b, 4)
        b = (b + a) & _M
        i += 12
    tail = data[i:].ljust(12, b"\0")
    a = (a + int.from_bytes(tail[0:4], "little")) & _M
    b = (b + int.from_bytes(tail[4:8], "little")) & _M
    c = (c + int.from_bytes(tail[8:12], "little")) & _M
    c = ((c ^ b) - _rot(b, 14)) & _M
    a = ((a ^ c) - _rot(c, 11)) & _M
    b = ((b ^ a) - _rot(a, 25)) & _M
    c = ((c ^ b) - _rot(b, 16)) & _M
    a = ((a ^ c) - _rot(c, 4)) & _M
    b = ((b ^ a) - _rot(a, 14)) & _M
    c = ((c ^ b) - _rot(b, 24)) & _M
    return c


def _find_superblock(fh: BinaryIO) -> tuple[int, bytes]:
    """Offset and bytes of a version 2/3 superblock (searched at 0, 512, 1024, 2048, ...)."""
    size = os.fstat(fh.fileno()).st_size
    offset = 0
    while offset + len(SIGNATURE) <= size:
        fh.seek(offset)
        head = fh.read(12)
        if head[:8] == SIGNATURE:
            version, size_of_offsets = head[8], head[9]
            if version not in (2, 3):
                raise StoreError(f"superblock version {version} has no clearable status flags")
            length = 12 + 4 * size_of_offsets + 4
            fh.seek(offset)
            block = fh.read(length)
            if len(block) != length:
                raise StoreError("truncated superblock")
            if lookup3(block[:-4]) != int.from_bytes(block[-4:], "little"):
                raise StoreError("superblock checksum mismatch")
            return offset, block
        offset = 512 if offset == 0 else offset * 2
    raise StoreError("no HDF5 superblock found")


def status_flags(path: Path) -> int:
    """The superblock's file-consistency flags (0 when cleanly closed)."""
    with open(path, "rb") as fh:
        _, block = _find_superblock(fh)
    return block[_FLAGS_OFFSET]


def clear_status_flags(path: Path) -> bool:
    """Clear the flags in place, like ``h5clear -s``; True if anything changed.

    Only for a file whose writer is gone: clearing the flags under a live writer lets
    readers open a file whose metadata may be mid-update.
    """
    try:
        with open(path, "r+b") as fh:
            offset, block = _find_superblock(fh)
            if block[_FLAGS_OFFSET] == 0:
                return False
            body = bytearray(block[:-4])
            body[_FLAGS_OFFSET] = 0
            fh.seek(offset)
            fh.write(bytes(body) + lookup3(bytes(body)).to_bytes(4, "little"))
    except OSError as exc:
        raise StoreError(f"cannot clear status flags of {path}: {exc}") from exc
    return True


def cleared_copy(path: Path) -> Path:
    """A temporary copy of ``path`` with the flags cleared (the original is left untouched)."""
    fd, tmp = tempfile.mkstemp(prefix=f"{Path(path).stem}.", suffix=".recovered.h5")
    os.close(fd)
    try:
        shutil.copyfile(path, tmp)
        clear_status_flags(Path(tmp))
    except (OSError, StoreError):
        os.unlink(tmp)
        raise
    return Path(tmp)


def recover_file(path: Path) -> str:
    """``operando-monitor recover FILE``: clear the flags of a run file whose writer died (kill -9,
    power loss) so that plain ``h5py.File(path, "r")`` opens it, and say what it holds. Rows past
    the last commit (``/entry/committed``) are fill values a reader must ignore; they are reported.
    Run it only when no daemon is writing the file."""
    import h5py  # the store's dependency; kept local so the superblock code stays import-light

    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such file")
    flags = status_flags(path)
    changed = clear_status_flags(path)
    try:
        with h5py.File(path, "r") as f:
            committed = f["entry/committed"]
            tables = json.loads(committed.attrs["tables"])
            counts = dict(zip(tables, (int(n) for n in committed[()]), strict=True))
            frames = f["entry/frames"].shape[0]
    except (OSError, KeyError, ValueError) as exc:
        raise StoreError(f"{path}: flags cleared but the file does not open as a run file: {exc}") from exc
    kept = ", ".join(f"{k} {n}" for k, n in counts.items())
    state = f"status flags 0x{flags:02x} cleared" if changed else "was closed cleanly (nothing to clear)"
    beyond = frames - counts.get("frames", frames)
    extra = f"; {beyond} uncommitted frames row(s) after the last flush are ignored" if beyond > 0 else ""
    return f"{path}: {state}; committed rows: {kept}{extra}"
