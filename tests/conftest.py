import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


#: Small runs of the protocols without timing-dependent choices, as ``small_config`` overrides
#: (shared by the harness and isolation tests, which add their own protocol-specific cases).
SMALL_RUNS = {
    "fedavg": {},
    "centralized": {"protocol": "centralized"},
    "standalone": {"protocol": "standalone", "fleet.devices": 4},
    "dssgd": {"protocol": "dssgd", "rounds": 1, "fleet.devices": 4},
    "dssgd-dp": {"protocol": "dssgd", "rounds": 1, "fleet.devices": 4, "dssgd.dp": True},
    "fm": {"protocol": "fm", "rounds": 2, "data.dataset": "breast_cancer",
           "model.arch": "linear"},
}


def small_config(**overrides):
    """A tiny FedAvg run on digits that finishes in a few seconds."""
    from crowdlearn.config import from_dict
    raw = {"rounds": 3, "seed": 7,
           "fleet": {"devices": 8, "cells": 2},
           "model": {"hidden": [32]},
           "fedavg": {"clients_per_round": 4, "local_epochs": 1, "batch_size": 16, "lr": 0.1}}
    for key, value in overrides.items():
        sec, _, k = key.rpartition(".")
        (raw.setdefault(sec, {}) if sec else raw)[k] = value
    return from_dict(raw)


@pytest.fixture
def small_cfg():
    return small_config
