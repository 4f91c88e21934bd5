"""Secure aggregation and DP inside FedAvg runs; config-time rejections; the server's view."""

import numpy as np
import pytest

from crowdlearn.config import from_dict
from crowdlearn.crypto import masking
from crowdlearn.errors import ConfigError
from crowdlearn.experiment import run
from crowdlearn.privacy import dp_fedavg
from crowdlearn.protocols.secagg import SecAggParams, run_round
from tests.conftest import small_config


def _run(**over):
    return run(small_config(**over))


@pytest.fixture
def fixed_costs(monkeypatch):
    """A fixed crypto cost model: simulated times (and so churn outcomes) do not depend on the
    load of the machine running the tests."""
    import crowdlearn.crypto.costs as cc
    from crowdlearn.crypto.costs import CryptoCosts
    fixed = CryptoCosts(1e10, keygen=2e5, agree=3e5, prg_byte=20.0, aead_byte=1.0, field_mul=1.4e3)
    monkeypatch.setattr(cc, "calibrate", lambda: fixed)
    return fixed


def test_secagg_matches_plain_fedavg_without_dropouts_and_charges_its_costs(fixed_costs):
    plain = _run(rounds=2)
    res = _run(rounds=2, **{"fedavg.secure_aggregation": "secagg"})
    s = res.summary
    assert s["completed"] and s["secagg_rounds_ok"] == 2 and s["secagg_rounds_aborted"] == 0
    assert abs(s["final_accuracy"] - plain.summary["final_accuracy"]) <= 0.005
    # costs from what ran: the four stages' messages, and crypto charged as device compute
    stage = s["secagg_stage_bytes"]
    assert all(v > 0 for st in stage.values() for v in st.values())
    assert s["bytes_by_kind"]["MaskedInput"] == stage["masked_input"]["MaskedInput"]
    assert 0 < s["secagg_expansion"] < 2
    assert s["device_flops"] > plain.summary["device_flops"]
    assert s["jobs_run"]["secagg_crypto"] == 2 * 4 * 4      # rounds x clients x stages
    assert s["secagg_cost_model"]["agree"] == fixed_costs.agree
    assert [r["clients_aggregated"] for r in res.metrics] == [4, 4]


def test_devices_going_offline_at_every_stage_and_survivors_still_unmask(fixed_costs):
    # short online sessions (mean 0.2 s against rounds of ~0.15 s simulated): devices leave
    # during training and during each of the four stages
    from crowdlearn.experiment import Simulation
    sim = Simulation(small_config(**{
        "fedavg.secure_aggregation": "secagg", "seed": 8, "availability.model": "sessions",
        "availability.mean_online_s": 0.2, "availability.mean_offline_s": 0.01,
        "secagg.threshold": 2, "rounds": 4, "fedavg.clients_per_round": 5}))
    res = sim.run()
    s = res.summary
    assert s["completed"] and s["rounds_completed"] == 4
    drops = s["secagg_dropouts_by_stage"]
    assert all(drops[stage] > 0 for stage in ("advertise", "share", "masked_input", "unmask"))
    log = sim.driver.machines["server"].log
    # a round unmasked although a client dropped after sharing its keys (its pairwise masks
    # were rebuilt from the survivors' shares of its key)
    assert any(r["status"] == "ok" and r["masked_input"] < r["share"] for r in log)
    assert s["secagg_rounds_ok"] + s["secagg_rounds_aborted"] == 4


def test_churn_strikes_training_only_so_secagg_rounds_still_unmask(fixed_costs):
    # churn 0.3 per training task; the four stages' cryptography does not draw churn, so a
    # round unmasks when t = ceil(2m/3) = 7 of the 10 selected finish training
    # (P = 0.65 per round for independent drop-outs)
    from crowdlearn.experiment import Simulation
    sim = Simulation(small_config(**{
        "fedavg.secure_aggregation": "secagg", "availability.churn": 0.3, "seed": 3,
        "fleet.devices": 20, "fedavg.clients_per_round": 10, "rounds": 8}))
    res = sim.run()
    s = res.summary
    assert s["completed"] and s["rounds_completed"] == 8
    drops = s["secagg_dropouts_by_stage"]
    assert drops["advertise"] > 0                     # churned while training
    assert drops["share"] == drops["masked_input"] == drops["unmask"] == 0
    assert sum(d["drops_churn"] for d in res.devices) == drops["advertise"]
    assert s["secagg_rounds_ok"] > s["secagg_rounds_aborted"]
    assert all("advertise: " in a["reason"] for a in s["secagg_aborts"])


