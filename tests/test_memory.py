"""Memory a notebook loop gives back: a dropped trainer, and a finished simulation dropped by its
user (driver, network, fleet columns), are freed by reference counting, with the training set they hold on the TensorFlow side,
without waiting for the interpreter's full collection (which runs by object counts, so a few
large tensors kept in reference cycles piled up: a loop of Fashion-MNIST FM runs grew ≈ 0.93 GB a
seed, and one such loop was killed by the kernel at 21 GB; ``docs/benchmarks.md``, "Memory of a
loop of simulations")."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from crowdlearn import experiment
from crowdlearn.config import from_dict
from crowdlearn.training.batching import TrainTask


@pytest.fixture
def no_cyclic_collector():
    """The cyclic collector off for the test (what is freed is freed by reference counts)."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
        gc.collect()


def _dropped(make) -> list[str]:
    """Names of the weakly referenced objects ``make()`` returns that are still alive once the
    caller's references are gone."""
    refs = make()
    return [name for name, ref in refs.items() if ref() is not None]


def test_a_dropped_fleet_trainer_frees_its_training_set(no_cyclic_collector):
    from crowdlearn.training import models
    from crowdlearn.training.fleet_trainer import FleetTrainer

    spec = models.mlp(20, [8], 3)
    rng = np.random.default_rng(0)
    x, y = rng.random((200, 20), dtype=np.float32), np.arange(200) % 3

    def make():
        t = FleetTrainer(spec, x, y)
        w = [np.full(s, 0.01, np.float32) for s in spec.param_shapes()]
        t.train([TrainTask(w, np.arange(64).reshape(2, 32).astype(np.int32), 0.1)])
        t.evaluate([w], x[:50], y[:50])
        return {"trainer": weakref.ref(t), "training set": weakref.ref(t._x)}

    assert _dropped(make) == []


@pytest.mark.parametrize("xla", [False, True])
def test_a_dropped_fused_trainer_frees_its_training_set(no_cyclic_collector, xla):
    from slicenet.fused import FusedTrainer
    from slicenet.graph import paper_mlp_description

    rng = np.random.default_rng(0)
    x, y = rng.random((200, 784), dtype=np.float32), np.arange(200) % 10

    def make():
        t = FusedTrainer(paper_mlp_description(), x, y)
        w = t.init_weights(np.random.default_rng(1))
        if xla:
            t._run([TrainTask(w, np.arange(64).reshape(2, 32).astype(np.int32), 0.1)], [0], 32,
                   True)
        else:
            t.train([TrainTask(w, np.arange(64).reshape(2, 32).astype(np.int32), 0.1)])
        t.evaluate([w], x[:50], y[:50])
        return {"trainer": weakref.ref(t), "training set": weakref.ref(t._x)}

    assert _dropped(make) == []


BASE = {"rounds": 2, "seed": 0, "fleet": {"devices": 12, "cells": 2},
        "data": {"dataset": "digits"}}
CASES = {
    "fedavg": {"protocol": "fedavg"},
    "fedavg + secagg": {"protocol": "fedavg",
                        "fedavg": {"secure_aggregation": "secagg", "clients_per_round": 12}},
    "dssgd": {"protocol": "dssgd"},
    "fm (deep)": {"protocol": "fm",
                  "model": {"arch": "mlp", "hidden": [16], "activation": "tanh"},
                  "fm": {"epsilon": 10.0, "bound": "l2", "public_size": 100}},
    "crowdlearning": {"protocol": "crowdlearning", "slicenet": {"group_size": 4}},
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_finished_simulation_dropped_by_its_user_is_freed_with_its_trainer(
        no_cyclic_collector, case):
    """The simulation, its driver (the fleet's columns), network, monitor and executor, and an
    uncached trainer with its training set."""
    from crowdlearn.training.fleet_trainer import FleetTrainer

    cfg = from_dict({**BASE, **CASES[case]})
    experiment.Simulation(cfg, trainer_factory=FleetTrainer).run()  # imports done (the first
    #  simulation of a process: test_the_first_simulation_of_a_process_is_freed_too)

    def make():
        sim = experiment.Simulation(cfg, trainer_factory=FleetTrainer)
        res = sim.run()
        assert res.summary["rounds_completed"] >= 1
        refs = {"simulation": weakref.ref(sim), "driver": weakref.ref(sim.driver),
                "network": weakref.ref(sim.network), "monitor": weakref.ref(sim.monitor),
                "executor": weakref.ref(sim.executor)}
        if "trainer" not in sim.ctx.extra:      # the protocol's own trainer may be cached
            refs["trainer"] = weakref.ref(sim.trainer)
            refs["training set"] = weakref.ref(sim.trainer._x)
        return refs

    assert _dropped(make) == []


_FIRST = """
import gc, json, sys, weakref
gc.disable()
from crowdlearn import experiment
from crowdlearn.config import from_dict
cfg = from_dict(json.loads(sys.argv[1]))

def make():
    sim = experiment.Simulation(cfg)
    sim.run()
    return weakref.ref(sim), weakref.ref(sim.driver)

refs = make()
print(json.dumps([r() is not None for r in refs]))
"""


@pytest.mark.parametrize("case", ["fedavg", "crowdlearning"])
def test_the_first_simulation_of_a_process_is_freed_too(case, tmp_path):
    """In a new process with the cyclic collector off from the start, the first simulation (the
    one whose trainer imports TensorFlow) is freed when dropped: TensorFlow's import keeps
    tracebacks in cycles whose frames chained to the simulation (``crowdlearn.training.tfimport``)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    cfg = {"rounds": 1, "fleet": {"devices": 6}, "fedavg": {"clients_per_round": 3},
           **({"protocol": "crowdlearning", "slicenet": {"group_size": 3}}
              if case == "crowdlearning" else {})}
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", _FIRST, json.dumps(cfg)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [False, False]
