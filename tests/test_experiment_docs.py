"""The experiment scripts' seed handling (issue 17): merging per-seed rows, paired claims."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

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
