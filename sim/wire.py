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
import math
import operator
import struct
import types
import typing
from typing import Any

import numpy as np

from slicenet.errors import UserError

__all__ = ["MAX_DEPTH", "NotReady", "WireError", "decode", "encode", "forget", "message", "size"]



class WireError(UserError, ValueError):
    """Bytes that are not a valid message: :func:`decode` raises this, and only this, for every
    malformed input.  Inside a protocol it means "the peer misbehaved": the receiver records it
    and drops the message.  (A ``ValueError`` too, for older callers.)"""


class NotReady(Exception):
    """Raised while encoding a message that carries a deferred value not computed yet (a
    job's result the executor cannot produce until other machines' jobs arrive).  A runtime
    that sends real bytes keeps the message and encodes it again later, as a device would send
    it once its computation is done; ``never``: the computation was abandoned (its job was
    cancelled), so the message is dropped, as the device would never send it."""

    def __init__(self, what: str, *, never: bool = False):
        super().__init__(what)
        self.never = never


#: lists and messages nested deeper than this are rejected by :func:`decode`
MAX_DEPTH = 32
#: arrays with more dimensions are rejected by :func:`decode`
#: Largest extent (bytes, zero dimensions left out) an array's shape may declare.
MAX_ARRAY_EXTENT = 2 ** 62
MAX_NDIM = 32

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
        cls.__wire_fields__ = names = tuple(f.name for f in dataclasses.fields(cls))
        _SIZER[cls] = _message_sizer(names)
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


