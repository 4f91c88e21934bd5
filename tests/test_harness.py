"""Every protocol's machines driven without SimPy, over the in-memory wire (:mod:`sim.harness`):
the messages cross as bytes, jobs run on the simulation's own executor, and the models each
server reports are those of the SimPy run of the same config."""
import numpy as np
import pytest

from crowdlearn.experiment import Simulation
from sim.harness import Wire
from sim.machine import Report
from tests.conftest import SMALL_RUNS, small_config

MODEL_REPORTS = ("global_model", "group_model", "local_model")

# (timing-dependent choices are left out: over-selection keeps the first m updates; the wire has
# no bandwidth and zero-time jobs, so other updates arrive first.  Crowdlearning's sharing window
# applies an epoch's uploads in group order once they are all in, whatever order they arrive in)
CONFIGS = {
    **SMALL_RUNS,
    "secagg": {"fedavg.secure_aggregation": "secagg", "rounds": 2},
    "phong": {"protocol": "phong", "rounds": 2, "fleet.devices": 4, "model.hidden": [16],
              "he.key_bits": 512, "he.order": "round_robin"},
    "hres": {"protocol": "hres", "rounds": 2, "fleet.devices": 4, "model.hidden": [16],
             "he.key_bits": 512, "he.order": "round_robin"},
    "crowdlearning": {"protocol": "crowdlearning", "rounds": 2, "fleet.devices": 10,
                      "model.hidden": [32, 16], "slicenet.group_size": 5, "slicenet.lr": 0.1,
                      "slicenet.deterministic_keys": True},
    "crowdlearning-p2p": {"protocol": "crowdlearning", "rounds": 2, "fleet.devices": 10,
                          "model.hidden": [32, 16], "slicenet.group_size": 5,
                          "slicenet.lr": 0.1, "slicenet.peer_to_peer": True,
                          "slicenet.deterministic_keys": True},
    "ssgd": {"protocol": "ssgd", "rounds": 2, "fleet.devices": 4, "model.hidden": [16]},
}


def _key(node, rep: Report):
    tags = dict(rep.tags)
    return (rep.name, tags.get("round"), tags.get("group", tags.get("device", node)))


def _models(reports) -> dict:
    out = {}
    for node, rep in reports:
        if rep.name in MODEL_REPORTS:
            out[_key(node, rep)] = [np.asarray(w, np.float64) for w in rep.value]
    return out


def _simpy_models(cfg) -> tuple[dict, Simulation]:
    sim = Simulation(cfg)
    seen = []
    orig = sim.monitor.on_report
    sim.monitor.on_report = lambda node, rep, now: (seen.append((node, rep)),
                                                    orig(node, rep, now))[1]
    sim.run()
    return _models(seen), sim


@pytest.mark.parametrize("name,over", [
    (k, v) if isinstance(v, dict) else pytest.param(k, v.values[0], marks=v.marks)
    for k, v in CONFIGS.items()])
def test_machines_driven_over_the_in_memory_wire_report_the_simpy_runs_models(name, over):
    cfg = small_config(**over)
    sim = Simulation(cfg)               # built as for a run; driven here without SimPy
    server = sim.driver.server
    w = Wire(sim.driver.machines, executor=sim.executor, server=server, latency=0.01)
    w.start()
    assert w.run() or server is None, f"{name}: no Halt"   # standalone: devices just stop
    got = _models(w.reports)
    want, ref = _simpy_models(cfg)
    assert got.keys() == want.keys() and got
    for k in want:
        for a, b in zip(got[k], want[k], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{name} {k}")
    # every message crossed as bytes and was rebuilt from them: the same kinds and sizes
    kinds = {}
    for _, _, msg, n in w.sent:     # named as the monitor names them (a payload by its kind)
        kind = msg.kind if isinstance(getattr(msg, "kind", None), str) else type(msg).__name__
        kinds[kind] = kinds.get(kind, 0) + n
    if name.startswith("crowdlearning"):
        # since issue 15 how many weight hand-overs the passes need depends on timing, which the
        # wire does not reproduce (69 relayed hand-overs here against 64 under SimPy; every
        # other kind has the same count): the same message kinds only
        assert {"KeyAnnounce", "KeyDirectory", "PassPlan", "boundary", "handover"} <= kinds.keys()
        # the boundary payloads crossed as ciphertext (their real contents are checked in
        # tests/test_slicenet_messages.py)
        sealed = [m.payload for _, _, m, _ in w.sent
                  if type(m).__name__ == "Relayed" and m.kind == "boundary"]
        assert sealed and all(isinstance(p, bytes) for p in sealed)
    else:
        assert sum(kinds.values()) == ref.monitor.bytes_total
        assert kinds == dict(ref.monitor.bytes_by_kind)


def test_a_lost_device_is_reported_to_the_fedavg_server_and_the_round_goes_on():
    cfg = small_config(**{"fedavg.clients_per_round": 4, "fleet.devices": 5, "rounds": 2})
    sim = Simulation(cfg)
    w = Wire(sim.driver.machines, executor=sim.executor, server="server", latency=0.01)
    w.start()
    server = sim.driver.machines["server"]
    lost = sorted(server.selected)[0]
    w.lose(lost)
    assert w.run()
    rounds = [rep.value for _, rep in w.reports if rep.name == "round"]
    assert len(rounds) == 2 and lost not in rounds[0]["aggregated"]
    assert all(dst != lost and src != lost for src, dst, _, _ in w.sent[-10:])


# sim.harness's example registers a wire tag, so it runs once per process: by --doctest-modules
# (setup.cfg), which runs every package module's examples
@pytest.mark.parametrize("module", ["crowdlearn.registry"])
def test_docstring_examples_run(module):
    import doctest
    import importlib
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
