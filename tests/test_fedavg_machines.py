"""FedAvg machines driven by hand: no simulator, no TensorFlow."""
import math

import numpy as np
import pytest

from crowdlearn.protocols.fedavg import FedAvgClient, FedAvgParams, FedAvgServer
from crowdlearn.protocols.messages import Decline, RoundStart, Update
from crowdlearn.training.jobs import Executor, TrainJob
from crowdlearn.training.models import mlp
from sim.machine import (
    Disconnected,
    Halt,
    JobDone,
    JobFailed,
    PeerJoined,
    PeerLost,
    Received,
    Report,
    RunJob,
    Send,
    Start,
    TimerFired,
)


def server(rounds=2, m=2, **kw):
    s = FedAvgServer("server", [np.zeros(3, np.float32)],
                     FedAvgParams(rounds=rounds, clients_per_round=m, **kw),
                     rng=np.random.default_rng(0))
    for d in range(4):
        s.handle(PeerJoined(d), 0.0)
    return s


def sends(effects):
    return [e for e in effects if isinstance(e, Send)]


def upd(r, value, n):
    return Update(r, (np.full(3, value, np.float32),), n)


def test_round_samples_m_devices_and_averages_by_sample_count():
    s = server()
    out = sends(s.handle(Start(), 0.0))
    assert len(out) == 2 and all(isinstance(e.message, RoundStart) for e in out)
    a, b = (e.dst for e in out)
    assert s.handle(Received(a, upd(0, 1.0, 1)), 1.0) == []
    eff = s.handle(Received(b, upd(0, 4.0, 3)), 2.0)
    np.testing.assert_allclose(s.weights[0], 3.25)      # (1·1 + 4·3) / 4
    reports = {e.name: e for e in eff if isinstance(e, Report)}
    assert reports["round"].value["aggregated"] == (a, b)
    assert reports["global_model"].tag("round") == 0
    assert len(sends(eff)) == 2                          # next round starts at once


def test_deadline_aggregates_what_arrived_and_late_updates_are_dropped():
    s = server(m=2, deadline_s=10.0)
    a, b = (e.dst for e in sends(s.handle(Start(), 0.0)))
    assert s.next_timer() == 10.0
    s.handle(Received(a, upd(0, 2.0, 5)), 3.0)
    eff = s.handle(TimerFired(), 10.0)
    np.testing.assert_allclose(s.weights[0], 2.0)
    assert next(e for e in eff if isinstance(e, Report) and e.name == "round").value[
        "closed_by"] == "deadline"
    late = s.handle(Received(b, upd(0, 9.0, 5)), 11.0)
    assert [e.name for e in late] == ["late_update"]
    np.testing.assert_allclose(s.weights[0], 2.0)


def test_all_selected_lost_closes_round_without_changing_weights_and_halts_at_end():
    s = server(rounds=1, m=2)
    a, b = (e.dst for e in sends(s.handle(Start(), 0.0)))
    assert s.handle(PeerLost(a), 1.0) == []
    eff = s.handle(Received(b, Decline(0, "memory")), 2.0)
    assert isinstance(eff[-1], Halt)
    np.testing.assert_array_equal(s.weights[0], 0.0)


def test_over_selection_keeps_first_m():
    s = server(m=2, over_selection=0.5)
    chosen = [e.dst for e in sends(s.handle(Start(), 0.0))]
    assert len(chosen) == 3
    s.handle(Received(chosen[0], upd(0, 1.0, 1)), 1.0)
    eff = s.handle(Received(chosen[1], upd(0, 3.0, 1)), 2.0)
    assert any(isinstance(e, Report) and e.name == "round" for e in eff)
    assert [e.name for e in s.handle(Received(chosen[2], upd(0, 5.0, 1)), 3.0)] == ["late_update"]
    np.testing.assert_allclose(s.weights[0], 2.0)


def test_server_waits_for_min_clients():
    s = FedAvgServer("server", [np.zeros(1)], FedAvgParams(rounds=1, clients_per_round=2,
                     min_clients=2), rng=np.random.default_rng(0))
    assert s.handle(Start(), 0.0) == []
    assert s.handle(PeerJoined(1), 1.0) == []
    assert len(sends(s.handle(PeerJoined(2), 2.0))) == 2


