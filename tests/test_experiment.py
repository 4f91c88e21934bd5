"""Full runs on small fleets: accounting, reproducibility, drop-outs, results on disk."""
import json
import math
import subprocess
import sys

import pytest

from crowdlearn.experiment import Simulation
from crowdlearn.protocols.messages import RoundStart, Update
from crowdlearn.results import write
from sim import wire
from tests.conftest import small_config


def test_bytes_equal_the_encoded_sizes_of_the_messages():
    cfg = small_config()
    sim = Simulation(cfg)
    res = sim.run()
    # Recompute independently: every round the server sends RoundStart to each selected device
    # and each of them sends one Update back (no drop-outs in this fleet).
    w = tuple(sim.ctx.init_weights)
    f = cfg.fedavg
    down = up = 0
    for info in res.rounds:
        assert info["closed_by"] == "complete"
        down += len(info["selected"]) * len(wire.encode(
            RoundStart(info["round"], w, f.local_epochs, f.batch_size, f.lr)))
        up += sum(len(wire.encode(Update(info["round"], w, len(sim.parts[d]))))
                  for d in info["aggregated"])
    last = res.metrics[-1]
    assert (last["bytes_down"], last["bytes_up"]) == (down, up)
    assert last["bytes_total"] == up + down == res.summary["bytes_up"] + res.summary["bytes_down"]
    devs = res.devices
    assert sum(d["bytes_sent"] for d in devs) == up
    assert sum(d["bytes_received"] for d in devs) == down


def test_compute_is_the_flops_of_executed_jobs():
    cfg = small_config()
    sim = Simulation(cfg)
    res = sim.run()
    per_sample = sim.spec.train_flops_per_sample()
    expected = sum(len(sim.parts[d]) * cfg.fedavg.local_epochs * per_sample
                   for info in res.rounds for d in info["aggregated"])
    assert res.summary["device_flops"] == expected
    busy = sum(d["busy_s"] for d in res.devices)
    assert math.isclose(busy, sum(d["flops"] / sim.profiles[d["device"]].flops
                                  for d in res.devices), rel_tol=1e-9)


def test_same_seed_same_metrics_file_and_other_seed_differs(tmp_path):
    def metrics(seed, name):
        out = write(Simulation(small_config(seed=seed)).run(), tmp_path / name, plots=False)
        return (out / "metrics.csv").read_text(), (out / "devices.csv").read_text()

    a, b, c = metrics(3, "a"), metrics(3, "b"), metrics(4, "c")
    assert a == b
    assert a[0] != c[0]


def test_fleet_learns_on_digits():
    res = Simulation(small_config(rounds=8)).run()
    acc = [r["accuracy"] for r in res.metrics]
    assert len(acc) == 8 and acc[-1] > 0.8 and acc[-1] > acc[0]


def test_churn_drops_devices_and_records_missed_rounds():
    cfg = small_config(**{"rounds": 6, "availability.churn": 0.5,
                          "availability.churn_offline_s": 0.5})
    res = Simulation(cfg).run()
    assert res.summary["rounds_completed"] == 6
    missed = sum(d["rounds_missed"] for d in res.devices)
    churned = sum(d["drops_churn"] for d in res.devices)
    assert churned > 0 and missed > 0
    for d in res.devices:
        assert d["rounds_missed"] == d["rounds_selected"] - d["rounds_aggregated"]
    assert any(r["closed_by"] == "dropouts" or len(r["aggregated"]) < len(r["selected"])
               for r in res.rounds)


def test_deadline_cuts_off_stragglers():
    # a round takes ~0.1 s in this fleet; a 0.06 s deadline keeps only the fast devices and the
    # slow ones' updates arrive late and are dropped
    cfg = small_config(**{"fedavg.deadline_s": 0.06, "rounds": 4})
    res = Simulation(cfg).run()
    assert [r["closed_by"] for r in res.rounds] == ["deadline"] * 4
    assert all(0 < len(r["aggregated"]) < len(r["selected"]) for r in res.rounds)
    assert all(math.isclose(r["end_s"] - r["start_s"], 0.06) for r in res.rounds)
    assert res.summary["late_updates"] > 0


def test_memory_budget_declines_the_job():
    from sim.profiles import TIERS
    cfg = small_config(**{"fleet.mix": "low_end", "model.hidden": [6000, 6000],
                          "rounds": 1, "fedavg.batch_size": 0})
    sim = Simulation(cfg)
    assert sim.spec.train_memory_bytes(200) > TIERS["low_end"].memory_bytes
    res = sim.run()
    assert sum(d["jobs_failed"] for d in res.devices) == 4
    assert res.rounds[0]["closed_by"] == "dropouts"


