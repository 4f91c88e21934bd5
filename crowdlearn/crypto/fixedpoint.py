"""Fixed-point encoding of real vectors for additively homomorphic schemes.

A real ``r`` becomes the integer ``round(r * 2**frac_bits)``; the integer must fit in ``prec``
signed bits, ``-2**(prec-1) <= v < 2**(prec-1)``, or :class:`FixedPointRangeError` names the bad
value and the fix.  Sums of encodings are exact integers; dividing by ``2**frac_bits`` decodes them.

Examples
--------
>>> fp = FixedPoint(prec=32, frac_bits=24)
>>> v = fp.encode([0.5, -1.25])
>>> v.tolist()
[8388608, -20971520]
>>> fp.decode(v + v).tolist()
[1.0, -2.5]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FixedPoint", "FixedPointRangeError", "PackingOverflowError"]


class FixedPointRangeError(ValueError):
    """A real value does not fit the configured fixed-point range."""


class PackingOverflowError(ArithmeticError):
    """A homomorphic sum would exceed the guard (pad) bits or the noise budget of its ciphertext."""


@dataclass(frozen=True)
class FixedPoint:
    """``prec`` signed bits per value, of which ``frac_bits`` are fractional."""

    prec: int = 32
    frac_bits: int = 24

    def __post_init__(self):
        if not 2 <= self.prec <= 62:
            raise ValueError(f"prec must be in 2..62; got {self.prec}")
        if not 0 <= self.frac_bits < self.prec:
            raise ValueError(f"frac_bits must be in 0..prec-1={self.prec - 1}; got {self.frac_bits}")

    @property
    def max_abs(self) -> float:
        """Largest magnitude a single value may have."""
        return 2.0 ** (self.prec - 1 - self.frac_bits)

    def encode(self, x) -> np.ndarray:
        """Reals to int64 integers ``round(x * 2**frac_bits)``; raises if one does not fit."""
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise FixedPointRangeError("cannot encode NaN or infinite values")
        v = np.rint(np.ldexp(x, self.frac_bits))
        lim = 2.0 ** (self.prec - 1)
        bad = (v < -lim) | (v >= lim)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise FixedPointRangeError(
                f"value {float(x.flat[i])!r} at index {i} does not fit prec={self.prec} with "
                f"frac_bits={self.frac_bits} (|x| must be < {self.max_abs}); raise prec or lower frac_bits")
        return v.astype(np.int64)

    def decode(self, v) -> np.ndarray:
        """Integers (or sums of them) back to float64 reals."""
        return np.ldexp(np.asarray(v, dtype=np.float64), -self.frac_bits)
