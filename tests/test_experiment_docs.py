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


def test_slicenet_render_refuses_an_epoch_count_with_no_rows(tmp_path, monkeypatch, capsys):
    """``--render`` with the default ``--epochs 2`` over 1- and 50-epoch rows would write a
    page of empty tables over the committed one: it stops with status 2 and names the fix."""
    mod = _module("slicenet_experiments")
    monkeypatch.setattr(mod, "DATA", tmp_path / "slicenet.csv")
    monkeypatch.setattr(mod, "DOC", tmp_path / "slicenet.md")
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    mod.save_rows(_slicenet_rows("n = 5", [30.0, 31.0]))
    with pytest.raises(SystemExit) as stop:
        mod.main(["--render"])
    assert stop.value.code == 2 and not (tmp_path / "slicenet.md").exists()
    assert "holds 1); pass the page's own, e.g. --epochs 1" in capsys.readouterr().err
    assert mod.main(["--render", "--epochs", "1"]) == 0
    assert "| n = 5 |" in (tmp_path / "slicenet.md").read_text()


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


def _slicenet_page(monkeypatch, tmp_path):
    """The script with a stub traffic table and the doc in ``tmp_path``, and two seeds of
    1-epoch rows for every setting."""
    mod = _module("slicenet_experiments")
    monkeypatch.setattr(mod, "traffic_table", lambda: [(5, 1.03, 100, 40, 80)])
    monkeypatch.setattr(mod, "DOC", tmp_path / "slicenet.md")
    rows = []
    for i, s in enumerate(mod.settings()):
        rows += _slicenet_rows(s.label, [20.0 + i, 21.0 + i], table=s.table, cpu=10.0)
    return mod, rows


def test_slicenet_doc_adds_table_one_of_longer_runs_with_a_curve(monkeypatch, tmp_path):
    mod, rows = _slicenet_page(monkeypatch, tmp_path)
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
    # 4 runs × 500 CPU s: Table I's cost is its own runs', whatever the sweeps of that length add
    assert "CPU time sums to 0.6 CPU-hours" in section and "costs 0.3 CPU-hours per seed" in section
    sweep = _slicenet_rows("θ = 0.1", [15.0], table="II", epochs=50, cpu=3000.0)
    sweep[0].update(seed=7)
    doc = mod.render(rows + long + sweep, 1, "x")
    section = doc.split("## Table I after 50 epochs")[1].split("## Tables II–IV")[0]
    assert "CPU time sums to 0.6 CPU-hours" in section and "Seeds 0, 1:" in section


def test_slicenet_doc_adds_the_sweeps_of_longer_runs_and_reads_one_seed_as_a_direction(
        monkeypatch, tmp_path):
    mod, rows = _slicenet_page(monkeypatch, tmp_path)
    sets = {s.label: s for s in mod.settings()}

    def long(errors):
        out = []
        for label, e in errors.items():
            out += _slicenet_rows(label, [e], table=sets[label].table, epochs=50, cpu=300.0)
        return out

    theta = {"θ = 0.1": 15.0, "θ = 0.3": 14.5, "θ = 0.5": 12.7, "θ = 0.7": 11.5, "θ = 0.9": 10.5}
    tau = {"τ = 0.0": 11.4, "τ = 0.2": 11.8, "τ = 0.4": 12.2, "τ = 0.6": 13.3, "τ = 0.8": 14.4,
           "τ = 1.0": 15.3}
    doc = mod.render(rows + long(theta) + long(tau), 1, "x")
    section = doc.split("## Tables II–IV after 50 epochs")[1].split("## Traffic")[0]
    assert "**One seed** in Tables II and III" in section
    assert "CPU time sums to 0.9 CPU-hours" in section
    assert "### Table IV" not in section                     # no ω run of that length
    assert ("by θ: 15.00 → 14.50 → 12.70 → 11.50 → 10.50 % — it falls at every step as θ "
            "grows; over the same points the paper's MNIST error falls at every step") in section
    assert ("it rises at every step as τ grows; over the same points the paper's MNIST error is "
            "lowest at τ = 0.4, with both ends higher") in section
    tau["τ = 0.4"] = 11.0                                     # the wording follows the values
    doc = mod.render(rows + long(theta) + long(tau), 1, "x")
    assert "it is lowest at τ = 0.4, with both ends higher (it rises at 4 of 5 steps)" in doc
    # a second seed turns the description into paired claims
    two = long(theta) + [dict(r, seed=1, error_pct=r["error_pct"] + 0.1) for r in long(theta)]
    doc = mod.render(rows + two, 1, "x")
    section = doc.split("## Tables II–IV after 50 epochs")[1].split("## Traffic")[0]
    assert "**One seed**" not in section and "| θ = 0.1 worse than θ = 0.3 |" in section
    # ... per table: a second seed of θ only leaves τ's table read as one seed's direction
    doc = mod.render(rows + two + long(tau), 1, "x")
    section = doc.split("## Tables II–IV after 50 epochs")[1].split("## Traffic")[0]
    assert "Seeds Table II: 0, 1; Table III: 0" in section
    assert "**One seed** in Table III," in section and "| θ = 0.1 worse than θ = 0.3 |" in section
    assert "One seed (0), final error by τ" in section and "| τ = 0.0 worse" not in section
    # two seeds of τ and ω: read by the claims of the 1-epoch tables (τ = 1 against each τ < 1;
    # each ω against the paper's best ω = 10), not by neighbouring steps
    omega = {"ω = 5": 13.2, "ω = 10": 12.8, "ω = 15": 12.7, "ω = 20": 12.9, "ω = 25": 12.9}
    more = long(tau) + long(omega)
    more += [dict(r, seed=1, error_pct=r["error_pct"] + 0.1 * (k % 3)) for k, r in
             enumerate(long(tau) + long(omega))]
    doc = mod.render(rows + two + more, 1, "x")
    section = doc.split("## Tables II–IV after 50 epochs")[1].split("## Traffic")[0]
    first = doc.split("## Tables II–IV after 50 epochs")[0]
    for claim in ("| τ = 1.0 worse than τ = 0.0 |", "| τ = 1.0 worse than τ = 0.8 |",
                  "| ω = 5 worse than ω = 10 |", "| ω = 25 worse than ω = 10 |"):
        assert claim in section and claim in first, claim
    assert "| τ = 0.0 worse than τ = 0.2 |" not in section
    assert "| ω = 5 worse than ω = 25 |" not in section
    assert section.split("| τ = 1.0 worse than τ = 0.0 |")[1].split("\n")[0].endswith(
        "**holds** |")


