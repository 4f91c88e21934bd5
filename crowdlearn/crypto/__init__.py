"""Cryptographic building blocks (real primitives from ``cryptography``)."""

from crowdlearn.crypto.sealing import KeyRing, Sealed

__all__ = ["KeyRing", "Sealed"]
