"""Issue 15: Crowdlearning faithful to the paper — dummies that keep training, stalls reported,
a window that keeps its last ω ticks, take-overs from what the protocol delivered."""
import numpy as np
import pytest

from sim.experiment import Simulation
from slicenet import protocol as sp
from tests.test_slicenet_protocol import crowd_config


def _passes(sim):
    return [g.passes_run for g in sim.driver.machines["server"].groups]


@pytest.mark.parametrize("devices,n,pieces", [(12, 6, 2), (13, 6, 0)])
def test_groups_with_dummies_train_every_pass_without_churn(devices, n, pieces):
    """pieces < n − 1 (three dummies a pass), or a leftover device joining a group (one dummy):
    the old holder of a piece that became a dummy still hands it over, so no group freezes."""
    cfg = crowd_config(**{"fleet.devices": devices, "slicenet.group_size": n,
                          "slicenet.pieces": pieces, "rounds": 2})
    sim = Simulation(cfg)
    res = sim.run()
    assert res.summary["completed"] and res.summary["stopped_by"] == "completed"
    assert res.summary["takeovers"] == 0
    groups = sim.ctx.extra["groups"]
    # every member is dominator once per epoch, so a group runs one pass per member per epoch
    assert _passes(sim) == [2 * len(g) for g in groups]
    assert len(res.metrics) == 2 and all(r["clients_aggregated"] == len(groups)
                                         for r in res.metrics)


def test_a_run_whose_groups_stall_is_not_completed_and_says_which(monkeypatch):
    """Group 0's devices never finish a pass: the run must not claim completion (it did, on
    the other group's rows) and the summary names the stuck group and where it stopped."""
    sim = Simulation(crowd_config())
    stuck = set(sim.ctx.extra["groups"][0])
    orig = sp.SliceDevice._maybe_done
    monkeypatch.setattr(sp.SliceDevice, "_maybe_done",
                        lambda self, now: [] if self.node_id in stuck else orig(self, now))
    res = sim.run()
    s = res.summary
    assert s["completed"] is False and s["stopped_by"] == "stalled"
    assert "1 of 2 Crowdlearning groups did not finish" in s["stall"]
    assert "group 0 at epoch 1 of 2: pass 1 of 5" in s["stall"]
    from crowdlearn.cli import _why_stopped
    assert "group 0" in _why_stopped(s, sim.config)


def test_a_dummy_resumes_from_the_checkpoint_it_opens_not_the_latest_state(monkeypatch):
    """Every checkpoint the server relays (the last escrowed hand-over of the piece, or the
    initial weights the server delivered) is what the group's state holds for that piece when
    the new holder starts; today training continued from the latest committed state, which a
    dummy could not have."""
    cfg = crowd_config(**{"rounds": 3, "slicenet.pieces": 3, "availability.churn": 0.3,
                          "availability.churn_offline_s": 30.0})
    sim = Simulation(cfg)
    fused, lay = sim.ctx.extra["fused"], sim.ctx.extra["layout"]
    seen = {"checkpoints": 0, "stale": 0}
    orig = sp.SlicingServer._launch

    def launch(self, g, now, old_holders, old_dom):
        before = np.concatenate([a.reshape(-1) for a in fused.weights(g.gid)])
        out = orig(self, g, now, old_holders, old_dom)
        after = np.concatenate([a.reshape(-1) for a in fused.weights(g.gid)])
        for e in out:
            m = getattr(e, "message", None)
            if isinstance(m, sp.Relayed) and m.kind == "checkpoint":
                opened = np.frombuffer(m.payload.plaintext(), np.float32)
                owners = [o for o in range(-1, lay.pieces) if np.array_equal(
                    opened, after[lay.owned_flat([o])])]
                assert owners, "the state does not hold what the checkpoint opens to"
                idx = lay.owned_flat([owners[0]])
                seen["checkpoints"] += 1
                seen["stale"] += int(not np.array_equal(before[idx], after[idx]))
        return out

    monkeypatch.setattr(sp.SlicingServer, "_launch", launch)
    res = sim.run()
    assert res.summary["takeovers"] > 0 and res.summary["completed"]
    # initial deliveries (4 owners x 2 groups) plus take-overs, some from an older copy
    assert seen["checkpoints"] > 8 and seen["stale"] > 0


# ---------------------------------------------------------------- the sliding window (spec §6)
class _ListWindow:
    """An independent window: every upload kept in a list, the query filters by tick."""

    def __init__(self, omega):
        self.omega, self.rows = omega, []

    def upload(self, idx, vals, tick):
        self.rows += [(tick, int(i), float(v)) for i, v in zip(idx, vals)]

    def query(self, idx, tick, min_count):
        out = {}
        for t, i, v in self.rows:
            if tick - self.omega < t <= tick:
                out.setdefault(i, []).append(v)
        keep = [i for i in idx if len(out.get(i, ())) > max(min_count, 0)
                or (min_count <= 0 < len(out.get(i, ())))]
        return keep, [np.float32(np.mean(np.asarray(out[i], np.float32), dtype=np.float32))
                      for i in keep]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=80, deadline=None)
@given(omega=st.integers(1, 5), ticks=st.integers(1, 12), data=st.data())
def test_window_keeps_exactly_its_last_omega_ticks_whatever_the_arrival_order(omega, ticks,
                                                                              data):
    """Ticks 1..T start in order (a group's share); each tick's upload (one value per weight,
    a random subset of 4 weights) arrives some ticks late, in any order.  After every arrival,
    queried at the current tick, the window equals the list re-implementation (the ring slot
    overwritten in arrival order dropped a value still inside the window)."""
    arrivals = []
    for t in range(1, ticks + 1):
        idx = np.flatnonzero(data.draw(st.lists(st.booleans(), min_size=4, max_size=4)))
        vals = np.round(np.random.default_rng(t).normal(size=len(idx)), 2).astype(np.float32)
        arrivals.append((t + data.draw(st.integers(0, omega + 1)), t, idx, vals))
    order = data.draw(st.permutations(range(len(arrivals))))
    arrivals = [arrivals[k] for k in order]
    arrivals.sort(key=lambda a: a[0])           # stable: ties arrive in the drawn order
    w, ref = sp.SlidingWindow(np.zeros(4, np.float32), omega), _ListWindow(omega)
    for at, t, idx, vals in arrivals:
        now = min(at, ticks)
        w.upload(idx, vals, t)
        ref.upload(idx, vals, t)
        for min_count in (0, omega * 0.5):
            got, val = w.query(np.arange(4), now, min_count)
            want, rval = ref.query(range(4), now, min_count)
            assert got.tolist() == want
            np.testing.assert_allclose(val, rval, rtol=1e-6)
