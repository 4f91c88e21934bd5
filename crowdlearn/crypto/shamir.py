"""Shamir t-of-n secret sharing over the prime field GF(p), p = 2^256 + 297.

A secret ``s`` (an integer below ``p``: a 32-byte key or seed fits) is the constant term of a
random polynomial ``f`` of degree ``t - 1``; party ``i`` receives ``(i, f(i))``.  Any ``t`` shares
give ``s = Σ_j λ_j f(x_j)`` with the Lagrange coefficients at zero
``λ_j = Π_{m≠j} x_m / (x_m − x_j)``; any ``t − 1`` shares are consistent with every secret
(the scheme is information-theoretically hiding).

Why our own: the field arithmetic is a few lines on ``gmpy2`` integers, and the cost that matters
in secure aggregation is *reconstructing many secrets from the same set of survivors*: the
Lagrange coefficients depend only on the survivors' x-coordinates, so :func:`reconstruct_many`
computes them once and each secret costs ``t`` multiply-adds (see ``docs/design.md``).

References
----------
A. Shamir, "How to share a secret", Communications of the ACM 22(11), 1979.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> shares = split(123456789, n=5, t=3, rng=rng)
>>> reconstruct(shares[:3]) == reconstruct(shares[2:]) == 123456789
True
>>> reconstruct(shares[:2]) == 123456789       # t - 1 shares reveal nothing
False
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["PRIME", "SHARE_BYTES", "split", "split_many", "lagrange_at_zero", "reconstruct",
           "reconstruct_many", "share_to_bytes", "share_from_bytes", "random_element",
           "random_elements"]

#: The field modulus: the smallest prime above 2^256, so any 32-byte secret is a field element.
PRIME = 2 ** 256 + 297


def _gmpy2():
    """gmpy2, imported on first use: its import pulls in ``importlib.metadata`` → ``email`` →
    ``socket``, which the pure layers must not load (tests/test_rings.py)."""
    import gmpy2
    return gmpy2
#: Bytes of one share value on the wire.
SHARE_BYTES = 33


def random_element(rng: np.random.Generator):
    """A field element from 40 random bytes reduced mod p (statistical distance < 2^-60)."""
    return random_elements(rng, 1)[0]


def random_elements(rng: np.random.Generator, k: int) -> list:
    """``k`` field elements, each from 40 random bytes reduced mod p: one draw of ``40·k``
    bytes, the same stream as ``k`` calls of :func:`random_element`."""
    gmpy2 = _gmpy2()
    p = gmpy2.mpz(PRIME)
    raw = rng.bytes(40 * k)
    return [gmpy2.mpz(int.from_bytes(raw[40 * i:40 * i + 40], "big")) % p for i in range(k)]


def split(secret: int, *, n: int, t: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Shares ``(x, f(x))`` for ``x = 1 … n`` of ``secret`` with threshold ``t``."""
    xs = list(range(1, n + 1))
    return [(x, int(y)) for x, y in zip(xs, split_many([secret], xs, t=t, rng=rng)[0],
                                        strict=True)]


def split_many(secrets: Sequence[int], xs: Sequence[int], *, t: int,
               rng: np.random.Generator) -> list[list]:
    """Share every secret at the points ``xs``: row ``i`` holds ``f_i(x)`` for each ``x``.

    Horner's rule on ``gmpy2`` integers, ``len(secrets) · len(xs) · (t − 1)`` multiply-adds,
    reduced mod p once per share: the points are small integers, so the unreduced value grows
    by only ``log2(x)`` bits a step (a few hundred bits over the whole polynomial), which is
    cheaper than a reduction per step.
    """
    n = len(xs)
    if not 1 <= t <= n:
        raise ValueError(f"threshold t must be in [1, {n}] for {n} shares; got {t}")
    if len(set(xs)) != n or any(int(x) % PRIME == 0 for x in xs):
        raise ValueError(f"share points must be distinct and non-zero mod p; got {list(xs)}")
    gmpy2 = _gmpy2()
    p = gmpy2.mpz(PRIME)
    pts = [gmpy2.mpz(int(x) % PRIME) for x in xs]
    if any(not 0 <= s < PRIME for s in secrets):
        raise ValueError("secret must be in [0, p)")
    widest = max(x.bit_length() for x in pts)
    if len(secrets) > 1 and widest <= 64:
        return _split_lanes(secrets, pts, t, rng)
    out = []
    for s in secrets:
        s = gmpy2.mpz(s)
        coeffs = random_elements(rng, t - 1)[::-1]        # highest degree first
        row = []
        for x in pts:
            acc = gmpy2.mpz(0)
            if x.bit_length() <= 64:
                for c in coeffs:
                    acc = (acc + c) * x
            else:                                          # large points: reduce every step
                for c in coeffs:
                    acc = (acc + c) * x % p
            row.append((acc + s) % p)
        out.append(row)
    return out


