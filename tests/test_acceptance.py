"""Acceptance runs of the shipped examples (issue 2): real data, the full example configs."""
from pathlib import Path

from crowdlearn.config import load
from crowdlearn.experiment import Simulation
from tests.test_data import require_fashion

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_default_example_reaches_90_percent_on_digits():
    res = Simulation(load(EXAMPLES / "default.toml")).run()
    assert res.summary["completed"]
    assert res.summary["final_accuracy"] >= 0.90


def test_fedavg_fashion_example_reaches_80_percent_and_survives_churn():
    require_fashion()
    res = Simulation(load(EXAMPLES / "fedavg_fashion.toml")).run()
    assert res.summary["completed"] and res.summary["final_accuracy"] >= 0.80
    churn = Simulation(load(EXAMPLES / "fedavg_fashion.toml",
                            ["availability.churn=0.3"])).run()
    assert churn.summary["completed"] and churn.summary["rounds_completed"] == 20
    missed = sum(d["rounds_missed"] for d in churn.devices)
    assert missed > 0 and missed == sum(d["drops_churn"] for d in churn.devices)
