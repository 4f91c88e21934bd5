"""Every example configuration loads and validates (nothing is run)."""

from pathlib import Path

import pytest

from crowdlearn.config import load

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TOMLS = sorted(EXAMPLES.glob("*.toml"))
DSSGD_SET = ("dssgd_fashion.toml", "centralized_fashion.toml", "standalone_fashion.toml")


def test_examples_exist():
    names = {p.name for p in TOMLS}
    assert set(DSSGD_SET) <= names


@pytest.mark.parametrize("path", TOMLS, ids=lambda p: p.name)
def test_example_loads_and_validates(path):
    cfg = load(path)
    assert cfg.rounds >= 1


@pytest.mark.parametrize("name", DSSGD_SET)
def test_dssgd_examples_share_the_paper_setting(name):
    cfg = load(EXAMPLES / name)
    assert cfg.fleet.devices == 30
    assert cfg.data.dataset == "fashion_mnist"
    assert cfg.data.partition == "iid"
    assert cfg.model.arch == "mlp"
    assert list(cfg.model.hidden) == [128, 64]      # 784-128-64-10 on Fashion-MNIST


def test_dssgd_example_and_baselines_match():
    d = load(EXAMPLES / "dssgd_fashion.toml")
    assert d.protocol == "dssgd"
    assert d.dssgd.order == "round_robin"
    assert d.dssgd.theta_u == pytest.approx(0.1)
    assert d.dssgd.theta_d == pytest.approx(1.0)
    assert d.dssgd.dp is False
    for name in ("centralized_fashion.toml", "standalone_fashion.toml"):
        b = load(EXAMPLES / name)
        assert b.protocol == name.split("_")[0]
        assert b.rounds == d.rounds
        assert b.fedavg.lr == pytest.approx(d.dssgd.lr)
        assert b.fedavg.batch_size == d.dssgd.batch_size == 32
        assert b.fedavg.local_epochs == d.dssgd.local_epochs
