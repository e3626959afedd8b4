"""Check a TNEF blob the way tnefparse 1.4 will read it, before tnefparse reads it.

tnefparse trusts every count in the blob. `decode_mapi` loops over a 32-bit property count and
merely `continue`s once the data has run out, so a 47-byte winmail.dat costs about 17 minutes of
CPU; a multi-value count of fixed-size values loops the same way (slicing past the end never
raises); and `TNEF()` copies the rest of the blob for every attribute (`data[offset:]`), which
is quadratic in the number of attributes. Its `except Exception` also swallows RQ's job timeout.

`check` walks the same structure with the same offsets, linearly, and raises `Unsafe` when a
count is larger than the bytes left could hold. Counts are judged generously (every property
takes at least 4 bytes, every value at least 2), so a real Outlook blob, even a slightly broken
one, passes. Where tnefparse would stop on an error the walk may go on: checking more than
tnefparse will run is harmless, checking less is not. The result says how many bytes
tnefparse's attribute copies would cost, so the caller can choose the linear reader instead.
The unpacking itself still runs in a child process under CPU and memory limits (sandbox.py):
this check removes the known traps, the limits bound the unknown ones.
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass

SIGNATURE = 0x223E9F78
LVL_ATTACHMENT = 0x02
MIN_OBJECT = 12  # tnefparse: `while offset + MIN_OBJ_SIZE < len(data)`
ATT_ATTACH_REND_DATA = 0x9002
ATT_MAPI_PROPS = 0x9003
ATT_RECIP_TABLE = 0x9004
ATT_ATTACHMENT = 0x9005
ATT_OEM_CODEPAGE = 0x9007
ATT_ATTACH_CREATE_DATE = 0x8012
ATT_ATTACH_MODIFY_DATE = 0x8013
PR_ATTACH_DATA_OBJ = 0x3701
IMESSAGE_SIG = b"\x07\x03\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"
# Outlook nests an attached message in an attached message rarely more than once or twice.
MAX_EMBED_DEPTH = 4
# tnefparse makes a Python object per MAPI value; a real blob has dozens to a few thousand.
MAX_VALUES = 200_000

GUID_EXISTS_FLAG = 0x8000
MULTI_VALUE_FLAG = 0x1000
SHORT_TYPES = (0x0002, 0x000B)
FIXED_SIZES = {
    0x0002: 2,
    0x000B: 2,
    0x0003: 4,
    0x0004: 4,
    0x000A: 4,
    0x0005: 8,
    0x0006: 8,
    0x0007: 8,
    0x0014: 8,
    0x0040: 8,
    0x0048: 16,
}
VARIABLE_TYPES = (0x001E, 0x001F, 0x000D, 0x0102, 0x0000)
STRING, UNICODE_STRING = 0x001E, 0x001F
BYTES_TYPES = (0x0000, 0x0102, 0x000D)

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_DATE = struct.Struct("<HHHHHH")


class Unsafe(Exception):
    """A count in the blob is larger than its bytes allow: tnefparse would loop on it."""


@dataclass
class Cost:
    """What tnefparse would spend on the blob (all nesting levels)."""

    copy_bytes: int = 0  # bytes copied by `TNEF()`'s `data[offset:]` per attribute
    attributes: int = 0
    values: int = 0  # MAPI values, one Python object each


class _Stop(Exception):
    """tnefparse raises here: it reads nothing further of this structure."""


def check(blob: bytes) -> Cost:
    """Raise Unsafe when a count would make tnefparse loop; return what reading it costs."""
    cost = Cost()
    with contextlib.suppress(_Stop):
        _check_tnef(blob, 0, cost)
    return cost


def check_mapi(data: bytes, codepage: str | None) -> None:
    """One MAPI property block (attAttachment), as `decode_mapi(data, codepage)` reads it."""
    with contextlib.suppress(_Stop):
        _mapi(data, codepage, 0, None, Cost())


def _u16(data: bytes, offset: int) -> int:
    if offset + 2 > len(data):
        raise _Stop
    return int(_U16.unpack_from(data, offset)[0])


def _u32(data: bytes, offset: int) -> int:
    if offset + 4 > len(data):
        raise _Stop
    return int(_U32.unpack_from(data, offset)[0])


def _check_tnef(data: bytes, depth: int, cost: Cost) -> None:
    """Mirror of `TNEF.__init__`: framing, then each attribute tnefparse decodes."""
    if depth > MAX_EMBED_DEPTH:
        raise Unsafe(f"attached messages nested deeper than {MAX_EMBED_DEPTH}")
    if _u32(data, 0) != SIGNATURE:
        raise _Stop
    _u16(data, 4)
    codepage: str | None = None
    attachment_codepage: str | None = None  # tnefparse binds it when the attachment starts
    offset = 6
    attachment = False
    size = len(data)
    while offset + MIN_OBJECT < size:
        cost.copy_bytes += size - offset
        cost.attributes += 1
        level = data[offset]
        name = _u16(data, offset + 1)
        length = min(size - offset, _u32(data, offset + 5) + 11)
        body = data[offset + 9 : offset + length - 2]
        offset += length
        if name == ATT_ATTACH_REND_DATA:
            attachment = True
            attachment_codepage = codepage
        if level == LVL_ATTACHMENT:
            if not attachment:
                raise _Stop  # tnefparse: NameError on `attachment`
            _attachment_attribute(name, body, attachment_codepage, depth, cost)
        elif name == ATT_MAPI_PROPS:
            _mapi(body, codepage, 0, None, cost)
        elif name == ATT_OEM_CODEPAGE:
            codepage = _codepage(body)
        elif name == ATT_RECIP_TABLE:  # checked whatever its type: more than tnefparse reads
            _recipients(body, codepage, cost)


def _codepage(body: bytes) -> str:
    from tnefparse.codepage import Codepage

    return str(Codepage(_u32(body, 0)).codepage())


def _attachment_attribute(
    name: int, body: bytes, codepage: str | None, depth: int, cost: Cost
) -> None:
    if name in (ATT_ATTACH_CREATE_DATE, ATT_ATTACH_MODIFY_DATE):
        if len(body) < _DATE.size:
            raise _Stop
        return
    if name != ATT_ATTACHMENT:
        return
    embedded: list[bytes] = []
    _mapi(body, codepage, 0, embedded, cost)
    for value in embedded:
        if value.startswith(IMESSAGE_SIG):
            _check_tnef(value[len(IMESSAGE_SIG) :], depth + 1, cost)


def _recipients(body: bytes, codepage: str | None, cost: Cost) -> None:
    """`for _ in range(rows): decode_mapi(..., starting_offset)`: each row reads a 4-byte
    count first, so the rows run out with the bytes; only their property counts need checking."""
    rows = _u32(body, 0)
    offset = 4
    for _ in range(rows):
        offset = _mapi(body, codepage, offset, None, cost)


def _mapi(
    data: bytes, codepage: str | None, start: int, embedded: list[bytes] | None, cost: Cost
) -> int:
    """Mirror of `decode_mapi`: returns the offset it returns (used by the recipient rows).

    `embedded` collects the PR_ATTACH_DATA_OBJ values tnefparse will parse as TNEF.
    """
    size = len(data)
    count = _u32(data, start)  # outside decode_mapi's try: an error ends the whole TNEF
    offset = start + 4
    if count > (size - offset) // 4 + 1:
        raise Unsafe(f"MAPI property count {count} exceeds what {size - offset} bytes can hold")
    for _ in range(count):
        if offset >= size:
            break  # tnefparse only `continue`s from here on: nothing more is read
        try:
            offset = _property(data, offset, codepage, embedded, cost)
        except _Stop as stop:
            return int(stop.args[0])
    return offset


def _property(
    data: bytes, offset: int, codepage: str | None, embedded: list[bytes] | None, cost: Cost
) -> int:
    """One property of decode_mapi's loop; on error raises _Stop(offset decode_mapi returns)."""
    size = len(data)
    attr_type = _u16_or_stop(data, offset)
    offset += 2
    attr_name = _u16_or_stop(data, offset)
    offset += 2
    if attr_name >= GUID_EXISTS_FLAG:
        if offset + 16 > size:
            raise _Stop(offset)  # tnefparse: uuid.UUID(bytes_le=<16 bytes) raises
        offset += 16
        kind = _u32_or_stop(data, offset, offset)
        offset += 4
        if kind == 0:
            _u32_or_stop(data, offset, offset)
            offset += 4
        else:
            iid_len = _u32_or_stop(data, offset, offset)
            offset += 4
            iid_len += -iid_len % 4
            try:
                data[offset : offset + iid_len].decode("utf-16")
            except UnicodeDecodeError:
                raise _Stop(offset) from None
            offset += iid_len
    values: int | None = None
    if attr_type & MULTI_VALUE_FLAG:
        attr_type ^= MULTI_VALUE_FLAG
        values = _u32_or_stop(data, offset, offset)
        offset += 4
        if values > (size - offset) // 2 + 1:
            raise Unsafe(f"MAPI value count {values} exceeds what {size - offset} bytes can hold")
    cost.values += values or 1
    if cost.values > MAX_VALUES:
        raise Unsafe(f"more than {MAX_VALUES} MAPI values")
    for _ in range(values or 1):
        offset = _value(data, offset, attr_type, attr_name, codepage, bool(values), embedded)
    if (values or 1) % 2 and attr_type in SHORT_TYPES:
        offset += 2
    return offset


