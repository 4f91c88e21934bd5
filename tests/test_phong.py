"""Phong et al.'s encrypted ASGD in the simulator: real vs priced crypto, plaintext vs encrypted,
config-time overflow rejection, collusion, and communication factors of the 109,386-weight MLP.

Keys are small here (512-bit Paillier, n_lwe = 64): the protocol logic and the exactness do not
depend on the key size; the sizes of the real parameters are checked on the scheme objects.
"""
import numpy as np
import pytest

from crowdlearn.config import from_dict
from crowdlearn.crypto.schemes import make_scheme
from crowdlearn.errors import ConfigError
from crowdlearn.experiment import Simulation

MLP_PARAMS = 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10


def _cfg(**he):
    return from_dict({"protocol": "phong", "rounds": 2, "seed": 3,
                      "fleet": {"devices": 4, "cells": 1}, "model": {"hidden": [16]},
                      "he": {"key_bits": 512, "n_lwe": 64, "order": "round_robin", **he}})


def _run(cfg):
    sim = Simulation(cfg)
    res = sim.run()
    return sim, res


@pytest.mark.parametrize("scheme,variant", [("paillier", "standard"), ("paillier", "subgroup"),
                                            ("lwe", "standard")])
def test_real_and_priced_modes_give_identical_weights_bytes_and_times(scheme, variant):
    (s_real, r_real), (s_priced, r_priced) = (_run(_cfg(scheme=scheme, mode=m, paillier_variant=variant))
                                              for m in ("real", "priced"))
    srv_real, srv_priced = s_real.driver.machines["server"], s_priced.driver.machines["server"]
    scheme_real = s_real.ctx.extra["he"].scheme
    if scheme == "paillier":          # the configured key type is the one that ran
        assert scheme_real.sk.public_key.variant == variant == scheme_real.summary()["variant"]
    # the real ciphertext opens to exactly the integers the priced run added up
    opened = scheme_real.decrypt(srv_real.enc_w)
    assert np.array_equal(opened, srv_real.enc_w.oracle)
    assert np.array_equal(srv_real.enc_w.oracle, srv_priced.enc_w.oracle)
    assert srv_real.enc_w.count == 1 + 2 * 4
    for key in ("bytes_total", "bytes_up", "bytes_down", "sim_time_s", "final_accuracy", "comm_factor"):
        assert r_real.summary[key] == r_priced.summary[key], key
    # and the bytes on the wire are the encoded ciphertexts: an upload's payload re-encodes to its size
    _, _, payload = srv_real.uploads_seen[0]
    assert len(payload.wire_bytes()) == payload.wire_len() == scheme_real.nbytes


def test_plaintext_and_encrypted_runs_reach_the_same_accuracy_on_the_same_schedule():
    acc = {s: _run(_cfg(scheme=s, mode="priced"))[1].summary["final_accuracy"]
           for s in ("none", "paillier", "lwe")}
    assert abs(acc["paillier"] - acc["none"]) <= 0.005 and abs(acc["lwe"] - acc["none"]) <= 0.005
    assert acc["none"] > 0.2          # it learnt something (10 classes: chance is 0.1)


def test_encrypted_run_costs_more_bytes_and_charges_crypto_to_device_and_server():
    _, plain = _run(_cfg(scheme="none", mode="priced"))
    _, enc = _run(_cfg(scheme="paillier", mode="priced"))
    assert plain.summary["comm_factor"] == 1.0
    assert enc.summary["bytes_total"] > 2 * plain.summary["bytes_total"]
    roles = enc.summary["crypto_host_s_by_role"]
    assert roles["device_encrypt"] > 0 and roles["device_decrypt"] > 0 and roles["server_add"] > 0
    assert enc.summary["device_compute_s"] > plain.summary["device_compute_s"]
    assert enc.summary["crypto_calibration"]["host_flops"] > 0


def test_asynchronous_order_runs_every_turn():
    sim, res = _run(_cfg(scheme="paillier", mode="priced", order="asynchronous"))
    assert sim.driver.machines["server"].enc_w.count == 1 + 2 * 4
    assert res.summary["completed"]


