"""Sweeps: grid parsing, the local and Ray backends, resuming, failures, the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import crowdlearn
import crowdlearn.config
from crowdlearn import sweeps
from crowdlearn.errors import ConfigError, CrowdlearnError
from crowdlearn.training.threads import threads_for

BASE = {"rounds": 2, "fleet": {"devices": 6}, "fedavg": {"clients_per_round": 3}}
GRID = {"fedavg.lr": [0.02, 0.05]}


def test_parse_grid_reads_values_like_set_and_splits_only_top_level_commas():
    grid = sweeps.parse_grid(["fedavg.lr=0.02,0.05", "model.hidden=[64],[32,16]",
                              "slicenet.strategy=metis,\"random\"", "privacy.attacks=true,false"])
    assert grid == {"fedavg.lr": [0.02, 0.05], "model.hidden": [[64], [32, 16]],
                    "slicenet.strategy": ["metis", "random"], "privacy.attacks": [True, False]}


def test_parse_grid_lists_every_malformed_item():
    with pytest.raises(ConfigError) as err:
        sweeps.parse_grid(["fedavg.lr", "=1,2", "fleet.devices=5,,6", "a=1", "a=2"])
    text = str(err.value)
    assert "'fedavg.lr'" in text and "'=1,2'" in text and "stray comma" in text
    assert "given twice" in text


def test_grid_expands_to_product_times_seeds_with_stable_distinct_ids():
    specs = sweeps.expand_grid({"a.x": [1, 2], "b.y": ["u", "v", "w"]}, seeds=[0, 1])
    assert len(specs) == 12
    assert len({s.run_id for s in specs}) == 12
    assert specs == sweeps.expand_grid({"a.x": [1, 2], "b.y": ["u", "v", "w"]}, seeds=[0, 1])
    assert specs[0].overrides() == {"a.x": 1, "b.y": "u", "seed": 0}
    long = sweeps.expand_grid({"model.hidden": [[512] * 40]}, seeds=[3])[0]
    assert len(long.run_id) <= 113 and "/" not in long.run_id


def test_interval95_is_the_student_t_interval():
    from scipy import stats
    xs = [0.81, 0.84, 0.79, 0.88, 0.83]
    mean, half = sweeps.interval95(xs)
    lo, hi = stats.t.interval(0.95, len(xs) - 1, loc=mean, scale=stats.sem(xs))
    assert mean == pytest.approx(sum(xs) / 5)
    assert half == pytest.approx((hi - lo) / 2)
    assert sweeps.interval95([2.0]) == (2.0, 0.0)


def test_local_sweep_writes_runs_table_and_plots_then_resumes(tmp_path, monkeypatch):
    out = tmp_path / "sw"
    df = crowdlearn.sweep(BASE, GRID, seeds=2, out=out, jobs=1)
    assert len(df) == 4 and set(df["status"]) == {"ok"}
    assert sorted(df["seed"]) == [0, 0, 1, 1]
    assert sorted(df["fedavg.lr"]) == [0.02, 0.02, 0.05, 0.05]
    for run_id in df["run"]:
        folder = out / "runs" / run_id
        summary = json.loads((folder / "summary.json").read_text())
        row = df[df["run"] == run_id].iloc[0]
        assert row["final_accuracy"] == summary["final_accuracy"]
        assert row["bytes_total"] == summary["bytes_total"]
        assert json.loads((folder / "config.json").read_text())["config"]["seed"] == row["seed"]
    table = (out / "sweep.csv").read_text().splitlines()
    assert len(table) == 5 and table[0].startswith("run,fedavg.lr,seed,status,error")
    assert (out / "sweep_fedavg.lr.png").stat().st_size > 0
    # different seeds give different runs; the lr matters
    assert df["final_accuracy"].nunique() > 1

    calls = []
    real = sweeps.run_point
    monkeypatch.setattr(sweeps, "run_point", lambda cfg, dataset=None, **kw: calls.append(cfg)
                        or real(cfg, dataset, **kw))
    again = crowdlearn.sweep(BASE, {"fedavg.lr": [0.02, 0.05, 0.1]}, seeds=2, out=out, jobs=1)
    assert len(calls) == 2                        # only the new lr's two seeds ran
    assert list(again["status"]).count("skipped") == 4
    assert again.set_index("run").loc[df["run"], "final_accuracy"].tolist() == \
        df["final_accuracy"].tolist()


def test_a_failing_run_is_recorded_the_others_finish_and_a_rerun_retries_it(tmp_path, monkeypatch):
    real = sweeps.run_point

    def flaky(cfg, dataset=None, **kw):
        if cfg.fedavg.lr == 0.05 and cfg.seed == 0:
            raise RuntimeError("boom in run")
        return real(cfg, dataset, **kw)

    monkeypatch.setattr(sweeps, "run_point", flaky)
    out = tmp_path / "sw"
    df = crowdlearn.sweep(BASE, GRID, seeds=2, out=out, jobs=1, plots=False)
    failed = df[df["status"] == "failed"]
    assert len(failed) == 1 and "boom in run" in failed.iloc[0]["error"]
    assert (df["status"] == "ok").sum() == 3
    assert not (out / "runs" / failed.iloc[0]["run"] / "summary.json").exists()
    assert "boom in run" in (out / "sweep.csv").read_text()

    monkeypatch.setattr(sweeps, "run_point", real)
    df2 = crowdlearn.sweep(BASE, GRID, seeds=2, out=out, jobs=1, plots=False)
    assert list(df2["status"]).count("ok") == 1 and list(df2["status"]).count("skipped") == 3


def test_ctrl_c_keeps_what_finished_and_the_interrupted_run_is_not_marked_done(tmp_path,
                                                                                monkeypatch):
    real = sweeps.run_point
    seen = []

    def interrupt_second(cfg, dataset=None, **kw):
        seen.append(cfg)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(cfg, dataset, **kw)

    monkeypatch.setattr(sweeps, "run_point", interrupt_second)
    out = tmp_path / "sw"
    with pytest.raises(KeyboardInterrupt):
        crowdlearn.sweep(BASE, GRID, seeds=2, out=out, jobs=1, plots=False)
    rows = (out / "sweep.csv").read_text().splitlines()
    assert len(rows) == 2                           # header + the one finished run
    assert len(list((out / "runs").glob("*/summary.json"))) == 1


def _interrupting(real, at_call: int, at_round: int):
    """A ``run_point`` whose ``at_call``-th run gets a real SIGINT while it measures round
    ``at_round`` (0-based): the simulation stops as under Ctrl-C and returns what it measured."""
    import os
    import signal

    calls = []

    def run_point(cfg, dataset=None, *, on_row=None):
        calls.append(cfg)
        if len(calls) != at_call:
            return real(cfg, dataset, on_row=on_row)

        def row(r):
            if on_row is not None:
                on_row(r)
            if r["round"] == at_round:
                os.kill(os.getpid(), signal.SIGINT)
        return real(cfg, dataset, on_row=row)
    return run_point


def test_a_run_stopped_by_ctrl_c_keeps_what_it_measured_and_is_made_again_on_resume(
        tmp_path, monkeypatch):
    real = sweeps.run_point
    base = {**BASE, "rounds": 4}
    monkeypatch.setattr(sweeps, "run_point", _interrupting(real, at_call=2, at_round=1))
    out = tmp_path / "sw"
    lines = []
    with pytest.raises(KeyboardInterrupt):
        crowdlearn.sweep(base, GRID, seeds=2, out=out, jobs=1, plots=False,
                         progress=lines.append)
    table = (out / "sweep.csv").read_text().splitlines()
    assert len(table) == 3                           # header, the finished run, the stopped one
    assert ",ok," in table[1] and ",interrupted," in table[2]
    stopped = table[2].split(",")[0]
    folder = out / "runs" / stopped
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["completed"] is False
    measured = (folder / "metrics.csv").read_text().splitlines()
    assert 2 <= len(measured) <= 4                   # header + the rounds it measured, not all 4
    assert summary["rounds_completed"] == len(measured) - 1
    assert any("interrupted" in line and stopped in line for line in lines)

    monkeypatch.setattr(sweeps, "run_point", real)   # resume: the stopped run is made again
    df = crowdlearn.sweep(base, GRID, seeds=2, out=out, jobs=1, plots=False)
    status = dict(zip(df["run"], df["status"], strict=True))
    assert list(status.values()).count("skipped") == 1 and status[stopped] == "ok"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["interrupted"] is False and summary["rounds_completed"] == 4
    again = crowdlearn.sweep(base, GRID, seeds=2, out=out, jobs=1, plots=False)
    assert set(again["status"]) == {"skipped"}


def test_a_pool_sweep_stopped_by_ctrl_c_keeps_what_every_stopped_run_measured(tmp_path,
                                                                             monkeypatch):
    import concurrent.futures as cf

    class Threads(cf.ThreadPoolExecutor):     # the pool's logic, with workers as threads
        def __init__(self, max_workers=None, mp_context=None, initializer=None):
            super().__init__(max_workers)     # (the initializer sets a process's signals)

    def worker(payload, on_row=None):         # each run stopped by Ctrl-C in its second round
        run_id, cfg = payload
        cfg = cfg.replace({"training.threads": 0})    # threads, not processes: the pools it has

        def stop(row):
            if row["round"] == 1:
                raise KeyboardInterrupt
        return run_id, sweeps.run_point(cfg, on_row=stop), None

    monkeypatch.setattr(cf, "ProcessPoolExecutor", Threads)
    monkeypatch.setattr(sweeps, "_pool_worker", worker)
    out = tmp_path / "sw"
    with pytest.raises(KeyboardInterrupt):
        crowdlearn.sweep({**BASE, "rounds": 4}, GRID, seeds=1, out=out, jobs=2, plots=False)
    table = (out / "sweep.csv").read_text().splitlines()
    assert len(table) == 3 and all(",interrupted," in line for line in table[1:])
    for summary in (out / "runs").glob("*/summary.json"):
        assert json.loads(summary.read_text())["interrupted"] is True
    assert len(list((out / "runs").glob("*/metrics.csv"))) == 2


def test_a_long_in_process_run_reports_its_progress_while_it_runs():
    lines = []
    crowdlearn.sweep({**BASE, "rounds": 3}, {"fedavg.lr": [0.05]}, seeds=1, jobs=1,
                     progress=lines.append, progress_every=1e-9)
    # (the rows' lines; a round that runs without a row also gets "still running" lines,
    # tests/test_heartbeat.py)
    during = [line for line in lines if ": round " in line and "still running" not in line]
    assert [line.split(": round ")[1].split(",")[0] for line in during] == ["1/3", "2/3", "3/3"]
    assert all(line.startswith("[1/1] fedavg.lr=0.05_seed=0: ") for line in during)
    assert all("simulated " in line and "accuracy " in line for line in during)
    assert lines[-1] == "[1/1] fedavg.lr=0.05_seed=0: ok"
    quiet = []
    crowdlearn.sweep({**BASE, "rounds": 3}, {"fedavg.lr": [0.05]}, seeds=1, jobs=1,
                     progress=quiet.append, progress_every=0)
    assert quiet == ["[1/1] fedavg.lr=0.05_seed=0: ok"]


def test_invalid_grid_points_are_all_rejected_before_anything_runs(tmp_path):
    out = tmp_path / "sw"
    with pytest.raises(ConfigError) as err:
        crowdlearn.sweep(BASE, {"fedavg.lr": [0.1, -1.0], "fleet.devices": [6, 0]}, seeds=1, out=out)
    text = str(err.value)
    assert "fedavg.lr" in text and "fleet.devices" in text
    assert not out.exists()


def test_a_foreign_folder_is_refused_and_left_untouched(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    with pytest.raises(CrowdlearnError, match="not a crowdlearn sweep folder"):
        crowdlearn.sweep(BASE, GRID, seeds=1, out=out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "precious"


def test_resuming_with_another_base_config_is_refused(tmp_path):
    out = tmp_path / "sw"
    crowdlearn.sweep(BASE, {"fedavg.lr": [0.05]}, seeds=1, out=out, plots=False)
    other = {**BASE, "rounds": 3}
    (out / sweeps.LOCK).unlink()
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(CrowdlearnError, match="different base config"):
        crowdlearn.sweep(other, {"fedavg.lr": [0.05]}, seeds=1, out=out, plots=False)
    assert sorted(p.name for p in out.rglob("*")) == before      # "nothing was changed"


def _in_fresh_process(code: str, *args: str) -> str:
    """``code`` run by a new interpreter (TensorFlow's pools are fixed once a process computed)."""
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_process_pool_gives_the_same_results_as_in_process_with_the_same_threads(tmp_path):
    pooled = crowdlearn.sweep(BASE, GRID, seeds=1, out=tmp_path / "p", jobs=2, plots=False)
    share = threads_for(os.cpu_count() or 1, 2)
    base = {**BASE, "training": {"threads": share}}     # what each pooled run was given
    cols = ["run", "final_accuracy", "bytes_total", "sim_time_s", "energy_j"]
    serial = json.loads(_in_fresh_process(
        "import json, sys, crowdlearn; df = crowdlearn.sweep(json.loads(sys.argv[1]), "
        "json.loads(sys.argv[2]), seeds=1, jobs=1); "
        "print(json.dumps(df[json.loads(sys.argv[3])].values.tolist()))",
        json.dumps(base), json.dumps(GRID), json.dumps(cols)))
    assert sorted(serial) == pooled[cols].sort_values("run").values.tolist()


def _threads(config_json: Path) -> int:
    return json.loads(config_json.read_text())["config"]["training"]["threads"]


def test_runs_side_by_side_get_their_share_of_the_cores_recorded_in_their_config(tmp_path):
    lines = []
    out = tmp_path / "p"
    crowdlearn.sweep(BASE, GRID, seeds=1, out=out, jobs=2, plots=False, progress=lines.append)
    share = threads_for(os.cpu_count() or 1, 2)
    assert f"2 runs, 2 at a time: {share} TensorFlow thread(s) per op each (training.threads)" \
        in lines
    configs = sorted((out / "runs").glob("*/config.json"))
    assert len(configs) == 2
    assert {_threads(c) for c in configs} == {share}
    # a run's config.json alone makes the same run again, in a new process
    again = _cli("run", str(configs[0]), "--out", str(tmp_path / "again"), "--no-plots",
                 cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    cols = ["round", "accuracy", "loss", "bytes_total"]
    assert pd.read_csv(tmp_path / "again" / "metrics.csv")[cols].values.tolist() == \
        pd.read_csv(configs[0].parent / "metrics.csv")[cols].values.tolist()
    assert _threads(tmp_path / "again" / "config.json") == share
    # a config that chose its threads keeps them; in-process runs (jobs=1) are not changed
    chose = tmp_path / "c"
    crowdlearn.sweep({**BASE, "training": {"threads": 3}}, GRID, seeds=1, out=chose, jobs=2,
                     plots=False)
    assert {_threads(c) for c in (chose / "runs").glob("*/config.json")} == {3}
    alone = tmp_path / "a"
    crowdlearn.sweep(BASE, {"fedavg.lr": [0.05]}, seeds=1, out=alone, jobs=2, plots=False)
    assert [_threads(c) for c in (alone / "runs").glob("*/config.json")] == [0]


def test_threads_are_chosen_by_a_process_first_run_and_a_later_change_is_a_clear_error():
    code = ("import tensorflow as tf; tf.constant(1.0) + 1.0\n"        # TensorFlow has started
            "from crowdlearn.config import from_dict\n"
            "from crowdlearn.errors import CrowdlearnError\n"
            "from crowdlearn.experiment import Simulation\n"
            "base = {'rounds': 1, 'fleet': {'devices': 4}, 'fedavg': {'clients_per_round': 2}}\n"
            "Simulation(from_dict(base)).run()\n"                       # 0: the pools it has
            "try:\n"
            "    Simulation(from_dict({**base, 'training': {'threads': 1}}))\n"
            "except CrowdlearnError as e:\n"
            "    print(e)\n")
    said = _in_fresh_process(code)
    assert "training.threads = 1" in said and "already computes with TensorFlow's default" in \
        said and "new process" in said
    first = ("from crowdlearn.config import from_dict\n"
             "from crowdlearn.experiment import Simulation\n"
             "import tensorflow as tf\n"
             "cfg = {'rounds': 1, 'fleet': {'devices': 4}, 'fedavg': {'clients_per_round': 2},"
             " 'training': {'threads': 1}}\n"
             "Simulation(from_dict(cfg)).run(); Simulation(from_dict(cfg)).run()\n"
             "t = tf.config.threading\n"
             "print(t.get_intra_op_parallelism_threads(), t.get_inter_op_parallelism_threads())")
    assert _in_fresh_process(first).split() == ["1", "1"]
    with pytest.raises(ConfigError, match="training.threads"):
        crowdlearn.config.from_dict({"training": {"threads": -1}})


def test_ray_backend_runs_every_point_shares_the_dataset_and_matches_local(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="the Ray extra is not installed (pip install .[ray])")
    puts = []
    real_put = ray.put
    monkeypatch.setattr(ray, "put", lambda obj, **kw: puts.append(type(obj).__name__) or
                        real_put(obj, **kw))
    base = {**BASE, "data": {"dataset": "breast_cancer"}, "model": {"arch": "linear"}}
    out = tmp_path / "ray"
    df = crowdlearn.sweep(base, GRID, seeds=2, out=out, backend="ray", jobs=2, plots=False)
    assert not ray.is_initialized()               # the local cluster it started is gone
    assert len(df) == 4 and set(df["status"]) == {"ok"}
    assert len((out / "sweep.csv").read_text().splitlines()) == 5
    assert len(list((out / "runs").glob("*/summary.json"))) == 4
    assert puts == ["Dataset", "Dataset"]         # one per distinct (dataset, split seed)
    local = crowdlearn.sweep(base, GRID, seeds=2, jobs=1)
    cols = ["run", "final_accuracy", "bytes_total"]
    assert df[cols].sort_values("run").values.tolist() == \
        local[cols].sort_values("run").values.tolist()


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "crowdlearn.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_cli_sweep_and_its_errors(tmp_path):
    root = Path(__file__).resolve().parents[1]
    cfg = root / "examples" / "default.toml"
    out = tmp_path / "sw"
    sets = ["--set", "rounds=2", "--set", "fleet.devices=6", "--set", "fedavg.clients_per_round=3"]
    ok = _cli("sweep", str(cfg), *sets, "--grid", "fedavg.lr=0.02,0.05", "--seeds", "2",
              "--out", str(out), "--jobs", "1", "--no-plots", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "4 runs (4 ran, 0 already finished, 0 failed)" in ok.stdout
    assert len((out / "sweep.csv").read_text().splitlines()) == 5
    again = _cli("sweep", str(cfg), *sets, "--grid", "fedavg.lr=0.02,0.05", "--seeds", "2",
                 "--out", str(out), "--jobs", "1", "--no-plots", cwd=tmp_path)
    assert again.returncode == 0 and "4 already finished" in again.stdout

    bad = _cli("sweep", str(cfg), "--grid", "fedavg.lr=0.1,-3", "--out", str(tmp_path / "b"),
               cwd=tmp_path)
    assert bad.returncode == 2 and "fedavg.lr" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "b").exists()
    bad_seeds = _cli("sweep", str(cfg), "--seeds", "0", cwd=tmp_path)
    assert bad_seeds.returncode == 2 and "--seeds" in bad_seeds.stderr


def test_cli_sweep_stopped_by_ctrl_c_says_what_was_kept_and_exits_130(tmp_path, monkeypatch,
                                                                       capsys):
    from crowdlearn.cli import main

    root = Path(__file__).resolve().parents[1]
    monkeypatch.setattr(sweeps, "run_point", _interrupting(sweeps.run_point, 1, 1))
    out = tmp_path / "sw"
    code = main(["sweep", str(root / "examples" / "default.toml"), "--set", "rounds=3",
                 "--set", "fleet.devices=6", "--set", "fedavg.clients_per_round=3",
                 "--grid", "fedavg.lr=0.02,0.05", "--out", str(out), "--jobs", "1",
                 "--no-plots"])
    err = capsys.readouterr().err
    assert code == 130
    assert "sweep interrupted by SIGINT" in err and "the same command resumes" in err
    assert "nothing was written" not in err
    assert len((out / "sweep.csv").read_text().splitlines()) == 2
    assert json.loads(next((out / "runs").glob("*/summary.json")).read_text())["interrupted"]


def test_ray_training_executor_gives_the_weights_of_the_in_process_trainer():
    pytest.importorskip("ray", reason="the Ray extra is not installed (pip install .[ray])")
    import numpy as np

    from crowdlearn.config import from_dict
    from crowdlearn.experiment import SERVER, Simulation
    from crowdlearn.training.ray_trainer import RayShardedTrainer

    raw = {**BASE, "fleet": {"devices": 7}, "fedavg": {"clients_per_round": 5}}
    local = Simulation(from_dict(raw))
    res_local = local.run()
    ray_sim = Simulation(from_dict({**raw, "training": {"executor": "ray", "ray_actors": 2}}))
    assert isinstance(ray_sim.trainer, RayShardedTrainer)
    res_ray = ray_sim.run()
    import ray
    try:
        assert ray_sim.trainer.calls == 2           # one sharded call per round, 5 devices each
        # each actor computes on the one CPU it asked Ray for, not on a pool of every core
        assert ray.get([a.pools.remote() for a in ray_sim.trainer.actors]) == [(1, 1)] * 2
        for a, b in zip(local.driver.machines[SERVER].weights,
                        ray_sim.driver.machines[SERVER].weights, strict=True):
            np.testing.assert_array_equal(a, b)
        assert res_local.metrics == res_ray.metrics
    finally:
        ray_sim.trainer.close()
        ray.shutdown()


def test_ray_training_executor_is_refused_where_it_cannot_apply():
    from crowdlearn.config import from_dict
    with pytest.raises(ConfigError, match="training.executor"):
        from_dict({"protocol": "crowdlearning", "training": {"executor": "ray"}})


def _describe(i: int) -> dict:
    return {"kind": "crowdlearn-sweep", "base_config": {}, "base_config_sha256": "same",
            "grid": {"k": [i]}, "grid_sha256": f"g{i}", "seeds": [0]}


def test_processes_sharing_a_sweep_folder_lose_no_grid_and_no_table(tmp_path):
    """Several sweeps may share one folder (a set split over processes with --first-seed):
    the marker's grids are read, extended and written under a lock, and sweep.csv is written
    through a temporary file no other writer uses.  Threads stand in for the processes (each
    opens the lock file itself, so flock sets them apart as it does processes)."""
    from concurrent.futures import ThreadPoolExecutor

    from crowdlearn.sweeps import MARKER, SweepFolder, _write_table

    out = tmp_path / "shared"

    def prepare(i):
        SweepFolder(out, describe=_describe(i)).prepare()

    def table(i):
        _write_table(out / "sweep.csv", [{"run": f"r{i}-{j}", "seed": j} for j in range(200)])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(prepare, range(64)))
        list(pool.map(table, range(64)))
    marker = json.loads((out / MARKER).read_text())
    assert sorted(marker["grids"]) == sorted(f"g{i}" for i in range(64))
    lines = (out / "sweep.csv").read_text().splitlines()
    assert lines[0] == "run,seed" and len(lines) == 201          # one writer's whole table
    assert len({line.split("-")[0] for line in lines[1:]}) == 1
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    mode = (out / "sweep.csv").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask                 # the user's umask, like any file written


def _processes(match) -> dict[int, float]:
    """The processes for which ``match(parent pid, command line)`` holds, and the CPU seconds
    each has used."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if match(int(fields[1]), cmd):
            out[int(d.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _pool_workers(parent: int) -> dict[int, float]:
    """The pool worker processes of ``parent`` (spawned: ``spawn_main`` in their command line)
    and the CPU seconds each has used."""
    return _processes(lambda ppid, cmd: ppid == parent and b"spawn_main" in cmd)


def _ray_tasks() -> dict[int, float]:
    """The Ray worker processes running a sweep's runs (``ray::_ray_task``) and their CPU
    seconds."""
    return _processes(lambda ppid, cmd: cmd.startswith(b"ray::_ray_task"))


def _sigterm_a_two_run_sweep(tmp_path, extra: list, running, marker: bytes, *, preexec_fn,
                             timeout: float) -> list[dict]:
    """A real CLI sweep of two long FedAvg runs (``extra``: its backend's options); once both
    runs are past their start-up (``running(sweep pid)``: pid -> CPU seconds), SIGTERM to the
    sweep's process alone.  Checks what every backend must give (exit 143 with a message, both
    rows ``interrupted``, both runs' measurements kept, no process whose command line holds
    ``marker`` left) and returns the runs' summaries.  Every process it saw is killed after."""
    import signal
    import time

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "crowdlearn.cli", "sweep", str(root / "examples" / "default.toml"),
         "--set", "rounds=100000", "--set", "fleet.devices=6", "--set",
         "fedavg.clients_per_round=3", "--grid", "fedavg.lr=0.02,0.05", "--jobs", "2",
         *extra, "--no-plots", "--out", "sw"], cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(root)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        found: dict = {}
        while time.monotonic() < deadline:   # both runs under way: past their start-up
            found = running(proc.pid)
            seen |= set(found)
            if len(found) == 2 and min(found.values()) >= 12.0:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.5)
        else:
            pytest.fail(f"the two runs did not get under way: {found}")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 143, err
        assert "sweep interrupted by SIGTERM" in err, err
        table = (tmp_path / "sw" / "sweep.csv").read_text().splitlines()
        assert len(table) == 3 and all(",interrupted," in line for line in table[1:]), table
        summaries = [json.loads(p.read_text())
                     for p in (tmp_path / "sw" / "runs").glob("*/summary.json")]
        assert len(summaries) == 2
        for s in summaries:
            assert s["interrupted"] and s["signal"] == "SIGTERM"
            assert 1 <= s["rounds_completed"] < 100000, summaries
        time.sleep(1.0)
        assert not [p for p in seen if Path(f"/proc/{p}").exists()
                    and marker in Path(f"/proc/{p}/cmdline").read_bytes()], \
            "a run's process outlived the sweep"
        return summaries
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in seen:                      # (the code before the fixes left them running)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_sigterm_to_a_pool_sweep_alone_stops_its_runs_keeps_them_and_leaves_no_worker(tmp_path):
    """`kill PID` (a batch scheduler's SIGTERM) reaches the sweep's own process, not its
    workers: the sweep forwards it, every run stops and keeps what it measured, the workers end
    with the sweep, and it exits 143.  (Before: the sweep died at once, its workers ran on as
    orphans and then hung for ever trying to send back their results.)"""
    import signal

    _sigterm_a_two_run_sweep(tmp_path, [], _pool_workers, b"spawn_main", timeout=180,
                             preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_sigterm_to_a_ray_sweep_stops_its_runs_keeps_them_and_leaves_no_ray_process(tmp_path):
    """`kill PID` to a Ray sweep's driver, started as a script in the background starts it
    (SIGINT ignored, and so in every process of its local cluster): its runs stop as on Ctrl-C
    and keep what they measured, their summaries and the sweep's message name SIGTERM, it exits
    143 and its cluster is gone.  (Before: the driver ended at once through the handler Ray's
    libraries install, no table, every run's measurements lost; and Ray's gentle cancel never
    reached a run whose process ignored SIGINT: the sweep waited the 60 s grace.)"""
    pytest.importorskip("ray", reason="the Ray extra is not installed (pip install .[ray])")
    import signal

    def background():          # as `cmd &` in a script: SIGINT and SIGQUIT ignored
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)

    assert not _ray_tasks(), "Ray tasks from something else are running"
    summaries = _sigterm_a_two_run_sweep(
        tmp_path, ["--backend", "ray"], lambda pid: _ray_tasks(), b"ray::_ray_task",
        preexec_fn=background, timeout=50)           # (the forced cancel comes after 60 s)
    assert all(s["stopped_by"] == "SIGTERM" for s in summaries)
