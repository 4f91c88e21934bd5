"""The code passes the project's lint (``pyproject.toml``'s ruff rules), so ``make test`` keeps it so.

ruff is pinned in the ``test`` extra: a newer ruff may add rules, and a rule added upstream should
reach the code as a chosen change, not as a red CI run.
"""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).with_name("ruff")
    exe = str(ruff) if ruff.exists() else shutil.which("ruff")
    assert exe, "ruff is not installed: `pip install -e .[test]` installs the pinned version"
    out = subprocess.run([exe, "check", "--no-cache", "crowdlearn", "sim", "slicenet", "tests",
                          "benchmarks"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