def test_battery_drain_takes_devices_offline():
    cfg = small_config(**{"availability.battery": True, "availability.initial_battery":
                          [0.0500001, 0.0500002], "rounds": 2})
    res = Simulation(cfg).run()
    assert sum(d["drops_battery"] for d in res.devices) > 0


def test_sessions_availability_and_trace_run():
    res = Simulation(small_config(**{"availability.model": "sessions",
                                     "availability.mean_online_s": 0.1,
                                     "availability.mean_offline_s": 0.1})).run()
    assert res.summary["rounds_completed"] == 3
    assert any(d["drops_availability"] > 0 for d in res.devices)
    # sessions this short cut transfers mid-way: those bytes are reported, not counted delivered
    assert res.summary["bytes_lost_to_dropouts"] > 0
    fractions = [d["online_fraction"] for d in res.devices]
    assert all(0 <= f <= 1 for f in fractions) and min(fractions) < 1


@pytest.mark.parametrize("protocol", ["centralized", "standalone"])
def test_baselines_run_from_the_same_config(protocol):
    res = Simulation(small_config(protocol=protocol, rounds=4)).run()
    assert len(res.metrics) == 4
    assert res.metrics[-1]["accuracy"] > 0.5
    if protocol == "centralized":
        assert res.summary["bytes_total"] == 0