def test_config_rejects_threshold_neighbours_and_overflow():
    base = {"fleet": {"devices": 20}, "fedavg": {"clients_per_round": 5}}
    cases = [
        ({"fedavg": {"secure_aggregation": "secagg"}, "secagg": {"threshold": 6}},
         "t = 6 is more than the cohort of 5"),
        ({"fedavg": {"secure_aggregation": "secagg+"}, "secagg": {"neighbours": 6}},
         "k = 6 must be less than the cohort of 5"),
        ({"fedavg": {"secure_aggregation": "secagg+"}, "secagg": {"neighbours": 2,
                                                                  "threshold": 4}},
         "more than the k + 1 = 3"),
        ({"fedavg": {"secure_aggregation": "secagg"}, "secagg": {"modulus_bits": 16}},
         "overflows Z_R with R = 2^16 (needs < R/2); set secagg.modulus_bits >= 19"),
    ]
    for extra, msg in cases:
        raw = {**base, **extra, "fedavg": {**base["fedavg"], **extra["fedavg"]}}
        with pytest.raises(ConfigError) as err:
            from_dict(raw)
        assert msg in str(err.value)
    with pytest.raises(ConfigError, match="'distributed' noise is added by each client"):
        from_dict({**base, "dp": {"mode": "distributed"}})
    with pytest.raises(ConfigError, match=r"needs 2·σ_b > z; got σ_b = 0.5. Set "
                                          r"clipped_count_stddev > 1"):
        from_dict({**base, "dp": {"mode": "central", "clipping": "adaptive",
                                  "noise_multiplier": 2.0, "clipped_count_stddev": 0.5}})
    ok = from_dict({**base, "fedavg": {"clients_per_round": 5, "secure_aggregation": "secagg"},
                    "secagg": {"modulus_bits": 19}})
    assert ok.secagg.modulus_bits == 19


def test_a_count_stddev_too_small_for_the_target_epsilon_is_a_config_error(tmp_path, capsys):
    """With ``dp.target_epsilon`` the noise multiplier is only known once the accountant has
    chosen it: a ``clipped_count_stddev`` below half of it is still reported with the config's
    problems (exit status 2 from the CLI, nothing run), naming the z the target needs (equal to
    dp-accounting's, computed directly) and the bound; one above it is accepted."""
    from crowdlearn import cli
    dp = {"mode": "distributed", "clipping": "adaptive", "target_epsilon": 1.0}
    base = {"rounds": 3, "fleet": {"devices": 20},
            "fedavg": {"clients_per_round": 5, "secure_aggregation": "secagg"}}
    z = dp_fedavg.noise_for_epsilon(1.0, sampling_rate=5 / 20, rounds=3, delta=1e-5)
    with pytest.raises(ConfigError) as err:
        from_dict({**base, "dp": {**dp, "clipped_count_stddev": 0.5}})
    msg = str(err.value)
    assert f"needs z = {z:.4g}" in msg and f"got σ_b = 0.5. Set clipped_count_stddev > " \
        f"{z / 2:.4g}" in msg
    assert len(err.value.problems) == 1
    ok = from_dict({**base, "dp": {**dp, "clipped_count_stddev": z}})
    assert ok.dp.clipped_count_stddev == z
    rc = cli.main(["run", "--set", "rounds=3", "--set", "fleet.devices=20", "--set",
                   "fedavg.clients_per_round=5", "--set", 'fedavg.secure_aggregation="secagg"',
                   "--set", 'dp.mode="distributed"', "--set", 'dp.clipping="adaptive"',
                   "--set", "dp.target_epsilon=1.0", "--set", "dp.clipped_count_stddev=0.5",
                   "--out", str(tmp_path / "run")])
    err_text = capsys.readouterr().err
    assert rc == 2 and "clipped_count_stddev" in err_text and "Traceback" not in err_text
    assert not (tmp_path / "run").exists()