def test_config_rejects_parameters_that_can_overflow_within_the_run():
    with pytest.raises(ConfigError, match=r"he: E\(W\) will sum 41 encodings .* at most 32 .* raise he.pad to 6"):
        from_dict({"protocol": "phong", "rounds": 4, "fleet": {"devices": 10},
                   "he": {"scheme": "paillier", "pad": 5}})
    with pytest.raises(ConfigError, match="lower he.value_bits"):
        from_dict({"protocol": "phong", "rounds": 3, "fleet": {"devices": 100},
                   "he": {"scheme": "lwe", "value_bits": 48}})
    with pytest.raises(ConfigError, match=r"he.prec \+ he.pad must be <= 63; got 50 \+ 15"):
        from_dict({"protocol": "phong", "he": {"prec": 50, "pad": 15}})
    with pytest.raises(ConfigError, match="he.key_bits must be >= 480; got 256"):
        from_dict({"protocol": "phong", "he": {"paillier_variant": "subgroup", "key_bits": 256}})
    with pytest.raises(ConfigError, match="paillier_variant"):
        from_dict({"protocol": "phong", "he": {"paillier_variant": "fast"}})
    # the same parameters are fine for another protocol (the section is ignored there)
    from_dict({"protocol": "fedavg", "he": {"prec": 50, "pad": 15}})


def test_collusion_server_with_one_participant_reads_every_upload_under_the_shared_key():
    sim, _ = _run(_cfg(scheme="paillier", mode="real"))
    server = sim.driver.machines["server"]
    scheme = sim.ctx.extra["he"].scheme
    view = server.collusion_view(scheme, colluder=0)
    assert set(view) == {0, 1, 2, 3}                 # every participant's updates, not just the colluder's
    for src, _, payload in server.uploads_seen:
        assert any(np.array_equal(v, scheme.decode(payload.oracle)) for v in view[src])
    # the recovered updates are the real ones: they sum to W_final - W_0
    w0 = scheme.decode(scheme.encode(np.concatenate([w.ravel() for w in sim.ctx.init_weights])))
    total = sum(sum(v) for v in view.values())
    assert np.allclose(w0 + total, scheme.decode(server.enc_w.oracle), atol=1e-6)


@pytest.mark.parametrize("scheme,kw,want", [
    ("paillier", {"key_bits": 3072}, 2.93), ("lwe", {"n_pu": 1}, 2.47)])
def test_comm_factor_of_the_fashion_mlp_matches_phong(scheme, kw, want):
    s = make_scheme(scheme, mode="priced", length=MLP_PARAMS, **kw)
    assert abs(s.summary()["comm_factor"] - want) <= 0.03
    assert abs(s.summary()["comm_factor"] - s.summary()["formula_comm_factor"]) <= 0.02


def test_colluding_server_reconstructs_a_victims_input_from_its_decrypted_update():
    """Server + participant 0 share Phong's one key: they decrypt participant 1's E(ΔW) and Phong's
    first-layer ratio recovers participant 1's (single) training sample."""
    from crowdlearn.privacy.attacks.reconstruction import first_layer, reconstruct_from_first_layer
    cfg = _cfg(scheme="paillier", mode="real")
    cfg = from_dict({**cfg.to_dict(), "rounds": 1})
    probe = Simulation(cfg)
    parts = [p.copy() for p in probe.parts]
    victim_sample = int(parts[1][0])
    parts[1] = np.array([victim_sample])
    sim = Simulation(cfg, parts=parts)
    sim.run()
    server, scheme = sim.driver.machines["server"], sim.ctx.extra["he"].scheme
    view = server.collusion_view(scheme, colluder=0)
    (delta,) = view[1]
    fl = first_layer(sim.spec)
    kernel = delta[fl.kernel_offset:fl.bias_offset].reshape(fl.d, fl.h)
    bias = delta[fl.bias_offset:fl.bias_offset + fl.h]
    x_hat = reconstruct_from_first_layer(kernel, bias)
    x_true = sim.dataset.x_train[victim_sample]
    assert np.max(np.abs(x_hat - x_true)) < 1e-2


@pytest.mark.parametrize("name,want", [("phong_paillier_fashion.toml", 2.93), ("phong_lwe_fashion.toml", 2.47)])
def test_examples_are_phongs_setting_and_reach_its_comm_factor(name, want):
    from pathlib import Path

    from crowdlearn.config import load
    cfg = load(Path(__file__).resolve().parents[1] / "examples" / name)
    assert cfg.protocol == "phong" and cfg.data.dataset == "fashion_mnist"
    assert list(cfg.model.hidden) == [128, 64] and cfg.he.mode == "real"
    h = cfg.he
    s = make_scheme(h.scheme, mode="priced", length=MLP_PARAMS, key_bits=h.key_bits, prec=h.prec,
                    pad=h.pad, n_lwe=h.n_lwe, value_bits=h.value_bits, n_pu=h.n_pu)
    assert abs(s.summary()["comm_factor"] - want) <= 0.03