def R_cell(vals):
    from results_doc import cell
    return cell(vals, 2)


def test_a_single_value_has_no_interval_in_a_generated_cell():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from results_doc import cell
    assert cell([12.3456], 2) == "12.35 (n = 1)"          # never "± 0.00"
    assert cell([1.0, 3.0], 1) == "2.0 ± 12.7" and cell([]) == "—"


# ---------------------------------------------------------------- committed docs = rendered data
def test_dssgd_doc_is_exactly_what_write_docs_renders_from_the_stored_csv():
    mod = _module("dssgd_experiments")
    doc = mod.DOC.read_text()
    when, env = mod.recorded_footer(doc)
    assert when and env.startswith("Environment: ")
    assert mod.render_doc(mod.load_rows(), doc, when=when, environment=env) == doc
    reading = doc.split(mod.READING_BEGIN)[1].split(mod.READING_END)[0]
    assert "copied" not in reading and "not yet measured" not in reading


def _flat(text):
    """The prose with its line breaks (wrapping) undone."""
    return " ".join(text.replace("\n  ", " ").split())


def _dssgd_rendered(mod, rows):
    return _flat(mod.reading(rows)), _flat(mod.claims_changed(rows))


def test_dssgd_reading_verdicts_and_figures_follow_the_stored_values():
    mod = _module("dssgd_experiments")
    rows = mod.load_rows()
    reading, changed = _dssgd_rendered(mod, rows)
    assert "on digits θu = 100 % is *above* centralized (the claim fails" in reading
    assert "digits: θu = 1 above by" in changed
    # centralized 5 points better on every digits seed: the claim now holds there
    bumped = [{**r, "final": r["final"] + 0.05}
              if (r["dataset"], r["setting"]) == ("digits", "centralized") else r for r in rows]
    reading2, changed2 = _dssgd_rendered(mod, bumped)
    assert "on digits centralized is above (the claim holds" in reading2
    assert "θu = 100 % is *above* centralized" not in reading2
    assert "digits: centralized above by" in changed2
    # a figure: the per-device energy of round robin θu = 1 on Fashion-MNIST, doubled
    from results_doc import cell
    d, _ = mod.by_setting(rows, "fashion_mnist")
    old = cell(mod.col(d, "round_robin θu=1", "energy_device_mean_j"), 1)
    doubled = [{**r, "energy_device_mean_j": 2 * r["energy_device_mean_j"]}
               if (r["dataset"], r["setting"]) == ("fashion_mnist", "round_robin θu=1") else r
               for r in rows]
    new = cell([2 * v for v in mod.col(d, "round_robin θu=1", "energy_device_mean_j")], 1)
    assert f"spends {old} J at θu = 1" in reading
    assert f"spends {new} J at θu = 1" in _flat(mod.reading(doubled))
    # the asynchronous γ = 0.005 runs no better than γ = 0.05: "recovers" is no longer said
    same = [{**r, "final": next(q["final"] for q in rows if q["dataset"] == r["dataset"]
                                and q["seed"] == r["seed"] and q["setting"] == "asynchronous θu=0.1")
             + 0.001 * (r["seed"] % 3 - 1)}
            if r["setting"] == "asynchronous θu=0.1 γ=0.005" else r for r in rows]
    reading3 = _flat(mod.reading(same))
    assert "the asynchronous order recovers" not in reading3
    assert "γ = 0.005 > γ = 0.05 is not shown on both datasets" in reading3


def test_dssgd_reading_is_not_rendered_from_fewer_than_ten_paired_seeds():
    mod = _module("dssgd_experiments")
    rows = [r for r in mod.load_rows() if r["seed"] < 9]
    assert mod.reading(rows).startswith("_The reading needs every setting")
    assert mod.claims_changed(rows).startswith("_The table needs every setting")


def _fm_results(mod):
    import json
    return json.loads(mod.DATA.read_text())


def test_fm_doc_is_exactly_what_write_docs_renders_from_the_stored_json():
    mod = _module("fm_experiments")
    doc = mod.DOC.read_text()
    assert mod.render_doc(_fm_results(mod), doc) == doc
    for begin, end in (mod.SETUP_BLOCK, mod.READING_BLOCK, mod.CLAIMS_BLOCK, mod.LIMITS_BLOCK):
        assert doc.count(begin) == doc.count(end) == 1
    assert "copied" not in doc.split(mod.READING_BLOCK[0])[1].split(mod.READING_BLOCK[1])[0]