def test_an_unreachable_target_epsilon_is_a_config_error_naming_the_reachable_range(
        tmp_path, capsys):
    """A ``dp.target_epsilon`` below what the noise search can reach (ε at its largest noise
    multiplier, from dp-accounting directly) is reported with the config's problems: exit status
    2 from the CLI, nothing run, the floor and the fix named; the floor itself is reachable
    (``noise_for_epsilon`` finds a multiplier for it) and a hair below it is not."""
    from crowdlearn import cli
    q, rounds = 5 / 20, 3
    floor = dp_fedavg.epsilon_direct(dp_fedavg.Z_MAX, q, rounds, 1e-5)
    assert dp_fedavg.smallest_epsilon(sampling_rate=q, rounds=rounds, delta=1e-5) == floor
    assert dp_fedavg.noise_for_epsilon(floor, sampling_rate=q, rounds=rounds, delta=1e-5) \
        <= dp_fedavg.Z_MAX
    with pytest.raises(ValueError, match="out of reach"):
        dp_fedavg.noise_for_epsilon(floor * 0.999, sampling_rate=q, rounds=rounds, delta=1e-5)
    base = {"rounds": rounds, "fleet": {"devices": 20},
            "fedavg": {"clients_per_round": 5, "secure_aggregation": "secagg"}}
    dp = {"mode": "distributed", "target_epsilon": floor * 0.999}
    with pytest.raises(ConfigError) as err:
        from_dict({**base, "dp": dp})
    assert len(err.value.problems) == 1
    assert f"ε >= {floor:.4g}" in str(err.value) and "set target_epsilon >=" in str(err.value)
    assert from_dict({**base, "dp": {**dp, "target_epsilon": floor}}).dp.target_epsilon == floor
    rc = cli.main(["run", "--set", f"rounds={rounds}", "--set", "fleet.devices=20", "--set",
                   "fedavg.clients_per_round=5", "--set", 'fedavg.secure_aggregation="secagg"',
                   "--set", 'dp.mode="distributed"', "--set", "dp.target_epsilon=0.0001",
                   "--out", str(tmp_path / "run")])
    err_text = capsys.readouterr().err
    assert rc == 2 and "dp.target_epsilon: 0.0001 is out of reach" in err_text
    assert f"reachable targets are ε >= {floor:.4g}" in err_text and "Traceback" not in err_text
    assert not (tmp_path / "run").exists()


def test_secure_aggregation_rounding_past_the_count_bound_is_a_config_error():
    """Secure aggregation raises a target ε's noise multiplier by its rounding factor; if that
    crosses 2σ_b the run stops as a config error naming the raised z, not a bare ValueError."""
    z = 2.0
    p = dp_fedavg.DPParams(mode="distributed", noise_multiplier=z, clip_norm=1.0, adaptive=True,
                           count_stddev=z / 2 * 1.001, cohort=5, population=20,
                           target_epsilon=1.0)
    policy = dp_fedavg.DPFedAvg(p)                      # fine before the rounding
    with pytest.raises(ConfigError, match=r"fixed-point rounding \(sensitivity x 1\.5\) needs "
                                          r"z = 3; .* Set clipped_count_stddev > 1\.5 "):
        policy.set_quantisation(step=0.01, dim=10_000)   # sensitivity x 1.5
    ok = dp_fedavg.DPFedAvg(p)
    ok.set_quantisation(step=1e-6, dim=100)              # x 1.000005: still below 2σ_b
    assert ok.p.noise_multiplier == pytest.approx(z * 1.000005)


def test_server_view_of_one_masked_upload_reveals_nothing_to_the_reconstruction_attack(rng):
    """Phong et al.'s first-layer attack recovers a one-sample update exactly in the clear and
    does no better than the mean image from the same client's masked upload."""
    from sklearn.datasets import load_digits

    from crowdlearn.privacy.attacks.metrics import psnr
    from crowdlearn.privacy.attacks.reconstruction import reconstruct_from_first_layer
    x = load_digits().data / 16.0
    mean = x.mean(axis=0)
    d, h = 64, 16
    scores_plain, scores_masked, scores_mean = [], [], []
    for i in range(5):
        xi = x[i]
        delta_b = rng.normal(0, 0.05, h)
        upd = {u: rng.normal(0, 0.01, d * h + h) for u in range(4)}
        upd[0] = np.concatenate([-np.outer(xi, delta_b).ravel(), -delta_b])     # one SGD step
        p = SecAggParams(threshold=3, quant_bits=16, clip=0.5, modulus_bits=20)
        out = run_round(upd, p, rng=np.random.default_rng(i))
        seen = masking.dequantise(out.server.resp["masked_input"][0].vector.values,
                                  clip=p.clip, quant_bits=p.quant_bits, modulus_bits=20)
        for vec, scores in ((upd[0], scores_plain), (seen, scores_masked)):
            rec = reconstruct_from_first_layer(vec[:d * h].reshape(d, h), vec[d * h:])
            scores.append(psnr(np.clip(np.nan_to_num(rec), 0, 1), xi))
        scores_mean.append(psnr(mean, xi))
    assert np.mean(scores_plain) > 60                       # exact in the clear
    assert np.mean(scores_masked) <= np.mean(scores_mean) + 0.5   # no better than the mean image


