"""Cryptographic building blocks (real primitives from ``cryptography`` and ``gmpy2``)."""

from crowdlearn.crypto import keyagreement, masking, shamir
from crowdlearn.crypto.costs import CryptoCosts, calibrate
from crowdlearn.crypto.sealing import KeyRing, Sealed

__all__ = ["KeyRing", "Sealed", "shamir", "masking", "keyagreement", "CryptoCosts", "calibrate"]
