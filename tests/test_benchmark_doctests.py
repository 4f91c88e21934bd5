"""The benchmark scripts: importing one runs nothing, and the examples in their docstrings hold.

``--doctest-modules`` collects only the packages (``setup.cfg``'s ``testpaths``), so the
examples of ``benchmarks/*.py`` (the figures their docs and tables are made of) run here.
"""

from __future__ import annotations

import doctest
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_benchmark_script_imports_quietly_and_its_examples_hold(name, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        module = importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert capsys.readouterr().out == "", f"importing benchmarks/{name}.py printed: it ran work"
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"benchmarks/{name}.py: {result.failed} examples failed"