def test_dp_epsilon_matches_dp_accounting_computed_directly():
    import dp_accounting as dpa
    from dp_accounting import pld, rdp
    res = _run(**{"dp.mode": "central", "dp.noise_multiplier": 1.1, "fleet.devices": 8,
                  "rounds": 3})
    q = 4 / 8
    for r, row in enumerate(res.metrics, start=1):
        acc = rdp.RdpAccountant(dp_fedavg._ORDERS)
        acc.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(1.1)),
                                            r))
        assert row["epsilon"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    assert res.summary["epsilon"] == pytest.approx(res.metrics[-1]["epsilon"])
    assert res.summary["delta"] == 1e-5 and "RDP" in res.summary["accountant"]
    assert res.summary["dp"] is True and res.summary["epsilon_guarantee"] == "dp"
    a = pld.PLDAccountant()
    a.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.1, dpa.GaussianDpEvent(0.9)),
                                      7))
    assert dp_fedavg.epsilon_direct(0.9, 0.1, 7, 1e-6, "pld") == pytest.approx(a.get_epsilon(1e-6))


def test_target_epsilon_picks_the_noise_and_more_epsilon_means_less_noise():
    zs = [dp_fedavg.noise_for_epsilon(e, sampling_rate=0.1, rounds=20, delta=1e-5)
          for e in (1.0, 4.0, 16.0)]
    assert zs[0] > zs[1] > zs[2]
    for e, z in zip((1.0, 4.0, 16.0), zs, strict=True):
        assert dp_fedavg.epsilon_direct(z, 0.1, 20, 1e-5) <= e
        assert dp_fedavg.epsilon_direct(z * 0.99, 0.1, 20, 1e-5) > e


def test_clipping_bounds_the_update_and_adaptive_norm_tracks_the_quantile(rng):
    p = dp_fedavg.DPParams(mode="central", noise_multiplier=0.0, clip_norm=1.0, adaptive=True,
                           target_quantile=0.5, clip_lr=0.5, cohort=10, population=100)
    dp = dp_fedavg.DPFedAvg(p)
    for _ in range(60):
        deltas = [rng.normal(0, 1, 100) * s for s in np.linspace(0.01, 0.1, 10)]
        dp.server_aggregate(deltas, rng)
    norms = np.linalg.norm(np.stack(deltas), axis=1)
    assert np.quantile(norms, 0.2) < dp.clip_norm < np.quantile(norms, 0.8)
    c, bit = dp_fedavg.clip_update(np.full(4, 10.0), 2.0)
    assert np.linalg.norm(c) == pytest.approx(2.0) and bit == 0.0


def test_distributed_noise_with_secagg_sums_to_the_central_noise_level(rng):
    p = dp_fedavg.DPParams(mode="distributed", noise_multiplier=2.0, clip_norm=1.0, cohort=16,
                           population=100)
    dp = dp_fedavg.DPFedAvg(p)
    step = 0.5 / masking.levels(16)
    # clients clip only; their noise shares are integers on the quantisation grid
    assert np.array_equal(dp.client_privatise(np.zeros(5), 1.0, rng)[0], np.zeros(5))
    total = step * sum(dp.client_noise(20_000, 1.0, step, rng) for _ in range(16))
    assert np.std(total) == pytest.approx(2.0, rel=0.03)
    central = dp_fedavg.DPFedAvg(dp_fedavg.DPParams(mode="central", noise_multiplier=2.0,
                                                    clip_norm=1.0, cohort=16, population=100))
    assert central.client_noise(10, 1.0, step, rng) is None


def test_epsilon_under_secagg_uses_the_rounding_bound_and_the_noise_that_arrived(fixed_costs):
    """Reported ε = dp-accounting's for σ / (C + √d·s/2) per round, where s is the 16-bit
    grid step, and, with distributed noise, σ counts only the delivered noise shares."""
    from crowdlearn.experiment import Simulation
    over = {"fedavg.secure_aggregation": "secagg", "dp.noise_multiplier": 1.1,
            "fleet.devices": 8, "rounds": 2, "secagg.clip": 0.5, "dp.clipping_norm": 0.2}
    for mode in ("central", "distributed"):
        sim = Simulation(small_config(**over, **{"dp.mode": mode}))
        res = sim.run()
        s, server = res.summary, sim.driver.machines["server"]
        bound = np.sqrt(server.d) * (0.5 / masking.levels(16)) / 2
        assert s["dp_rounding_bound"] == pytest.approx(bound) and bound > 0
        z_eff = 1.1 * 0.2 / (0.2 + bound)
        assert s["dp_effective_multipliers"] == pytest.approx([z_eff] * 2, rel=1e-6)
        assert s["epsilon"] == pytest.approx(dp_fedavg.epsilon_direct(z_eff, 0.5, 2, 1e-5),
                                             rel=1e-9)
        assert s["epsilon"] > dp_fedavg.epsilon_direct(1.1, 0.5, 2, 1e-5)
    # a drop-out: 2 of the 4 noise shares arrive, the round costs z·sqrt(2/4)
    dp = dp_fedavg.DPFedAvg(dp_fedavg.DPParams(mode="distributed", noise_multiplier=1.1,
                                               clip_norm=0.2, cohort=4, population=8))
    dp.set_quantisation(step=0.5 / masking.levels(16), dim=server.d)
    dp.server_aggregate_sum(np.zeros(server.d), 2, rng=np.random.default_rng(0))
    assert dp.history[-1]["noise_multiplier_effective"] == pytest.approx(z_eff * 0.5 ** 0.5)
    assert dp.summary()["epsilon"] == pytest.approx(
        dp_fedavg.epsilon_direct(z_eff * 0.5 ** 0.5, 0.5, 1, 1e-5), rel=1e-9)


