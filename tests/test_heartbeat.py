"""A line while a long round runs (crowdlearn.heartbeat), in `crowdlearn run` and in a sweep."""

from __future__ import annotations

import threading
import time

import pytest

from crowdlearn.heartbeat import Heartbeat


def _wait_for(pred, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.005)


def _beating() -> bool:
    return any(t.name == "crowdlearn-heartbeat" for t in threading.enumerate())


def test_a_quiet_round_is_reported_with_the_round_under_way_until_a_row_comes():
    lines: list[str] = []
    with Heartbeat(lines.append, "crowdlearning", rounds=50, every=0.02) as hb:
        _wait_for(lambda: lines)
        assert lines[0].startswith("crowdlearning: round 1/50 still running (no row yet), ")
        hb.row({"round": 0, "time_s": 5866.8})
        n = len(lines)
        _wait_for(lambda: len(lines) > n + 1)
        assert "round 2/50 still running (the last row: simulated 5866.8 s)" in lines[-1]
        assert _beating()
    assert not _beating()                         # the thread ends with the block
    n = len(lines)
    time.sleep(0.1)
    assert len(lines) == n                        # and says nothing more


def test_the_last_round_is_never_past_the_run_and_every_0_is_silent():
    lines: list[str] = []
    with Heartbeat(lines.append, "x", rounds=2, every=0.01) as hb:
        hb.row({"round": 1, "time_s": 1.0})      # the last row of the run: its close follows
        _wait_for(lambda: lines)
    assert lines and all(" round 2/2 " in f" {line}" for line in lines)
    quiet: list[str] = []
    with Heartbeat(quiet.append, "x", rounds=2, every=0):
        assert not _beating()
        time.sleep(0.05)
    assert quiet == []


def test_crowdlearn_run_says_a_round_is_still_running(tmp_path, capsys, monkeypatch):
    from crowdlearn import cli

    monkeypatch.setattr(cli, "HEARTBEAT_S", 0.001)
    assert cli.main(["run", "--set", "rounds=2", "--set", "fleet.devices=6", "--set",
                     "fedavg.clients_per_round=3", "--no-plots", "--out",
                     str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "fedavg: round 1/2 still running (no row yet)" in err
    assert not _beating()


def test_a_sweep_says_a_run_s_round_is_still_running(tmp_path, capsys):
    import crowdlearn
    from crowdlearn.config import from_dict
    from crowdlearn.sweeps import cli_progress

    cfg = from_dict({"rounds": 2, "fleet": {"devices": 6}, "fedavg": {"clients_per_round": 3}})
    df = crowdlearn.sweep(cfg, {}, [0], out=tmp_path / "s", plots=False, progress=cli_progress,
                          progress_every=0.001)
    assert list(df["status"]) == ["ok"]
    err = capsys.readouterr().err
    assert "[1/1] seed=0: round 1/2 still running (no row yet)" in err, err
    assert not _beating()


def test_a_sweep_without_progress_starts_no_heartbeat(tmp_path):
    import crowdlearn
    from crowdlearn.config import from_dict

    seen = []
    cfg = from_dict({"rounds": 1, "fleet": {"devices": 4}, "fedavg": {"clients_per_round": 2}})
    watcher = threading.Thread(target=lambda: [seen.append(_beating()) or time.sleep(0.01)
                                               for _ in range(50)], daemon=True)
    watcher.start()
    crowdlearn.sweep(cfg, {}, [0], out=tmp_path / "s", plots=False, progress=None,
                     progress_every=0.001)
    watcher.join()
    assert not any(seen)


def test_a_sweep_of_runs_in_other_processes_says_how_many_are_running(tmp_path):
    """Runs in worker processes send no rows: while none finishes, the sweep says how many are
    finished, running and waiting (--jobs 2, three runs)."""
    import crowdlearn
    from crowdlearn.config import from_dict

    lines: list[str] = []
    cfg = from_dict({"rounds": 1, "fleet": {"devices": 4}, "fedavg": {"clients_per_round": 2}})
    df = crowdlearn.sweep(cfg, {"fedavg.lr": [0.05, 0.1, 0.2]}, [0], out=tmp_path / "s",
                          jobs=2, plots=False, progress=lines.append, progress_every=0.05)
    assert set(df["status"]) == {"ok"}
    flight = [line for line in lines if "runs finished" in line]
    assert flight, lines
    assert flight[0].startswith("0/3 runs finished, ")
    for line in flight:
        done, rest = line.split("/3 runs finished, ")
        running, waiting = int(rest.split(" running, ")[0]), int(rest.split(", ")[1].split()[0])
        assert 0 <= running <= 2 and int(done) + running + waiting == 3, line


def test_a_ray_sweep_says_how_many_runs_are_not_finished(tmp_path):
    pytest.importorskip("ray", reason="the Ray extra is not installed (pip install .[ray])")
    import crowdlearn
    from crowdlearn.config import from_dict

    lines: list[str] = []
    cfg = from_dict({"rounds": 1, "fleet": {"devices": 4}, "fedavg": {"clients_per_round": 2},
                     "data": {"dataset": "breast_cancer"}, "model": {"arch": "linear"}})
    df = crowdlearn.sweep(cfg, {"fedavg.lr": [0.05, 0.1]}, [0], out=tmp_path / "r",
                          backend="ray", jobs=2, plots=False, progress=lines.append,
                          progress_every=0.05)
    assert set(df["status"]) == {"ok"}
    flight = [line for line in lines if "runs finished" in line]
    assert flight and flight[0].startswith("0/2 runs finished, 2 not finished, "), lines
