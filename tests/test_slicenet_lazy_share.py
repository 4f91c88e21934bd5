"""A Crowdlearning member's top-θ upload is selected lazily (``SliceDevice._share``): the wire
sizes it without computing it, the server reads and checks it when it releases the epoch's
uploads, and the answers are those of plain uploads."""
import traceback

import numpy as np

from crowdlearn.protocols.crowdlearning.machines import DOMINATOR, Download, Upload
from crowdlearn.training.jobs import Lazy, LazyArray
from sim import wire
from sim.machine import Received, Report, Send
from tests.test_slicenet_protocol import _sharing_server


def _lazy_upload(group: int, indices: np.ndarray, values: np.ndarray, calls: list) -> Upload:
    def select():
        calls.append(group)
        return indices.astype(np.int32), values.astype(np.float32)

    sel = Lazy(select)
    return Upload(group, 0, LazyArray(sel, 0, indices.shape, np.int32),
                  LazyArray(sel, 1, values.shape, np.float32))


def _answers(effects) -> list:
    return [(e.dst, type(e.message).__name__, e.message.indices.tolist(),
             e.message.values.tolist()) for e in effects
            if isinstance(e, Send) and isinstance(e.message, Download)]


def test_the_wire_sizes_a_lazy_upload_without_computing_it_and_encodes_its_values():
    calls: list = []
    up = _lazy_upload(0, np.array([3, 1, 7]), np.array([0.5, -1.0, 2.0]), calls)
    n = wire.size(up)
    assert calls == [] and not up.indices.computed
    raw = wire.encode(up)                    # encoding computes it, once
    assert calls == [0] and len(raw) == n
    back = wire.decode(raw)
    assert back.indices.tolist() == [3, 1, 7] and back.values.tolist() == [0.5, -1.0, 2.0]
    assert back.indices.dtype == np.int32 and back.values.dtype == np.float32
    plain = Upload(0, 0, np.array([3, 1, 7], np.int32), np.array([0.5, -1.0, 2.0], np.float32))
    assert wire.size(plain) == n and wire.encode(plain) == raw


def test_lazy_uploads_are_read_at_the_release_and_answered_as_plain_ones():
    server, lay, members, _ = _sharing_server(3)
    plain_server, _, _, _ = _sharing_server(3)
    owned = lay.owned_flat([DOMINATOR], trainable=True)
    ups = {g: (owned[g:g + 3], 10.0 * (g + 1) + np.arange(3)) for g in range(3)}
    calls: list = []
    lazy_out, plain_out = [], []
    for k, g in enumerate((2, 0, 1)):
        lazy_out += server.handle(Received(members[g], _lazy_upload(g, *ups[g], calls)), 2.0 + k)
        plain_out += plain_server.handle(Received(members[g], Upload(
            g, 0, ups[g][0].astype(np.int32), ups[g][1].astype(np.float32))), 2.0 + k)
        if k < 2:
            assert calls == []         # not read before every group's upload is in
    assert sorted(calls) == [0, 1, 2]  # read once each, at the release
    assert _answers(lazy_out) == _answers(plain_out) and len(_answers(lazy_out)) == 3


def test_a_lazy_upload_found_bad_at_the_release_is_refused_as_a_plain_one_is():
    outcomes = []
    for lazy in (True, False):
        server, lay, members, _ = _sharing_server(2)
        owned = lay.owned_flat([DOMINATOR], trainable=True)
        bad = (np.array([lay.num_params + 5]), np.ones(1))       # index out of range
        good = (owned[:2], np.ones(2))
        out = []
        for g, (idx, vals) in ((0, bad), (1, good)):
            msg = _lazy_upload(g, idx, vals, []) if lazy else \
                Upload(g, 0, idx.astype(np.int32), vals.astype(np.float32))
            out += server.handle(Received(members[g], msg), 2.0 + g)
        refused = [e.value for e in out if isinstance(e, Report) and e.name == "peer_misbehaved"]
        assert len(refused) == 1 and "index out of range" in refused[0]
        # the refused member gets no download and forfeits, and its group's epoch ends; the
        # other group waits for its member's ShareDone
        outcomes.append((_answers(out), [g.phase for g in server.groups],
                         sorted(r.name for r in out if isinstance(r, Report))))
    assert outcomes[0] == outcomes[1]
    assert [d for d, *_ in outcomes[0][0]] == [2] and outcomes[0][1] == ["done", "share"]


def test_no_member_forces_its_training_when_it_shares(monkeypatch):
    """In a small run, every read of the passes' deferred training comes after the member
    uploads: none from a member's share (before, the first group to end its epoch forced every
    group's passes there, while the others were still simulating theirs)."""
    from crowdlearn.experiment import run
    from crowdlearn.training.jobs import Executor
    from tests.conftest import small_config

    readers: list = []
    run_kind = Executor._run_kind

    def recorded(self, kind):
        if kind == "slice_pass":
            readers.append({f.name for f in traceback.extract_stack()})
        return run_kind(self, kind)

    monkeypatch.setattr(Executor, "_run_kind", recorded)
    cfg = small_config(protocol="crowdlearning", rounds=2, **{
        "fleet.devices": 12, "fleet.cells": 3, "model.hidden": [32, 16],
        "slicenet.group_size": 4, "slicenet.lr": 0.1})
    res = run(cfg)
    assert res.summary["completed"] and readers
    assert not any("_share" in names for names in readers)
    assert any("_release" in names for names in readers)


def test_under_churn_a_run_with_lazy_shares_is_the_run_with_shares_made_at_once(monkeypatch):
    """Members lost between their upload and the release, uploads arriving after it (a group
    that could not go on catches up), dummies taking over: with churn, the same summary,
    metrics and message log whether each share's selection is made lazily or at once
    (``reference.eager_share``), the executor's batch count aside."""
    from crowdlearn.experiment import run
    from crowdlearn.protocols.crowdlearning import device
    from crowdlearn.protocols.crowdlearning.reference import eager_share
    from crowdlearn.protocols.crowdlearning.server import SlicingServer
    from tests.test_slicenet_fastpaths import delivery_log
    from tests.test_slicenet_protocol import crowd_config

    cfg = crowd_config(**{"rounds": 3, "fleet.devices": 15, "slicenet.pieces": 3,
                          "availability.churn": 0.3, "availability.churn_offline_s": 30.0})
    log = delivery_log(monkeypatch)
    late = []
    upload = SlicingServer._upload

    def counted(self, src, m, now):
        g = self.groups[m.group]
        if g.phase == "share" and m.epoch == g.epoch and src in g.awaiting:
            late.append(m.epoch <= self.released)
        return upload(self, src, m, now)

    monkeypatch.setattr(SlicingServer, "_upload", counted)
    lazy = run(cfg)
    assert any(late) and not all(late)      # uploads after their epoch's release, and before
    lazy_log, log[:] = list(log), []
    monkeypatch.setattr(device.SliceDevice, "_share", eager_share)
    eager = run(cfg)
    for res in (lazy, eager):
        res.summary.pop("wall_time_s")
        res.summary.pop("batches_run")
    assert lazy.summary["takeovers"] > 0 and lazy.summary["completed"]
    assert lazy.summary == eager.summary and lazy.metrics == eager.metrics
    assert lazy_log == log and sum(m[3] == "Upload" for m in log) > 0
