"""Acceptance runs of the private-FedAvg examples (issue 11) on Fashion-MNIST: slow."""

from pathlib import Path

import pytest

from crowdlearn.config import load
from crowdlearn.experiment import Simulation
from crowdlearn.privacy import dp_fedavg
from tests.test_data import require_fashion

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytestmark = pytest.mark.slow


def test_secagg_example_reaches_80_percent_like_plain_fedavg():
    require_fashion()
    acc = {}
    for mode in ("none", "secagg", "secagg+"):
        res = Simulation(load(EXAMPLES / "secagg_fashion.toml",
                              [f'fedavg.secure_aggregation="{mode}"'])).run()
        assert res.summary["completed"]
        acc[mode] = res.summary["final_accuracy"]
        if mode != "none":
            assert res.summary["secagg_rounds_ok"] == 20
    assert acc["secagg"] >= 0.80
    assert abs(acc["secagg"] - acc["none"]) <= 0.005
    assert abs(acc["secagg+"] - acc["none"]) <= 0.005


def test_secagg_example_with_churn_completes_every_round_and_records_dropouts():
    require_fashion()
    res = Simulation(load(EXAMPLES / "secagg_fashion.toml", ["availability.churn=0.3"])).run()
    s = res.summary
    assert s["completed"] and s["rounds_completed"] == 20
    assert sum(s["secagg_dropouts_by_stage"].values()) > 0
    assert s["secagg_rounds_ok"] + s["secagg_rounds_aborted"] == 20
    assert all("< t =" in a["reason"] for a in s["secagg_aborts"])


def test_dp_example_accuracy_rises_with_epsilon_and_epsilon_is_the_accountants():
    require_fashion()
    acc = {}
    for eps in (1.0, 8.0, 32.0):
        cfg = load(EXAMPLES / "dp_fedavg_fashion.toml", [f"dp.target_epsilon={eps}"])
        res = Simulation(cfg).run()
        s = res.summary
        q = cfg.clients_per_round / cfg.fleet.devices
        # every round charged at σ / (C + rounding bound); no drop-outs: the target's z
        z = dp_fedavg.noise_for_epsilon(eps, sampling_rate=q, rounds=20, delta=1e-5)
        assert s["dp_effective_multipliers"] == pytest.approx([z] * 20, rel=1e-6)
        assert s["epsilon"] == pytest.approx(dp_fedavg.epsilon_direct(z, q, 20, 1e-5))
        assert s["epsilon"] <= eps
        acc[eps] = s["final_accuracy"]
    assert acc[1.0] < acc[8.0] < acc[32.0]
