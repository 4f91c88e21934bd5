"""The X25519 + HKDF worker process of :class:`crowdlearn.crypto.keyagreement.AgreementProcess`.

Run as a script (``python -I this_file``), so that it imports nothing but ``cryptography``.  It
reads frames from stdin and answers each on stdout, in order, until stdin closes:

* request: ``<IIH`` (frame id, n, len(info)), ``info``, a 32-byte X25519 private key, then n
  32-byte peer public keys;
* answer: ``<II`` (frame id, n), then per peer one status byte (1 = ok, 0 = the agreement failed:
  the caller computes it itself and gets the library's error) and the 32 bytes of
  ``HKDF-SHA256(X25519(private, peer), info)`` (zeros when failed) — what
  :func:`~crowdlearn.crypto.keyagreement.agree` returns, byte for byte (tested).
"""

import signal
import struct
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

REQUEST = struct.Struct("<IIH")
ANSWER = struct.Struct("<II")
FAILED = bytes(33)


def main() -> None:
    # a terminal's Ctrl-C or hang-up is the simulation's to handle (it may still need answers
    # while it winds down); this process ends when its stdin closes, at the latest when the
    # simulation's process ends
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    read, write = sys.stdin.buffer.read, sys.stdout.buffer
    publics: dict = {}                    # each peer's key parsed once (it recurs in many frames)
    while True:
        head = read(REQUEST.size)
        if len(head) < REQUEST.size:
            return                        # stdin closed: the simulation ended
        fid, n, ilen = REQUEST.unpack(head)
        body = read(ilen + 32 + 32 * n)
        info, raw = body[:ilen], body[ilen:ilen + 32]
        out = [ANSWER.pack(fid, n)]
        try:
            key = X25519PrivateKey.from_private_bytes(raw)
        except ValueError:
            key = None
        at = ilen + 32
        for _ in range(n):
            pk = body[at:at + 32]
            at += 32
            try:
                peer = publics.get(pk)
                if peer is None:
                    if len(publics) > 100_000:
                        publics.clear()
                    peer = publics[pk] = X25519PublicKey.from_public_bytes(pk)
                secret = key.exchange(peer)
                out.append(b"\x01" + HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                                          info=info).derive(secret))
            except (ValueError, AttributeError):
                out.append(FAILED)
        write.write(b"".join(out))
        write.flush()


if __name__ == "__main__":
    main()
