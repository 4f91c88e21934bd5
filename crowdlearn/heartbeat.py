"""A line while a long round runs: progress that does not wait for the next metrics row.

Progress lines come with metrics rows, one per round; a round can take many minutes (the
Crowdlearning S-SGD baseline with the paper's CNN scores 120 CNNs on 10,000 test images in one
round), and a run that prints nothing for that long looks hung.  :class:`Heartbeat` runs a daemon
thread beside the run: when ``every`` seconds of wall time pass without a row (:meth:`row`), it
says so through ``say``, naming the round under way and the last row's simulated time, and again
every ``every`` seconds while none comes.  It reads nothing of the simulation (only what the rows
told it), so it needs no lock on the event loop.

Examples
--------
>>> import time
>>> lines = []
>>> with Heartbeat(lines.append, "fedavg", rounds=5, every=0.05) as hb:
...     hb.row({"round": 0, "time_s": 12.5})
...     deadline = time.monotonic() + 30
...     while not lines and time.monotonic() < deadline:
...         time.sleep(0.01)
>>> lines[0].startswith("fedavg: round 2/5 still running (the last row: simulated 12.5 s), ")
True
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Heartbeat:
    """A context manager: a line through ``say`` whenever ``every`` seconds of wall time pass
    without a metrics row (``row``), until the ``with`` block ends (the thread is joined).

    ``label`` starts each line; ``rounds`` is the run's round count.  ``every <= 0`` makes it
    silent (no thread).
    """

    def __init__(self, say: Callable[[str], None], label: str, *, rounds: int, every: float,
                 clock: Callable[[], float] = time.monotonic):
        self.say, self.label, self.rounds, self.every = say, label, int(rounds), float(every)
        self.clock = clock
        self._last = self._start = clock()
        self._round, self._sim = 0, None          # the round under way; the last row's time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def row(self, row: dict) -> None:
        """A metrics row was measured: the run advanced."""
        self._round = int(row["round"]) + 1
        self._sim = row.get("time_s")
        self._last = self.clock()

    def __enter__(self) -> Heartbeat:
        if self.every > 0:
            self._thread = threading.Thread(target=self._beat, name="crowdlearn-heartbeat",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        tick = min(max(self.every, 0.005), 1.0)    # a tiny ``every`` does not spin a core
        while not self._stop.wait(tick):
            now = self.clock()
            quiet = now - self._last
            if quiet < self.every:
                continue
            self._last = now
            since = ("the last row: simulated "
                     f"{float(self._sim):.1f} s" if self._sim is not None else "no row yet")
            self.say(f"{self.label}: round {min(self._round + 1, self.rounds)}/{self.rounds} "
                     f"still running ({since}), {quiet:.0f} s without a row, "
                     f"{now - self._start:.0f} s in all")