def test_client_trains_what_it_receives_and_reports_its_sample_count():
    spec = mlp(4, [3], 2)
    w = tuple(spec.init_weights(np.random.default_rng(0)))
    c = FedAvgClient(5, spec, np.arange(10), rng=np.random.default_rng(1))
    (run,) = c.handle(Received("server", RoundStart(0, w, 2, 4, 0.1)), 0.0)
    assert isinstance(run, RunJob) and isinstance(run.job, TrainJob)
    job = run.job
    assert job.num_samples == 10
    assert job.flops == 2 * 10 * spec.train_flops_per_sample()     # 2 epochs × 10 samples
    (send,) = c.handle(JobDone(0, list(w)), 5.0)
    assert send.dst == "server" and send.message.num_samples == 10
    # a failed job is declined so the server need not wait
    c.handle(Received("server", RoundStart(1, w, 1, 4, 0.1)), 6.0)
    eff = c.handle(JobFailed(1, "memory"), 6.0)
    assert isinstance(eff[-1].message, Decline)
    c.handle(Received("server", RoundStart(2, w, 1, 4, 0.1)), 7.0)
    c.handle(Disconnected(), 8.0)
    assert c.handle(JobDone(2, list(w)), 9.0) == []


def test_executor_runs_pending_jobs_of_a_kind_in_one_batch():
    calls = []

    def runner(jobs):
        calls.append(len(jobs))
        return [j.task.lr for j in jobs]

    ex = Executor({"train": runner})
    spec = mlp(2, [2], 2)
    w = spec.init_weights(np.random.default_rng(0))
    jobs = [TrainJob.build(spec, w, np.arange(4), epochs=1, batch_size=2, lr=lr,
                           rng=np.random.default_rng(0)) for lr in (0.1, 0.2, 0.3)]
    handles = [ex.submit(j) for j in jobs]
    ex.cancel(handles[1])
    assert ex.result(handles[2]) == 0.3 and ex.result(handles[0]) == 0.1
    assert calls == [2]
    with pytest.raises(RuntimeError):
        ex.result(handles[1])
    assert math.isclose(jobs[0].flops, 4 * spec.train_flops_per_sample())


def test_round_closes_when_the_last_outstanding_device_answers_after_others_dropped():
    s = server(m=3)
    s.params = FedAvgParams(rounds=2, clients_per_round=3)
    s.handle(PeerJoined(4), 0.0)
    chosen = [e.dst for e in sends(s.handle(Start(), 0.0))]
    s.handle(PeerLost(chosen[0]), 1.0)
    s.handle(Received(chosen[1], upd(0, 2.0, 1)), 2.0)
    eff = s.handle(Received(chosen[2], upd(0, 4.0, 1)), 3.0)
    info = next(e for e in eff if isinstance(e, Report) and e.name == "round").value
    assert info["closed_by"] == "dropouts" and len(info["aggregated"]) == 2
    np.testing.assert_allclose(s.weights[0], 3.0)


def test_chained_deferred_jobs_run_in_dependency_waves():
    spec = mlp(2, [2], 2)
    w = spec.init_weights(np.random.default_rng(0))
    waves = []

    def runner(jobs):
        waves.append(len(jobs))
        return [[np.asarray(a) + 1 for a in j.task.weights] for j in jobs]

    ex = Executor({"train": runner})

    def job(start):
        return TrainJob.build(spec, start, np.arange(4), epochs=1, batch_size=2, lr=0.1,
                              rng=np.random.default_rng(0))

    # two devices, three chained jobs each: a1 -> a2 -> a3, b1 -> b2 -> b3
    chains = []
    for _ in range(2):
        h = ex.submit(job(w))
        hs = [h]
        for _ in range(2):
            h = ex.submit(job(ex.deferred(h)))
            hs.append(h)
        chains.append(hs)
    out = ex.result(chains[0][2])
    assert waves == [2, 2, 2]                  # one batch per link, both devices together
    np.testing.assert_allclose(out[0], w[0] + 3, rtol=1e-6)
    np.testing.assert_allclose(ex.result(chains[1][2])[1], w[1] + 3, rtol=1e-6)
    assert waves == [2, 2, 2]