def _fm_in(tmp_path, monkeypatch):
    """The FM script with its doc, data file and plot copied under ``tmp_path``."""
    import shutil
    mod = _module("fm_experiments")
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    for name in ("DOC", "DATA", "PLOT"):
        src = getattr(mod, name)
        dst = tmp_path / src.relative_to(ROOT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
        monkeypatch.setattr(mod, name, dst)
    return mod


def test_fm_rerender_from_the_stored_values_keeps_doc_data_and_date(tmp_path, monkeypatch):
    """``--only "" --write-docs`` measures nothing: the doc, the data file (key order and the
    measurement date included) come back byte for byte."""
    mod = _fm_in(tmp_path, monkeypatch)
    monkeypatch.setattr(mod.time, "strftime", lambda *_: "2099-01-01")   # another day
    monkeypatch.setattr(mod.R, "environment", lambda: "Environment: elsewhere.")
    assert mod.main(["--only", "", "--write-docs"]) == 0
    for name in ("DOC", "DATA"):
        rel = getattr(mod, name).relative_to(tmp_path)
        assert (tmp_path / rel).read_text() == (ROOT / rel).read_text(), rel


def test_dssgd_write_docs_without_measuring_keeps_the_doc(tmp_path, monkeypatch):
    """``--write-docs`` alone (another day, another machine) reproduces the committed doc."""
    import shutil
    mod = _module("dssgd_experiments")
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    for name in ("DOC", "DATA", "AUDIT_DATA"):
        dst = tmp_path / getattr(mod, name).relative_to(ROOT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(getattr(mod, name), dst)
        monkeypatch.setattr(mod, name, dst)
    monkeypatch.setattr(mod.time, "strftime", lambda *_: "2099-01-01")
    monkeypatch.setattr(mod.R, "environment", lambda: "Environment: elsewhere.")
    assert mod.main(["--write-docs"]) == 0
    assert mod.DOC.read_text() == (ROOT / "docs/experiments/dssgd.md").read_text()


def test_fm_reading_verdicts_and_figures_follow_the_stored_values():
    import copy
    mod = _module("fm_experiments")
    res = _fm_results(mod)
    res.pop("rerun", None)      # the stored re-measurement record: its own test below
    reading, claims = _flat(mod.reading(res)), _flat(mod.claims_changed(res))
    assert "is not met at ε = 10.**" in reading and "| **not met**: 65 %" in claims
    # the quality-weighted runs of the acceptance cell 0.06 better on every seed: now it is met
    better = copy.deepcopy(res)
    cell = better["unreliable"]["10"]["breast_cancer"]["label_flip"]["0.3"]
    cell["quality"] = [v + 0.06 for v in cell["quality"]]
    reading2, claims2 = _flat(mod.reading(better)), _flat(mod.claims_changed(better))
    assert "is met only on breast cancer at ε = 10.**" in reading2
    assert "| **met**: " in claims2 and "**not met**" not in claims2
    a = mod.acceptance(better["unreliable"]["10"]["breast_cancer"], "accuracy", "label_flip", "0.3")
    from results_doc import ratio_pct
    assert f"Breast cancer recovers {ratio_pct(a['recovered'])}" in reading2
    # a figure: the consensus distance after 20 rounds (breast cancer, ε = 10), doubled
    far = copy.deepcopy(res)
    far["consensus"]["breast_cancer"]["10"]["20"] = [
        2 * v for v in res["consensus"]["breast_cancer"]["10"]["20"]]
    assert "ADMM is still 13.6 % ± 1.7 % (breast cancer)" in reading
    assert "ADMM is still 27.3 % ± 3.4 % (breast cancer)" in _flat(mod.reading(far))
    # the deep mode at ε = ∞ no better than the public-only network on digits: no "beats" there
    flat = copy.deepcopy(res)
    flat["deep"]["digits"]["rows"]["∞"]["l2"] = list(res["deep"]["digits"]["pretrained"])
    flat["deep"]["digits"]["rows"]["∞"]["l2"][0] += 0.01
    assert "beats the network trained on the public rows alone on digits" in reading
    deep = _flat(mod.reading(flat))
    assert "alone on digits" not in deep and "; on digits (" in deep
    assert "the gain is not shown" in deep
    assert "digits not shown" in _flat(mod.claims_changed(flat))
    # ... and on every dataset: "does not beat"
    for ds in flat["deep"]:
        flat["deep"][ds]["rows"]["∞"]["l2"] = list(res["deep"][ds]["pretrained"])
        flat["deep"][ds]["rows"]["∞"]["l2"][0] += 0.01
    assert "does not beat the network trained on the public rows alone" in \
        _flat(mod.reading(flat))


def test_fm_setup_and_limitations_quote_the_stored_references():
    import copy
    mod = _module("fm_experiments")
    res = _fm_results(mod)
    from results_doc import cell
    assert f"predicting the training mean: {cell(res['sklearn']['diabetes']['trivial'])}" in \
        _flat(mod._setup(res))
    worse = copy.deepcopy(res)
    worse["sklearn"]["breast_cancer"]["sklearn"] = [
        v - 0.1 for v in res["sklearn"]["breast_cancer"]["sklearn"]]
    assert "below scikit-learn's LogisticRegression" in _flat(mod.limits(res))
    assert "above scikit-learn's LogisticRegression" in _flat(mod.limits(worse))


def test_dssgd_setting_and_caveat_figures_follow_the_stored_values():
    mod = _module("dssgd_experiments")
    rows = mod.load_rows()
    minutes = mod.cpu_minutes(rows)
    assert f"({minutes:.0f} CPU minutes in all, measured)" in _flat(mod.setting_training(rows))
    slow = [{**r, "cpu_s": 3 * r["cpu_s"]} for r in rows]
    assert f"({3 * minutes:.0f} CPU minutes in all, measured)" in _flat(mod.setting_training(slow))
    assert "10 seeds × 19 settings × 2 datasets" in _flat(mod.setting_training(rows))
    fewer = [r for r in rows if not (r["setting"] == "standalone" and r["seed"] == 9)]
    assert "9–10 seeds" in _flat(mod.setting_training(fewer))
    assert "each setting’s count" in mod.setting_seeds(fewer)
    longer = [{**r, "rounds": 7} if r["dataset"] == "digits" else r for r in rows]
    assert "7 on digits" in _flat(mod.caveat_rounds(longer))


def test_dssgd_staleness_explanation_needs_the_lead_to_grow_with_the_participants():
    mod = _module("dssgd_experiments")
    rows = mod.load_rows()
    assert "staleness is the cause" in _flat(mod.reading(rows))
    # the asynchronous order with 5 participants collapsed as far as with 30: no growth
    worst = [{**r, "final": 0.10 + 0.001 * r["seed"]}
             if r["setting"] == "asynchronous θu=0.1 N=5" else r for r in rows]
    reading = _flat(mod.reading(worst))
    assert "staleness is the cause" not in reading
    assert "*Accuracy does not clearly fall with staleness.*" in reading
    assert "the collapse is not shown to grow" in _flat(mod.claims_changed(worst))
# ---------------------------------------------------------------- secure aggregation (issue 11)
def _rows(setting, finals, **extra):
    return [{"setting": setting, "seed": str(s), "rounds": "20", "completed": "True",
             "final": repr(float(f)), **{k: str(v) for k, v in extra.items()}}
            for s, f in enumerate(finals)]


def test_secagg_equivalence_claim_needs_its_interval_inside_the_tolerance():
    mod = _module("secagg_experiments")
    rng = np.random.default_rng(0)
    plain = 0.83 + 0.005 * rng.standard_normal(12)
    d = mod.by_setting(_rows("plain", plain) + _rows("secagg", plain - 0.001
                                                     + 0.0005 * rng.standard_normal(12))
                       + _rows("far", plain - 0.004 + 0.004 * rng.standard_normal(12)))
    assert mod._claim(d, "c", "secagg", "plain", tol=0.005).endswith(
        "| holds (interval within ±0.005) |")
    assert "not shown (interval leaves ±0.005)" in mod._claim(d, "c", "far", "plain", tol=0.005)
    assert "| 12 |" in mod._claim(d, "c", "secagg", "plain")
    few = mod.by_setting(_rows("a", plain[:9]) + _rows("b", plain[:9] - 0.1))
    assert mod._claim(few, "a > b", "a", "b").endswith("| not claimed (< 10 seeds) |")
    same = mod.by_setting(_rows("a", plain) + _rows("b", plain))
    assert "+0.0000 on every seed | holds (identical)" in mod._claim(same, "c", "a", "b", tol=0.005)


def test_secagg_rows_merge_by_setting_and_seed_and_rerun_rows_measure_drift(tmp_path):
    mod = _module("secagg_experiments")
    import results_doc as R
    path = tmp_path / "x.csv"
    R.merge_rows(path, mod.FIELDS, _rows("plain", [0.8, 0.81]), ("setting", "seed"))
    R.merge_rows(path, mod.FIELDS, _rows("plain", [0.9]) + _rows("rerun plain", [0.8004]),
                 ("setting", "seed"))
    rows = R.read_rows(path)
    assert [(r["setting"], r["seed"], r["final"]) for r in rows] == [
        ("plain", "0", "0.9"), ("plain", "1", "0.81"), ("rerun plain", "0", "0.8004")]
    rows = [{**r, "sim_s": "1", "bytes_total": "5"} for r in rows]
    assert "plain, seed 0: final accuracy 0.0996 apart" in mod.drift(rows)


def test_secagg_quick_measures_resumably_and_renders_every_section(tmp_path):
    mod = _module("secagg_experiments")
    import results_doc as R
    data = tmp_path / "secagg.csv"
    names = ["plain", "secagg", "secagg+", "secagg churn 0.3"]
    mod.measure([0, 1], names, data=data, quick=True)
    mod.measure([0, 1], names, data=data, quick=True)          # resumes: nothing to do
    rows = R.read_rows(data)
    assert sorted((r["setting"], r["seed"]) for r in rows) == sorted(
        (n, str(s)) for n in names for s in (0, 1))
    by = {(r["setting"], r["seed"]): r for r in rows}
    for s in "01":
        assert by[("secagg", s)]["unmasked"] == "2" and by[("plain", s)]["unmasked"] == ""
        # SecAgg and SecAgg+ unmask the same quantised sum: the same model
        assert by[("secagg", s)]["final"] == by[("secagg+", s)]["final"]
    assert (tmp_path / "secagg.env.json").is_file()
    doc = tmp_path / "doc.md"
    mod.write_doc(doc, data, tmp_path / "no-costs.json")
    text = doc.read_text()
    for head in ("## 1 ·", "## 3 ·", "### Drop-outs", "## 5 ·", "## Environment and drift"):
        assert head in text
    assert "SecAgg and SecAgg+ end at the same accuracy on 2 of 2 seeds" in text
    assert "not claimed (< 10 seeds)" in text and R.environment() in text


def test_secure_aggregation_doc_is_what_render_makes_of_the_data():
    mod = _module("secagg_experiments")
    import json

    import results_doc as R
    costs = json.loads(mod.COSTS.read_text())
    assert mod.DOC.read_text() == mod.render(R.read_rows(mod.DATA), costs,
                                             R.environments_text(mod.ENV))


def test_secure_aggregation_stored_byte_columns_are_what_the_protocol_measures_now():
    mod = _module("secagg_experiments")
    import json

    import secagg_expansion as X
    costs = json.loads(mod.COSTS.read_text())
    assert costs["plain_update_bytes"] == X.plain_update_bytes()
    now = X.per_client_rows(X.calibrate())
    strip = lambda rs: [{k: v for k, v in r.items() if k != "compute_s"} for r in rs]  # noqa: E731
    assert strip(costs["per_client"]) == strip(now)
    assert costs["expansion"][0] == X.expansion_rows()[0]   # 2^10 clients (2^14: seconds more)


# ---------------------------------------------------------------- encrypted ASGD (Phong et al.)
def test_encrypted_asgd_quick_measures_and_renders_paired_claims(tmp_path):
    mod = _module("encrypted_asgd_experiments")
    import results_doc as R
    data = tmp_path / "enc.csv"
    mod.measure([0, 1], devices=3, rounds=1, data=data, dataset="digits")
    rows = R.read_rows(data)
    assert len(rows) == 2 * 6 and all(r["completed"] == "True" for r in rows)
    d = mod.by_setting(rows)
    # HRES packs like Paillier: the same model on every seed; bytes do not depend on the seed
    assert mod._identical(d, mod.HRES, mod.PAILLIER) == (2, 2)
    assert len({r["bytes_total"] for r in d[mod.PAILLIER].values()}) == 1
    assert float(d[mod.PAILLIER][0]["comm_factor"]) > 2.9
    text = mod.render(rows, "Env.")
    assert "| Phong Paillier-3072 | 2 |" in text and "(every seed)" in text
    assert "| Paillier-3072 reaches plaintext ASGD's accuracy within 0.005 (the acceptance) | 2 |" \
        in text and "not claimed (< 10 seeds)" in text
    assert "| **2.954** | 2.93 |" in text and "| **2.472** | 2.47 |" in text


def test_encrypted_asgd_doc_is_what_render_makes_of_the_data():
    mod = _module("encrypted_asgd_experiments")
    import results_doc as R
    assert mod.DOC.read_text() == mod.render(R.read_rows(mod.DATA), R.environments_text(mod.ENV))
def _cnn_rows(label, errors, *, epochs=2, cpu=""):
    return [{**r, "model": "paper-cnn", "error_by_epoch": f"{e + 5};{e}"}
            for r, e in zip(_slicenet_rows(label, errors, epochs=epochs, cpu=cpu), errors, strict=True)]


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


def _mlp_rows_for_cnn_page(monkeypatch):
    """The experiment module (its traffic table stubbed) and MLP rows for every setting."""
    mod = _module("slicenet_experiments")
    monkeypatch.setattr(mod, "traffic_table", lambda: [(5, 1.03, 100, 40, 80)])
    mlp = []
    for i, s in enumerate(mod.settings()):
        mlp += _slicenet_rows(s.label, [20.0 + i, 21.0 + i], table=s.table, cpu=10.0)
    return mod, mlp


def test_slicenet_cnn_table_renders_beside_the_papers_cnn_and_leaves_the_mlp_page_alone(
        monkeypatch):
    mod, mlp = _mlp_rows_for_cnn_page(monkeypatch)
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


def test_slicenet_cnn_table_at_the_papers_50_epochs_says_so_and_tests_nothing_on_one_seed(
        monkeypatch):
    mod, mlp = _mlp_rows_for_cnn_page(monkeypatch)
    curve = lambda e: ";".join(f"{e + 50 - k:.1f}" for k in range(1, 51))   # noqa: E731
    cnn = [{**r, "model": "paper-cnn", "error_by_epoch": curve(e)}
           for lab, e in (("n = 20", 12.0), ("C-SGD", 9.0))
           for r in _slicenet_rows(lab, [e], epochs=50, cpu=3000.0)]
    cnn += _cnn_rows("n = 5", [40.0, 41.0], epochs=1, cpu=70.0)
    section = mod.render(mlp + cnn, 1, "x").partition("## Table I with the paper's CNN\n")[2]
    fifty, one = section.split("**1 epoch and 2 seeds (0, 1)")
    assert "**The paper's 50 epochs, 1 seed (0), not its 10 seeds**" in fifty
    assert "not the paper's 50 epochs" not in fifty and "After so few epochs" not in fifty
    assert "With one seed there is no spread, so no ordering is tested" in fifty
    assert "--model paper-cnn --tables I --epochs 50 --first-seed 0 --seeds 1" in fifty
    assert "| n = 20 | 32.40 | 61.00 (n = 1) |" in fifty and "| C-SGD | 29.54 | 58.00 (n = 1) |" in fifty
    assert "| n = 20 worse than C-SGD | — | **not measured** |" in fifty
    assert "No run of S-SGD, n = 5, n = 10, n = 15 finished at 50 epochs" in fifty
    assert "After so few epochs" in one and "not the paper's 50 epochs" in one


def test_slicenet_cnn_runs_table_one_only_in_a_folder_of_its_own(monkeypatch, tmp_path):
    mod = _module("slicenet_experiments")
    with pytest.raises(SystemExit) as e:
        mod.main(["--model", "paper-cnn", "--tables", "I", "II"])
    assert e.value.code == 2
    from crowdlearn.config import from_dict
    for s in (x for x in mod.settings() if x.table == "I"):
        cfg = mod.base_config(3, "paper-cnn", mod.table_epochs(3))
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
        (s.label, seeds, kw["out"], kw["model"], kw["scored"])) or [])
    mod.main(["--model", "paper-cnn", "--tables", "I", "--epochs", "2", "--seeds", "1",
              "--only", "C-SGD"])
    mod.main(["--model", "paper-cnn", "--tables", "I", "--epochs", "2", "--seeds", "1",
              "--only", "C-SGD", "--score", "every"])
    mod.main(["--tables", "I", "--epochs", "2", "--seeds", "1", "--only", "C-SGD"])
    folder = mod.ROOT / "results" / "slicenet_experiments"
    assert seen == [
        # the CNN's runs score only the table's epochs by default, in a folder of their own
        ("C-SGD", [0], folder / "paper-cnn" / "epochs=2-scored-at-table-epochs", "paper-cnn",
         [1, 2]),
        ("C-SGD", [0], folder / "paper-cnn" / "epochs=2", "paper-cnn", None),
        ("C-SGD", [0], folder / "epochs=2", "paper-mlp", None)]


