"""Pairwise keys for secure aggregation: X25519 agreement, HKDF-SHA256, AES-GCM.

Each party holds key pairs born on its own device (:func:`keypair` takes 32 random bytes from
the caller, so simulations are reproducible; a deployment passes ``os.urandom(32)``).  Two parties
agree on a 32-byte key per purpose with :func:`agree`; ``info`` binds the purpose, the round and
the pair, so the same X25519 secret yields independent keys for the share cipher and the mask PRG.

Examples
--------
>>> a, b = keypair(bytes(range(32))), keypair(bytes(range(1, 33)))
>>> k = agree(a, public_bytes(b), b"demo")
>>> k == agree(b, public_bytes(a), b"demo")
True
>>> box = seal(k, b"share", aad=b"1->2")
>>> len(box) == NONCE + 5 + TAG, open_sealed(k, box, aad=b"1->2")
(True, b'share')
"""

from __future__ import annotations

import hashlib
import os
import queue
import struct
import subprocess
import sys
import threading
import weakref

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

__all__ = ["keypair", "public_bytes", "private_bytes", "agree", "seal", "open_sealed",
           "AgreementMemo", "AgreementProcess", "AESGCM", "NONCE", "TAG", "KEY_BYTES",
           "InvalidTag"]

NONCE, TAG, KEY_BYTES = 12, 16, 32


def keypair(raw: bytes) -> X25519PrivateKey:
    """The X25519 private key of 32 raw bytes (a ``ValueError`` for any other length)."""
    if len(raw) != 32:
        raise ValueError(f"an X25519 private key is 32 bytes; got {len(raw)}")
    return X25519PrivateKey.from_private_bytes(raw)


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of ``key``'s public key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of private key ``key`` (unencrypted)."""
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def agree(key: X25519PrivateKey, peer_public: bytes | X25519PublicKey, info: bytes) -> bytes:
    """X25519 with the peer's public key (32 raw bytes, or the key object), then HKDF-SHA256 to
    32 bytes bound to ``info``."""
    if not isinstance(peer_public, X25519PublicKey):
        peer_public = X25519PublicKey.from_public_bytes(peer_public)
    shared = key.exchange(peer_public)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