def test_target_epsilon_under_secagg_raises_the_noise_to_keep_the_target(fixed_costs):
    res = _run(**{"fedavg.secure_aggregation": "secagg", "dp.mode": "distributed",
                  "dp.target_epsilon": 4.0, "fleet.devices": 8, "rounds": 2,
                  "dp.clipping_norm": 0.05})
    s = res.summary
    z0 = dp_fedavg.noise_for_epsilon(4.0, sampling_rate=0.5, rounds=2, delta=1e-5)
    scale = (0.05 + s["dp_rounding_bound"]) / 0.05
    assert s["dp_noise_multiplier"] == pytest.approx(z0 * scale)
    assert s["epsilon"] == pytest.approx(dp_fedavg.epsilon_direct(z0, 0.5, 2, 1e-5), rel=1e-6)
    assert s["epsilon"] <= 4.0


@pytest.mark.parametrize("mode", ["secagg", "secagg+"])
def test_the_agreement_process_changes_no_result_and_ends_with_the_run(fixed_costs, monkeypatch,
                                                                        mode):
    """A simulation with the X25519 agreements computed in a worker process gives the same
    results as with them computed in-process: every summary figure (bytes per stage, the
    compute charged to devices, simulated time, accuracy) and every metrics row; one process is
    started per simulation, every round's agreements go through it, and none is left when the
    run ends (reaped), on success and when the run fails."""
    import os

    from crowdlearn.crypto.agreement_process import AgreementProcess
    from crowdlearn.experiment import Simulation
    from crowdlearn.protocols import fedavg_family
    made = []

    def started(cfg, sa):
        made.append(AgreementProcess())
        made[-1].start()
        return made[-1]

    over = {"fedavg.secure_aggregation": mode, "rounds": 2, "fleet.devices": 8}
    monkeypatch.setattr(fedavg_family, "agreement_process", lambda cfg, sa: None)
    inproc = _run(**over)
    monkeypatch.setattr(fedavg_family, "agreement_process", started)
    sim = Simulation(small_config(**over))
    pid = made[-1].pid
    assert pid is not None and len(made) == 1            # started with the simulation
    res = sim.run()
    assert made[-1].frames >= 2 * 4                      # two rounds, two keys per client
    assert made[-1].pid is None and len(made) == 1
    with pytest.raises(ChildProcessError):               # reaped: no process left behind
        os.waitpid(pid, os.WNOHANG)
    skip = {"wall_time_s", "real_time_s", "secagg_cost_model"}
    assert {k: v for k, v in res.summary.items() if k not in skip} == \
        {k: v for k, v in inproc.summary.items() if k not in skip}
    assert res.metrics == inproc.metrics and res.summary["secagg_rounds_ok"] == 2
    # a run that fails still ends its process
    sim = Simulation(small_config(**over))
    pid = made[-1].pid
    monkeypatch.setattr(sim.driver, "run", lambda **kw: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        sim.run()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@pytest.mark.parametrize("mode", ["secagg", "secagg+"])
def test_the_mask_and_memo_shortcuts_change_no_result(fixed_costs, monkeypatch, mode):
    """The simulator's host-side shortcuts for the masks and the agreements (a tile of
    registrations' pairs expanded together, the masked vectors in shared slabs, the input added
    in place, a client's agreements in one memo call) against the same run without them (each
    registration's pairs at once, one allocation per vector, the input added to a copy, one
    memo call per peer): every summary figure (bytes per stage, the compute charged to
    devices, simulated time, accuracy) and every metrics row equal, no mask thread left."""
    import threading

    from crowdlearn.crypto import keyagreement as ka
    over = {"fedavg.secure_aggregation": mode, "rounds": 2, "fleet.devices": 8}
    fast = _run(**over)
    monkeypatch.setattr(masking, "_TILE", 1)
    monkeypatch.setattr(masking, "_SLAB_BYTES", 1)
    used = []

    def plus_on_a_copy(self, base, terms=()):
        used.append(1)
        acc = masking.MaskAccumulator(len(base), self.batch.bits)
        acc.add(self.result(), +1)
        acc.add(base, +1)
        for seed, sign in terms:
            acc.add_prg(seed, sign)
        return acc.result().astype(self.result().dtype)
    monkeypatch.setattr(masking.PendingMask, "plus", plus_on_a_copy)
    monkeypatch.setattr(ka.AgreementMemo, "agree_many",
                        lambda self, key, peers, info: [self.agree(key, p, info) for p in peers])
    slow = _run(**over)
    assert used                                          # the reference path was taken
    skip = {"wall_time_s", "real_time_s", "secagg_cost_model"}
    assert {k: v for k, v in fast.summary.items() if k not in skip} == \
        {k: v for k, v in slow.summary.items() if k not in skip}
    assert fast.metrics == slow.metrics and fast.summary["secagg_rounds_ok"] == 2
    assert not [t for t in threading.enumerate() if t.name.startswith("crowdlearn-mask")]


def test_priced_simulation_equals_the_real_one_in_bytes_and_model(fixed_costs):
    real = _run(rounds=2, **{"fedavg.secure_aggregation": "secagg+", "fleet.devices": 8})
    priced = _run(rounds=2, **{"fedavg.secure_aggregation": "secagg+", "secagg.priced": True})
    for key in ("final_accuracy", "bytes_total", "secagg_stage_bytes", "device_flops",
                "sim_time_s"):
        assert real.summary[key] == priced.summary[key], key
    assert priced.summary["secure_aggregation"] == "secagg+ (priced)"


def test_same_seed_same_simulated_times_across_processes(tmp_path):
    """Crypto costs are calibrated once per machine and cached, so two separate runs with the
    same seed give the same events, times and metrics (the first run writes the cache)."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json, sys\n"
            "from crowdlearn.config import from_dict\n"
            "from crowdlearn.experiment import Simulation\n"
            "res = Simulation(from_dict({'rounds': 2, 'fleet': {'devices': 6},\n"
            "    'fedavg': {'clients_per_round': 4, 'secure_aggregation': 'secagg'}})).run()\n"
            "json.dump({'t': res.summary['sim_time_s'], 'm': res.metrics,\n"
            "           'c': res.summary['secagg_cost_model']}, sys.stdout)\n")
    env = {**os.environ, "CROWDLEARN_CACHE": str(tmp_path / "cache")}
    env.pop("CROWDLEARN_RECALIBRATE", None)
    runs = [json.loads(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                      capture_output=True, text=True).stdout) for _ in range(2)]
    assert list((tmp_path / "cache").glob("secagg-costs-*.json"))
    assert runs[0] == runs[1]


def test_calibration_timings_charge_cpu_not_time_spent_waiting():
    """Calibration timings are the process's CPU time: a call that waits (here: sleeps, as when
    descheduled while other tenants run) costs nothing, work on another thread of the process is
    charged (a primitive using threads pays all of their work, as a one-core device would)."""
    import threading
    import time

    import crowdlearn.crypto.costs as cc
    from crowdlearn.crypto import he_costs

    assert cc._best(lambda: time.sleep(0.03), reps=3) < 0.01
    assert he_costs._best(lambda: time.sleep(0.03), reps=3) < 0.01

    def spin(seconds):
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    def on_a_thread():
        t = threading.Thread(target=spin, args=(0.03,))
        t.start()
        t.join()
    assert cc._best(on_a_thread, reps=3) >= 0.03


@pytest.mark.parametrize("loaded", [False, True])
def test_a_calibration_records_the_load_and_warns_when_made_on_a_busy_machine(
        tmp_path, monkeypatch, recwarn, loaded):
    """The machine's load is cached with a calibration (and reaches ``summary.json`` through the
    cost model); a calibration made on a busy machine warns, naming the fix, every time it is
    used, until it is measured again."""
    import crowdlearn.crypto.costs as cc

    monkeypatch.setenv("CROWDLEARN_CACHE", str(tmp_path))
    monkeypatch.delenv("CROWDLEARN_RECALIBRATE", raising=False)
    state = {"load_average_1min": 9.5 if loaded else 0.1, "cpus": 2, "loaded": loaded}
    monkeypatch.setattr(cc, "machine_load", lambda: dict(state))
    calls = []
    measure = lambda: calls.append(1) or {"x": 1.0}                      # noqa: E731
    first = cc.cached_calibration("probe", measure)
    state.update(load_average_1min=0.0, loaded=False)           # the machine is quiet now
    second = cc.cached_calibration("probe", measure)             # read from the cache
    assert calls == [1] and first == second
    assert first["measured_load"]["load_average_1min"] == (9.5 if loaded else 0.1)
    warned = [w for w in recwarn.list if issubclass(w.category, RuntimeWarning)]
    assert len(warned) == (2 if loaded else 0)
    if loaded:
        assert "CROWDLEARN_RECALIBRATE=1" in str(warned[0].message)
    monkeypatch.setenv("CROWDLEARN_RECALIBRATE", "1")          # measured again, now quiet
    third = cc.cached_calibration("probe", measure)
    assert calls == [1, 1] and not third["measured_load"]["loaded"]


def _direct_epsilon(multipliers, q, delta=1e-5):
    """dp-accounting's RDP ε for one Poisson-sampled Gaussian per entry, built here directly."""
    import dp_accounting as dpa
    from dp_accounting import rdp
    acc = rdp.RdpAccountant(dp_fedavg._ORDERS)
    acc.compose(dpa.ComposedDpEvent([dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z))
                                     for z in multipliers]))
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("mode", ["central", "distributed"])
@pytest.mark.parametrize("count_stddev", [0.0, 3.0])
def test_adaptive_clipping_charges_the_combined_multiplier_of_andrew_et_al(mode, count_stddev):
    """The update noise z_Δ = (z^-2 - (2σ_b)^-2)^-1/2 and the count noise σ_b (sensitivity 1/2)
    together are one Gaussian of multiplier z; with the rounding bound ρ = C/(C + √d·s/2) and,
    distributed, n of m shares, each part shrinks and the round is charged
    ((z_Δ ρ √(n/m))^-2 + (2σ_b √(n/m))^-2)^-1/2: ε equals dp-accounting's for those."""
    z, m, big_k = 1.3, 8, 80
    p = dp_fedavg.DPParams(mode=mode, noise_multiplier=z, clip_norm=0.5, adaptive=True,
                           count_stddev=count_stddev, cohort=m, population=big_k)
    sigma_b = count_stddev or max(m / 20, z)
    assert p.sigma_b == sigma_b
    assert p.update_noise_multiplier == pytest.approx((z ** -2 - (2 * sigma_b) ** -2) ** -0.5)
    dp = dp_fedavg.DPFedAvg(p)
    rng = np.random.default_rng(0)
    zs = []
    for shares in (m, m, 3):                 # no rounding yet: full rounds cost exactly z
        c = dp.clip_norm
        dp.server_aggregate_sum(np.zeros(6), shares, rng=rng)
        arrived = (shares / m) ** 0.5 if mode == "distributed" else 1.0
        zs.append(((p.update_noise_multiplier * arrived) ** -2
                   + (2 * sigma_b * arrived) ** -2) ** -0.5)
        assert dp.history[-1]["noise_multiplier_effective"] == pytest.approx(zs[-1], rel=1e-12)
        assert dp.history[-1]["clip_norm"] == c
    assert zs[0] == pytest.approx(z, rel=1e-12)
    dp.set_quantisation(step=0.5 / masking.levels(16), dim=109_386)
    rho = dp.clip_norm / (dp.clip_norm + dp.rounding)
    dp.server_aggregate_sum(np.zeros(6), m, rng=rng)
    zs.append(((p.update_noise_multiplier * rho) ** -2 + (2 * sigma_b) ** -2) ** -0.5)
    assert zs[-1] < z
    assert dp.accountant.recorded == pytest.approx(zs, rel=1e-12)
    assert dp.summary()["epsilon"] == pytest.approx(_direct_epsilon(zs, m / big_k), rel=1e-9)