def test_slicenet_runs_scored_at_the_table_epochs_fill_the_table_and_are_marked():
    mod = _module("slicenet_experiments")
    cfg = mod.base_config(50, "paper-cnn", mod.table_epochs(50))
    assert (cfg["eval_every"], cfg["eval_at"]) == (50, [1, 2, 5, 10, 20, 30, 40])
    every = [";".join(f"{30 - e * 0.4:g}" for e in range(50))]
    scored = [";".join(f"{20 - e * 0.2:g}" if e + 1 in mod.table_epochs(50) else ""
                       for e in range(50))]
    rows = [{**r, "epochs": 50, "model": "paper-cnn", "error_by_epoch": b,
             "scored_epochs": sc, "cpu_s": "5000"}
            for r, b, sc in ((_slicenet_rows("n = 10", [10.0])[0], every[0], ""),
                             (_slicenet_rows("S-SGD", [10.2])[0], scored[0],
                              "1;2;5;10;20;30;40;50"))]
    cells = mod._by_label(rows, 50)
    assert mod._epoch_vals(cells["S-SGD"], 5) == [pytest.approx(19.2)]
    assert mod._epoch_vals(cells["S-SGD"], 3) == []            # not scored: no value
    assert mod._epoch_vals(cells["n = 10"], 3) == [pytest.approx(29.2)]
    text = "\n".join(mod.cnn_section(rows, []))
    assert "| 100.0† |" in text and "| 100.0 |" in text
    assert mod.SCORED_NOTE in text
    assert "| 19.20 (n = 1) |" in text           # S-SGD after epoch 5, read past the gaps
    # a setting with runs of both schedules shows each median, never one across them, and the
    # set's price takes the runs scored at the table's epochs (the CNN command's default)
    seed1 = {**rows[0], "seed": 1, "error_by_epoch": scored[0],
             "scored_epochs": "1;2;5;10;20;30;40;50", "cpu_s": "2500"}
    mixed = "\n".join(mod.cnn_section(rows + [seed1], []))
    assert "| 100.0 / 50.0† |" in mixed and "| 100.0† |" in mixed
    assert "n = 10 50 s" in mixed and "n = 10 100 s" in text


