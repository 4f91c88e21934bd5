"""Execute every notebook under ``notebooks/`` (small sizes) and fail on any cell error.

Each ``notebooks/*.ipynb`` becomes one test, so a new notebook is picked up without editing this
file.  The kernel runs with ``CROWDLEARN_NOTEBOOK_SMALL=1`` in its environment (notebooks shrink
their size knobs when they see it) and with the notebooks folder as working directory.

The ``python3`` kernel spec is resolved by ``jupyter_client``; a spec whose command is plain
``python`` (ipykernel's own spec, the one installed in a venv) is started with the interpreter
running this test, so notebooks see the same installed packages.  ``test_kernel_environment``
checks that, and that the environment variable reaches the kernel.

Each executed notebook is written, keyed by its text and the code it ran, to ``build/notebooks/``
(``docs/_ext/executed_notebooks.py``): ``make docs`` renders those copies as the tutorials instead
of executing the notebooks a second time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbclient
import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "docs" / "_ext"))
import executed_notebooks  # noqa: E402  (docs/_ext: shared with the documentation build)

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600
KERNEL = "python3"


@pytest.fixture
def small_env(monkeypatch):
    """The kernel inherits this process's environment (jupyter_client copies ``os.environ``)."""
    monkeypatch.setenv("CROWDLEARN_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    # in a venv, prefer its kernel specs over user-level ones (jupyter_core's default there too)
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "1")


def _execute(nb, cwd: Path):
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()     # raises CellExecutionError (cell source + traceback) on any error
    return nb


def test_kernel_environment(small_env, tmp_path):
    """The notebook kernel is this interpreter and sees CROWDLEARN_NOTEBOOK_SMALL=1."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os, sys\n"
        "print(sys.executable)\n"
        "print(os.environ.get('CROWDLEARN_NOTEBOOK_SMALL'))\n"
        "print(os.getcwd())")])
    _execute(nb, tmp_path)
    out = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.get("name") == "stdout")
    exe, flag, cwd = out.splitlines()
    assert Path(exe).resolve() == Path(sys.executable).resolve()
    assert flag == "1"
    assert Path(cwd).resolve() == tmp_path.resolve()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path, small_env):
    nb = nbformat.read(path, as_version=4)
    code = executed_notebooks.code_digest()      # the code the kernel imports, before it runs
    _execute(nb, path.parent)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
    out = executed_notebooks.write(nb, path, code)       # the tutorial page of `make docs`
    assert executed_notebooks.fresh(path) == out


def test_notebooks_saved_without_outputs():
    """Notebooks are committed clean: no outputs, no execution counts."""
    dirty = [p.name for p in NOTEBOOKS
             for c in nbformat.read(p, as_version=4).cells
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"clear the outputs of: {sorted(set(dirty))}"
