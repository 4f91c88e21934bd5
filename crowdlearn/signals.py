"""Termination signals as interrupts: a run stopped by SIGTERM or SIGHUP ends like Ctrl-C.

``timeout``, batch schedulers and ``docker stop`` send SIGTERM; a closed terminal sends SIGHUP.
Inside :func:`as_interrupts` both raise :class:`Interrupted` (a ``KeyboardInterrupt``), so the
code that already turns Ctrl-C into "write what was measured" handles them too.  A signal that
the process ignores on entry (``nohup`` ignores SIGHUP) stays ignored.  :func:`deferred` holds
SIGINT, SIGTERM and SIGHUP while results are being written, so a second signal cannot tear a
results folder in half; the caller acts on :attr:`Deferred.received` afterwards.

The exit status of a process ended this way is ``128 + signal number`` (130 for SIGINT, 143 for
SIGTERM, 129 for SIGHUP), as a shell reports for a process killed by that signal.

Examples
--------
>>> import os, signal
>>> try:
...     with as_interrupts():
...         os.kill(os.getpid(), signal.SIGTERM)
... except Interrupted as exc:
...     print(exc.name, exit_status(exc.signum))
SIGTERM 143
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Signals turned into :class:`Interrupted` during a run (SIGINT already raises KeyboardInterrupt).
TERMINATING = (signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A run ended by a signal; ``signum`` and ``name`` (e.g. ``"SIGTERM"``) say which."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.name = signal.Signals(signum).name
        super().__init__(self.name)


def signal_of(exc: BaseException) -> tuple[int, str]:
    """(number, name) of the signal behind a KeyboardInterrupt (plain Ctrl-C: SIGINT)."""
    if isinstance(exc, Interrupted):
        return exc.signum, exc.name
    return int(signal.SIGINT), "SIGINT"


def exit_status(signum: int) -> int:
    """The conventional exit status of a process ended by ``signum``: 128 + its number."""
    return 128 + int(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def as_interrupts(signums=TERMINATING) -> Iterator[list[int]]:
    """Within the block, each of ``signums`` raises :class:`Interrupted` (main thread only).
    Yields the list of the signals it turned so, in order (a library that catches the
    exception and raises a plain ``KeyboardInterrupt`` in its place, as Ray's ``wait`` does,
    loses the name; the list keeps it)."""
    received: list[int] = []
    if not _main_thread():
        yield received
        return

    def handler(signum, frame):
        received.append(int(signum))
        raise Interrupted(signum)

    old = {}
    for s in signums:
        if signal.getsignal(s) is signal.SIG_IGN:
            continue        # ignored on purpose (nohup): keep it so
        old[s] = signal.signal(s, handler)
    try:
        yield received
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class Deferred:
    """Signals received while :func:`deferred` held them, in order."""

    def __init__(self):
        self.received: list[int] = []


@contextmanager
def deferred(signums=(signal.SIGINT, *TERMINATING)) -> Iterator[Deferred]:
    """Record ``signums`` instead of acting on them until the block ends (main thread only)."""
    box = Deferred()
    if not _main_thread():
        yield box
        return

    def handler(signum, frame):
        box.received.append(int(signum))

    old = {}
    for s in signums:
        if signal.getsignal(s) is signal.SIG_IGN:
            continue
        old[s] = signal.signal(s, handler)
    try:
        yield box
    finally:
        for s, h in old.items():
            signal.signal(s, h)


ALL = (signal.SIGINT, *TERMINATING)


def _keep(signum) -> bool:
    """Whether to take over ``signum``: not if the process ignores it on purpose (``nohup``)."""
    return signal.getsignal(signum) is not signal.SIG_IGN


def pool_worker_init() -> None:
    """Initializer of a worker process of a pool of runs: between runs, SIGINT, SIGTERM and
    SIGHUP are noted and do nothing, so a worker that is idle or sending a result back is not
    killed by them (a worker that dies breaks the whole pool and loses the results of the runs
    still in it); the parent process decides what happens and forwards the signal to the runs
    (:func:`forward`).  During a run, :func:`first_interrupts` turns the first of them into
    :class:`Interrupted`."""
    for s in ALL:
        if _keep(s):
            signal.signal(s, lambda signum, frame: None)


@contextmanager
def first_interrupts(signums=ALL) -> Iterator[None]:
    """Within the block, the first of ``signums`` raises :class:`Interrupted`; later ones are
    noted and do nothing, so that a run already stopping (Ctrl-C reaches a pool's workers from
    the terminal and again from the parent) is not stopped a second time while it assembles
    what it measured (main thread only)."""
    if not _main_thread():
        yield
        return
    raised = []

    def handler(signum, frame):
        if not raised:
            raised.append(signum)
            raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in signums if _keep(s)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def forward(signum: int, pids) -> list[int]:
    """Send ``signum`` to each of ``pids`` still alive; the pids it reached."""
    import os
    reached = []
    for pid in pids:
        try:
            os.kill(pid, signum)
            reached.append(pid)
        except ProcessLookupError:
            pass
    return reached


def run_script(main: Callable[[], int], kept: str) -> int:
    """A script's ``main()``; if Ctrl-C (or SIGTERM/SIGHUP turned into :class:`Interrupted`)
    stops it, ``interrupted by <signal>: <kept>`` on stderr instead of a traceback, and
    128 + the signal's number.

    >>> def main():
    ...     raise Interrupted(signal.SIGTERM)
    >>> sys.stderr = sys.stdout
    >>> run_script(main, "nothing was written")
    interrupted by SIGTERM: nothing was written
    143
    >>> sys.stderr = sys.__stderr__
    """
    try:
        return main()
    except KeyboardInterrupt as exc:
        signum, name = signal_of(exc)
        print(f"interrupted by {name}: {kept}", file=sys.stderr)
        return exit_status(signum)