def _u16_or_stop(data: bytes, at: int) -> int:
    if at + 2 > len(data):
        raise _Stop(at)
    return int(_U16.unpack_from(data, at)[0])


def _u32_or_stop(data: bytes, at: int, returned: int) -> int:
    if at + 4 > len(data):
        raise _Stop(returned)
    return int(_U32.unpack_from(data, at)[0])


def _value(
    data: bytes,
    offset: int,
    attr_type: int,
    attr_name: int,
    codepage: str | None,
    multi: bool,
    embedded: list[bytes] | None,
) -> int:
    """Mirror of `parse_property`; on error raises _Stop(offset before this value)."""
    if attr_type in FIXED_SIZES:
        return offset + FIXED_SIZES[attr_type]
    if attr_type not in VARIABLE_TYPES:
        raise _Stop(offset)  # tnefparse: ValueError("Unknown MAPI type")
    start = offset
    if multi:
        count = 1
    else:
        count = _u32_or_stop(data, offset, start)
        offset += 4
    items: list[bytes] = []
    for _ in range(count):  # each value reads a 4-byte length: they run out with the bytes
        length = _u32_or_stop(data, offset, start)
        offset += 4
        length += -length % 4
        item = data[offset : offset + length]
        try:
            if attr_type == UNICODE_STRING:
                item.decode("utf-16")
            elif attr_type == STRING:
                item.decode(codepage)  # type: ignore[arg-type]  # None raises, as in tnefparse
        except Exception:  # whatever tnefparse's decode raises, it stops there
            raise _Stop(start) from None
        if embedded is not None and attr_name == PR_ATTACH_DATA_OBJ:
            items.append(item)
        offset += length
    if items and attr_type in BYTES_TYPES:
        embedded.append(b"".join(item.rstrip(b"\x00") for item in items))  # type: ignore[union-attr]
    return offset