# ---------------------------------------------------------------- issue 17: prose from stored data
def test_dssgd_auditor_reading_follows_the_stored_audit_rows():
    import copy
    mod = _module("dssgd_experiments")
    audit = mod.load_audit()
    doc = mod.DOC.read_text()
    assert mod.render_audit(audit, doc) == doc          # the committed doc is the stored audit
    text = _flat(mod.audit_reading(audit))
    assert "refutes the claimed ε_p = 1 from v = 10 γ on (lower bound 1.845 > 1; not at 3.32 γ" \
        in text and "the release is not ε_p-DP" in text
    assert "the bound is the same at every change tried, 0.234 for v = 1–20 γ" in text
    # the paper's release at 3.32 γ measured above 1: the refutation starts there
    earlier = copy.deepcopy(audit)
    row = next(r for r in earlier["rows"] if r["release"] == "paper" and r["value"] == 0.166)
    row["epsilon_lower_bound"] = 1.2
    assert "from v = 3.32 γ on (lower bound 1.200 > 1; not at 2 γ" in \
        _flat(mod.audit_reading(earlier))
    assert "| paper | ±0.166 | 3.32 | 1.200 |" in mod.audit_table(earlier)
    # no bound above the claim: no refutation, and no "not ε_p-DP"
    below = copy.deepcopy(audit)
    for r in below["rows"]:
        r["epsilon_lower_bound"] = min(r["epsilon_lower_bound"], 0.9)
    text2 = _flat(mod.audit_reading(below))
    assert "not ε_p-DP" not in text2 and text2.count("refutes the claimed ε_p = 1 at no change") \
        == 2
    # a clipped bound that moves with the change is reported as moving, not "the same"
    moved = copy.deepcopy(audit)
    moved["rows"][-1 - 5]["epsilon_lower_bound"] = 0.5       # clipped, the largest value
    assert "the bound grows with the change (0.234 at v = 1 γ to 0.500 at 20 γ)" in \
        _flat(mod.audit_reading(moved)).split("With the paper's release")[0]
    # the claims table's word on the paper's release follows the same rows
    rows = mod.load_rows()
    assert "(the auditor refutes its claimed ε_p = 1 from v = 10 γ)" in \
        _flat(mod.claims_changed(rows, audit))
    assert "from v = 3.32 γ)" in _flat(mod.claims_changed(rows, earlier))
    assert "refutes its claimed ε_p at no change tried" in _flat(mod.claims_changed(rows, below))
    assert "its privacy was not audited" in _flat(mod.claims_changed(rows, None))