def decode(data: bytes | bytearray | memoryview, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode bytes produced by :func:`encode`; untrusted input is safe to pass.

    Every malformed input raises :class:`WireError` (and nothing else): a short or oversized
    buffer, an unknown tag or value code, a declared length larger than what is left, invalid
    UTF-8, nesting deeper than ``max_depth`` lists and messages, a field whose type does not
    match its annotation, or values the message's own validation (``__post_init__``) rejects.
    Declared lengths are checked against the buffer before anything is allocated, and nested
    messages are decoded from views of the input, so time and memory stay linear in its length:
    arrays and bytes need about their own size, and the worst case, a list of one-byte values
    (``None``, booleans), about 9 bytes per input byte (one 8-byte pointer per item).

    Examples
    --------
    >>> from crowdlearn.protocols.messages import Decline
    >>> decode(encode(Decline(2, "memory")))
    Decline(round=2, reason='memory')
    >>> decode(b"\\xff")
    Traceback (most recent call last):
    ...
    sim.wire.WireError: malformed message: need 2 bytes at byte 0, 1 left
    """
    try:
        view = memoryview(data).cast("B")
    except TypeError as exc:
        raise WireError(f"malformed message: not a byte buffer ({type(data).__name__})") from exc
    return _decode_view(view, 0, max_depth)


def _decode_view(view: memoryview, depth: int, max_depth: int) -> Any:
    end = len(view)
    _need(view, 0, 2)
    (tag,) = struct.unpack_from("<H", view, 0)
    cls = _BY_TAG.get(tag)
    if cls is None:
        raise WireError(f"malformed message: unknown wire tag {tag:#06x}")
    pos = 2
    values = []
    for _ in cls.__wire_fields__:
        value, pos = _get(view, pos, depth, max_depth)
        values.append(value)
    if pos != end:
        raise WireError(f"malformed {cls.__name__}: {end - pos} trailing bytes")
    _rebuild(cls, values)
    _check_types(cls, values)
    try:
        return cls(*values)
    except (ValueError, TypeError, OverflowError, IndexError, KeyError) as exc:
        raise WireError(f"malformed {cls.__name__}: {exc}") from exc


def _need(view: memoryview, pos: int, n: int) -> None:
    if n > len(view) - pos:
        raise WireError(f"malformed message: need {n} bytes at byte {pos}, "
                        f"{len(view) - pos} left")


def _field_checks(cls: type) -> tuple:
    """Per field, the accepted Python types after decoding (``None``: anything), from the
    dataclass annotations (computed once per class)."""
    checks = cls.__dict__.get("__wire_checks__")
    if checks is None:
        try:
            hints = typing.get_type_hints(cls)
        except (NameError, TypeError):     # unresolvable annotations: only __post_init__ checks
            hints = {}
        checks = tuple(_accepts(hints.get(name, Any)) for name in cls.__wire_fields__)
        cls.__wire_checks__ = checks
    return checks


def _rebuild(cls: type, values: list) -> None:
    """Fields annotated with a class that has a ``from_wire(raw)`` classmethod travel as opaque
    bytes (its ``wire_bytes()``): rebuild them here, so a receiver gets the annotated type back."""
    for i, (_, maker) in enumerate(zip(cls.__wire_fields__, _field_makers(cls), strict=True)):
        if maker is not None and isinstance(values[i], bytes):
            try:
                values[i] = maker(values[i])
            except (ValueError, TypeError, OverflowError, IndexError, KeyError) as exc:
                raise WireError(f"malformed {cls.__name__}: {exc}") from exc


def _field_makers(cls: type) -> tuple:
    makers = cls.__dict__.get("__wire_makers__")
    if makers is None:
        try:
            hints = typing.get_type_hints(cls)
        except (NameError, TypeError):
            hints = {}
        makers = tuple(getattr(h, "from_wire", None) if isinstance(h, type) else None
                       for h in (hints.get(name, Any) for name in cls.__wire_fields__))
        cls.__wire_makers__ = makers
    return makers


def _accepts(hint: Any) -> tuple | None:
    if hint is Any:
        return None
    if isinstance(hint, type) and hasattr(hint, "from_wire"):
        return (hint,)
    args = typing.get_args(hint)
    if args and typing.get_origin(hint) in (typing.Union, types.UnionType):
        out: tuple = ()
        for a in args:
            acc = _accepts(a)
            if acc is None:
                return None
            out += acc
        return out
    origin = typing.get_origin(hint) or hint
    return _DECODED_AS.get(origin)     # unknown annotations are not checked


_DECODED_AS: dict = {int: (int,), float: (int, float), str: (str,), bool: (bool,),
                     bytes: (bytes,), tuple: (tuple,), list: (tuple,), np.ndarray: (np.ndarray,),
                     type(None): (type(None),)}


def _check_types(cls: type, values: list) -> None:
    for name, accepted, v in zip(cls.__wire_fields__, _field_checks(cls), values, strict=True):
        if accepted is None:
            continue
        if not isinstance(v, accepted) or (isinstance(v, bool) and bool not in accepted):
            raise WireError(f"malformed {cls.__name__}: field {name} is a {type(v).__name__}")
        if isinstance(v, float) and not math.isfinite(v):
            raise WireError(f"malformed {cls.__name__}: field {name} is {v}")


def size(msg: Any) -> int:
    """Encoded size in bytes (what the network charges), equal to ``len(encode(msg))``.

    Computed arithmetically, without building the bytes or computing deferred values: an
    array's encoding length depends only on its dtype and shape.  Each message class has a
    sizer made once when it is registered (its fields read by one ``attrgetter``, then summed
    as a list's items are, leaves by exact type first); :func:`_size_generic` is the plain
    recursion it must equal (``tests/test_wire.py``).
    """
    global _LAST
    last = _LAST                  # one read of the pair: no other thread's half can mix in
    if last[0] is msg:            # asked twice in a row: once for a Report, once to charge it
        _LAST = _NOTHING
        return last[1]
    sizer = _SIZER.get(type(msg))
    if sizer is None:
        raise TypeError(f"{type(msg).__name__} is not a registered wire message")
    n = sizer(msg)
    _LAST = (msg, n)
    return n


#: message class -> its sizer (made by :func:`message`)
_SIZER: dict = {}

# The last message sized and its size, for the next ask only.  A machine that reports what it
# sends sizes the message for its Report, and the driver sizes it again to charge the network:
# the second ask is this hit, which forgets it (so the message is not kept alive, and a later
# ask sizes it afresh).  Held, the message's id cannot be reused meanwhile; messages are frozen
# values, not changed between a machine's Report and the driver's charge.  The pair is one
# tuple, replaced whole, so a thread that sizes messages at the same time as another (the
# asyncio runtime's, a sweep's) can only miss the memo, never get another message's size.
_NOTHING = (None, 0)
_LAST: tuple = _NOTHING


def forget() -> None:
    """Drop the last message sized (a run that ends lets its last message go: held, it would
    keep what the message refers to, a deferred result and its executor, until the next ask).
    Only a later ask's memo hit is lost."""
    global _LAST
    _LAST = _NOTHING


def _message_sizer(names: tuple):
    """A message's size: its 2-byte tag plus its fields sized as a list's items are (without
    the list's own 5-byte header)."""
    if not names:
        return lambda msg: 2
    if len(names) == 1:
        name = names[0]
        return lambda msg: 2 + _size(getattr(msg, name))
    get = operator.attrgetter(*names)
    return lambda msg: _seq_size(get(msg)) - 3


# exact leaf types and their encoded sizes: the common case found by one dict look-up (the
# generic chain below answers the rest: subclasses, strings, arrays, objects)
_LEAF = {int: 9, float: 9, bool: 1, type(None): 1, np.bool_: 1, np.float32: 9, np.float64: 9,
         np.int64: 9, np.int32: 9, np.int16: 9, np.int8: 9, np.uint8: 9, np.uint16: 9,
         np.uint32: 9, np.uint64: 9, np.float16: 9}


def _seq_size(v) -> int:
    """A list's or tuple's encoded size (5-byte header, then each item)."""
    n = 5
    leaf = _LEAF
    for x in v:
        k = leaf.get(type(x))
        if k is not None:
            n += k
        elif type(x) is tuple:
            n += _tuple_size(x) if len(x) >= _BIG else _seq_size(x)
        else:
            n += _size(x)
    return n


def _tuple_size(v: tuple) -> int:
    """A long tuple's size, remembered by identity when nothing in it can change size (numbers,
    strings and tuples of them): one Crowdlearning attempt's PassPlans share one tuple
    of its ~100 boundary links, sized once instead of once per participant.  The cache holds
    the tuples themselves (so an id is never reused while it is cached) and is bounded."""
    hit = _TUPLES.get(id(v))
    if hit is not None and hit[0] is v:
        return hit[1]
    n = _seq_size(v)
    if len(v) <= 4096 and _fixed(v):      # (small enough to keep a while)
        if len(_TUPLES) >= 256:
            _TUPLES.clear()
        _TUPLES[id(v)] = (v, n)
    return n


def _fixed(v: tuple) -> bool:
    """Whether ``v`` holds only numbers, strings and tuples of them (values whose encoded size
    cannot change; no bytes, which may be large, so that the cache never holds much)."""
    for x in v:
        t = type(x)
        if t is tuple:
            if not _fixed(x):
                return False
        elif t not in _LEAF and t is not str:
            return False
    return True


_BIG = 16              # tuples at least this long are remembered (_tuple_size)
_TUPLES: dict = {}     # id -> (tuple, size)


def _size(v: Any) -> int:
    t = type(v)
    k = _LEAF.get(t)
    if k is not None:
        return k
    if t is list:
        return _seq_size(v)
    if t is tuple:
        return _tuple_size(v) if len(v) >= _BIG else _seq_size(v)
    if t is str:
        return 5 + (len(v) if v.isascii() else len(v.encode()))
    if t is bytes:
        return 5 + len(v)
    if t is np.ndarray:
        return 3 + 4 * v.ndim + v.nbytes
    if t in _WIRE_LEN_TYPES:
        return 5 + v.wire_len()
    if t in _LAZY_ARRAY_TYPES:
        return 3 + 4 * len(v.shape) + math.prod(v.shape) * v.dtype.itemsize
    sizer = _SIZER.get(t)
    if sizer is not None:
        return 5 + sizer(v)
    return _size_generic(v)


# classes whose instances the generic rule sized by ``wire_len()`` (no other rule before it
# applies to them: it is decided by their type), so that later ones skip the chain
_WIRE_LEN_TYPES: set = set()
# classes of lazy arrays (:func:`is_lazy_array`) the generic rule met, sized by type after
_LAZY_ARRAY_TYPES: set = set()


def _size_generic(v: Any) -> int:
    """The reference sizer: any encodable value by its type's rule, recursively."""
    t = type(v)
    if t is bytes:
        return 5 + len(v)
    if t is tuple or t is list:
        return 5 + sum(map(_size_generic, v))
    if v is None or isinstance(v, (bool, np.bool_)):
        return 1
    if isinstance(v, (int, np.integer, float, np.floating)):
        return 9
    if isinstance(v, str):
        return 5 + len(v.encode())
    if isinstance(v, (bytes, bytearray)):
        return 5 + len(v)
    if isinstance(v, memoryview):
        return 5 + v.nbytes              # no copy just to measure
    if isinstance(v, np.ndarray):
        return 3 + 4 * v.ndim + v.nbytes
    if isinstance(v, (tuple, list)):
        return 5 + sum(_size_generic(x) for x in v)
    if hasattr(v, "wire_len"):
        if hasattr(t, "wire_len"):
            _WIRE_LEN_TYPES.add(t)
        return 5 + v.wire_len()
    if is_lazy_array(v):
        _LAZY_ARRAY_TYPES.add(t)
        return 3 + 4 * len(v.shape) + math.prod(v.shape) * np.dtype(v.dtype).itemsize
    if _is_deferred(v):
        return 5 + sum(3 + 4 * len(s) + math.prod(s) * _itemsize(d)
                       for s, d in zip(v.shapes, v.dtypes, strict=True))
    if dataclasses.is_dataclass(v) and type(v) in _TAG_OF:
        return 5 + _generic_message_size(v)
    raise TypeError(f"cannot encode a {type(v).__name__} on the wire")


def _generic_message_size(msg: Any) -> int:
    """:func:`size` by the reference recursion (for tests)."""
    if type(msg) not in _TAG_OF:
        raise TypeError(f"{type(msg).__name__} is not a registered wire message")
    return 2 + sum(_size_generic(getattr(msg, name)) for name in type(msg).__wire_fields__)


_ITEMSIZE: dict = {}


def _itemsize(dtype: Any) -> int:
    n = _ITEMSIZE.get(dtype)
    if n is None:
        n = _ITEMSIZE[dtype] = np.dtype(dtype).itemsize
    return n


def _is_deferred(v: Any) -> bool:
    """A lazily computed list of arrays (``crowdlearn.training.jobs.Deferred``) by duck type."""
    return hasattr(v, "shapes") and hasattr(v, "dtypes") and hasattr(v, "value")


def is_lazy_array(v: Any) -> bool:
    """An array computed on first read whose shape and dtype are declared
    (``crowdlearn.training.jobs.LazyArray``) by duck type: sized and encoded as that array, and
    checked by its declared shape and dtype (``crowdlearn.protocols.validate``)."""
    return hasattr(v, "materialize") and hasattr(v, "shape") and hasattr(v, "dtype")


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
            v = [np.asarray(a, dtype=d) for a, d in zip(v.value(), v.dtypes, strict=True)]
        out.append(b"l" + struct.pack("<I", len(v)))
        for item in v:
            _put(out, item)
    elif dataclasses.is_dataclass(v) and type(v) in _TAG_OF:
        raw = encode(v)
        out.append(b"m" + struct.pack("<I", len(raw)) + raw)
    elif is_lazy_array(v):
        _put(out, v.materialize())          # computed now: what it stands for goes out
    else:
        raise TypeError(f"cannot encode a {type(v).__name__} on the wire")


def _get(view: memoryview, pos: int, depth: int, max_depth: int) -> tuple[Any, int]:
    _need(view, pos, 1)
    code = view[pos]
    pos += 1
    if code == 0x6E:      # n
        return None, pos
    if code == 0x54:      # T
        return True, pos
    if code == 0x46:      # F
        return False, pos
    if code in (0x69, 0x66):       # i, f
        _need(view, pos, 8)
        return struct.unpack_from("<q" if code == 0x69 else "<d", view, pos)[0], pos + 8
    if code in (0x73, 0x62, 0x6D):     # s, b, m
        _need(view, pos, 4)
        (n,) = struct.unpack_from("<I", view, pos)
        pos += 4
        _need(view, pos, n)
        raw = view[pos:pos + n]        # a view: nothing is copied yet
        pos += n
        if code == 0x73:
            try:
                return str(raw, "utf-8"), pos
            except UnicodeDecodeError as exc:
                raise WireError(f"malformed message: string at byte {pos - n} is not UTF-8") \
                    from exc
        if code == 0x62:
            return bytes(raw), pos
        if depth + 1 >= max_depth:    # the enclosing message is a level too, as a list is
            raise WireError(f"malformed message: nested deeper than {max_depth}")
        return _decode_view(raw, depth + 1, max_depth), pos
    if code == 0x61:      # a
        _need(view, pos, 2)
        dcode, ndim = struct.unpack_from("<BB", view, pos)
        pos += 2
        if dcode >= len(_DTYPES) or ndim > MAX_NDIM:
            raise WireError(f"malformed message: array dtype code {dcode} / {ndim} dimensions "
                            f"at byte {pos - 2}")
        _need(view, pos, 4 * ndim)
        shape = struct.unpack_from(f"<{ndim}I", view, pos)
        pos += 4 * ndim
        dt = _DTYPES[dcode]
        nbytes = math.prod(shape) * dt.itemsize      # Python ints: no overflow
        _need(view, pos, nbytes)
        if math.prod(d for d in shape if d) * dt.itemsize > MAX_ARRAY_EXTENT:
            # an empty array whose other dimensions numpy cannot even index
            raise WireError(f"malformed message: array shape {shape} at byte {pos - 4 * ndim}")
        arr = np.frombuffer(view[pos:pos + nbytes], dtype=dt).reshape(shape).copy()
        return arr, pos + nbytes
    if code == 0x6C:      # l
        _need(view, pos, 4)
        (n,) = struct.unpack_from("<I", view, pos)
        pos += 4
        _need(view, pos, n)             # every item takes at least one byte
        if depth >= max_depth:
            raise WireError(f"malformed message: nested deeper than {max_depth}")
        end = [pos]

        def items():
            for _ in range(n):
                item, end[0] = _get(view, end[0], depth + 1, max_depth)
                yield item

        # tuple() of a generator grows one buffer: a list first would double the peak, which
        # matters for a list of one-byte values (None, bools), whose items cost a pointer each
        return tuple(items()), end[0]
    raise WireError(f"malformed message: unknown value code {code:#04x} at byte {pos - 1}")
