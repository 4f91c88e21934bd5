"""The one-way layers (``slicenet`` ← ``sim`` ← ``crowdlearn``) and ring 0's purity.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``) and are checked here with
import-linter, which reads every import statement, those inside functions included.  Ring 0 is
also imported module by module from a clean interpreter, which catches what a static reading
cannot (an import done by code that runs at import time in another module).
"""
import subprocess
import sys
import textwrap
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
(RING0_CONTRACT,) = [c for c in CONFIG["contracts"] if c["name"] == "ring 0 is pure"]
RING0 = RING0_CONTRACT["source_modules"]
FORBIDDEN = [m for m in RING0_CONTRACT["forbidden_modules"] if "." not in m]

LINT = """
import sys
from importlinter.cli import lint_imports
sys.exit(lint_imports(config_filename="pyproject.toml", no_cache=True, no_logo=True))
"""


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LINT], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def test_the_import_contracts_hold():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_the_layers_contract_catches_an_upward_import_inside_a_function(tmp_path):
    # the same layers contract on three toy packages, one of which imports upwards lazily
    for pkg in ("crowdlearn", "sim", "slicenet"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "sim" / "driver.py").write_text("import slicenet\n")
    (tmp_path / "slicenet" / "graph.py").write_text(textwrap.dedent("""
        def plan():
            from crowdlearn import config   # the lazy import the contract must still see
            return config
    """))
    (layers,) = [c for c in CONFIG["contracts"] if c["type"] == "layers"]
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(f"""
        [tool.importlinter]
        root_packages = ["crowdlearn", "sim", "slicenet"]
        [[tool.importlinter.contracts]]
        name = "layers"
        type = "layers"
        layers = {layers["layers"]!r}
    """))
    out = _lint(tmp_path)
    assert out.returncode != 0
    assert "slicenet.graph -> crowdlearn" in out.stdout


def test_ring0_imports_no_driver_or_tensorflow():
    # each module is imported on its own from a clean state, which also catches circular
    # imports that only show up in one import order
    code = f"""
import importlib, sys
bad = []
for name in {RING0!r}:
    for m in [m for m in sys.modules if m.split('.')[0] in ('crowdlearn', 'sim', 'slicenet')]:
        del sys.modules[m]
    importlib.import_module(name)
    bad += [f"{{name}}:{{m}}" for m in {FORBIDDEN!r} if m in sys.modules]
print(','.join(bad))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"ring 0 imported: {out.stdout.strip()}"