def test_dssgd_audit_only_stores_its_rows_and_write_docs_renders_them(tmp_path, monkeypatch):
    import json
    import shutil
    mod = _module("dssgd_experiments")
    for name in ("DOC", "DATA", "AUDIT_DATA"):
        dst = tmp_path / getattr(mod, name).relative_to(ROOT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(getattr(mod, name), dst)
        monkeypatch.setattr(mod, name, dst)
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    monkeypatch.setattr(mod, "AUDIT_TRIALS", 2000)           # seconds, not minutes
    monkeypatch.setattr(mod, "AUDIT_VALUES", (0.05, 1.0))
    assert mod.main(["--audit-only", "--write-docs"]) == 0
    stored = json.loads(mod.AUDIT_DATA.read_text())
    assert stored["trials"] == 2000 and [r["value"] for r in stored["rows"]] == [0.05, 1.0] * 2
    assert all(r["claimed_epsilon"] == 1.0 for r in stored["rows"])
    doc = mod.DOC.read_text()
    assert "2,000 runs per neighbour" in doc and mod.audit_reading(stored) in doc


def _secagg_d(mod, change=None):
    import results_doc as R
    rows = R.read_rows(mod.DATA)
    return mod.by_setting([change(r) if change else r for r in rows])


def test_secagg_why_shorter_quotes_the_stored_upload_ratio_and_time_difference():
    mod = _module("secagg_experiments")
    import results_doc as R
    d = _secagg_d(mod)
    text = mod.why_shorter(d)
    exp = {round(R.fnum(r["expansion"]), 4) for r in d["secagg"].values()}
    assert len(exp) == 1 and f"sends {exp.pop():.4f}× the plain update" in text
    assert "packed at log2 R = 20 bits a coordinate" in text and "0.625× the size" in text
    dt = R.paired(R.column(d, "plain", "sim_s"), R.column(d, "secagg", "sim_s"))
    assert text.startswith("**Why SecAgg is *shorter*")
    assert f"SecAgg finishes {R.interval(dt, 2, sign=False)} s earlier" in text
    assert text in mod.DOC.read_text()
    # SecAgg runs 5 s longer on every seed: the paragraph says so and drops the "why shorter"
    slow = _secagg_d(mod, lambda r: {**r, "sim_s": str(R.fnum(r["sim_s"]) + 5)}
                     if r["setting"] == "secagg" else r)
    text2 = mod.why_shorter(slow)
    assert "*shorter*" not in text2 and "SecAgg takes" in text2 and "s longer" in text2
    assert "do not outweigh" in text2
    # a 24-bit modulus: the masked vector is 0.750× the float32 update
    wide = _secagg_d(mod, lambda r: {**r, "modulus_bits": "24"} if r["setting"] == "secagg"
                     else r)
    assert "log2 R = 24 bits a coordinate" in mod.why_shorter(wide)
    assert "0.750× the size" in mod.why_shorter(wide)


def test_fm_standardisation_sentence_follows_the_stored_flags():
    import copy
    mod = _module("fm_experiments")
    res = _fm_results(mod)
    measured = [s for s in mod.SECTIONS if s in res]
    public = copy.deepcopy(res)
    public["standardise"] = {s: "public" for s in measured}
    text = _flat(mod._setup(public))
    assert "standardised with the held-out (public) test part's mean and std, so the scaling " \
        "depends on no participant's row" in text
    assert "predate" not in text and "standard deviations of the test (public) part" in text
    mixed = copy.deepcopy(public)
    mixed["standardise"]["variants"] = "train"
    del mixed["standardise"]["deep"]
    text2 = _flat(mod._setup(mixed))
    assert "*The sections were standardised differently*" in text2
    assert "the training part's mean and std (the participants' rows, outside the functional " \
           "mechanism's guarantee): variants" in text2
    assert "not recorded (measured before the data file stored it): deep" in text2


def test_fm_unreliable_setup_names_every_model_the_tables_ran():
    import copy
    mod = _module("fm_experiments")
    res = _fm_results(mod)
    text = _flat(mod._unreliable_setup(res))
    for words in ("label flip (`\"label_flip\"`", "feature noise (`\"feature_noise\"`",
                  "random data (`\"random\"`", "at 10, 20, 30, 40, 50 %", "at 10, 30, 50 %"):
        assert words in text
    fewer = copy.deepcopy(res)
    for by_ds in fewer["unreliable"].values():
        for rows in by_ds.values():
            del rows["random"]
    assert "random data" not in _flat(mod._unreliable_setup(fewer))


def test_fm_reproduce_block_quotes_the_measured_times():
    import copy
    mod = _module("fm_experiments")
    res = _fm_results(mod)
    secs = [s for s in mod.SECTIONS if s in res["wall_s"] and s in res]
    text = _flat(mod.reproduce(res))
    assert "~25 min" not in text
    assert f"{mod._minutes(sum(res['wall_s'][s] for s in secs))} min wall" in text
    slower = copy.deepcopy(res)
    slower["wall_s"] = {k: 2 * v for k, v in res["wall_s"].items()}
    slower["cpu_s"] = {k: 3.0 for k in secs}
    text2 = _flat(mod.reproduce(slower))
    assert f"{mod._minutes(sum(slower['wall_s'][s] for s in secs))} min wall" in text2
    assert f"{mod._minutes(3.0 * len(secs))} CPU-min" in text2
    assert f"{secs[0]} {slower['wall_s'][secs[0]]:.0f} s wall / 3 s CPU" in text2


def test_fm_rerun_lists_every_claim_whose_figure_moved():
    import copy
    mod = _module("fm_experiments")
    res = _fm_results(mod)
    same = copy.deepcopy(res)
    same["rerun"] = mod.compare_runs(res, res, [s for s in mod.SECTIONS if s in res], "x.json")
    text = _flat(mod.rerun_text(same))
    assert "No claim of the table above moved" in text and "utility " in text
    n = same["rerun"]["sections"]["utility"]["values"]
    assert f"utility {n} of {n}" in text
    # the previous data had breast cancer's ε = 10 cell 0.01 lower on every seed
    before = copy.deepcopy(res)
    cell = before["utility"]["breast_cancer"]["10"]["collab_l2"]
    before["utility"]["breast_cancer"]["10"]["collab_l2"] = [v - 0.01 for v in cell]
    moved = copy.deepcopy(res)
    moved["rerun"] = mod.compare_runs(before, res, ["utility"], "git:abc")
    text2 = _flat(mod.rerun_text(moved))
    k = len(cell)
    assert f"utility {n - k} of {n} (largest difference 0.01)" in text2
    assert "| l2 Δ, breast cancer, ε = 2 / 5 / 10 (centralized FM at 10) |" in text2
    assert "previous data: git:abc" in text2


def test_fm_previous_option_stores_the_comparison_and_the_doc_quotes_it(tmp_path, monkeypatch):
    """``--only "" --write-docs --previous FILE``: the data file keeps what moved against FILE,
    the claims block lists it; a later plain re-render keeps it."""
    import copy
    import json
    mod = _fm_in(tmp_path, monkeypatch)
    res = _fm_results(mod)
    old = copy.deepcopy(res)
    old["deep"]["digits"]["pretrained"] = [v - 0.05 for v in res["deep"]["digits"]["pretrained"]]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert mod.main(["--only", "", "--write-docs", "--previous", str(tmp_path / "old.json")]) == 0
    stored = json.loads(mod.DATA.read_text())
    assert stored["rerun"]["previous"] == str(tmp_path / "old.json")
    assert stored["rerun"]["sections"]["deep"]["identical"] == \
        stored["rerun"]["sections"]["deep"]["values"] - len(res["deep"]["digits"]["pretrained"])
    doc = mod.DOC.read_text()
    assert "| deep mode: FM output layer beats the public-only network without noise |" in \
        doc.split("before the re-measurement")[1]
    assert mod.main(["--only", "", "--write-docs"]) == 0
    assert mod.DOC.read_text() == doc
    with pytest.raises(SystemExit, match="no such file"):
        mod.main(["--only", "", "--write-docs", "--previous", str(tmp_path / "none.json")])


# ---------------------------------------------------------------- fleet model (issue 16)
def _fleet_data(mod):
    import json
    return json.loads(mod.DATA.read_text())


def test_fleet_model_doc_is_what_render_makes_of_the_stored_data():
    mod = _module("fleet_model")
    data = _fleet_data(mod)
    assert mod.DOC.read_text() == mod.render(data)
    assert len(data["seeds"]) >= mod.MIN_SEEDS
    assert "History (not re-measured)" in mod.DOC.read_text()


def test_fleet_model_stored_tier_figures_are_what_sim_profiles_give_now():
    mod = _module("fleet_model")
    assert _fleet_data(mod)["tiers"] == mod.tier_rows()


def _fleet_row(text, start):
    """The cells of the row starting with ``start`` above the history block."""
    (line,) = [ln for ln in text.split("## History")[0].splitlines() if ln.startswith(start)]
    return [c.strip() for c in line.strip("|").split("|")]


def test_fleet_model_verdicts_follow_the_stored_values():
    """Raising a stored count or share on every seed moves the cell and turns its expectation
    check from inside to outside (and the count of checks outside follows)."""
    import copy
    mod = _module("fleet_model")
    data = _fleet_data(mod)
    before = mod.render(data)
    changed = copy.deepcopy(data)
    for s in data["seeds"]:
        c = changed["per_seed"][str(s)]["churn"]["0.05"]
        c["full_drops"] = round(0.08 * c["full"])                # 8 % instead of p = 5 %
        changed["per_seed"][str(s)]["diurnal"]["3600/10800/0.3"]["mean"] += 0.05
    after = mod.render(changed)
    row_b, row_a = _fleet_row(before, "| 0.05 |"), _fleet_row(after, "| 0.05 |")
    assert row_a[2].startswith("0.08") and row_a[2] != row_b[2]
    assert row_a[4] == "outside (above)" and row_a[8] == row_b[8]   # cut tasks untouched
    d_b, d_a = (_fleet_row(t, "| 1 h / 3 h | 0.250 | 0.3 |") for t in (before, after))
    assert d_a[12] == "outside (above)" and d_a[10] != d_b[10] and d_a[9] == d_b[9]
    n_out = lambda t: int(t.split(" of the 30 expectations")[0].rsplit("\n", 1)[1])  # noqa: E731
    newly = (row_b[4] != "outside (above)") + (d_b[12] != "outside (above)")
    assert n_out(after) == n_out(before) + newly
    # fewer than ten seeds: the checks are not claimed
    few = copy.deepcopy(data)
    few["seeds"] = data["seeds"][:3]
    assert "not claimed (< 10 seeds)" in mod.render(few)


def test_fleet_model_rerun_sentence_reports_what_moved():
    mod = _module("fleet_model")
    data = {**_fleet_data(mod), "rerun": {"seed": 0, "figures": 39, "identical": 38,
                                          "max_abs_diff": 0.003, "environment": "elsewhere",
                                          "measured": "2099-01-01"}}
    text = mod.render(data)
    assert "38 of 39 figures identical, the largest difference 0.003" in text
    assert "another environment" in text


def test_fleet_model_quick_run_writes_the_data_and_every_section(tmp_path):
    import json
    mod = _module("fleet_model")
    assert mod.main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "fleet_model.json").read_text())
    assert data["seeds"] == [0, 1] and data["devices"] == mod.QUICK_DEVICES
    counts = [data["per_seed"][s]["churn"]["0.5"] for s in "01"]
    assert counts[0] != counts[1]                 # each seed its own churn draws
    assert all(c["idle_drops"] == 0 and 0 < c["full_drops"] < c["full"] for c in counts)
    text = (tmp_path / "fleet_model.md").read_text()
    assert text == mod.render(data)
    for head in ("## Churn under cancellations", "## Diurnal sessions", "## Tiers",
                 "## Environment and drift on rerun"):
        assert head in text
    assert "Seeds 0, 1 (2 seeds" in text and "not claimed (< 10 seeds)" in text
    assert data["environment"] in text
    # --rerun-check measures seed 0 again: the same figures
    assert mod.main(["--quick", "--out", str(tmp_path), "--rerun-check"]) == 0
    rerun = json.loads((tmp_path / "fleet_model.json").read_text())["rerun"]
    assert rerun["identical"] == rerun["figures"] == 3 * 5 + 8 * 3


