"""What Crowdlearning's devices send each other is the real thing (issue 8, stage 4): a run is
driven over the in-memory wire (every message encoded and decoded), and the sealed boundary
and hand-over payloads captured on it are decrypted with the recipients' keys (rebuilt from the
insecure deterministic option): they hold the real activations and weights, not zeros."""
import numpy as np
import pytest

from crowdlearn.crypto.sealing import Header, KeyRing, SealError
from crowdlearn.experiment import Simulation
from crowdlearn.protocols.crowdlearning import machines as sp
from crowdlearn.protocols.crowdlearning.passjob import as_array
from sim.harness import Wire
from tests.conftest import small_config

CFG = {"protocol": "crowdlearning", "rounds": 1, "fleet.devices": 10, "model.hidden": [32, 16],
       "slicenet.group_size": 5, "slicenet.lr": 0.1, "slicenet.deterministic_keys": True}


@pytest.fixture(scope="module")
def run():
    cfg = small_config(**CFG)
    sim = Simulation(cfg)
    jobs, handed = [], {}
    submit = sim.executor.submit
    sim.executor.submit = lambda job: (job.kind == "slice_pass" and jobs.append(job),
                                       submit(job))[1]
    send = sp.SliceDevice._send_payload

    def capture(self, dst, kind, nbytes, owner=None):
        if kind == "handover":        # what the sender holds when it hands the weights over
            handed[(self.node_id, dst, self.plan.attempt, owner)] = as_array(self.held[owner])
        return send(self, dst, kind, nbytes, owner)

    sp.SliceDevice._send_payload = capture
    try:
        w = Wire(sim.driver.machines, executor=sim.executor, server="server", latency=0.01)
        w.start()
        assert w.run()
    finally:
        sp.SliceDevice._send_payload = send
    return cfg, sim, w, jobs, handed


def _opener(cfg, sim, msg, dst):
    ring = KeyRing(dst, deterministic_seed=cfg.seed)      # the recipient's keys, rebuilt
    ring.learn(msg.src, sim.driver.machines[msg.src].ring.card())
    return ring


def test_boundary_payloads_carry_the_dominators_real_weighted_sums(run):
    cfg, sim, w, jobs, _ = run
    lay = sim.ctx.extra["layout"]
    ds = sim.dataset
    x = np.asarray(ds.x_train, np.float64).reshape(len(ds.x_train), -1)
    d, h1 = lay.shapes[0]
    by_pass = {}
    for j in jobs:
        by_pass.setdefault(j.key, {})[j.node] = j
    checked = 0
    for _, dst, msg, _ in w.sent:
        if not isinstance(msg, sp.Relayed) or msg.kind != "boundary":
            continue
        ring = _opener(cfg, sim, msg, dst)
        plain = np.frombuffer(ring.open(msg.src, Header("boundary", msg.group, msg.attempt),
                                        msg.payload), np.float32)
        assert plain.size and np.abs(plain).sum() > 0          # not a zero-filled blob
        parts = by_pass[(msg.group, msg.attempt)]
        dom = parts[msg.src]
        if dom.batches is None:
            continue                   # a follower's partial sums: checked through the size
        # the dominator's first message of the pass: x_batch · W1[:, J] for the units J of the
        # receiver's first piece in hidden layer 1, under the weights the dominator held
        w1 = as_array(dom.parts[0][2])[:d * h1].reshape(d, h1).astype(np.float64)
        rows = dom.batches[0][dom.batches[0] >= 0]
        first = min(p for p in parts[dst].owners if np.any(lay.piece_of_unit[0] == p))
        units = np.flatnonzero(lay.piece_of_unit[0] == first)
        want = (x[rows] @ w1[:, units]).reshape(-1)
        np.testing.assert_allclose(plain[:want.size], want, rtol=1e-4, atol=1e-5)
        checked += 1
    assert checked >= 4


def test_handover_payloads_carry_the_senders_real_weights(run):
    cfg, sim, w, _, handed = run
    lay = sim.ctx.extra["layout"]
    checked = 0
    for _, dst, msg, _ in w.sent:
        if not isinstance(msg, sp.Relayed) or msg.kind != "handover":
            continue
        ring = _opener(cfg, sim, msg, dst)
        for owner in range(-1, lay.pieces):      # the owner is bound in the seal, not sent
            try:
                plain = ring.open_escrow(msg.src, Header("handover", msg.group, msg.attempt,
                                                         owner), msg.payload)
                break
            except SealError:
                continue
        else:
            pytest.fail(f"hand-over {msg.src} -> {dst} opens for no owner")
        values = np.frombuffer(plain, np.float32)[:len(lay.owned_flat([owner]))]
        sent = handed[(msg.src, dst, msg.attempt, owner)]
        np.testing.assert_array_equal(values, sent)
        assert np.abs(values).sum() > 0
        checked += 1
    assert checked >= 4


