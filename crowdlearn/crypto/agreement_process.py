"""X25519 + HKDF agreements in a persistent worker process (:class:`AgreementProcess`).

Not protocol code: the composition root starts one for a simulation and hands it to the
protocol's shared objects (:class:`crowdlearn.protocols.secagg.SharedCrypto`), whose memo
(:class:`crowdlearn.crypto.keyagreement.AgreementMemo`) queues agreements on it; the machines
stay sans-I/O and compute the same bytes with or without it (tested).
"""

from __future__ import annotations

import logging
import os
import queue
import struct
import subprocess
import sys
import threading
import weakref

__all__ = ["AgreementProcess"]


class AgreementProcess:
    """:func:`~crowdlearn.crypto.keyagreement.agree` computed in a persistent worker process,
    beside the caller.

    ``cryptography``'s X25519 ``exchange`` holds the GIL (≈ 23 µs a call, measured: a second
    thread gives no speed-up), so a simulator's thousands of agreements a round serialise with
    everything else of its process that needs the GIL (the event loop, TensorFlow's Python, the
    mask threads' glue).  Here they run in a child process (``python -I``:
    :mod:`crowdlearn.crypto._agree_worker`, which imports nothing but ``cryptography``) that
    computes ``HKDF-SHA256(X25519(private, peer), info)``, byte for byte
    :func:`~crowdlearn.crypto.keyagreement.agree`
    (tested).  :meth:`submit` queues one private key with its peers' public keys and returns at
    once (a writer thread feeds the pipe); :meth:`result` waits for one answer (a reader thread
    drains the child's answers, so neither pipe fills).  The process starts at :meth:`start`
    (or the first :meth:`submit`) and ends at :meth:`close` (its stdin closed, then waited for;
    a finaliser does it if the owner is dropped without closing, and kills it if it hangs), so
    no process outlives its owner.

    >>> from crowdlearn.crypto.keyagreement import agree, keypair, private_bytes, public_bytes
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
        self._warned = False
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
        """The ``i``-th agreement of frame ``fid`` (waits for it), or None if the worker did not
        compute it: an invalid key (the caller computes it and gets the library's error), or
        the worker process ended before answering (the caller computes it: the same bytes;
        logged once)."""
        with self._cond:
            while fid not in self._done:
                if self._failed is not None:
                    if not self._warned:
                        self._warned = True
                        logging.getLogger(__name__).warning(
                            "the X25519 worker process ended (%s); agreements are computed "
                            "in this process", self._failed)
                    return None
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