def test_interrupt_keeps_what_was_measured(tmp_path):
    seen = []

    def on_row(row):
        seen.append(row)
        if len(seen) == 2:
            raise KeyboardInterrupt

    res = Simulation(small_config(rounds=5), on_row=on_row).run()
    assert res.interrupted and len(res.metrics) == 2
    out = write(res, tmp_path / "run", plots=False)
    assert json.loads((out / "summary.json").read_text())["interrupted"] is True
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 3


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "crowdlearn.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_cli_bad_config_lists_every_problem_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('rounds = 0\nprotocl = "x"\n[fedavg]\nlr = -1\n[fleet]\ndevices = 2\n'
                   'mix = {phablet = 1}\n')
    r = cli("run", str(bad), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    for needle in ("rounds: must be >= 1", "protocl: unknown key", "fedavg.lr: must be > 0",
                   "fleet.mix.phablet: unknown tier"):
        assert needle in r.stderr
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == [bad]


def test_cli_missing_dataset_path_is_a_user_error(tmp_path):
    r = cli("run", "--set", "data.dataset=\"fashion_mnist\"", "--set", "data.path=\"nowhere\"",
            "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2 and "data.path" in r.stderr and not (tmp_path / "o").exists()


def test_cli_run_and_compare_write_results(tmp_path):
    args = ["--set", "rounds=2", "--set", "fleet.devices=6", "--set", "fedavg.clients_per_round=3",
            "--quiet"]
    r1 = cli("run", *args, "--out", str(tmp_path / "a"), cwd=tmp_path)
    r2 = cli("run", *args, "--set", "protocol=\"standalone\"", "--out", str(tmp_path / "b"),
             cwd=tmp_path)
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    assert "results: " in r1.stdout
    for name in ("config.json", "metrics.csv", "devices.csv", "summary.json", "curves.png",
                 "device_load.png"):
        assert (tmp_path / "a" / name).is_file(), name
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    for key in ("final_accuracy", "best_accuracy", "sim_time_s", "wall_time_s", "bytes_up",
                "bytes_down", "protocol"):
        assert key in s
    r = cli("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out",
            str(tmp_path / "cmp.png"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cmp.png").stat().st_size > 1000
    assert "standalone" in r.stdout and "fedavg" in r.stdout
    bad = cli("compare", str(tmp_path / "nope"), cwd=tmp_path)
    assert bad.returncode == 2 and "not a results folder" in bad.stderr


def test_privacy_attacks_add_scores_to_the_summary():
    res = Simulation(small_config(**{"privacy.attacks": True, "rounds": 2})).run()
    s = res.summary
    assert s["membership_target"] == "global" and "membership_auc" in s
    assert s["reconstruction_fill"] == "mean"      # FedAvg: dense updates, no top-k bound
    for key in ("psnr", "random_public_psnr", "prior_psnr"):
        assert 0 < s[f"reconstruction_{key}"] <= 100


def test_cli_prints_plain_progress_lines_when_stderr_is_not_a_terminal(tmp_path):
    r = cli("run", "--set", "rounds=2", "--set", "fleet.devices=6",
            "--set", "fedavg.clients_per_round=3", "--out", str(tmp_path / "p"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fedavg: round 2/2, simulated" in r.stderr and "accuracy" in r.stderr


#: one run per evaluation path: FedAvg's global model, Crowdlearning's group models in parts,
#: S-SGD's one model per device (a round scored when every device reported), C-SGD's one node
SCHEDULED = {
    "fedavg": {"rounds": 5},
    "crowdlearning": {"protocol": "crowdlearning", "rounds": 5, "fleet.devices": 10,
                      "model.hidden": [32, 16], "slicenet.group_size": 5, "slicenet.lr": 0.1},
    "ssgd": {"protocol": "ssgd", "rounds": 5, "fleet.devices": 4, "model.hidden": [16],
             "slicenet.lr": 0.1},
    "csgd": {"protocol": "centralized", "rounds": 5, "fleet.devices": 4, "model.hidden": [16],
             "slicenet.batchnorm": True, "slicenet.lr": 0.1},
}
SCORES = ("accuracy", "loss")


@pytest.mark.parametrize("name", sorted(SCHEDULED))
def test_an_evaluation_schedule_scores_only_its_rounds_and_changes_nothing_else(name):
    full = Simulation(small_config(**SCHEDULED[name])).run()
    some = Simulation(small_config(**SCHEDULED[name], eval_every=2, eval_at=[1])).run()
    assert len(full.metrics) == len(some.metrics) == 5
    scored = [r["round"] + 1 for r in some.metrics if "accuracy" in r]
    assert scored == [1, 2, 4, 5]                 # eval_at 1, every 2nd, and the last
    for a, b in zip(full.metrics, some.metrics, strict=True):
        assert {k: v for k, v in a.items() if k not in SCORES} == \
            {k: v for k, v in b.items() if k not in SCORES}
        if "accuracy" in b:                       # the same model scored, bit for bit
            assert (a["accuracy"], a["loss"]) == (b["accuracy"], b["loss"])
        else:
            assert not set(SCORES) & set(b)
    for key in ("final_accuracy", "sim_time_s", "bytes_total", "device_flops", "completed",
                "events_handled"):
        assert full.summary[key] == some.summary[key], key
    assert some.summary["best_accuracy"] == max(r["accuracy"] for r in some.metrics
                                                if "accuracy" in r)


def test_a_run_that_ends_on_an_unscored_round_still_scores_its_last_model():
    full = Simulation(small_config(rounds=6)).run()

    def stop(row):
        if row["round"] == 2:
            raise KeyboardInterrupt
    cut = Simulation(small_config(rounds=6, eval_every=5), on_row=stop).run()
    assert cut.interrupted and len(cut.metrics) == 3
    assert "accuracy" not in cut.metrics[1]
    assert cut.metrics[-1]["accuracy"] == full.metrics[2]["accuracy"]
    assert cut.summary["final_accuracy"] == full.metrics[2]["accuracy"]


def test_an_evaluation_schedule_past_the_last_round_is_refused():
    from crowdlearn.errors import ConfigError
    with pytest.raises(ConfigError, match=r"eval_at: round\(s\) \[9\] come after the last round "
                                          r"\(rounds = 5\); remove them or raise rounds"):
        small_config(rounds=5, eval_at=[2, 9])
    with pytest.raises(ConfigError, match="eval_every: must be >= 1"):
        small_config(eval_every=0)


def test_an_interrupt_inside_a_row_leaves_the_last_written_row_scorable():
    """Ctrl-C may land while the monitor makes a row (copying or scoring its models): the row
    before, if the schedule skipped it, is still scored when the run is flushed."""
    from sim.monitor import Monitor

    def due(rnd):
        if rnd == 2:
            raise KeyboardInterrupt          # the interrupt, inside the third row
        return rnd == 5
    import numpy as np
    mon = Monitor(range(2), evaluator=lambda models: [{"accuracy": float(m[0][0])}
                                                      for m in models],
                  evaluate_round=due)
    for rnd in range(3):
        try:
            mon._row(float(rnd), rnd, [[np.array([rnd + 0.5])]])
        except KeyboardInterrupt:
            break
    mon.flush(3.0)
    assert [(r["round"], r.get("accuracy")) for r in mon.rows] == [(0, None), (1, 1.5)]
