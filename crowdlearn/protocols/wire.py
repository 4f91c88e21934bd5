"""The wire format: what a message costs is the length of its encoding.

Every message class is a frozen dataclass registered with :func:`message` under a 16-bit tag.
:func:`encode` writes the tag, then each field in declaration order as a self-describing value;
:func:`decode` inverts it exactly.  NumPy arrays travel as dtype, shape and raw little-endian
bytes, so a float32 weight tensor of ``n`` entries costs ``4n`` bytes plus a small header.

Examples
--------
>>> import numpy as np
>>> from dataclasses import dataclass
>>> @message(0x7F00)
... @dataclass(frozen=True)
... class Ping:
...     seq: int
...     payload: np.ndarray
>>> data = encode(Ping(3, np.zeros(10, np.float32)))
>>> len(data)        # 2 tag + 9 int + (1 code + 1 dtype + 1 ndim + 4 dim) + 40 payload
58
>>> decode(data).seq
3
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import numpy as np

_BY_TAG: dict[int, type] = {}
_TAG_OF: dict[type, int] = {}

_DTYPES = [np.dtype(t).newbyteorder("<") for t in (
    "float32", "float64", "int64", "int32", "uint8", "uint32", "uint64", "bool", "int8", "int16",
    "float16", "uint16")]
_DTYPE_CODE = {d: i for i, d in enumerate(_DTYPES)}


def message(tag: int):
    """Class decorator registering a frozen dataclass as a wire message under ``tag``."""

    def register(cls: type) -> type:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass to be a wire message")
        if tag in _BY_TAG and _BY_TAG[tag] is not cls:
            raise ValueError(f"wire tag {tag:#06x} already used by {_BY_TAG[tag].__name__}")
        if not 0 <= tag < 1 << 16:
            raise ValueError(f"wire tag must fit in 16 bits; got {tag}")
        _BY_TAG[tag] = cls
        _TAG_OF[cls] = tag
        cls.__wire_fields__ = tuple(f.name for f in dataclasses.fields(cls))
        return cls

    return register


def encode(msg: Any) -> bytes:
    """Encode a registered message to bytes."""
    try:
        tag = _TAG_OF[type(msg)]
    except KeyError:
        raise TypeError(f"{type(msg).__name__} is not a registered wire message") from None
    out: list[bytes] = [struct.pack("<H", tag)]
    for name in type(msg).__wire_fields__:
        _put(out, getattr(msg, name))
    return b"".join(out)


def decode(data: bytes) -> Any:
    """Decode bytes produced by :func:`encode`."""
    view = memoryview(data)
    (tag,) = struct.unpack_from("<H", view, 0)
    cls = _BY_TAG[tag]
    pos = 2
    values = []
    for _ in cls.__wire_fields__:
        value, pos = _get(view, pos)
        values.append(value)
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} trailing bytes after {cls.__name__}")
    return cls(*values)


def size(msg: Any) -> int:
    """Encoded size in bytes (what the network charges), equal to ``len(encode(msg))``.

    Computed arithmetically, without building the bytes or computing deferred values: an
    array's encoding length depends only on its dtype and shape.
    """
    if type(msg) not in _TAG_OF:
        raise TypeError(f"{type(msg).__name__} is not a registered wire message")
    return 2 + sum(_size(getattr(msg, name)) for name in type(msg).__wire_fields__)


def _is_deferred(v: Any) -> bool:
    """A lazily computed list of arrays (``crowdlearn.training.jobs.Deferred``) by duck type."""
    return hasattr(v, "shapes") and hasattr(v, "dtypes") and hasattr(v, "value")


def _size(v: Any) -> int:
    if v is None or isinstance(v, (bool, np.bool_)):
        return 1
    if isinstance(v, (int, np.integer, float, np.floating)):
        return 9
    if isinstance(v, str):
        return 5 + len(v.encode())
    if isinstance(v, (bytes, bytearray, memoryview)):
        return 5 + len(bytes(v))
    if isinstance(v, np.ndarray):
        return 3 + 4 * v.ndim + v.nbytes
    if isinstance(v, (tuple, list)):
        return 5 + sum(_size(x) for x in v)
    if hasattr(v, "wire_len"):
        return 5 + v.wire_len()
    if _is_deferred(v):
        return 5 + sum(3 + 4 * len(s) + int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize
                       for s, d in zip(v.shapes, v.dtypes))
    if dataclasses.is_dataclass(v) and type(v) in _TAG_OF:
        return 5 + size(v)
    raise TypeError(f"cannot encode a {type(v).__name__} on the wire")


def _put(out: list[bytes], v: Any) -> None:
    if v is None:
        out.append(b"n")
    elif isinstance(v, (bool, np.bool_)):
        out.append(b"T" if v else b"F")
    elif isinstance(v, (int, np.integer)):
        out.append(b"i" + struct.pack("<q", int(v)))
    elif isinstance(v, (float, np.floating)):
        out.append(b"f" + struct.pack("<d", float(v)))
    elif isinstance(v, str):
        raw = v.encode()
        out.append(b"s" + struct.pack("<I", len(raw)) + raw)
    elif isinstance(v, (bytes, bytearray, memoryview)) or hasattr(v, "wire_bytes"):
        # objects with wire_bytes()/wire_len() (e.g. sealed payloads) travel as opaque bytes
        raw = v.wire_bytes() if hasattr(v, "wire_bytes") else bytes(v)
        out.append(b"b" + struct.pack("<I", len(raw)) + raw)
    elif isinstance(v, np.ndarray):
        dt = v.dtype.newbyteorder("<")
        if dt not in _DTYPE_CODE:
            raise TypeError(f"dtype {v.dtype} cannot travel on the wire")
        out.append(b"a" + struct.pack("<BB", _DTYPE_CODE[dt], v.ndim)
                   + struct.pack(f"<{v.ndim}I", *v.shape))
        out.append(np.ascontiguousarray(v, dtype=dt).tobytes())
    elif isinstance(v, (tuple, list)) or _is_deferred(v):
        if _is_deferred(v):
            v = [np.asarray(a, dtype=d) for a, d in zip(v.value(), v.dtypes)]
        out.append(b"l" + struct.pack("<I", len(v)))
        for item in v:
            _put(out, item)
    elif dataclasses.is_dataclass(v) and type(v) in _TAG_OF:
        raw = encode(v)
        out.append(b"m" + struct.pack("<I", len(raw)) + raw)
    else:
        raise TypeError(f"cannot encode a {type(v).__name__} on the wire")


def _get(view: memoryview, pos: int) -> tuple[Any, int]:
    code = bytes(view[pos:pos + 1])
    pos += 1
    if code == b"n":
        return None, pos
    if code == b"T":
        return True, pos
    if code == b"F":
        return False, pos
    if code == b"i":
        return struct.unpack_from("<q", view, pos)[0], pos + 8
    if code == b"f":
        return struct.unpack_from("<d", view, pos)[0], pos + 8
    if code in (b"s", b"b", b"m"):
        (n,) = struct.unpack_from("<I", view, pos)
        raw = bytes(view[pos + 4:pos + 4 + n])
        pos += 4 + n
        if code == b"s":
            return raw.decode(), pos
        return (raw, pos) if code == b"b" else (decode(raw), pos)
    if code == b"a":
        dcode, ndim = struct.unpack_from("<BB", view, pos)
        pos += 2
        shape = struct.unpack_from(f"<{ndim}I", view, pos)
        pos += 4 * ndim
        dt = _DTYPES[dcode]
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        arr = np.frombuffer(view[pos:pos + nbytes], dtype=dt).reshape(shape).copy()
        return arr, pos + nbytes
    if code == b"l":
        (n,) = struct.unpack_from("<I", view, pos)
        pos += 4
        items = []
        for _ in range(n):
            item, pos = _get(view, pos)
            items.append(item)
        return tuple(items), pos
    raise ValueError(f"unknown wire code {code!r} at byte {pos - 1}")
