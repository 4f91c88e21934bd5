"""``crowdlearn.training.tfimport.import_tensorflow``: on a helper thread, its start-up lines
hidden when quiet, shown with the error when the import fails (a stand-in ``tensorflow`` package
in a fresh process, which writes to file descriptor 2 as TensorFlow's C++ start-up does)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE = '''
import os, threading
os.write(2, b"C++ start-up line\\n")
print("imported on", threading.current_thread().name, flush=True)
if os.environ.get("FAKE_TF_FAIL"):
    raise ImportError("no TensorFlow here")
'''


def _run(tmp_path, quiet: bool, fail: bool, level: str | None = None):
    (tmp_path / "tensorflow").mkdir(exist_ok=True)
    (tmp_path / "tensorflow" / "__init__.py").write_text(FAKE)
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}", **({"FAKE_TF_FAIL": "1"} if fail else {}),
               **({"TF_CPP_MIN_LOG_LEVEL": level} if level is not None else {}))
    code = ("from crowdlearn.training.tfimport import import_tensorflow\n"
            f"import_tensorflow(quiet={quiet})\nprint('done')")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("quiet", [True, False])
def test_an_import_runs_on_a_helper_thread_and_hides_its_lines_only_when_quiet(tmp_path, quiet):
    p = _run(tmp_path, quiet, fail=False)
    assert p.returncode == 0, p.stderr
    assert "imported on crowdlearn-import-tensorflow" in p.stdout and "done" in p.stdout
    assert ("C++ start-up line" in p.stderr) is not quiet
    shown = _run(tmp_path, quiet, fail=False, level="0")       # --verbose hides nothing
    assert "C++ start-up line" in shown.stderr


@pytest.mark.parametrize("quiet", [True, False])
def test_a_failed_import_shows_its_lines_and_raises_its_error_in_the_caller(tmp_path, quiet):
    p = _run(tmp_path, quiet, fail=True)
    assert p.returncode == 1 and "done" not in p.stdout
    assert "C++ start-up line" in p.stderr
    assert "ImportError: no TensorFlow here" in p.stderr
    assert p.stderr.index("C++ start-up line") < p.stderr.index("ImportError")
    assert p.stderr.count("C++ start-up line") == 1      # not a second import's lines again
    assert p.stdout.count("imported on") == 1