class AgreementProcess:
    """:func:`agree` computed in a persistent worker process, beside the caller.

    ``cryptography``'s X25519 ``exchange`` holds the GIL (≈ 23 µs a call, measured: a second
    thread gives no speed-up), so a simulator's thousands of agreements a round serialise with
    everything else of its process that needs the GIL (the event loop, TensorFlow's Python, the
    mask threads' glue).  Here they run in a child process (``python -I``:
    :mod:`crowdlearn.crypto._agree_worker`, which imports nothing but ``cryptography``) that
    computes ``HKDF-SHA256(X25519(private, peer), info)``, byte for byte :func:`agree`
    (tested).  :meth:`submit` queues one private key with its peers' public keys and returns at
    once (a writer thread feeds the pipe); :meth:`result` waits for one answer (a reader thread
    drains the child's answers, so neither pipe fills).  The process starts at the first
    :meth:`submit` and ends at :meth:`close` (its stdin closed, then waited for; a finaliser
    kills it if the owner is dropped without closing), so no process outlives its owner.

    >>> a, b = keypair(bytes(range(32))), keypair(bytes(range(1, 33)))
    >>> with AgreementProcess() as pool:
    ...     fid = pool.submit(private_bytes(a), [public_bytes(b)], b"demo")
    ...     pool.result(fid, 0) == agree(a, public_bytes(b), b"demo")
    True
    """

    _REQUEST, _ANSWER = struct.Struct("<IIH"), struct.Struct("<II")

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self._cond = threading.Condition()
        self._done: dict[int, bytes] = {}
        self._next = 0
        self._failed: BaseException | None = None
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._finalizer = None
        self.frames = 0                   # frames submitted (for tests and benchmarks)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        if self._proc is not None:
            return
        worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_agree_worker.py")
        self._failed, self._outbox, self._done = None, queue.SimpleQueue(), {}
        self._proc = subprocess.Popen([sys.executable, "-I", worker], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE)
        self._finalizer = weakref.finalize(self, _end_process, self._proc)
        self._threads = [
            threading.Thread(target=self._write, args=(self._proc.stdin, self._outbox),
                             name="crowdlearn-x25519-out", daemon=True),
            threading.Thread(target=self._read, args=(self._proc.stdout,),
                             name="crowdlearn-x25519-in", daemon=True)]
        for t in self._threads:
            t.start()

    def submit(self, private: bytes, publics, info: bytes) -> int:
        """Queue the agreements of raw private key ``private`` with each of ``publics`` (raw
        32-byte keys) under ``info``; returns the frame id for :meth:`result`."""
        if len(private) != 32 or any(len(p) != 32 for p in publics):
            raise ValueError("X25519 keys are 32 raw bytes")
        self.start()
        fid = self._next
        self._next += 1
        self.frames += 1
        self._outbox.put(self._REQUEST.pack(fid, len(publics), len(info)) + info + private
                         + b"".join(publics))
        return fid

    def result(self, fid: int, i: int) -> bytes | None:
        """The ``i``-th agreement of frame ``fid`` (waits for it), or None if the worker could
        not compute it (an invalid key: the caller computes it and gets the library's error)."""
        with self._cond:
            while fid not in self._done:
                if self._failed is not None:
                    raise RuntimeError("the X25519 worker process failed") from self._failed
                self._cond.wait()
            got = self._done[fid]
        rec = got[33 * i:33 * i + 33]
        return rec[1:] if rec[:1] == b"\x01" else None

    def drop(self, fids) -> None:
        """Forget the answers of frames no one will read any more."""
        with self._cond:
            for fid in fids:
                self._done.pop(fid, None)

    def _write(self, pipe, outbox) -> None:
        try:
            while (frame := outbox.get()) is not None:
                pipe.write(frame)
                if outbox.empty():
                    pipe.flush()
            pipe.close()
        except (OSError, ValueError) as exc:     # the child died: readers are told
            self._fail(exc)

    def _read(self, pipe) -> None:
        size = self._ANSWER.size
        try:
            while len(head := pipe.read(size)) == size:
                fid, n = self._ANSWER.unpack(head)
                body = pipe.read(33 * n)
                with self._cond:
                    self._done[fid] = body
                    self._cond.notify_all()
        except (OSError, ValueError) as exc:
            self._fail(exc)
            return
        self._fail(EOFError("the X25519 worker process ended"))

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._failed is None:
                self._failed = exc
            self._cond.notify_all()

    def close(self) -> None:
        """End the worker process (stdin closed, then waited for) and the I/O threads."""
        if self._proc is None:
            return
        self._outbox.put(None)
        for t in self._threads:
            t.join(timeout=10)
        self._finalizer()                 # waits for the child (kills it if it hangs)
        self._proc = None
        self._threads = []
        with self._cond:
            self._done.clear()

    def __deepcopy__(self, memo):
        # a service, like a thread pool: a deep-copied owner (a machine copied for isolation)
        # shares it; frames are told apart by their ids and its owner still closes it
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _end_process(proc: subprocess.Popen) -> None:
    """Close the worker's stdin and reap it; kill it if it does not end."""
    try:
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


class _Ticket:
    """An agreement queued on an :class:`AgreementProcess`: frame id and index in it."""

    __slots__ = ("fid", "i")

    def __init__(self, fid: int, i: int):
        self.fid, self.i = fid, i


