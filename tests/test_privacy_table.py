"""benchmarks/privacy_table.py --quick: a row for every registered protocol (issue 17)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("privacy_table",
                                                  ROOT / "benchmarks" / "privacy_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_table_has_a_row_for_every_registered_protocol(capsys):
    from crowdlearn import registry
    mod = _module()
    assert mod.protocols() == list(registry.names())
    assert mod.main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| protocol")
            and not line.startswith("| ---")]
    by_proto: dict = {}
    for r in rows:
        by_proto.setdefault(r[0].lstrip("| ").split(" + ")[0], []).append(r)
    assert set(by_proto) == set(registry.names())
    number = re.compile(r"^-?\d+\.\d+ ± \d+\.\d+")
    for proto, rs in by_proto.items():
        for r in rs:
            if "cannot run" in r[-1] or "no round completed" in r[-1]:
                continue                              # said so in the row, with the reason
            assert number.match(r[2]) and number.match(r[3]), (proto, r)   # accuracy, bytes
            assert r[7] != "—" and number.match(r[6]), (proto, r)         # score, baseline
    # the observers a protocol exposes: the DSSGD / FedAvg server sees uploads
    for proto in ("dssgd", "fedavg"):
        observers = [r[1] for r in by_proto[proto]]
        assert "server, from each upload" in observers
        up = next(r for r in by_proto[proto] if r[1] == "server, from each upload")
        assert "random public image" in up[7] and "public mean" in up[7]
    dp = [r for r in rows if r[0].lstrip("| ") == "dssgd + dp"]
    assert dp and all(number.match(r[4]) for r in dp)                     # ε where DP
    assert all(r[4] == "no DP" for r in by_proto["fedavg"])


def _runs(seeds, aucs, *, status="ok", rec=None):
    """One variant's sweep rows: a membership AUC per seed and, with ``rec``, the server's
    reconstruction and its two baselines per seed."""
    import pandas as pd
    rows = []
    for i, (s, a) in enumerate(zip(seeds, aucs, strict=True)):
        r = {"seed": s, "status": status, "error": None, "stopped_by": "completed",
             "completed": True, "rounds_completed": 2, "final_accuracy": 0.5 + 0.01 * i,
             "bytes_total": 1000 + i, "epsilon": None, "membership_target": "global",
             "membership_auc": a, "membership_max_advantage": 0.02}
        if rec is not None:
            r.update(reconstruction_psnr=rec[0][i], reconstruction_random_public_psnr=rec[1][i],
                     reconstruction_prior_psnr=rec[2][i], reconstruction_fill="mean")
        rows.append(r)
    return pd.DataFrame(rows)


def test_runs_a_resumed_sweep_skipped_count_as_finished():
    """A resumed sweep reports the runs an earlier process finished as ``skipped``: their
    figures are in the table (they used to be dropped with the failed ones)."""
    mod = _module()
    df = _runs([0, 1], [0.5, 0.52], status="skipped")
    (row,) = mod.table_rows([("fedavg", "default", {}, df)])
    assert row["runs"] == 2 and row["accuracy"].startswith("0.505 ± ") and row["note"] == ""


def _data(mod, seeds, aucs, rec, *, rounds=2):
    results = [("fedavg", "default", {}, _runs(seeds, aucs, rec=rec)),
               ("hres", "default", {}, "ConfigError: needs keys")]
    return mod.to_data(results, rounds=rounds, devices=8,
                       measured={"command": "`c`", "seeds": seeds, "runs": len(seeds),
                                 "wall_s": 1.0, "cpu_s": 2.0, "when": "2026-11-30"})


def test_seeds_merge_into_the_data_file_and_the_doc_renders_claims_old_to_new(
        tmp_path, monkeypatch):
    import json

    from scipy import stats
    mod = _module()
    doc = tmp_path / "privacy_table.md"
    doc.write_text("head\n<!-- privacy-table:start -->\n<!-- privacy-table:end -->\n"
                   "<!-- privacy-reading:start -->\n<!-- privacy-reading:end -->\n"
                   "<!-- privacy-changed:start -->\n<!-- privacy-changed:end -->\n")
    monkeypatch.setattr(mod, "DOC", doc)
    # seeds 0-2: the AUC is not shown above chance; seeds 3-9 make it hold
    first = _data(mod, [0, 1, 2], [0.51, 0.49, 0.52],
                  ([13.0, 13.5, 14.0], [15.0, 15.2, 15.1], [13.9, 13.8, 14.0]))
    data = mod.merge_data(None, first)
    mod.render(json.loads(json.dumps(data)))
    text = doc.read_text()
    assert "seeds 0–2 (3 seeds, not the 10 issue 17 asks for" in text
    assert "| hres | — |" in text and "cannot run: ConfigError: needs keys" in text
    later = _data(mod, list(range(3, 10)), [0.52] * 7,
                  ([13.0] * 7, [15.0] * 7, [13.9] * 7))
    data = mod.merge_data(json.loads(json.dumps(data)), later)
    assert mod.data_seeds(data) == list(range(10)) and data["earlier_seeds"] == [0, 1, 2]
    assert len(data["measured"]) == 2
    mod.render(json.loads(json.dumps(data)))
    text = doc.read_text()
    assert "not the 10" not in text and "seeds 0–9 (10 seeds)" in text
    auc = np.array([0.51, 0.49, 0.52] + [0.52] * 7) - 0.5
    h = stats.t.ppf(0.975, 9) * auc.std(ddof=1) / np.sqrt(10)
    assert f"| fedavg | membership AUC above chance (0.5) | {auc.mean():+.3f} " \
           f"[{auc.mean() - h:+.3f}, {auc.mean() + h:+.3f}]" in text
    assert "| fedavg: membership AUC above chance (0.5) |" in text
    assert "**not shown → holds**" in text                    # the verdict that changed
    assert "fedavg: membership AUC above chance (0.5) (not shown → holds)." in text
    assert "No server reconstruction beats its baselines here" in text
    # the baselines' order, computed at render time on the bundled digits: the mean image is
    # closer to one sample, a random public image to the nearest of a device's samples
    bullet = next(ln for ln in text.splitlines() if ln.startswith("* **Why a random public"))
    pairs = [tuple(map(float, p.split(": ")[1].split(" against ")))
             for p in bullet.split("samples (400 draws each, computed when this page was "
                                   "rendered): ")[1].split(".  So")[0].split("; ")]
    assert pairs[0][1] > pairs[0][0] and pairs[-1][0] > pairs[-1][1]
    with pytest.raises(SystemExit, match="holds runs of 2 rounds"):
        mod.merge_data(data, _data(mod, [10], [0.5], None, rounds=5))


def test_a_rerun_seed_replaces_its_old_run_and_keeps_the_others():
    mod = _module()
    old = _data(mod, [0, 1], [0.5, 0.6], None)
    new = _data(mod, [1], [0.7], None)
    data = mod.merge_data(old, new)
    runs = data["variants"][0]["runs"]
    assert [(r["seed"], r["membership_auc"]) for r in runs] == [(0, 0.5), (1, 0.7)]
    assert data["earlier_seeds"] == [0, 1]        # the seeds did not grow


def test_a_pick_above_one_baseline_only_is_no_leak_and_the_reading_says_which():
    mod = _module()
    rec = ([14.4, 14.3, 14.5, 14.2], [15.6, 15.7, 15.5, 15.8], [13.9, 13.9, 13.9, 13.9])
    res = [("phong", "default", {}, _runs(range(4), [0.5] * 4, rec=rec))]
    text = mod.reading(res)
    assert "No server reconstruction beats both its baselines here" in text
    assert ("phong: above a random public image fails, above the public mean holds" in text)
    assert "phong beats the public mean image but not a random public image" in text
    rec_both = (rec[0], [13.0] * 4, rec[2])
    res = [("phong", "default", {}, _runs(range(4), [0.5] * 4, rec=rec_both))]
    assert "The server's reconstruction beats both baselines** for phong" in mod.reading(res)


def test_the_drift_sentence_follows_the_stored_rerun_comparison():
    import copy
    import json
    mod = _module()
    data = json.loads(mod.DATA.read_text())
    assert data["rerun"]["compared"] > 0
    page = mod.DOC.read_text()
    assert mod.drift_text(data) in page                 # the committed page is the render
    moved = copy.deepcopy(data)
    # a fresh run whose accuracy moved on one run: the comparison and the sentence say so
    fresh = copy.deepcopy(data)
    v = next(v for v in fresh["variants"] if v.get("runs"))
    v["runs"] = [dict(v["runs"][0], final_accuracy=-1.0)]
    fresh["variants"] = [v]
    c = mod.rerun_compare(data, fresh)
    assert c["identical"] == c["compared"] - 1 and c["moved"][0][3] == "final_accuracy"
    moved["rerun"] = {**c, "when": "2026-01-01"}
    text = mod.drift_text(moved)
    assert f"{c['identical']} of {c['compared']} stored values identical" in text
    assert "final_accuracy" in text and "→ -1.0" in text
    del moved["rerun"]
    assert "not measured" in mod.drift_text(moved)


def test_the_table_of_more_rounds_is_read_beside_the_archived_two_round_one(
        tmp_path, monkeypatch):
    """A table of 20 rounds renders its accuracy and every claim beside the 2-round history
    file (same seeds), marking the verdicts that changed; issue 17's block keeps reading the
    history, not the new table."""
    import json

    mod = _module()
    doc = tmp_path / "privacy_table.md"
    doc.write_text("<!-- privacy-rounds:start -->\n<!-- privacy-rounds:end -->\n"
                   "<!-- privacy-changed:start -->\n<!-- privacy-changed:end -->\n")
    monkeypatch.setattr(mod, "DOC", doc)
    seeds = list(range(5))
    two = _data(mod, seeds, [0.50, 0.51, 0.49, 0.50, 0.50],
                ([13.0] * 5, [15.0] * 5, [13.9] * 5))
    twenty = _data(mod, seeds, [0.56, 0.57, 0.55, 0.58, 0.56],
                   ([13.0] * 5, [15.0] * 5, [13.9] * 5), rounds=20)
    history = tmp_path / "privacy_table_2rounds.json"
    history.write_text(json.dumps(two))
    monkeypatch.setattr(mod, "HISTORY", history)
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    assert mod.history(json.loads(json.dumps(two)))["rounds"] == 2     # a 2-round file is its own
    mod.render(json.loads(json.dumps(twenty)))
    text = doc.read_text()
    assert "measured after 2 rounds" in text and "It is now measured after 20." in text
    assert "| fedavg | 0.520 ± " in text                      # accuracy beside, 2 → 20 rounds
    assert "| fedavg: membership AUC above chance (0.5) | +0.000 [" in text
    assert "| **not shown → holds** |" in text
    assert ("Verdicts that changed with 20 rounds instead of 2: fedavg: membership AUC above "
            "chance (0.5) (not shown → holds).") in text
    # issue 17's block reads the 2-round history: its server rows are the history's
    assert "fedavg: 13.88 ± 2.10 → 13.00 ± 0.00; 15.16 ± 2.87 → 15.00 ± 0.00" in text
    history.unlink()
    mod.render(json.loads(json.dumps(twenty)))
    assert "privacy_table_2rounds.json file of issue 17's page is missing" in doc.read_text()
