"""Cryptographic building blocks (real primitives from ``cryptography`` and ``gmpy2``)."""

from crowdlearn.crypto import keyagreement, masking, shamir
from crowdlearn.crypto.costs import CryptoCosts, calibrate
from crowdlearn.crypto.sealing import Card, Header, KeyRing, Sealed, SealError, party_label

__all__ = ["Card", "CryptoCosts", "Header", "KeyRing", "SealError", "Sealed", "calibrate",
           "keyagreement", "masking", "party_label", "shamir"]

# -- homomorphic encryption for encrypted asynchronous SGD (Phong et al., HRES) --
# Imported lazily (PEP 562): gmpy2 pulls in importlib.metadata -> email -> socket, which modules
# that only need sealing should not pay for.
_HE = {"FixedPoint": "fixedpoint", "FixedPointRangeError": "fixedpoint",
       "PackingOverflowError": "fixedpoint", "CryptoRandom": "randomness",
       "PaillierPacking": "paillier", "PaillierPrivateKey": "paillier", "PaillierPublicKey": "paillier",
       "PaillierVector": "paillier", "RandomnessPool": "paillier", "generate_keypair": "paillier",
       "LWEKey": "lwe", "LWEParams": "lwe", "LWEVector": "lwe",
       "HRESDecryptionError": "hres", "HRESGroup": "hres", "HRESPacking": "hres",
       "HRESVector": "hres", "dsp_reencrypt": "hres", "kts_reencrypt": "hres"}
__all__ += list(_HE)


def __getattr__(name):
    if name in _HE:
        import importlib
        return getattr(importlib.import_module(f"crowdlearn.crypto.{_HE[name]}"), name)
    raise AttributeError(f"module 'crowdlearn.crypto' has no attribute {name!r}")