def _split_lanes(secrets: Sequence[int], pts: list, t: int, rng: np.random.Generator) -> list:
    """:func:`split_many` with every secret's polynomial in one integer, one lane each.

    Lane ``i`` of ``Σ_j (Σ_i c_ij 2^(L·i)) x^j`` is ``f_i(x)`` unreduced (the coefficients and
    the small point are non-negative, and ``L`` exceeds the bits of any unreduced ``f_i(x)``), so
    one Horner pass per point evaluates all the secrets' polynomials: a client's two secrets
    cost half the big-integer operations.  The same random draws, in the same order, and the
    same shares as one pass per secret (tested).
    """
    gmpy2 = _gmpy2()
    p = gmpy2.mpz(PRIME)
    widest = max(x.bit_length() for x in pts)
    # f(x) < p · Σ_{j<t} x^j < p · 2^(t·widest): bits below 257 + t·widest
    lane = 257 + t * widest + 1
    rows = [random_elements(rng, t - 1)[::-1] for _ in secrets]   # highest degree first
    packed = [sum(gmpy2.mpz(r[j]) << (lane * i) for i, r in enumerate(rows))
              for j in range(t - 1)]
    packed.append(sum(gmpy2.mpz(s) << (lane * i) for i, s in enumerate(secrets)))
    head, rest = packed[0], packed[1:]
    out: list[list] = [[] for _ in secrets]
    for x in pts:
        acc = head
        for c in rest:                  # acc · x + c: lanes never carry into each other
            acc = acc * x + c
        for i in range(len(secrets)):
            out[i].append(gmpy2.f_mod_2exp(acc >> (lane * i), lane) % p)
    return out


def lagrange_at_zero(xs: Sequence[int]) -> list:
    """Coefficients ``λ_j`` with ``f(0) = Σ λ_j f(x_j)`` for any polynomial of degree < len(xs)."""
    gmpy2 = _gmpy2()
    p = gmpy2.mpz(PRIME)
    pts = [gmpy2.mpz(x) % p for x in xs]
    if len(set(pts)) != len(pts) or any(x == 0 for x in pts):
        raise ValueError(f"points must be distinct and non-zero mod p; got {list(xs)}")
    lam = []
    for j, xj in enumerate(pts):
        num, den = gmpy2.mpz(1), gmpy2.mpz(1)
        for m, xm in enumerate(pts):
            if m != j:
                num = num * xm % p
                den = den * (xm - xj) % p
        lam.append(num * gmpy2.invert(den, p) % p)
    return lam


def reconstruct(shares: Sequence[tuple[int, int]]) -> int:
    """The secret from ``t`` or more shares ``(x, y)`` (fewer give an unrelated value)."""
    xs = [x for x, _ in shares]
    return int(reconstruct_many(xs, [[y for _, y in shares]])[0])


def reconstruct_many(xs: Sequence[int], ys: Sequence[Sequence[int]]) -> list[int]:
    """Reconstruct one secret per row of ``ys`` (all shared at the same points ``xs``).

    The Lagrange coefficients are computed once for the point set.
    """
    gmpy2 = _gmpy2()
    p = gmpy2.mpz(PRIME)
    lam = lagrange_at_zero(xs)
    out = []
    for row in ys:
        if len(row) != len(lam):
            raise ValueError(f"each row needs {len(lam)} share values; got {len(row)}")
        acc = gmpy2.mpz(0)
        for c, y in zip(lam, row, strict=True):
            acc += c * gmpy2.mpz(y)
        out.append(int(acc % p))
    return out


def share_to_bytes(y: int) -> bytes:
    """Share value ``y`` as :data:`SHARE_BYTES` big-endian bytes."""
    return int(y).to_bytes(SHARE_BYTES, "big")


def share_from_bytes(b: bytes) -> int:
    """The share value of :data:`SHARE_BYTES` big-endian bytes (a ``ValueError`` otherwise)."""
    if len(b) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes; got {len(b)}")
    return int.from_bytes(b, "big")