# ---------------------------------------------------------------- SliceNet: how the runs were made
def test_slicenet_run_rows_store_how_a_fresh_run_was_made_and_not_a_found_one(tmp_path,
                                                                               monkeypatch):
    import os

    import pandas as pd

    import crowdlearn.sweeps
    mod = _module("slicenet_experiments")
    df = pd.DataFrame([{"status": "ok", "seed": 0, "final_accuracy": 0.8, "best_accuracy": 0.8,
                        "sim_time_s": 1.0, "bytes_total": 10, "run": "a"},
                       {"status": "skipped", "seed": 1, "final_accuracy": 0.7,
                        "best_accuracy": 0.7, "sim_time_s": 1.0, "bytes_total": 10, "run": "b"}])
    monkeypatch.setattr(crowdlearn.sweeps, "sweep", lambda *a, **k: df)
    s = next(x for x in mod.settings() if x.label == "n = 5")
    fresh, found = mod.run_setting(s, [0, 1], epochs=1, out=tmp_path, backend="local", jobs=1,
                                   address=None, how=mod.provenance("x.py --epochs 1"))
    assert fresh["argv"] == "x.py --epochs 1" and fresh["pid"] == os.getpid()
    assert fresh["nice"] == os.nice(0) and fresh["started"] <= fresh["ended"]
    assert all(found[k] == "" for k in mod.PROVENANCE)   # made by an earlier process
    # merged over a row that has the record, the found run keeps it
    monkeypatch.setattr(mod, "DATA", tmp_path / "slicenet.csv")
    mod.save_rows([{**found, "argv": "first.py", "nice": 19, "pid": 3, "started": 1.0,
                    "ended": 2.0, "load": 4.0}])
    mod.save_rows([found])
    (row,) = [r for r in mod.load_rows() if r["seed"] == "1"]
    assert (row["argv"], row["pid"], row["nice"]) == ("first.py", "3", "19")


