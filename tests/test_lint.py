"""The code, the notebooks' cells included, passes the project's lint (``pyproject.toml``'s ruff
rules), so ``make test`` keeps it so.

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
                          "benchmarks", "notebooks"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_no_code_outside_tests_imports_a_test_module():
    """Benchmarks and the packages never import from ``tests/``: what a benchmark needs (probe
    machines, reference paths) lives in the package, where users' installs have it."""
    import ast

    bad = []
    for folder in ("crowdlearn", "sim", "slicenet", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}"
                        for n in names if n == "tests" or n.startswith("tests.")]
    assert bad == []