def test_the_follower_view_reads_the_dominators_sums_and_labels_off_delivered_payloads():
    """The attack view of a follower, fed by the messages delivered to it in a SimPy run: the
    weighted sums it opens are x·W1[:, P] of the dominator's batches, and the output errors
    give away every label (docs/experiments/privacy_attacks.md, section 5)."""
    from crowdlearn.privacy.attacks.views import (
        SliceNetFollowerView,
        attach,
        labels_from_output_errors,
    )

    cfg = small_config(**{**CFG, "slicenet.deterministic_keys": False,
                          "model.hidden": [24]})
    sim = Simulation(cfg)
    jobs = []
    submit = sim.executor.submit
    sim.executor.submit = lambda job: (job.kind == "slice_pass" and jobs.append(job),
                                       submit(job))[1]
    follower = sim.ctx.extra["groups"][0][1]
    lay = sim.ctx.extra["layout"]
    view = SliceNetFollowerView(node=follower, layout=lay, batch_size=cfg.slicenet.batch_size)
    attach(sim, view)
    sim.run()
    doms = {j.key: j for j in jobs if j.batches is not None}
    x = np.asarray(sim.dataset.x_train, np.float64).reshape(len(sim.dataset.x_train), -1)
    y = np.asarray(sim.dataset.y_train)
    d, h1 = lay.shapes[0]
    checked = 0
    for (attempt, src) in list(view.payloads):
        dom = doms.get((0, attempt))
        if dom is None or dom.node != src:
            continue                          # another follower's partial sums
        got = view.sums_from(src, attempt)
        w1 = as_array(dom.parts[0][2])[:d * h1].reshape(d, h1).astype(np.float64)
        rows = dom.batches[0][dom.batches[0] >= 0]
        np.testing.assert_allclose(got["z"][0], x[rows] @ w1[:, got["units"]],
                                   rtol=1e-4, atol=1e-5)
        labels = np.concatenate([labels_from_output_errors(e) for e in got["errors"]])
        order = np.concatenate([b[b >= 0] for b in dom.batches])
        np.testing.assert_array_equal(labels, y[order])
        checked += 1
    assert checked >= 2


# ---------------------------------------------------------------- the executor's collectives
class _Part:
    """A part of a collective computation: runs with the other parts of ``key``, starting from
    ``inputs`` (values or other jobs' deferred results)."""

    kind = "sum"

    def __init__(self, key, need, x, inputs=()):
        self.collective, self.need, self.x, self.inputs = key, need, x, tuple(inputs)
        self.result_shapes = [()]

    @staticmethod
    def collective_complete(jobs):
        return len(jobs) == jobs[0].need

    def deferred_inputs(self):
        return list(self.inputs)


def _sum_runner(calls):
    def run(jobs):
        calls.append(len(jobs))
        totals = {}
        for j in jobs:
            totals[j.collective] = totals.get(j.collective, 0) + j.x + sum(
                float(d[0]) for d in j.inputs)
        return [[totals[j.collective]] for j in jobs]
    return run


def test_a_collective_runs_only_with_all_its_parts_and_every_ready_one_in_one_batch():
    from crowdlearn.training.jobs import Executor

    calls = []
    ex = Executor({"sum": _sum_runner(calls)}, deferred_kinds=("sum",))
    a = ex.submit(_Part("p", 2, 1.0))
    with pytest.raises(RuntimeError, match="never run"):
        ex.result(a)                             # its other part has not arrived
    b = ex.submit(_Part("p", 2, 2.0))
    c = ex.submit(_Part("q", 1, 5.0))
    assert ex.result(a) == [3.0] and ex.result(b) == [3.0] and ex.result(c) == [5.0]
    assert calls == [3]                          # both collectives in one batch
    # a job starting from two deferred results runs after both
    d1, d2 = ex.deferred(a), ex.deferred(c)
    e = ex.submit(_Part("r", 1, 0.0, [d1, d2]))
    assert ex.result(e) == [8.0] and calls == [3, 1]


def test_a_cancelled_part_abandons_its_collective():
    from crowdlearn.training.jobs import Executor

    ex = Executor({"sum": _sum_runner([])}, deferred_kinds=("sum",))
    a = ex.submit(_Part("p", 2, 1.0))
    b = ex.submit(_Part("p", 2, 2.0))
    ex.cancel(b)
    assert ex.abandoned(a) and ex.abandoned(b)
    with pytest.raises(RuntimeError, match="never run"):
        ex.result(a)
