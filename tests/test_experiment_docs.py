"""The experiment scripts' seed handling (issue 17): merging per-seed rows, paired claims."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module(name):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_attack_rows_merge_over_seeds_into_intervals_sums_and_maxima():
    mod = _module("privacy_attacks")
    from results_doc import cell
    seeds = [[{"dataset": "digits", "psnr_x": 10.0, "exact": "3/5", "max_abs_error": 1e-7,
               "full": math.inf, "wall_s": 1.0}],
             [{"dataset": "digits", "psnr_x": math.inf, "exact": "5/5", "max_abs_error": 2e-7,
               "full": math.inf, "wall_s": 2.0}],
             [{"dataset": "digits", "psnr_x": 14.0, "exact": "4/5", "max_abs_error": math.nan,
               "full": math.inf, "wall_s": 0.5}]]
    (row,) = mod.merge_seeds(seeds)
    assert row["dataset"] == "digits"
    assert row["psnr_x"] == cell([10.0, 100.0, 14.0], 2)     # exact counts as 100 dB
    assert row["exact"] == "12/15"
    assert row["max_abs_error"] == 2e-7                       # the largest over seeds
    assert row["full"] == "∞" and row["wall_s"] == 3.5


def test_attack_rows_that_name_different_things_per_seed_are_listed():
    mod = _module("privacy_attacks")
    (row,) = mod.merge_seeds([[{"piece": 32, "clf": 0.5}], [{"piece": 30, "clf": 0.7}]])
    assert row["piece"] == "32; 30"


def _row(setting, seed, final, dataset="digits"):
    return {"dataset": dataset, "setting": setting, "seed": seed, "rounds": 10, "devices": 30,
            "final": final, "completed": "True"}


def test_dssgd_claims_are_paired_over_the_seeds_both_settings_have(monkeypatch):
    mod = _module("dssgd_experiments")
    monkeypatch.setattr(mod, "MIN_SEEDS", 3)
    rows = [_row("a", s, 0.80 + 0.01 * s) for s in range(5)] + \
        [_row("b", s, 0.79 + 0.01 * s) for s in range(4)]         # b lacks seed 4
    d, rounds = mod.by_setting(rows, "digits")
    assert rounds == 10 and sorted(d["a"]) == [0, 1, 2, 3, 4]
    c = mod.pair(d, "a", "b")
    assert c["n"] == 4 and c["mean"] == pytest.approx(1.0)      # one point, every seed
    line = mod.claim_row("a > b", d, "a", "b")
    assert "| 4 |" in line and line.endswith("| holds |")     # a wins on every seed
    rows.append(_row("b", 4, 0.90))                              # now it varies
    d, _ = mod.by_setting(rows, "digits")
    assert mod.claim_row("a ≈ b", d, "a", "b", within=5.0).endswith("holds (within ±5) |")


def test_dssgd_rows_of_an_interrupted_run_or_other_rounds_are_left_out():
    mod = _module("dssgd_experiments")
    rows = [_row("a", 0, 0.8), {**_row("a", 1, 0.1), "completed": "False"},
            {**_row("a", 2, 0.5), "rounds": 20}]
    d, rounds = mod.by_setting(rows, "digits")
    assert rounds == 10 and list(d["a"]) == [0]


def test_dssgd_claims_on_fewer_than_ten_seeds_are_not_made():
    mod = _module("dssgd_experiments")
    rows = [_row(s_, seed, 0.9 if s_ == "a" else 0.1) for s_ in "ab" for seed in range(9)]
    d, _ = mod.by_setting(rows, "digits")
    assert mod.claim_row("a > b", d, "a", "b").endswith("| not claimed (< 10 seeds) |")


def _slicenet_rows(label, errors, *, table="I", epochs=1, cpu=""):
    return [{"table": table, "label": label, "protocol": "crowdlearning", "group_size": "",
             "theta": "", "tau": "", "omega": "", "epochs": epochs, "seed": s,
             "error_pct": e, "best_error_pct": e, "error_by_epoch": f"{e}",
             "sim_time_s": 1.0, "bytes_total": 10, "cpu_s": cpu, "run": f"{label}-{s}"}
            for s, e in enumerate(errors)]


def test_slicenet_orderings_are_paired_over_the_seeds_both_settings_have():
    mod = _module("slicenet_experiments")
    rows = _slicenet_rows("S-SGD", [40.0, 41.0, 45.0, 39.0]) + \
        _slicenet_rows("n = 5", [30.0, 31.5, 34.0])            # seed 3 missing
    cells = mod._by_label(rows, 1)
    text, verdict = mod.compare(cells, "S-SGD", "n = 5")
    assert verdict == "holds" and "(n = 3)" in text
    assert text.startswith("+10.17")                           # mean of 10, 9.5, 11
    assert mod.compare(cells, "n = 5", "S-SGD")[1] == "fails"
    assert mod.compare(cells, "S-SGD", "C-SGD") == ("—", "not measured")


def test_slicenet_u_shape_needs_an_interior_minimum_and_both_ends_worse():
    mod = _module("slicenet_experiments")
    rows = (_slicenet_rows("a", [5.0, 5.2, 5.1]) + _slicenet_rows("b", [3.0, 3.3, 3.1])
            + _slicenet_rows("c", [6.0, 6.1, 6.4]))
    cells = mod._by_label(rows, 1)
    assert mod._u_shape(cells, ["a", "b", "c"]).startswith("**holds**")
    assert mod._u_shape(cells, ["b", "a", "c"]).startswith("no interior minimum")


def test_slicenet_rows_merge_into_the_csv_keeping_measured_cpu(tmp_path, monkeypatch):
    mod = _module("slicenet_experiments")
    monkeypatch.setattr(mod, "DATA", tmp_path / "slicenet.csv")
    mod.save_rows(_slicenet_rows("n = 5", [30.0, 31.0], cpu=12.5))
    mod.save_rows(_slicenet_rows("n = 5", [30.0], cpu="") + _slicenet_rows("S-SGD", [40.0]))
    got = {(r["label"], r["seed"]): r for r in mod.load_rows()}
    assert set(got) == {("n = 5", "0"), ("n = 5", "1"), ("S-SGD", "0")}
    assert got[("n = 5", "0")]["cpu_s"] == "12.5"           # a skipped rerun keeps it
    assert [r["label"] for r in mod.load_rows()][0] == "S-SGD"  # settings' order


def test_slicenet_doc_renders_every_table_from_rows_alone(monkeypatch):
    mod = _module("slicenet_experiments")
    monkeypatch.setattr(mod, "traffic_table", lambda: [(5, 1.03, 100, 40, 80)])
    rows = []
    for i, s in enumerate(mod.settings()):
        rows += _slicenet_rows(s.label, [20.0 + i, 21.0 + i], table=s.table, cpu=10.0)
    doc = mod.render(rows, 1, "slicenet_experiments.py --render --epochs 1")
    for head in ("Table I", "Table II", "Table III", "Table IV", "Traffic per training sample"):
        assert f"## {head}" in doc
    assert "| S-SGD | 5.15 | 46.88 | 20.50 ± 6.35 | 0, 1 |" in doc   # paper beside ours
    assert "≈ 31 CPU-hours" in doc              # 22 settings × 50 epochs × 10 seeds × 10 s
    assert "Cells with fewer than 10 seeds" in doc


def test_batchnorm_unfolding_lets_the_follower_invert_exact_batch_statistics():
    mod = _module("privacy_attacks")
    from crowdlearn.privacy.attacks.views import reconstruct_from_weighted_sums
    rng = np.random.default_rng(0)
    x = rng.random((32, 6))
    w = rng.standard_normal((6, 8))                   # |P| = 8 ≥ d = 6: exactly invertible
    gamma, beta = rng.random(6) + 0.5, rng.standard_normal(6)
    mu, var = x.mean(axis=0), x.var(axis=0)
    z = ((x - mu) / np.sqrt(var + 1e-3) * gamma + beta) @ w       # what the follower receives
    w_eff, shift = mod.bn_unfold(w, gamma, beta, mu, var, eps=1e-3)
    xh = reconstruct_from_weighted_sums(z - shift, w_eff, method="min_norm")
    np.testing.assert_allclose(xh, x, atol=1e-9)
    naive = reconstruct_from_weighted_sums(z, w, method="min_norm")   # BN ignored
    assert np.abs(naive - x).max() > 0.1


def test_slicenet_doc_adds_table_one_of_longer_runs_with_a_curve(monkeypatch, tmp_path):
    mod = _module("slicenet_experiments")
    monkeypatch.setattr(mod, "traffic_table", lambda: [(5, 1.03, 100, 40, 80)])
    monkeypatch.setattr(mod, "DOC", tmp_path / "slicenet.md")
    rows = []
    for i, s in enumerate(mod.settings()):
        rows += _slicenet_rows(s.label, [20.0 + i, 21.0 + i], table=s.table, cpu=10.0)
    curve = lambda e, s: ";".join(f"{e + 10 - k / 10:.2f}" for k in range(50))  # noqa: E731
    long = []
    for label, e in (("S-SGD", 9.0), ("n = 5", 4.0)):
        for seed in (0, 1):
            r = _slicenet_rows(label, [e + seed], epochs=50, cpu=500.0)[0]
            r.update(seed=seed, error_by_epoch=curve(e + seed, seed))
            long.append(r)
    doc = mod.render(rows + long, 1, "slicenet_experiments.py --render --epochs 1")
    assert "## Table I after 50 epochs" in doc
    section = doc.split("## Table I after 50 epochs")[1]
    assert "Seeds 0, 1: **fewer than 10**" in section
    assert "| S-SGD | 5.15 | 46.88 |" in section and "| C-SGD |" not in section
    # epoch 10 of the curves: e + 10 − 0.9 for e = 9, 10 → mean 18.6
    assert R_cell([18.1, 19.1]) in section.split("| S-SGD |")[1].split("\n")[0]
    assert "| S-SGD worse than n = 5 |" in section
    assert (tmp_path / "slicenet_table1_50.png").stat().st_size > 1000


def R_cell(vals):
    from results_doc import cell
    return cell(vals, 2)


def test_a_single_value_has_no_interval_in_a_generated_cell():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from results_doc import cell
    assert cell([12.3456], 2) == "12.35 (n = 1)"          # never "± 0.00"
    assert cell([1.0, 3.0], 1) == "2.0 ± 12.7" and cell([]) == "—"


def _cnn_rows(label, errors, *, epochs=2, cpu=""):
    return [{**r, "model": "paper-cnn", "error_by_epoch": f"{e + 5};{e}"}
            for r, e in zip(_slicenet_rows(label, errors, epochs=epochs, cpu=cpu), errors)]


def test_slicenet_rows_without_a_model_column_stay_the_mlps_beside_cnn_rows(tmp_path,
                                                                            monkeypatch):
    import csv
    mod = _module("slicenet_experiments")
    monkeypatch.setattr(mod, "DATA", tmp_path / "slicenet.csv")
    old_fields = [f for f in mod.FIELDS if f != "model"]     # the file before the CNN table
    with mod.DATA.open("w", newline="") as fh:
        w = csv.DictWriter(fh, old_fields)
        w.writeheader()
        w.writerows(_slicenet_rows("n = 5", [30.0, 31.0], epochs=50, cpu=9.0))
    assert {r["model"] for r in mod.load_rows()} == {"paper-mlp"}
    # rows as the script wrote them before (no "model" key) and CNN rows of the same cells
    mod.save_rows(_slicenet_rows("n = 5", [29.0], epochs=50, cpu="")
                  + _slicenet_rows("C-SGD", [10.0], epochs=50, cpu=3.0)
                  + _cnn_rows("n = 5", [60.0, 61.0], epochs=50, cpu=70.0))
    got = {(r["model"], r["label"], r["seed"]): r for r in mod.load_rows()}
    assert set(got) == {("paper-mlp", "n = 5", "0"), ("paper-mlp", "n = 5", "1"),
                        ("paper-mlp", "C-SGD", "0"), ("paper-cnn", "n = 5", "0"),
                        ("paper-cnn", "n = 5", "1")}
    assert got[("paper-mlp", "n = 5", "0")]["error_pct"] == "29.0"   # replaced, cpu kept
    assert got[("paper-mlp", "n = 5", "0")]["cpu_s"] == "9.0"
    assert got[("paper-cnn", "n = 5", "0")]["error_pct"] == "60.0"   # not the MLP's cell
    assert [r["model"] for r in mod.load_rows()] == ["paper-mlp"] * 3 + ["paper-cnn"] * 2
    # --merge-rows: another CSV in the old format joins the file as the MLP's
    other = tmp_path / "theirs.csv"
    with other.open("w", newline="") as fh:
        w = csv.DictWriter(fh, old_fields)
        w.writeheader()
        w.writerows(_slicenet_rows("S-SGD", [40.0], epochs=50, cpu=5.0))
    assert mod.main(["--merge-rows", str(other)]) == 0
    assert ("paper-mlp", "S-SGD", "0") in {(r["model"], r["label"], r["seed"])
                                            for r in mod.load_rows()}


def test_slicenet_cnn_table_renders_beside_the_papers_cnn_and_leaves_the_mlp_page_alone(
        monkeypatch):
    mod = _module("slicenet_experiments")
    monkeypatch.setattr(mod, "traffic_table", lambda: [(5, 1.03, 100, 40, 80)])
    mlp = []
    for i, s in enumerate(mod.settings()):
        mlp += _slicenet_rows(s.label, [20.0 + i, 21.0 + i], table=s.table, cpu=10.0)
    errors = {"S-SGD": [50.0, 52.0], "n = 5": [40.0, 41.0], "n = 10": [35.0, 35.5],
              "n = 15": [33.0, 34.0], "n = 20": [33.5, 33.2], "C-SGD": [20.0, 21.0]}
    cnn = [r for lab, e in errors.items() for r in _cnn_rows(lab, e, cpu=120.0)]
    cnn += _cnn_rows("n = 5", [44.0], epochs=1, cpu=70.0)    # a one-seed measurement run
    cmd = "slicenet_experiments.py --render --epochs 1"
    alone, both = mod.render(mlp, 1, cmd), mod.render(mlp + cnn, 1, cmd)
    head, _, section = both.partition("## Table I with the paper's CNN\n")
    assert head == alone + "\n" and section          # the MLP page exactly as without CNN rows
    two, one = section.split("**1 epoch and 1 seed (0)")
    assert "**2 epochs and 2 seeds (0, 1), not the paper's 50 epochs**" in two
    assert "--model paper-cnn --tables I --epochs 2 --first-seed 0 --seeds 2" in two
    assert "(Student's t with 1 degree of freedom)" in two and "Student" not in one
    # the paper's CIFAR-10 CNN figure beside ours (epoch 1 = error + 5, final = error)
    assert "| S-SGD | 46.88 | 56.00 ± 12.71 | 51.00 ± 12.71 | 0, 1 |" in two
    assert "| n = 5 worse than n = 10 | +5.25 [" in two
    verdicts = {line.split(" | ")[0][2:]: line.split("**")[1]
                for line in two.splitlines() if line.endswith("** |")}
    assert verdicts["n = 15 worse than n = 20"] == "not shown"
    assert verdicts["S-SGD worse than C-SGD"] == "holds"
    assert "| n = 5 | 46.11 | 44.00 (n = 1) |" in one
    assert "| S-SGD worse than n = 5 | — | **not measured** |" in one
    # cost: per-epoch CPU medians 60 s (n = 5: median of 60, 60, 70) × 6 settings × 50 × 10
    assert "n = 5 60 s" in section and "**≈ 50 CPU-hours**" in section
    assert "--model paper-cnn --tables I --epochs 50 --seeds 10" in section
    assert "no run, priced" not in section
    without = mod.render(mlp + [r for r in cnn if r["label"] != "S-SGD"], 1, cmd)
    section = without.partition("## Table I with the paper's CNN\n")[2]
    assert "| S-SGD |" not in section and "| S-SGD worse than C-SGD | — | **not measured** |" \
        in section
    assert "(S-SGD: no run, priced at the median of the measured settings, likely low" in section
    assert "No run of S-SGD finished at 2 epochs (CPU budget)" in section
    assert "No run of" not in two and "No run of S-SGD, n = 10, n = 15, n = 20, C-SGD" in one


def test_slicenet_cnn_runs_table_one_only_in_a_folder_of_its_own(monkeypatch, tmp_path):
    mod = _module("slicenet_experiments")
    with pytest.raises(SystemExit) as e:
        mod.main(["--model", "paper-cnn", "--tables", "I", "II"])
    assert e.value.code == 2
    from crowdlearn.config import from_dict
    for s in (x for x in mod.settings() if x.table == "I"):
        cfg = mod.base_config(3, "paper-cnn")
        for k, v in s.values.items():          # the sweep's dotted keys
            *path, last = k.split(".")
            d = cfg
            for p in path:
                d = d.setdefault(p, {})
            d[last] = v
        c = from_dict(cfg)                     # raises on a config the runner would refuse
        assert c.slicenet.model == "paper-cnn" and c.protocol == s.values["protocol"]
    seen = []
    monkeypatch.setattr(mod, "DATA", tmp_path / "slicenet.csv")
    monkeypatch.setattr(mod, "run_setting", lambda s, seeds, **kw: seen.append(
        (s.label, seeds, kw["out"], kw["model"])) or [])
    mod.main(["--model", "paper-cnn", "--tables", "I", "--epochs", "2", "--seeds", "1",
              "--only", "C-SGD"])
    assert seen == [("C-SGD", [0], mod.ROOT / "results" / "slicenet_experiments"
                     / "paper-cnn" / "epochs=2", "paper-cnn")]
