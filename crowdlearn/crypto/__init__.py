"""Cryptographic building blocks (real primitives from ``cryptography`` and ``gmpy2``)."""

from crowdlearn.crypto import keyagreement, masking, shamir
from crowdlearn.crypto.costs import CryptoCosts, calibrate
from crowdlearn.crypto.sealing import Card, Header, KeyRing, Sealed, SealError, party_label

__all__ = ["Card", "CryptoCosts", "Header", "KeyRing", "SealError", "Sealed", "calibrate",
           "keyagreement", "masking", "party_label", "shamir"]
