import math
from pathlib import Path

import pytest

from crowdlearn.config import apply_overrides, from_dict, load, reference_markdown
from crowdlearn.errors import ConfigError


def test_defaults_resolve():
    cfg = from_dict({})
    assert cfg.protocol == "fedavg" and cfg.fleet.devices == 100
    assert cfg.clients_per_round == 10           # fraction 0.1 of 100
    assert math.isinf(cfg.fedavg.deadline_s)


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as info:
        from_dict({"protocl": "fedavg", "rounds": -1, "fleet": {"devices": "many", "mix":
                   {"phablet": 1}}, "fedavg": {"lr": 0, "clients_per_round": 5},
                   "data": {"dataset": "mnist", "path": "/nonexistent/x"}})
    problems = info.value.problems
    joined = "\n".join(problems)
    for needle in ("protocl: unknown key; did you mean 'protocol'", "rounds: must be >= 1",
                   "fleet.devices: expected an integer", "fleet.mix.phablet: unknown tier",
                   "fedavg.lr: must be > 0", "data.dataset: must be one of",
                   "data.path: no such file"):
        assert needle in joined, joined
    assert len(problems) >= 7


def test_cross_checks():
    with pytest.raises(ConfigError, match="data.path: no such file"):
        from_dict({"data": {"dataset": "fashion_mnist", "path": "/nonexistent/fm"}})
    with pytest.raises(ConfigError, match="more than fleet.devices"):
        from_dict({"fleet": {"devices": 3}, "fedavg": {"clients_per_round": 4}})
    with pytest.raises(ConfigError, match="needs image data"):
        from_dict({"model": {"arch": "cnn"}, "data": {"dataset": "diabetes",
                                                      "partition": "iid"}})
    with pytest.raises(ConfigError, match="needs a CSV path"):
        from_dict({"availability": {"model": "trace"}})


def test_overrides_are_parsed_as_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('rounds = 2\n[fedavg]\nlr = 0.5\n')
    cfg = load(p, ["fedavg.lr=0.25", "fleet.mix=\"flagship\"", "name=run one"])
    assert cfg.rounds == 2 and cfg.fedavg.lr == 0.25 and cfg.fleet.mix == "flagship"
    assert cfg.name == "run one"
    assert apply_overrides({}, ["a.b.c=1"]) == {"a": {"b": {"c": 1}}}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load(p, ["rounds"])


def test_bad_files():
    with pytest.raises(ConfigError, match="no such config file"):
        load("/nonexistent.toml")


def test_reference_covers_every_key():
    ref = reference_markdown()
    assert "`fedavg.lr`" in ref and "`availability.churn`" in ref and "`seed`" in ref


def test_readme_configuration_reference_is_current():
    from pathlib import Path
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert reference_markdown() in readme, "regenerate the README table from reference_markdown()"


def test_a_recorded_config_json_loads_back_to_the_config_that_ran(tmp_path):
    import json

    from crowdlearn.results import _jsonable  # how a results folder records a config
    root = Path(__file__).resolve().parent.parent
    for example in ("default.toml", "secagg_fashion.toml", "crowdlearning_small.toml"):
        cfg = load(root / "examples" / example)
        recorded = tmp_path / f"{example}.json"     # as results.write records it: ∞ as "inf"
        recorded.write_text(json.dumps({"config": _jsonable(cfg.to_dict()), "versions": {}}))
        assert "inf" in recorded.read_text()
        assert load(recorded).to_dict() == cfg.to_dict(), example
        assert load(recorded, ["rounds=2"]).rounds == 2
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "bad.json").write_text("{rounds: 2")
    with pytest.raises(ConfigError, match="a JSON object is needed"):
        load(tmp_path / "list.json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load(tmp_path / "bad.json")
