"""What areaDetector's NDPluginZMQ really sends: a tolerant header parse and EPICS time stamps.

NDPluginZMQ (paulscherrerinstitute/ADZMQ, ``NDPluginZMQ::getAttributesAsJSON``) writes the
``ndattr`` object with ``std::stringstream <<``, so the header is not always JSON:

- a NaN or infinite Float32/Float64 attribute prints as ``nan`` / ``-nan`` / ``inf`` / ``-inf``;
- an Int8 / UInt8 attribute prints as one raw character (``char`` streaming), which may be a
  quote, a comma, a control byte or a byte above 0x7F (not UTF-8);
- a String attribute is written between quotes without escaping, so a Windows path
  (``C:\\data\\run``) or a quote inside the value breaks the JSON.

:func:`parse_header_tolerant` keeps the strict JSON parse as the fast path; only when it fails
does it split off ``ndattr`` (always the last key NDPluginZMQ writes), parse the rest strictly,
and scan the attributes with the rules above. If even that fails, the attributes are dropped and
the pixels kept (:data:`NDATTR_DROPPED`). Pure functions; no I/O.

``timeStamp`` is ``NDArray::timeStamp`` = ``epicsTS.secPastEpoch + nsec / 1e9``: seconds since the
EPICS epoch 1990-01-01 UTC, :data:`EPICS_EPOCH_OFFSET_S` before Unix time. :func:`to_unix_time`
converts per the source's ``timestamp_epoch`` setting.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

EPICS_EPOCH_OFFSET_S = 631_152_000.0
"""Seconds from 1970-01-01 to 1990-01-01 UTC (20 years, 5 of them leap years)."""
AUTO_EPOCH_WINDOW_S = 30 * 86_400.0
"""``auto``: a stamp is read as EPICS time only if that puts it within 30 days of reception."""

NDATTR_REPAIRED = "ndattr_repaired"
"""``FrameMeta.extra`` flag: the header was not valid JSON; the attributes were recovered."""
NDATTR_DROPPED = "ndattr_dropped"
"""``FrameMeta.extra`` flag: the attributes could not be recovered and were dropped."""

_NDATTR_KEY = '"ndattr":'
_NEXT_KEY = re.compile(r',\s*"[^"]*"\s*:')
_SPECIAL_FLOATS = {"nan": math.nan, "-nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_SPECIAL_FLOATS.update({"+inf": math.inf, "infinity": math.inf, "-infinity": -math.inf})


class HeaderUnreadable(ValueError):
    """The header is not JSON and not the NDPluginZMQ shape either."""


@dataclass(frozen=True, slots=True)
class ParsedHeader:
    header: object
    """The decoded JSON value (the caller checks that it is an object)."""
    repair: str = ""
    """"" (valid JSON), :data:`NDATTR_REPAIRED` or :data:`NDATTR_DROPPED`."""
    detail: str = ""
    """Why the strict parse failed (for the log line)."""


def parse_header_tolerant(raw: bytes | memoryview) -> ParsedHeader:
    """Parse a JSON header, salvaging NDPluginZMQ's invalid ``ndattr``; raise :class:`HeaderUnreadable`."""
    strict_error = ""
    try:
        return ParsedHeader(json.loads(str(raw, "utf-8-sig")))
    except UnicodeDecodeError as exc:
        strict_error = f"not UTF-8 ({exc.reason} at byte {exc.start})"
    except (ValueError, RecursionError) as exc:
        strict_error = str(exc)[:100]
    text = bytes(raw).decode("latin-1")  # every byte maps to one character; ndattr bytes survive
    cut = text.find(_NDATTR_KEY)
    if cut < 0:
        raise HeaderUnreadable(f"header is not valid JSON: {strict_error}")
    head = text[:cut].rstrip().rstrip(",").rstrip()
    try:
        header = json.loads((head + "}").encode("latin-1").decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HeaderUnreadable(f"header is not valid JSON, even without 'ndattr': {strict_error}") from None
    if not isinstance(header, dict):
        raise HeaderUnreadable("header is not a JSON object")
    body = text[cut + len(_NDATTR_KEY) :].strip()
    if body.endswith("}"):
        body = body[:-1].rstrip()  # the header's own closing brace
    try:
        header["ndattr"] = scan_ndattr(body)
    except ValueError as exc:
        return ParsedHeader(header, NDATTR_DROPPED, f"{strict_error}; attributes dropped: {exc}")
    return ParsedHeader(header, NDATTR_REPAIRED, strict_error)


def _text(value: str) -> str:
    """A string value scanned as latin-1 back to its UTF-8 reading (bad bytes replaced)."""
    return value.encode("latin-1").decode("utf-8", errors="replace")


def _scalar(token: str) -> int | float | str:
    """A non-string ndattr value: a number, nan/inf, or one raw Int8/UInt8 character."""
    low = token.strip().lower()
    if low in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[low]
    if len(token) == 1 and not token.isdigit():
        return ord(token)  # NDAttrInt8/UInt8 streamed as a char: its code is the value
    try:
        value = json.loads(token)
    except ValueError:
        raise ValueError(f"unreadable value {token[:30]!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"unexpected value {token[:30]!r}")
    return value


def scan_ndattr(body: str) -> dict[str, int | float | str]:
    """Scan NDPluginZMQ's ``{"name":value,...}`` with unescaped strings and raw chars; raise ValueError."""
    if not body.startswith("{") or not body.endswith("}"):
        raise ValueError("ndattr is not an object")
    s = body[1:-1]
    out: dict[str, int | float | str] = {}
    pos = 0
    n = len(s)
    while pos < n:
        if s[pos] != '"':
            raise ValueError(f"expected a quoted name at offset {pos}")
        colon = s.find('":', pos + 1)
        if colon < 0:
            raise ValueError(f"name without a value at offset {pos}")
        name = _text(s[pos + 1 : colon])
        v = colon + 2
        if v >= n:
            raise ValueError(f"attribute {name!r} has no value")
        # One raw character followed by the next key or the end: an Int8/UInt8 char.
        one_char = v + 1 == n or _NEXT_KEY.match(s, v + 1) is not None
        if s[v] == '"' and not one_char:
            end = _string_end(s, v)
            out[name] = _text(s[v + 1 : end])
            pos = end + 1
        elif one_char:
            out[name] = _scalar(s[v])
            pos = v + 1
        else:
            m = _NEXT_KEY.search(s, v)
            end = m.start() if m else n
            out[name] = _scalar(s[v:end])
            pos = end
        if pos < n:
            if s[pos] != ",":
                raise ValueError(f"expected ',' after attribute {name!r}")
            pos += 1
            while pos < n and s[pos] in " \t\r\n":
                pos += 1
    return out


def _string_end(s: str, start: int) -> int:
    """Index of the quote closing an unescaped string value starting at ``start``.

    The string ends at the first quote that is followed by the next ``,"name":`` or by the end
    of the object; quotes and backslashes in between belong to the value.
    """
    i = start + 1
    while True:
        i = s.find('"', i)
        if i < 0:
            raise ValueError("unterminated string value")
        if i + 1 == len(s) or _NEXT_KEY.match(s, i + 1):
            return i
        i += 1


def to_unix_time(value: float, epoch: str, t_received: float) -> float:
    """Convert a sender's ``timeStamp`` to Unix seconds.

    ``epics``: add :data:`EPICS_EPOCH_OFFSET_S`. ``unix``: as sent. ``auto``: EPICS if, read that
    way, the stamp lies within :data:`AUTO_EPOCH_WINDOW_S` of the receive time while read as Unix
    it does not (a live detector's clock is near ours; 20 years apart cannot be both).
    """
    if epoch == "epics":
        return value + EPICS_EPOCH_OFFSET_S
    if epoch == "auto":
        as_epics = value + EPICS_EPOCH_OFFSET_S
        if abs(as_epics - t_received) <= AUTO_EPOCH_WINDOW_S < abs(value - t_received):
            return as_epics
    return value
