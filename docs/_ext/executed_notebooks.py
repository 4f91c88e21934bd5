"""Executed copies of ``notebooks/*.ipynb``, shared by the test suite and the documentation build.

``tests/test_notebooks.py`` executes every notebook (``CROWDLEARN_NOTEBOOK_SMALL=1``) and writes the
executed notebook to :data:`EXECUTED_DIR` (``build/notebooks/``, or ``$CROWDLEARN_EXECUTED_NOTEBOOKS``)
with a *key* in its metadata: the SHA-256 of the notebook's cells and of every Python source of
the packages it imports (``crowdlearn``, ``sim``, ``slicenet``).  ``make docs`` renders a copy only
when its key equals the key of the current tree; otherwise it runs the notebook tests for the stale
notebooks first.  So CI executes each notebook once (``make test`` then ``make docs``), and a page
never shows outputs of another notebook text or another version of the code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = ROOT / "notebooks"
PACKAGES = ("crowdlearn", "sim", "slicenet")
META = "crowdlearn_executed"


def executed_dir() -> Path:
    """Where executed copies go: ``$CROWDLEARN_EXECUTED_NOTEBOOKS`` or ``build/notebooks``."""
    return Path(os.environ.get("CROWDLEARN_EXECUTED_NOTEBOOKS") or ROOT / "build" / "notebooks")


def code_digest() -> str:
    """SHA-256 over the packages' Python sources (path and bytes, in path order)."""
    h = hashlib.sha256()
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            h.update(str(p.relative_to(ROOT)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def key(path: Path, code: str | None = None) -> str:
    """The key of notebook ``path`` under the current code: its cells' types and sources + code."""
    cells = json.loads(Path(path).read_text())["cells"]
    text = json.dumps([(c["cell_type"], "".join(c["source"])) for c in cells])
    return hashlib.sha256((text + (code or code_digest())).encode()).hexdigest()


def write(nb, path: Path, code: str | None = None) -> Path:
    """Write executed notebook ``nb`` (an ``nbformat`` node) of source ``path``, keyed, atomically."""
    import nbformat
    out_dir = executed_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    nb.metadata[META] = {"key": key(path, code), "source": f"notebooks/{Path(path).name}"}
    out = out_dir / Path(path).name
    tmp = out.with_suffix(f".tmp-{os.getpid()}")
    nbformat.write(nb, tmp)
    tmp.replace(out)
    return out


def fresh(path: Path, code: str | None = None) -> Path | None:
    """The executed copy of ``path`` if it exists and its key is the current key, else ``None``."""
    out = executed_dir() / Path(path).name
    if not out.is_file():
        return None
    meta = json.loads(out.read_text()).get("metadata", {}).get(META, {})
    return out if meta.get("key") == key(path, code) else None