def test_adaptive_clipping_estimates_the_fraction_from_the_centred_count(rng):
    """b̃ = clamp((Σ(b - 1/2) + noise)/m + 1/2, 0, 1) (Andrew et al.; TF Privacy's quantile
    estimator): in distributed mode the server adds nothing (the clients' shares are in the
    sum), in central mode it draws N(0, σ_b²)."""
    m = 10
    dist = dp_fedavg.DPFedAvg(dp_fedavg.DPParams(
        mode="distributed", noise_multiplier=1.0, clip_norm=1.0, adaptive=True,
        target_quantile=0.5, clip_lr=0.2, cohort=m, population=100))
    for centred, frac in [(0.0, 0.5), (2.5, 0.75), (-7.0, 0.0), (9.0, 1.0)]:
        c = dist.clip_norm
        # the sum as the server dequantises it: model coordinates, then Σ(b - 1/2)·2·clip
        dist.server_aggregate_sum(np.append(np.zeros(3), centred * 2 * 0.5), m, rng=rng,
                                  bit_scale=2 * 0.5)
        assert dist.history[-1]["unclipped_fraction"] == frac
        assert dist.clip_norm == pytest.approx(c * np.exp(-0.2 * (frac - 0.5)), rel=1e-12)
    central = dp_fedavg.DPFedAvg(dp_fedavg.DPParams(
        mode="central", noise_multiplier=1.0, clip_norm=1.0, adaptive=True, count_stddev=2.0,
        cohort=m, population=100))
    # five of ten updates within C: the exact centred count is 0, the noise is the server's
    deltas = [np.full(4, 0.1)] * 5 + [np.full(4, 10.0)] * 5
    central.accountant.epsilon = lambda rounds: 0.0     # the estimator only: skip 400 ε's
    fracs = []
    for _ in range(400):
        central.server_aggregate(deltas, rng)
        fracs.append(central.history[-1]["unclipped_fraction"])
        central.clip_norm = 1.0
    # clamped N(0.5, (σ_b/m)²) = N(0.5, 0.2²): almost never clamped
    assert np.mean(fracs) == pytest.approx(0.5, abs=0.03)
    assert np.std(fracs) == pytest.approx(0.2, rel=0.1)