# ---------------------------------------------------------------- hres (Tang et al.)
def _hres_cfg(mode, **he):
    return from_dict({"protocol": "hres", "rounds": 2, "seed": 3, "fleet": {"devices": 4, "cells": 1},
                      "model": {"hidden": [16]},
                      "he": {"mode": mode, "key_bits": 512, "order": "round_robin", **he}})


def test_hres_real_equals_priced_and_counts_dsp_kts_traffic():
    (s_real, r_real), (s_priced, r_priced) = (_run(_hres_cfg(m)) for m in ("real", "priced"))
    for key in ("bytes_total", "bytes_up", "bytes_down", "sim_time_s", "final_accuracy"):
        assert r_real.summary[key] == r_priced.summary[key], key
    srv = s_real.driver.machines["server"]
    scheme = s_real.ctx.extra["he"].scheme
    assert np.array_equal(srv.enc_w.oracle, s_priced.driver.machines["server"].enc_w.oracle)
    kinds = r_real.summary["bytes_by_kind"]
    turns = 2 * 4
    # every download was re-encrypted: one DSP -> KTS request per turn, of the encoded size
    # (wire: 2-byte tag, dst and turn as 9-byte ints, the payload as 5 + its encoded size)
    assert kinds["ReencryptRequest"] == turns * (2 + 9 + 9 + 5 + scheme.request_nbytes)
    assert r_real.summary["bytes_up"] + r_real.summary["bytes_down"] + kinds["ReencryptRequest"] \
        == r_real.summary["bytes_total"]
    roles = r_real.summary["crypto_host_s_by_role"]
    assert roles["dsp_dsp_stage"] > 0 and roles["kts_kts_stage"] > 0
    # the plaintext phong run on the same schedule reaches the same accuracy
    _, plain = _run(_cfg(scheme="none", mode="priced"))
    assert abs(plain.summary["final_accuracy"] - r_real.summary["final_accuracy"]) <= 0.005


def test_hres_dsp_colluding_with_a_participant_opens_no_upload_but_downloads_open_for_their_owner():
    from crowdlearn.crypto.hres import HRESDecryptionError
    sim, _ = _run(_hres_cfg("real"))
    srv, scheme = sim.driver.machines["server"], sim.ctx.extra["he"].scheme
    assert len(srv.uploads_seen) == 8
    assert srv.collusion_view(scheme, colluder=0) == {}
    # a download re-encrypted for participant 2 opens under sk_2 only
    down = scheme.kts_stage(scheme.dsp_stage(srv.enc_w, 2), 2)
    assert np.array_equal(scheme.decrypt(down, 2), srv.enc_w.oracle)
    assert len(down.wire_bytes()) == down.nbytes
    for who in (0, 1, 3, "dsp", "kts"):
        with pytest.raises(HRESDecryptionError):
            scheme.decrypt(down, who)


@pytest.mark.parametrize("protocol", ["phong", "hres"])
def test_attack_suite_scores_the_collusion_view(protocol):
    """privacy.attacks = true: Phong's coalition decrypts and attacks every other participant's
    upload; HRES's (priced mode refuses exactly what real mode refuses) decrypts none."""
    raw = {"protocol": protocol, "rounds": 1, "seed": 3, "fleet": {"devices": 4, "cells": 1},
           "model": {"hidden": [16]}, "privacy": {"attacks": True},
           "he": {"mode": "priced", "key_bits": 512, "scheme": "paillier"}}
    s = _run(from_dict(raw))[1].summary
    assert s["collusion_uploads_seen"] == 3
    if protocol == "phong":
        assert s["collusion_uploads_decrypted"] == 3 and s["reconstruction_uploads"] == 3
        # scored as an attacker would (candidate picked without the truth, issue 17): on a
        # whole epoch's update of a 16-unit model it need not beat a random public image; the
        # single-sample case, where it must, is test_colluding_server_reconstructs_a_victims_input...
        assert np.isfinite(s["reconstruction_psnr"]) and np.isfinite(
            s["reconstruction_random_public_psnr"])
    else:
        assert s["collusion_uploads_decrypted"] == 0 and "reconstruction_uploads" not in s
