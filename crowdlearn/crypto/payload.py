"""What an encrypted-SGD message carries (ring 0: numpy only, no big-number library).

Kept apart from :mod:`crowdlearn.crypto.schemes` so that message definitions can name the type
(the wire decoder checks field types) without importing gmpy2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Payload"]


@dataclass(frozen=True, eq=False)
class Payload:
    """A ciphertext (or, for ``none``, a plaintext float32 vector) as it travels.

    ``ciphertext`` is the real ciphertext object (``None`` in priced mode); ``oracle`` the exact
    int64 sum of encodings it holds (the simulator's view, not on the wire); ``count`` how many
    encodings it sums; ``nbytes`` its encoded size.
    """

    scheme: str
    nbytes: int
    count: int
    oracle: np.ndarray = field(repr=False)
    ciphertext: Any = field(default=None, repr=False)
    #: whose key opens it (HRES: "joint" for uploads, the participant for re-encrypted downloads);
    #: lets priced mode refuse the decryptions real mode would refuse
    key: Any = None
    #: the bytes it arrived as, when it crossed a wire (:meth:`from_wire`): ``scheme`` is then
    #: ``"wire"``, ``oracle`` and ``ciphertext`` ``None`` until the receiver's scheme opens it
    #: (:meth:`crowdlearn.crypto.schemes.Scheme.open`)
    raw: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_wire(cls, raw) -> Payload:
        """What a receiver holds after decoding: the opaque bytes, to be opened by its scheme.

        >>> p = Payload("none", 8, 1, np.array([1.5, -2.0], np.float32))
        >>> q = Payload.from_wire(p.wire_bytes())
        >>> q.scheme, q.nbytes, q.oracle is None
        ('wire', 8, True)
        """
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise TypeError(f"a payload travels as bytes; got a {type(raw).__name__}")
        raw = bytes(raw)
        return cls("wire", len(raw), 0, None, None, raw=raw)

    def wire_len(self) -> int:
        return self.nbytes

    def wire_bytes(self) -> bytes:
        if self.raw is not None:
            return self.raw
        if self.scheme == "none":
            return np.asarray(self.oracle, np.float32).tobytes()
        if self.ciphertext is None:
            raise RuntimeError("a priced payload has no ciphertext to encode; run with "
                               "crypto mode 'real' to put real bytes on a wire")
        return self.ciphertext.to_bytes()
