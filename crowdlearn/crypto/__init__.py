"""Cryptographic building blocks (real primitives from ``cryptography``)."""

from crowdlearn.crypto.sealing import Card, Header, KeyRing, Sealed, SealError, party_label

__all__ = ["Card", "Header", "KeyRing", "SealError", "Sealed", "party_label"]
