"""``benchmarks/privacy_attacks.py``'s doc over seeds: datasets measured by separate processes
(digits in one file, Fashion-MNIST in another) merge per dataset, each over its own seeds; the
claims of the reading are paired t-tests over the seeds."""

from __future__ import annotations

import argparse

import numpy as np
import pytest


@pytest.fixture(scope="module")
def mod():
    from tests.test_experiment_docs import _module

    return _module("privacy_attacks")


def _seed_out(mod, name, rng):
    """One seed's values for one dataset: a membership pair and a section-1 row."""
    out = {k: [] for k in mod.LISTS}
    out["full"] = [{"dataset": f"{name} (MLP 1-2-3)", "samples": 5, "exact": "5/5",
                    "max_abs_error": 1e-8, "median_psnr": float(rng.uniform(90, 99))}]
    out["membership"] = [{"dataset": name, "model": m, "auc": float(rng.uniform(0.4, 0.7))}
                         for m in ("FedAvg global model", "DSSGD global model (θu=10%)",
                                   "standalone local models")]
    out["clf_ceiling"] = {name: 0.9}
    out["membership_setup"] = {name: {"devices": 10, "per_device": 100, "rounds": 10,
                                      "hidden": [64], "max_samples": 1000}}
    out["cpu_s"] = {name: float(rng.uniform(100, 200))}
    return out


def _file(per):
    return {"command": "`c`", "elapsed_s": 1.0, "when": "2026-11-30", "per_seed": per}


def test_datasets_from_separate_files_merge_each_over_its_own_seeds(mod):
    from results_doc import cell

    rng = np.random.default_rng(0)
    digits = {str(s): _seed_out(mod, "digits", rng) for s in range(5)}
    fashion = {str(s): _seed_out(mod, "fashion_mnist", rng) for s in range(3)}
    per = mod.combine([_file(digits), _file(fashion)])
    assert sorted(per["0"]["clf_ceiling"]) == ["digits", "fashion_mnist"]
    assert sorted(per["4"]["clf_ceiling"]) == ["digits"]
    out = mod.merged(per)
    assert out["seeds"] == {"digits": [0, 1, 2, 3, 4], "fashion_mnist": [0, 1, 2]}
    rows = {(r["dataset"], r["model"]): r["auc"] for r in out["membership"]}
    for name, src in (("digits", digits), ("fashion_mnist", fashion)):
        want = cell([next(r["auc"] for r in src[s]["membership"]
                          if r["model"] == "standalone local models") for s in src], 3)
        assert rows[(name, "standalone local models")] == want
    assert [r["dataset"].split(" ")[0] for r in out["full"]] == ["digits", "fashion_mnist"]
    assert len(out["cpu_s"]["fashion_mnist"]) == 3
    with pytest.raises(SystemExit, match="in two of the files"):
        mod.combine([_file(digits), _file({"1": _seed_out(mod, "digits", rng)})])


def test_the_readings_claims_are_paired_t_tests_over_the_seeds(mod):
    from scipy import stats

    rng = np.random.default_rng(1)
    per = {str(s): _seed_out(mod, "fashion_mnist", rng) for s in range(4)}
    out = mod.merged(mod.combine([_file(per)]))
    got = {c["id"]: c for c in mod.paired_claims(out)}

    def auc(s, m):
        return next(r["auc"] for r in per[s]["membership"] if r["model"] == m)

    d = np.array([auc(s, "standalone local models") - auc(s, "FedAvg global model")
                  for s in per])
    h = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
    c = got["mem_fedavg"]
    assert c["n"] == 4 and c["d"]["mean"] == pytest.approx(d.mean())
    assert c["d"]["lo"] == pytest.approx(d.mean() - h)
    assert c["verdict"] == ("holds" if d.mean() - h > 0 else "fails" if d.mean() + h < 0
                            else "not shown")
    assert "inv_1_4" not in got                   # no inversion rows: no claim made


def test_no_digits_leaves_fashion_only_and_refuses_an_empty_run(mod, monkeypatch):
    ns = argparse.Namespace
    monkeypatch.setattr(mod, "fashion_mnist_available", lambda: True)
    assert mod._datasets(ns(no_digits=True, no_fashion=False)) == ["fashion_mnist"]
    assert mod._datasets(ns(no_digits=False, no_fashion=True)) == ["digits"]
    with pytest.raises(SystemExit, match="no dataset left"):
        mod._datasets(ns(no_digits=True, no_fashion=True))


def test_added_seeds_set_every_claim_old_beside_new_and_mark_changed_verdicts(mod):
    """Seeds 5-9 added to seeds 0-4: each claim over the earlier seeds (the previous page,
    from the same per-seed values) beside all seeds, a changed verdict marked."""
    def seed(s, gap):
        o = _seed_out(mod, "digits", np.random.default_rng(s))
        fed = next(r for r in o["membership"] if r["model"] == "FedAvg global model")
        solo = next(r for r in o["membership"] if r["model"] == "standalone local models")
        solo["auc"] = fed["auc"] + gap
        return o

    gaps = [0.02, -0.03, 0.04, -0.01, 0.01] + [0.05] * 5      # 0-4: not shown; 0-9: holds
    old = {str(s): seed(s, g) for s, g in enumerate(gaps[:5])}
    new = {**old, **{str(s): seed(s, g) for s, g in enumerate(gaps) if s >= 5}}
    earlier = mod.earlier_seeds(_file(old), new)
    assert earlier == {"digits": [0, 1, 2, 3, 4]}
    assert mod.earlier_seeds({**_file(new), "earlier_seeds": earlier}, new) == earlier
    lines = mod.more_seeds_section(mod.merged(new), earlier)
    row = next(x for x in lines if x.startswith("| membership AUC: standalone local models "
                                                "above the FedAvg global model |"))
    assert row.endswith("| **not shown → holds** |")
    d_old = mod.paired_claims(mod.merged(old))
    want = next(c["diff"] for c in d_old if c["id"] == "mem_fedavg")
    assert f"| {want} |" in row                                 # the previous page's figure
    assert "seeds 0–4 (5)" in lines[3] and "seeds 0–9 (10)" in lines[3]
    assert mod.more_seeds_section(mod.merged(new), {"digits": list(range(10))}) == []
