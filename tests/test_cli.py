"""The command line and the results folder: nothing a user wrote is ever lost, results are never
lost to a signal or a bad ``--out``, and what is written loads back into pandas.

Each numbered observation of issue 7 has a test here that fails if it comes back.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crowdlearn import cli
from crowdlearn.config import from_dict, load
from crowdlearn.errors import ConfigError, CrowdlearnError
from crowdlearn.experiment import Simulation
from crowdlearn.results import MARKER, check_out, write
from crowdlearn.results import load as load_results
from tests.conftest import small_config

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--set", "rounds=2", "--set", "fleet.devices=6", "--set", "fedavg.clients_per_round=3"]
TF_LOG = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog", re.M)


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)     # the CLI must quiet TensorFlow by itself
    return env


def run_cli(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "crowdlearn.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=_env())


@pytest.fixture
def no_simulation(monkeypatch):
    """Fail the test if a simulation is even built (a bad --out must be refused before)."""
    import crowdlearn.experiment

    def refuse(*a, **k):
        raise AssertionError("a simulation was built although --out is unusable")
    monkeypatch.setattr(crowdlearn.experiment, "Simulation", refuse)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two small results folders (FedAvg and standalone), written by the library."""
    base = tmp_path_factory.mktemp("runs")
    a = write(Simulation(small_config(rounds=2)).run(), base / "a", plots=False)
    b = write(Simulation(small_config(rounds=2, protocol="standalone")).run(), base / "b",
              plots=False)
    return a, b


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


# ---------------------------------------------------------------- 1, 2: --out never deletes
def test_out_misuse_never_touches_a_users_files(tmp_path, monkeypatch, capsys, no_simulation):
    """Observation 1 and 2: every misuse of --out exits 2 before the run, naming the fix; the
    user's files survive each one byte for byte."""
    mine = tmp_path / "mywork"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    (mine / "sub" / "data.csv").write_text("a,b\n1,2\n")
    earlier = tmp_path / "results"          # a folder that keeps earlier runs
    (earlier / "run1").mkdir(parents=True)
    (earlier / "run1" / MARKER).write_text("{}")
    (earlier / "run1" / "metrics.csv").write_text("time_s,round\n")
    cwd = tmp_path / "cwd" / "sub"
    cwd.mkdir(parents=True)
    (cwd / "keep.txt").write_text("keep")
    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)
    (home / "thesis.tex").write_text("...")
    (tmp_path / "a_file").write_text("keep me")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    before = _tree(tmp_path)
    cases = [
        (str(mine), "holds files crowdlearn did not write"),
        (str(earlier), "holds files crowdlearn did not write"),
        (".", "the current directory"),
        (str(tmp_path / "cwd"), "contains the current directory"),
        (str(home), "a home directory"),
        ("/", "file system root"),
        (str(tmp_path / "a_file"), "is an existing file"),
        (str(tmp_path / "a_file" / "x"), "is a file, so nothing can be made under it"),
        ("/proc/crowdlearn-test", "cannot write in /proc"),
    ]
    for out, needle in cases:
        for extra in ([], ["--overwrite"]):
            assert cli.main(["run", *SMALL, "--out", out, *extra]) == 2, (out, extra)
            err = capsys.readouterr().err
            assert needle in err and "--out" in err and "Traceback" not in err, (out, err)
    assert _tree(tmp_path) == before


def test_overwrite_replaces_only_an_earlier_results_folder(tmp_path, two_runs, capsys,
                                                           no_simulation):
    run = tmp_path / "run"
    import shutil
    shutil.copytree(two_runs[0], run)
    assert (run / MARKER).is_file()
    assert cli.main(["run", *SMALL, "--out", str(run)]) == 2
    assert "add --overwrite" in capsys.readouterr().err
    (run / "my_analysis.ipynb").write_text("{}")    # the user added a file: never deleted
    with pytest.raises(CrowdlearnError, match="my_analysis.ipynb was added"):
        check_out(run, overwrite=True)
    (run / "my_analysis.ipynb").unlink()
    assert check_out(run, overwrite=True) == run