def test_slicenet_long_runs_say_how_they_were_made_from_their_rows(monkeypatch, tmp_path):
    mod, rows = _slicenet_page(monkeypatch, tmp_path)
    long = []
    for label, e in (("S-SGD", 9.0), ("n = 5", 4.0)):
        for seed in (0, 1):
            long.append({**_slicenet_rows(label, [e + seed], epochs=50, cpu=500.0)[0],
                         "seed": seed, "error_by_epoch": ";".join(["10"] * 50)})
    section = lambda d: d.split("## Table I after 50 epochs")[1].split("\n\n")[1]  # noqa: E731
    old = section(mod.render(rows + long, 1, "x"))
    assert "How the runs were made: not recorded with the rows" in old
    assert "two at a time" in old                             # the note of the time, so labelled
    # seed 0 by process 11 (0–100 s), seed 1 by process 12 (50–150 s): two at a time, nice 19
    for r in long:
        r.update(argv=f"s.py --first-seed {r['seed']}", nice="19", pid=str(11 + r["seed"]),
                 started=str(50.0 * r["seed"]), ended=str(50.0 * r["seed"] + 100), load="3.0")
    new = section(mod.render(rows + long, 1, "x"))
    assert ("How the runs were made: 4 runs made by 2 processes at `nice -n 19`, at most 2 at a "
            "time (load average 3.0–3.0 at the runs' ends): `s.py --first-seed 0`; "
            "`s.py --first-seed 1`.") in new and "not recorded" not in new
    for r in long:                                        # one after the other, at nice 10
        r.update(started=str(200.0 * r["seed"]), ended=str(200.0 * r["seed"] + 100), nice="10")
    new = section(mod.render(rows + long, 1, "x"))
    assert "by 2 processes at `nice -n 10`, at most 1 at a time" in new
    long[0].update(pid="")                                # one row from before the record
    assert "; 1 run not recorded with the rows" in section(mod.render(rows + long, 1, "x"))
