"""Isolation: nothing may be shared between machines.  Every protocol is run twice, once as
built and once with **each machine deep-copied on its own** right after construction (so no
object, array or key ring is shared between two machines any more), and must write the same
``metrics.csv`` rows.  A machine that learned something through shared memory instead of a
message would see its copy diverge (Crowdlearning's devices hold only the weights they own
and learn others' from hand-overs, checkpoints and downloads: issue 8, stage 4)."""
import copy
import json
import math

import pytest

from crowdlearn.experiment import Simulation
from tests.conftest import SMALL_RUNS, small_config

HE = {"he.key_bits": 512, "he.n_lwe": 64, "he.mode": "priced", "fleet.devices": 4,
      "model.hidden": [16]}

CONFIGS = {
    **SMALL_RUNS,
    "secagg": {"fedavg.secure_aggregation": "secagg", "rounds": 2},
    "phong": {"protocol": "phong", "rounds": 2, **HE},
    "hres": {"protocol": "hres", "rounds": 2, **HE},
    "ssgd": {"protocol": "ssgd", "rounds": 2, "fleet.devices": 4, "model.hidden": [16]},
    "crowdlearning": {"protocol": "crowdlearning", "rounds": 2, "fleet.devices": 10,
                      "model.hidden": [32, 16], "slicenet.group_size": 5,
                      "slicenet.deterministic_keys": True},
    "crowdlearning-p2p": {"protocol": "crowdlearning", "rounds": 2, "fleet.devices": 10,
                          "model.hidden": [32, 16], "slicenet.group_size": 5,
                          "slicenet.peer_to_peer": True, "slicenet.deterministic_keys": True},
}


def _rows(res) -> str:
    def clean(v):
        return None if isinstance(v, float) and math.isnan(v) else v
    return json.dumps([{k: clean(v) for k, v in r.items()} for r in res.metrics], sort_keys=True)


def _isolated(cfg) -> Simulation:
    sim = Simulation(cfg)
    # one at a time, so that nothing stays shared (a lazy fleet's clients are made here, all)
    sim.driver.machines = {node: copy.deepcopy(sim.driver.machines[node])
                           for node in list(sim.driver.machines)}
    return sim


@pytest.mark.parametrize("name", list(CONFIGS))
def test_each_machine_deep_copied_gives_the_same_metrics(name):
    cfg = small_config(**CONFIGS[name])
    ref = Simulation(cfg).run()
    got = _isolated(cfg).run()
    assert ref.metrics, name
    assert _rows(got) == _rows(ref)
    assert got.summary["bytes_total"] == ref.summary["bytes_total"]
