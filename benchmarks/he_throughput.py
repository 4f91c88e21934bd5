"""Throughput of the homomorphic schemes on one gradient vector of the 784-128-64-10 MLP (109,386 values).

Measured in one process, on one seeded vector (values ~ N(0, 0.01), the scale of lr * gradient):

* **Paillier** (ours, ``crowdlearn.crypto.paillier``), 2048- and 3072-bit keys, prec 32, pad 15:
  key generation; filling the randomness pool (offline, CRT) with 1 and 2 worker processes; online
  encryption (one multiplication per ciphertext, randomness from the pool); CRT decryption with 1
  and 2 worker processes.  ``paillier_decrypt_s`` is the faster of the two, named in the output.
* **Paillier, subgroup variant** (scheme 3, ``generate_keypair(variant="subgroup")``), 2048-bit,
  ``alpha_p``, ``alpha_q`` of 224 bits: the same steps; ``paillier_subgroup_encrypt_s`` and
  ``paillier_subgroup_decrypt_s`` (faster of 1 and 2 workers).
* **LWE** (Phong's parameters): key generation, encryption and decryption, with 1 and 2 threads;
  ``lwe_encrypt_s`` / ``lwe_decrypt_s`` are the faster.
* **HRES** (2048-bit): encryption under the joint key, the two-stage re-encryption of the whole
  vector to one participant (DSP stage + KTS stage, randomness pairs precomputed — their cost is
  printed apart), and the participant's decryption.
* **python-paillier** (``phe``, ``pip install .[bench]``), 2048-bit: ``EncryptedNumber`` per value
  (phe has no packing), encrypt + decrypt of the first ``--phe-values`` values of the same vector,
  scaled linearly to the full vector (phe's cost per value is constant; the full vector would take
  about 20 minutes).  ``ratio_vs_phe`` = phe's scaled encrypt + decrypt ÷ ours (2048-bit, online
  encryption + decryption); ``ratio_vs_phe_with_pool`` also charges our pool filling.

Run::

    .venv/bin/python benchmarks/he_throughput.py [--phe-values 1000] [--skip-3072]

It prints ``name value`` lines, among them exactly ``paillier_encrypt_s``, ``paillier_decrypt_s``,
``lwe_encrypt_s``, ``lwe_decrypt_s``, ``hres_reencrypt_s`` and ``ratio_vs_phe``, and the load average
before and after (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from crowdlearn.crypto.fixedpoint import FixedPoint
from crowdlearn.crypto.hres import HRESGroup, HRESPacking, dsp_reencrypt, kts_reencrypt
from crowdlearn.crypto.lwe import LWEKey, LWEParams
from crowdlearn.crypto.paillier import PaillierPacking, generate_keypair
from crowdlearn.crypto.randomness import CryptoRandom

N_GRADIENTS = 109_386          # 784*128 + 128 + 128*64 + 64 + 64*10 + 10


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def line(name, value):
    print(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phe-values", type=int, default=1000)
    ap.add_argument("--skip-3072", action="store_true")
    args = ap.parse_args(argv)

    line("load_avg_start", os.getloadavg()[0])
    x = np.random.default_rng(2018).normal(0.0, 0.01, N_GRADIENTS)

    # ---------------- Paillier
    fp = FixedPoint(prec=32, frac_bits=24)
    v = fp.encode(x)
    results = {}
    for bits in ((2048,) if args.skip_3072 else (2048, 3072)):
        prefix = "paillier" if bits == 2048 else f"paillier{bits}"
        sk, t_key = timed(generate_keypair, bits)
        codec = PaillierPacking(sk.public_key, prec=32, pad=15)
        k = codec.num_ciphertexts(len(v))
        line(f"{prefix}_keygen_s", t_key)
        line(f"{prefix}_ciphertexts", k)
        pool_t = {}
        for w in (1, 2):
            pool, pool_t[w] = timed(sk.pool, k, workers=w)
            line(f"{prefix}_pool_{w}w_s", pool_t[w])
        enc, t_enc = timed(codec.encrypt, v, pool=pool)
        dec_t = {}
        for w in (1, 2):
            out, dec_t[w] = timed(codec.decrypt, enc, sk, workers=w)
            assert np.array_equal(out, v), "Paillier round trip failed"
            line(f"{prefix}_decrypt_{w}w_s", dec_t[w])
        best = min(dec_t, key=dec_t.get)
        line(f"{prefix}_encrypt_s", t_enc)
        line(f"{prefix}_decrypt_s", dec_t[best])
        line(f"{prefix}_decrypt_best_workers", best)
        line(f"{prefix}_bytes", enc.nbytes)
        line(f"{prefix}_comm_factor", enc.nbytes / (4 * len(v)))
        results[bits] = (t_enc, dec_t[best], min(pool_t.values()))

    # ---------------- Paillier, subgroup variant (scheme 3), 2048-bit, alpha_p and alpha_q of 224 bits
    sk, t_key = timed(generate_keypair, 2048, variant="subgroup", alpha_bits=224)
    codec = PaillierPacking(sk.public_key, prec=32, pad=15)
    k = codec.num_ciphertexts(len(v))
    line("paillier_subgroup_keygen_s", t_key)
    for w in (1, 2):
        pool, t_pool = timed(sk.pool, k, workers=w)
        line(f"paillier_subgroup_pool_{w}w_s", t_pool)
    enc, t_enc = timed(codec.encrypt, v, pool=pool)
    dec_t = {}
    for w in (1, 2):
        out, dec_t[w] = timed(codec.decrypt, enc, sk, workers=w)
        assert np.array_equal(out, v), "Paillier subgroup round trip failed"
        line(f"paillier_subgroup_decrypt_{w}w_s", dec_t[w])
    best = min(dec_t, key=dec_t.get)
    line("paillier_subgroup_encrypt_s", t_enc)
    line("paillier_subgroup_decrypt_s", dec_t[best])
    line("paillier_subgroup_decrypt_best_workers", best)
    line("paillier_subgroup_encrypt_plus_decrypt_s", t_enc + dec_t[best])
    line("paillier_subgroup_bytes", enc.nbytes)

    # ---------------- LWE
    params = LWEParams()
    lv = FixedPoint(prec=params.value_bits, frac_bits=params.prec).encode(x)
    key, t_key = timed(LWEKey.generate, params, N_GRADIENTS)
    line("lwe_keygen_s", t_key)
    enc_t, dec_t = {}, {}
    for w in (1, 2):
        key.workers = w
        c, enc_t[w] = timed(key.encrypt, lv)
        out, dec_t[w] = timed(key.decrypt, c)
        assert np.array_equal(out, lv), "LWE round trip failed"
        line(f"lwe_encrypt_{w}w_s", enc_t[w])
        line(f"lwe_decrypt_{w}w_s", dec_t[w])
    line("lwe_encrypt_s", min(enc_t.values()))
    line("lwe_decrypt_s", min(dec_t.values()))
    line("lwe_bytes", c.nbytes)
    line("lwe_comm_factor", c.nbytes / (4 * N_GRADIENTS))
    del key

    # ---------------- HRES
    rnd = CryptoRandom()
    group, t_group = timed(HRESGroup.generate, 2048)
    line("hres_group_s", t_group)
    dsp, kts, alice = (group.keypair() for _ in range(3))
    PK = group.joint_key(dsp.pk, kts.sk)
    codec = HRESPacking(group, prec=32, pad=15)
    k = codec.num_ciphertexts(N_GRADIENTS)
    c, t_enc = timed(codec.encrypt, v, PK)
    line("hres_encrypt_s", t_enc)
    pools, t_pairs = timed(lambda: [[group.randomness(alice.pk, rnd) for _ in range(k)] for _ in range(2)])
    line("hres_reencrypt_pool_s", t_pairs)
    req, t_dsp = timed(dsp_reencrypt, group, c, dsp.sk, alice.pk, pool=pools[0])
    out, t_kts = timed(kts_reencrypt, group, req, kts.sk, alice.pk, pool=pools[1])
    line("hres_dsp_stage_s", t_dsp)
    line("hres_kts_stage_s", t_kts)
    line("hres_reencrypt_s", t_dsp + t_kts)
    dec, t_dec = timed(codec.decrypt, out, alice.sk)
    assert np.array_equal(dec, v), "HRES re-encryption round trip failed"
    line("hres_decrypt_s", t_dec)
    line("hres_upload_bytes", c.nbytes)
    line("hres_dsp_to_kts_bytes", req.nbytes)
    line("hres_comm_factor", c.nbytes / (4 * N_GRADIENTS))

    # ---------------- python-paillier on a prefix of the same vector
    from phe import paillier as phe_paillier
    pub, priv = phe_paillier.generate_paillier_keypair(n_length=2048)
    sub = x[:args.phe_values].tolist()
    encs, t_pe = timed(lambda: [pub.encrypt(val) for val in sub])
    outs, t_pd = timed(lambda: [priv.decrypt(e) for e in encs])
    assert np.allclose(outs, sub), "phe round trip failed"
    scale = N_GRADIENTS / len(sub)
    line("phe_values_measured", len(sub))
    line("phe_encrypt_s_scaled", t_pe * scale)
    line("phe_decrypt_s_scaled", t_pd * scale)
    ours_enc, ours_dec, ours_pool = results[2048]
    line("ratio_vs_phe", (t_pe + t_pd) * scale / (ours_enc + ours_dec))
    line("ratio_vs_phe_with_pool", (t_pe + t_pd) * scale / (ours_enc + ours_dec + ours_pool))
    line("load_avg_end", os.getloadavg()[0])


if __name__ == "__main__":
    main()