@pytest.mark.parametrize("mode", ["distributed", "central"])
def test_the_unclipped_count_the_server_sees_carries_the_clients_noise(mode):
    """Distributed DP with adaptive clipping: each client's quantised input (what it masks)
    carries its count share N(0, σ_b²/m) on the grid, so the count in the unmasked sum has
    variance σ_b² around the true Σ(b - 1/2) (chi-square-sized tolerance on 3,000 sums);
    central mode sends the exact indicator (the server adds the noise after unmasking)."""
    from crowdlearn.crypto.costs import CryptoCosts
    from crowdlearn.protocols.secagg import SecAggClient, _count_scale

    m, d, sigma_b = 4, 5, 1.5
    dp = dp_fedavg.DPFedAvg(dp_fedavg.DPParams(
        mode=mode, noise_multiplier=1.0, clip_norm=1.0, adaptive=True, count_stddev=sigma_b,
        cohort=m, population=40))
    sa = SecAggParams(threshold=2, quant_bits=16, clip=0.5, modulus_bits=40)
    clients = []
    for u in range(m):
        c = SecAggClient(u, None, np.arange(1), rng=np.random.default_rng(u), params=sa,
                         costs=CryptoCosts(1.0, 0, 0, 0, 0, 0),
                         crypto_rng=np.random.default_rng(100 + u),
                         privatise=dp.client_privatise, noise=dp.client_noise)
        c.global_w = [np.zeros(d, np.float32)]
        # clients 0 and 1 within C (b = 1), 2 and 3 clipped (b = 0): Σ(b - 1/2) = 0
        c.trained = [np.full(d, 0.01 if u < 2 else 5.0, np.float32)]
        c.clip_norm = 1.0
        clients.append(c)
    sums = []
    for _ in range(3000):
        total = np.zeros(d + 1, np.uint64)
        for c in clients:
            total = masking.add_mod(total, c._quantised_input(), sa.modulus_bits)
        vec = masking.dequantise(total, clip=sa.clip, quant_bits=sa.quant_bits,
                                 modulus_bits=sa.modulus_bits)
        sums.append(vec[-1] / _count_scale(sa))
    sums = np.array(sums)
    if mode == "central":
        assert np.all(sums == 0.0)                 # exact: the server's own noise comes later
        return
    assert np.mean(sums) == pytest.approx(0.0, abs=4 * sigma_b / np.sqrt(len(sums)))
    assert np.var(sums) == pytest.approx(sigma_b ** 2, rel=0.1)
    assert len(np.unique(sums)) > 100              # not a handful of values: Gaussian noise


def test_asyncio_runs_secure_dp_like_simpy_with_the_count_coordinate():
    """The server reads a masked vector off a real wire with the length the clients send: the
    model's coordinates, plus the count under adaptive clipping (it used the model's length
    alone, and every DP round over asyncio was refused as malformed)."""
    for clipping in ("fixed", "adaptive"):
        over = {"fedavg.secure_aggregation": "secagg", "dp.mode": "distributed",
                "dp.noise_multiplier": 1.0, "dp.clipping": clipping, "rounds": 2}
        a = _run(**over, **{"runtime.engine": "asyncio"}).summary
        s = _run(**over).summary
        assert a["secagg_rounds_ok"] == s["secagg_rounds_ok"] == 2
        for key in ("final_accuracy", "epsilon", "dp_final_clip_norm", "bytes_total"):
            assert a[key] == s[key], (clipping, key)
