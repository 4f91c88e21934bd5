"""Files that crowdlearn writes whole or not at all.

Several processes may write the same file (the runs of a sweep share ``sweep.csv`` and the sweep's
marker; every run of a machine shares the calibration caches of :mod:`crowdlearn.crypto.costs`),
and a process may die half-way.  :func:`replace_text` writes a temporary file of a name no other
writer uses, in the target's folder, then renames it over the target (atomic on POSIX), so a
reader sees the old text or the new one, never a torn file, and no temporary file is left behind
when the write fails.

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> with tempfile.TemporaryDirectory() as d:
...     p = Path(d) / "a.json"
...     replace_text(p, "1")
...     replace_text(p, "2")
...     print(p.read_text(), sorted(f.name for f in Path(d).iterdir()))
2 ['a.json']
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def replace_text(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all: through a temporary file of a name no other writer
    uses (its process id and a random token), then a rename; the temporary file is removed if
    anything fails (and the error raised)."""
    path = Path(path)
    # os.open with 0o666, not mkstemp's 0o600: the file gets the user's umask like any other
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