def test_overwrite_writes_a_fresh_folder_atomically(tmp_path):
    res = Simulation(small_config(rounds=1)).run()
    out = write(res, tmp_path / "r", plots=False)
    (out / "metrics.csv").write_text("stale")
    with pytest.raises(CrowdlearnError, match="add --overwrite"):
        write(res, out, plots=False)
    write(res, out, plots=False, overwrite=True)
    assert (out / "metrics.csv").read_text().startswith("time_s,round")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]        # no temporary left


def test_results_are_readable_by_other_users(tmp_path):
    old = os.umask(0o022)
    try:
        out = write(Simulation(small_config(rounds=1)).run(), tmp_path / "r", plots=False)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}


def test_cli_refuses_bad_out_as_a_subprocess_without_traceback(tmp_path):
    (tmp_path / "mywork").mkdir()
    (tmp_path / "mywork" / "notes.txt").write_text("mine")
    r = run_cli("run", *SMALL, "--out", "mywork", "--overwrite", cwd=tmp_path)
    assert r.returncode == 2 and "mywork" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "mywork" / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- 3: signals
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_signal_mid_run_writes_partial_results(tmp_path, sig):
    """Observation 3: SIGTERM (and SIGHUP) end a run like Ctrl-C: partial results, the signal in
    summary.json, exit status 128 + n."""
    proc = subprocess.Popen([sys.executable, "-m", "crowdlearn.cli", "run", "--set", "rounds=100000",
                             "--set", "fleet.devices=6", "--set", "fedavg.clients_per_round=3",
                             "--no-plots", "--out", "partial"], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a suite started under nohup passes SIGHUP on ignored, and a run
                            # keeps an ignored SIGHUP ignored (crowdlearn.signals): the child
                            # starts as from a terminal
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    seen = []
    for line in proc.stderr:     # plain progress lines: the first comes after round 1
        seen.append(line)
        if "round 1/100000" in line:
            break
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    err = "".join(seen) + err
    assert proc.returncode == 128 + sig, err
    assert f"interrupted by {sig.name}" in err and not TF_LOG.search(err), err
    s = json.loads((tmp_path / "partial" / "summary.json").read_text())
    assert s["interrupted"] is True and s["signal"] == sig.name and s["stopped_by"] == sig.name
    assert 1 <= s["rounds_completed"] < 100000 and not s["completed"]
    rows = (tmp_path / "partial" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == s["rounds_completed"] + 1


def test_sigterm_inside_python_ends_the_run_like_ctrl_c():
    before = signal.getsignal(signal.SIGTERM)

    def on_row(row):
        if row["round"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)
    res = Simulation(small_config(rounds=5), on_row=on_row).run()
    assert res.interrupted and len(res.metrics) == 2
    assert res.summary["signal"] == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before     # the handler is restored


def test_a_signal_while_writing_waits_for_a_complete_folder(tmp_path, monkeypatch, capsys):
    import crowdlearn.results as results_mod
    real = results_mod.write

    def write_then_signalled(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)        # arrives mid-write
        return real(*a, **k)
    monkeypatch.setattr(results_mod, "write", write_then_signalled)
    assert cli.main(["run", *SMALL, "--quiet", "--no-plots", "--out", str(tmp_path / "w")]) == 143
    assert "SIGTERM arrived while the results were written" in capsys.readouterr().err
    assert json.loads((tmp_path / "w" / "summary.json").read_text())["completed"] is True


# ---------------------------------------------------------------- 4: Python-side configs
def test_configs_are_immutable_and_replace_is_validated_and_recorded(tmp_path):
    """Observation 4: a config changed from Python can no longer diverge from config.json."""
    cfg = small_config(rounds=3)
    for change in (lambda: setattr(cfg.fedavg, "lr", 5.0), lambda: setattr(cfg, "rounds", 2),
                   lambda: setattr(cfg.fleet, "devices", 7)):
        with pytest.raises(AttributeError, match=r"cfg.replace\("):
            change()
    with pytest.raises(AttributeError):
        cfg.model.hidden.append(8)            # lists are read-only tuples
    new = cfg.replace({"fedavg.lr": 0.2, "fleet": {"devices": 7}, "rounds": 2})
    assert (new.fedavg.lr, new.fleet.devices, new.rounds, new.fleet.cells) == (0.2, 7, 2, 2)
    assert (cfg.fedavg.lr, cfg.fleet.devices, cfg.rounds) == (0.1, 8, 3)     # unchanged
    assert cfg.replace(overrides=["fedavg.lr=0.3"]).fedavg.lr == 0.3
    out = write(Simulation(new).run(), tmp_path / "r", plots=False)
    recorded = json.loads((out / "config.json").read_text())["config"]
    assert (recorded["fedavg"]["lr"], recorded["fleet"]["devices"], recorded["rounds"]) == \
        (0.2, 7, 2)
    assert json.loads((out / "summary.json").read_text())["rounds_completed"] == 2


def test_replace_reports_the_same_problems_as_a_file():
    with pytest.raises(ConfigError) as from_python:
        small_config().replace({"fedavg.lr": -1, "fleet.devices": 0})
    with pytest.raises(ConfigError) as from_file:
        from_dict({"fedavg": {"lr": -1}, "fleet": {"devices": 0}})
    assert from_python.value.problems == from_file.value.problems == [
        "fleet.devices: must be >= 1; got 0", "fedavg.lr: must be > 0; got -1.0"]


# ---------------------------------------------------------------- 5: no progress
def test_impossible_min_clients_is_rejected_before_running():
    with pytest.raises(ConfigError, match=r"fedavg.min_clients: 50 .* fleet.devices = 20"):
        from_dict({"fleet": {"devices": 20}, "fedavg": {"min_clients": 50}})


def test_a_run_without_progress_exits_3_and_keeps_headers(tmp_path, capsys):
    out = tmp_path / "np"
    assert cli.main(["run", *SMALL, "--set", "max_sim_time_s=0.001", "--quiet", "--out",
                     str(out)]) == cli.EXIT_NO_PROGRESS == 3
    err = capsys.readouterr().err
    assert "no round completed" in err and "raise max_sim_time_s" in err
    assert (out / "metrics.csv").read_text().startswith("time_s,round,accuracy,loss,")
    assert (out / "rounds.csv").read_text().startswith("round,start_s,end_s,closed_by")
    assert len((out / "devices.csv").read_text().splitlines()) == 7
    data = load_results(out)
    assert data.metrics.empty and data.metrics["accuracy"].dtype == np.float64
    assert data.summary["stopped_by"] == "max_sim_time_s"


# ---------------------------------------------------------------- 6: compare
def test_compare_into_a_new_folder_and_clear_errors(tmp_path, two_runs, capsys):
    png = tmp_path / "new" / "deeper" / "c.png"
    assert cli.main(["compare", *map(str, two_runs), "--out", str(png)]) == 0
    assert png.stat().st_size > 1000
    (tmp_path / "notes").mkdir()
    assert cli.main(["compare", str(tmp_path / "notes"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "not a results folder" in err and "invalid configuration" not in err
    (tmp_path / "f").write_text("")
    for out, needle in ((tmp_path / "f" / "c.png", "is a file"),
                        (tmp_path / "c.txt", "unknown image type"),
                        (tmp_path / "new", "is a folder")):
        assert cli.main(["compare", *map(str, two_runs), "--out", str(out)]) == 2
        assert needle in capsys.readouterr().err


# ---------------------------------------------------------------- 7, 8: messages
def test_messages_name_the_real_problem():
    """Observation 7: no follow-on errors from an invalid value; --set mistakes named as such."""
    with pytest.raises(ConfigError) as exc:
        from_dict({"fleet": {"devices": -5}})
    assert exc.value.problems == ["fleet.devices: must be >= 1; got -5"]
    with pytest.raises(ConfigError, match="the key is empty") as exc:
        load(None, ["=5"])
    assert "unknown key" not in str(exc.value)
    with pytest.raises(ConfigError, match=r"fleet: is a section.*--set fleet.devices=") as exc:
        load(None, ["fleet=3"])
    assert "did you mean" not in str(exc.value) and len(exc.value.problems) == 1
    assert load(None, ["protocol=fedavg"]).protocol == load(None, ['protocol="fedavg"']).protocol


def test_cnn_that_does_not_fit_the_images_offers_a_fix_the_config_can_apply():
    """Observation 8: the CNN default on digits names model.filters and a value that works."""
    from crowdlearn.training.models import cnn
    with pytest.raises(ConfigError, match=r"model.filters = \[16\]") as exc:
        from_dict({"model": {"arch": "cnn"}})
    assert "pool" not in exc.value.problems[0].split(":")[0]
    fixed = from_dict({"model": {"arch": "cnn", "filters": [16]}})
    cnn((8, 8, 1), filters=fixed.model.filters, kernel=fixed.model.kernel).output_shapes()
    from_dict({"model": {"arch": "cnn"}, "data": {"dataset": "fashion_mnist"}})   # 28x28 fits


# ---------------------------------------------------------------- pandas
def test_load_gives_typed_frames_and_one_long_frame_for_several_runs(two_runs):
    a, b = two_runs
    one = load_results(a)
    assert isinstance(one.summary, dict) and one.summary["protocol"] == "fedavg"
    assert one.config["rounds"] == 2
    assert list(one.metrics["run"].unique()) == ["a"]
    both = load_results([a, b])
    m = both.metrics
    assert set(m["run"]) == {"a", "b"} and len(m) == len(one.metrics) + len(load_results(b).metrics)
    assert m["round"].dtype == np.int64 and m["accuracy"].dtype == np.float64
    assert m["bytes_total"].dtype == np.int64
    d = both.devices
    assert d["device"].dtype == np.int64 and isinstance(d["tier"].dtype, pd.CategoricalDtype)
    assert len(d) == 2 * 8
    r = one.rounds
    assert isinstance(r["closed_by"].dtype, pd.CategoricalDtype)
    for ids in r["selected"]:
        assert ids == sorted(ids) and all(isinstance(i, int) for i in ids)      # numeric order
    t = one.traffic
    assert t["bytes"].sum() == one.summary["bytes_total"]
    assert list(both.summary["run"]) == ["a", "b"]
    assert list(both.summary["protocol"]) == ["fedavg", "standalone"]
    with pytest.raises(CrowdlearnError, match="not a crowdlearn results folder"):
        load_results(a.parent)


def test_rounds_csv_lists_device_ids_in_numeric_order(tmp_path):
    res = Simulation(small_config(rounds=3, **{"fleet.devices": 12,
                                               "fedavg.clients_per_round": 6})).run()
    out = write(res, tmp_path / "r", plots=False)
    lines = (out / "rounds.csv").read_text().splitlines()[1:]
    for line in lines:
        ids = [int(x) for x in line.split(",")[4].split()]
        assert ids == sorted(ids) and len(ids) >= 6


# ---------------------------------------------------------------- plots
def _device(i, missed):
    return {"device": i, "tier": "mid_range", "busy_s": 1.0 + i, "bytes_sent": 10,
            "bytes_received": 20, "rounds_missed": missed}


@pytest.mark.parametrize("missed", [0, 1])
def test_device_load_drops_an_empty_missed_panel_and_uses_integer_ticks(missed):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from crowdlearn.plots import device_load
    fig = device_load([_device(i, missed * (i % 2)) for i in range(7)])
    FigureCanvasAgg(fig).draw()
    axes = fig.axes
    assert len(axes) == (3 if missed else 2)
    if not missed:
        assert axes[0].get_title() == "no device missed a round"
    for ax in (axes[-1].xaxis, *([axes[2].yaxis] if missed else [])):
        ticks = ax.get_major_locator()()
        assert len(ticks) and all(float(t).is_integer() for t in ticks)


# ---------------------------------------------------------------- CLI polish
def test_version_and_help_are_written_for_people(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    from crowdlearn import __version__
    assert capsys.readouterr().out.strip() == f"crowdlearn {__version__}"
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "Simulate fleets of mobile devices" in text and "exit status" in text
    assert "Command line:" not in text
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--bogus"])
    assert exc.value.code == 2 and "--help" in capsys.readouterr().err


def test_tensorflow_startup_lines_are_hidden_unless_verbose(tmp_path):
    quiet = run_cli("run", *SMALL, "--no-plots", "--out", "q", cwd=tmp_path)
    loud = run_cli("run", *SMALL, "--no-plots", "--verbose", "--out", "v", cwd=tmp_path)
    assert quiet.returncode == loud.returncode == 0, quiet.stderr + loud.stderr
    assert not TF_LOG.search(quiet.stderr), quiet.stderr
    assert "fedavg: round 2/2" in quiet.stderr
    assert TF_LOG.search(loud.stderr), loud.stderr


def _read_terminal(fd: int, proc: subprocess.Popen, timeout: float = 600) -> bytes:
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:          # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return b"".join(chunks)


def test_progress_bar_updates_under_a_pseudo_terminal(tmp_path):
    """Under a terminal the progress bar redraws in place as rounds complete."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    rounds = 12
    proc = subprocess.Popen(
        [sys.executable, "-m", "crowdlearn.cli", "run", "--set", f"rounds={rounds}", "--set",
         "fleet.devices=6", "--set", "fedavg.clients_per_round=3", "--no-plots", "--out", "tty"],
        cwd=tmp_path, env=_env(), stdin=slave, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    try:
        text = _read_terminal(master, proc).decode(errors="replace")
    finally:
        os.close(master)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, text
    counts = {int(k) for k in re.findall(rf"(\d+)/{rounds} ", text)}
    assert {0, rounds} <= counts and counts - {0, rounds}, text    # and at least one in between
    assert "\r" in text and "acc=" in text
    assert "simulated" not in text.split("\n")[0] and "round 1/" not in text   # no plain lines
    assert not TF_LOG.search(text)
    assert b"results: tty" in out


def test_other_fixable_failures_exit_2_without_traceback(tmp_path, two_runs, capsys):
    """A damaged results folder, a config that is not text, a --plot under a file: exit 2."""
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "metrics.csv").write_text("time_s,round\n")
    (damaged / "summary.json").write_text("{")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    (tmp_path / "f").write_text("")
    for argv, needle in (
            (["compare", str(damaged), str(two_runs[0]), "--out", str(tmp_path / "c.png")],
             "damaged results folder"),
            (["run", str(binary)], "not a text file in UTF-8"),
            (["partition", "--plot", str(tmp_path / "f" / "plan.png")], "is a file")):
        assert cli.main(argv) == 2, argv
        assert needle in capsys.readouterr().err
    with pytest.raises(CrowdlearnError, match="damaged results folder"):
        load_results(damaged)


def test_partition_of_a_keras_file_is_quiet_and_works(tmp_path):
    import keras
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)])
    model.save(tmp_path / "m.keras")
    r = run_cli("partition", "--model", "m.keras", "--pieces", "2", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not TF_LOG.search(r.stderr), r.stderr
    assert len(json.loads(r.stdout)["assignment"]) == 12


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits; the /proc "
                    "case of test_out_misuse_never_touches_a_users_files covers root")
def test_read_only_parent_is_refused_before_the_run(tmp_path, capsys, no_simulation):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert cli.main(["run", *SMALL, "--out", str(ro / "out")]) == 2
        assert "cannot write in" in capsys.readouterr().err
    finally:
        ro.chmod(0o755)