class AgreementMemo:
    """:func:`agree` for many parties in one process, each pair's key derived once.

    ``agree(a_sk, b_pk, info) == agree(b_sk, a_pk, info)``: in a simulation of both parties the
    second call can reuse the first's result.  The memo is keyed by the *pair* of public keys
    and ``info``, and a caller must present its own private key (whose public half is one of the
    pair), so it only ever receives the key it would have computed itself.  An entry is dropped
    after its second use (both ends); entries of an ``info`` more than ``keep`` distinct
    ``info`` values old are dropped too (a simulator's infos name the round).

    With a ``process`` (:class:`AgreementProcess`) the agreements can be computed ahead, beside
    the caller: a party says with :meth:`expect` which public keys its key will agree with (a
    SecAgg client, when its key list arrives); the memo queues the pairs not queued yet on the
    process, and :meth:`agree` waits for a queued pair's answer instead of computing it.  The
    same keys either way (tested).

    >>> memo = AgreementMemo()
    >>> a, b = keypair(bytes(range(32))), keypair(bytes(range(1, 33)))
    >>> memo.agree(a, public_bytes(b), b"x") == memo.agree(b, public_bytes(a), b"x")
    True
    >>> memo.exchanges, memo.hits
    (1, 1)
    """

    def __init__(self, keep: int = 4, *, process: AgreementProcess | None = None):
        self.keep = keep
        self.process = process
        self._by_info: dict[bytes, dict] = {}
        self._frames: dict[bytes, list] = {}                   # info -> frames queued for it
        self._public: dict[int, tuple] = {}
        self._peer_keys: dict[bytes, X25519PublicKey] = {}     # raw bytes -> parsed, once
        self.exchanges = 0
        self.hits = 0

    def _own_public(self, key: X25519PrivateKey) -> bytes:
        # the public half of a key object, computed once (ids are reused only after the object
        # dies: keep the object alongside)
        got = self._public.get(id(key))
        if got is None or got[0] is not key:
            got = self._remember_public(key, public_bytes(key))
        return got[1]

    def _remember_public(self, key: X25519PrivateKey, public: bytes) -> tuple:
        if len(self._public) > 100_000:
            self._public.clear()
        got = self._public[id(key)] = (key, public)
        return got

    def _info_memo(self, info: bytes) -> dict:
        memo = self._by_info.get(info)
        if memo is None:
            memo = self._by_info[info] = {}
            while len(self._by_info) > self.keep:
                old = next(iter(self._by_info))
                del self._by_info[old]
                if self.process is not None:
                    self.process.drop(self._frames.pop(old, ()))
        return memo

    def expect(self, key: X25519PrivateKey, public: bytes, peers, info: bytes) -> None:
        """The holder of ``key`` (whose public half is ``public``, as its owner computed it)
        will agree with each of ``peers`` under ``info``: queue the pairs not queued or known
        yet on the process, in one frame (without a process: only remembers ``public``)."""
        self._remember_public(key, public)
        if self.process is None:
            return
        memo = self._info_memo(info)
        todo, pairs = [], {}
        for peer in peers:
            pair = (public, peer) if public <= peer else (peer, public)
            if peer != public and pair not in memo and pair not in pairs:
                pairs[pair] = len(todo)
                todo.append(peer)
        if not todo:
            return
        fid = self.process.submit(private_bytes(key), todo, info)
        self._frames.setdefault(info, []).append(fid)
        for pair, i in pairs.items():
            memo[pair] = _Ticket(fid, i)

    def agree(self, key: X25519PrivateKey, peer_public: bytes, info: bytes) -> bytes:
        own = self._own_public(key)
        pair = (own, peer_public) if own <= peer_public else (peer_public, own)
        memo = self._info_memo(info)
        hit = memo.pop(pair, None)
        if hit is not None and not isinstance(hit, _Ticket):
            self.hits += 1
            return hit
        derived = self.process.result(hit.fid, hit.i) if hit is not None else None
        if derived is None:
            # each public key is parsed once, not once per peer that agrees with it
            peer = self._peer_keys.get(peer_public)
            if peer is None:
                if len(self._peer_keys) > 100_000:
                    self._peer_keys.clear()
                peer = self._peer_keys[peer_public] = X25519PublicKey.from_public_bytes(
                    peer_public)
            derived = agree(key, peer, info)
        self.exchanges += 1
        if own != peer_public:
            memo[pair] = derived
        return derived

    def forget(self) -> None:
        if self.process is not None:
            for fids in self._frames.values():
                self.process.drop(fids)
        self._by_info.clear()
        self._frames.clear()
        self._public.clear()
        self._peer_keys.clear()


def seal(key: bytes | AESGCM, plaintext: bytes, *, aad: bytes) -> bytes:
    """AES-256-GCM with a nonce derived from the plaintext-independent ``aad`` (one message per
    key and header in this protocol, so the nonce is never reused under a key).  ``key``: 32
    bytes, or the ``AESGCM`` of those bytes (a party that seals and opens under one key builds
    it once: the same bytes either way)."""
    nonce = hashlib.sha256(aad).digest()[:NONCE]
    aead = key if isinstance(key, AESGCM) else AESGCM(key)
    return nonce + aead.encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes | AESGCM, box: bytes, *, aad: bytes) -> bytes:
    """Decrypt and authenticate; raises ``InvalidTag`` on tampering or a wrong key."""
    aead = key if isinstance(key, AESGCM) else AESGCM(key)
    return aead.decrypt(box[:NONCE], box[NONCE:], aad)
