"""Every protocol's parameters dataclass is the single source of its config section: the keys
and README rows derive from it, and a value outside a field's limits is refused in the same
words by the config (``section.key: ...``) and by the dataclass itself (``key: ...``)."""

import dataclasses
import math

import pytest

from crowdlearn import registry, schema
from crowdlearn.config import ConfigError, from_dict, reference_markdown
from crowdlearn.protocols.crowdlearning import config as crowdlearning_config

PARAMS = {sec: cls for p in registry.protocols() for sec, cls in p.params.items()}
#: required fields besides the section's keys, and a config in which the section is in use
EXTRA = {"fedavg": {"rounds": 2, "clients_per_round": 1}}


def test_every_protocol_declares_its_sections_by_a_params_dataclass():
    assert set(PARAMS) >= {"fedavg", "dssgd", "fm", "he"}
    for p in registry.protocols():
        for sec, cls in p.params.items():
            assert p.sections[sec] is schema.keys(cls)
    ref = reference_markdown()
    for sec, cls in PARAMS.items():
        for name, key in schema.keys(cls).items():
            assert f"| `{sec}.{name}` |" in ref
            assert key.doc and f"{key.doc}" in ref


def _bad_values(key):
    """Values outside ``key``'s limits (each breaks exactly one bound or the choices)."""
    out = []
    if key.choices:
        out.append("not-a-choice")
    if key.min is not None:
        out.append(key.min if key.min_open else key.min - 1)
    if key.max is not None and math.isfinite(key.max):
        out.append(key.max + 1)
    return [key.type(v) if key.type in (int, float) and not isinstance(v, str) else v
            for v in out]


CASES = [(sec, name, bad) for sec, cls in sorted(PARAMS.items())
         for name, key in schema.keys(cls).items() for bad in _bad_values(key)]


@pytest.mark.parametrize("sec,name,bad", CASES, ids=[f"{s}.{n}={b}" for s, n, b in CASES])
def test_a_value_outside_a_fields_limits_is_refused_alike_by_config_and_dataclass(sec, name, bad):
    with pytest.raises(ConfigError) as info:
        from_dict({sec: {name: bad}})
    mine = [p for p in info.value.problems if p.startswith(f"{sec}.{name}: ")]
    assert mine, info.value.problems
    cls = PARAMS[sec]
    rounds = {"rounds": 2} if "rounds" in {f.name for f in dataclasses.fields(cls)} else {}
    with pytest.raises(ValueError) as direct:
        cls(**{**rounds, **EXTRA.get(sec, {}), name: bad})
    assert mine[0][len(sec) + 1:] in str(direct.value)


def test_defaults_make_valid_params_and_the_config_builds_them():
    cfg = from_dict({})
    for sec, cls in PARAMS.items():
        extra = {k: v for k, v in {"rounds": cfg.rounds, **EXTRA.get(sec, {})}.items()
                 if k in {f.name for f in dataclasses.fields(cls)}}
        built = schema.from_section(cls, getattr(cfg, sec), **extra)
        for name in schema.keys(cls):
            if name not in extra:
                assert getattr(built, name) == getattr(getattr(cfg, sec), name)


def test_crowdlearnings_section_builds_the_machines_params():
    cfg = from_dict({"protocol": "crowdlearning", "rounds": 3,
                     "slicenet": {"theta": 0.3, "omega": 4, "peer_to_peer": True}})
    sl = crowdlearning_config.params_from_config(cfg)
    assert crowdlearning_config.CONFIG_SECTION is schema.keys(type(sl))
    mp = sl.slice_params(epochs=cfg.rounds, group_size=5, pieces=4)
    assert (mp.epochs, mp.theta, mp.omega, mp.peer_to_peer, mp.lr) == (3, 0.3, 4, True, 0.05)
    with pytest.raises(ValueError, match="theta: must be <= 1; got 2"):
        type(sl)(theta=2.0)


def test_fedavgs_server_refuses_the_configs_unresolved_clients_per_round():
    import numpy as np

    from crowdlearn.protocols.fedavg import FedAvgParams, FedAvgServer
    from crowdlearn.protocols.fedavg_family import params_from_config
    assert params_from_config(from_dict({"fleet": {"devices": 30}})).clients_per_round == 3
    with pytest.raises(ValueError, match=r"resolved by params_from_config\); got 0"):
        FedAvgServer("server", [np.zeros(2, np.float32)], FedAvgParams(rounds=1),
                     rng=np.random.default_rng(0))
