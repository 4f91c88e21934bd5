"""Importing TensorFlow: once per process, on a helper thread, optionally with its C++ start-up
lines hidden (one helper for the simulation and the command lines).

On a helper thread: TensorFlow's import keeps caught ``ImportError``s' tracebacks in reference
cycles (TensorFlow Lite's ``__try_import`` wrappers), and their frames chain through ``f_back`` to
whatever imported it; imported from a simulation's own frames, the first simulation of a process
(and its caller's frame) stayed until the cyclic collector's next full pass.  From a helper thread
the chain ends at the thread (``tests/test_memory.py``).

Quietly: its C++ start-up lines (oneDNN, "All log messages before absl::InitializeLog()") are
written straight to file descriptor 2 during the import, before ``TF_CPP_MIN_LOG_LEVEL`` is read;
with ``quiet`` they are dropped, unless the import fails, in which case they are written out
before the error.  With ``TF_CPP_MIN_LOG_LEVEL=0`` (the CLI's ``--verbose``) nothing is hidden.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import threading

__all__ = ["import_tensorflow"]


def import_tensorflow(*, quiet: bool = False) -> None:
    """Import TensorFlow (if this process has not) on a helper thread; with ``quiet``, with file
    descriptor 2 pointed at a temporary file meanwhile.  An import that fails raises its error
    here, in the caller's thread, after the lines it wrote (once)."""
    if "tensorflow" in sys.modules:
        return
    quiet = quiet and os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "0"
    failed: list[BaseException] = []

    def load() -> None:
        try:
            importlib.import_module("tensorflow")
        except BaseException as e:     # noqa: BLE001 - raised below, in the caller's thread
            failed.append(e)

    if not quiet:
        _on_a_thread(load)
    else:
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                _on_a_thread(load)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            if "tensorflow" not in sys.modules:
                captured.seek(0)
                sys.stderr.write(captured.read().decode(errors="replace"))
    if failed:
        # the import's own error, raised in the caller's thread (not a second import, which
        # would write the C++ lines again after the replayed ones)
        raise failed[0]


def _on_a_thread(load) -> None:
    t = threading.Thread(target=load, name="crowdlearn-import-tensorflow")
    t.start()
    t.join()
