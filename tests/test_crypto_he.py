"""Homomorphic encryption for Phong et al. and HRES: exactness laws, overflow, key separation, sizes.

Keys here are small and derived from fixed seeds (``CryptoRandom(seed=...)``): reproducible and
**insecure**, which is what a test wants.  Moduli and LWE moduli (p, q) are the real ones where the
cost allows (LWE: Phong's p and q with a small n_lwe and vector length).
"""
import gmpy2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdlearn.crypto.fixedpoint import FixedPoint, FixedPointRangeError, PackingOverflowError
from crowdlearn.crypto.hres import (
    HRESDecryptionError,
    HRESGroup,
    HRESPacking,
    dsp_reencrypt,
    kts_reencrypt,
)
from crowdlearn.crypto.lwe import LWEKey, LWEParams, LWEVector, _matvec_zq, zq_from_ints, zq_to_ints
from crowdlearn.crypto.paillier import (
    PaillierPacking,
    PaillierVector,
    RandomnessPool,
    generate_keypair,
    pack,
    unpack,
)
from crowdlearn.crypto.randomness import CryptoRandom

SETTINGS = settings(max_examples=25, deadline=None)


@pytest.fixture(scope="module", params=["standard", "subgroup"])
def paillier_sk(request):
    """Every Paillier law below holds for both variants (subgroup: 64-bit alpha_p, alpha_q)."""
    return generate_keypair(512, rand=CryptoRandom(seed="paillier-test"), variant=request.param,
                            alpha_bits=64)


@pytest.fixture(scope="module")
def hres_setup():
    rnd = CryptoRandom(seed="hres-test")
    group = HRESGroup.generate(512, rand=rnd)
    keys = {name: group.keypair(rand=rnd) for name in ("dsp", "kts", "alice", "bob")}
    PK = group.joint_key(keys["dsp"].pk, keys["kts"].sk)
    return group, keys, PK


def signed(prec):
    return st.integers(-2 ** (prec - 1), 2 ** (prec - 1) - 1)


# ---------------------------------------------------------------- randomness

def test_randomness_seeded_streams_replay_and_os_streams_differ():
    assert CryptoRandom(seed=3).bytes(32) == CryptoRandom(seed=3).bytes(32)
    assert CryptoRandom(seed=3).bytes(32) != CryptoRandom(seed=4).bytes(32)
    assert CryptoRandom().bytes(32) != CryptoRandom().bytes(32)
    assert not CryptoRandom().seeded and CryptoRandom(seed=1).seeded


def test_gaussian_has_the_requested_spread_and_tail_cut():
    x = CryptoRandom(seed=5).gaussian(200_000, 8.0)
    assert abs(x.mean()) < 0.1 and abs(x.std() - 8.0) < 0.1
    assert np.abs(x).max() <= 96


def test_primes_have_the_requested_size():
    p = CryptoRandom(seed=6).prime(256)
    assert p.bit_length() == 256 and gmpy2.is_prime(p)


# ---------------------------------------------------------------- Paillier

def test_crt_decryption_matches_textbook_decryption(paillier_sk):
    sk, pub = paillier_sk, paillier_sk.public_key
    n, n2 = int(pub.n), int(pub.nsquare)
    lam = (int(sk.p) - 1) * (int(sk.q) - 1)
    mu = pow((pow(n + 1, lam, n2) - 1) // n, -1, n)
    rnd = CryptoRandom(seed=8)
    for _ in range(10):
        m = int(rnd.below(pub.n))
        c = pub.raw_encrypt(m, pub.raw_rn(rnd))
        assert sk.raw_decrypt(c) == m == (pow(int(c), lam, n2) - 1) // n * mu % n


def test_subgroup_key_h_has_order_alpha_and_decryption_needs_alpha():
    sk = generate_keypair(512, rand=CryptoRandom(seed="subgroup"), variant="subgroup", alpha_bits=64)
    pub, ap, aq = sk.public_key, int(sk.alpha_p), int(sk.alpha_q)
    assert gmpy2.is_prime(ap) and gmpy2.is_prime(aq) and ap.bit_length() == aq.bit_length() == 64
    assert (int(sk.p) - 1) % ap == 0 and (int(sk.q) - 1) % aq == 0 and pub.alpha_bits == (ap * aq).bit_length()
    h, n2 = int(pub.h), int(pub.nsquare)
    assert pow(h, ap * aq, n2) == 1 and pow(h, ap, n2) != 1 and pow(h, aq, n2) != 1
    c = pub.raw_encrypt(12345, sk.fast_rn(CryptoRandom(seed=1)))
    assert sk.raw_decrypt(c) == 12345
    # the same factors with an exponent that does not kill h^r (2 divides p - 1 too) decrypt wrongly
    wrong = type(sk)(pub, sk.p, sk.q, 2, 2)
    assert wrong.raw_decrypt(c) != 12345
    with pytest.raises(ValueError, match="alpha_p must divide p - 1"):
        type(sk)(pub, sk.p, sk.q, ap + 2, aq)
    with pytest.raises(ValueError, match="variant must be one of"):
        generate_keypair(512, variant="fast")


def test_pool_values_are_nth_residues(paillier_sk):
    # an n-th residue is an encryption of 0: the CRT-filled pool must decrypt to 0
    pool = paillier_sk.pool(8, rand=CryptoRandom(seed=9))
    assert [paillier_sk.raw_decrypt(v) for v in pool.take(8)] == [0] * 8
    with pytest.raises(ValueError, match="pool has 0 values left"):
        pool.take(1)


@SETTINGS
@given(values=st.lists(st.integers(0, 2 ** 20 - 1), min_size=1, max_size=60), slots=st.integers(1, 9))
def test_pack_unpack_round_trip(values, slots):
    v = np.array(values, dtype=np.int64)
    assert unpack(pack(v, 20, slots), 20, slots, len(v)).tolist() == values


@SETTINGS
@given(data=st.data(), k=st.integers(1, 5), length=st.integers(1, 40), pad=st.integers(3, 15))
def test_paillier_decrypt_of_sum_is_sum_of_encodings(paillier_sk, data, k, length, pad):
    codec = PaillierPacking(paillier_sk.public_key, prec=32, pad=pad)
    rows = [data.draw(st.lists(signed(32), min_size=length, max_size=length)) for _ in range(k)]
    rnd = CryptoRandom(seed=10)
    total = None
    for row in rows:
        c = codec.encrypt(row, pool=paillier_sk.pool(codec.num_ciphertexts(length), rand=rnd))
        total = c if total is None else total + c
    assert total.count == k
    assert codec.decrypt(total, paillier_sk).tolist() == np.sum(rows, axis=0).tolist()


def test_paillier_extreme_values_at_the_pad_limit_then_overflow_raises(paillier_sk):
    pad = 3
    codec = PaillierPacking(paillier_sk.public_key, prec=8, pad=pad)
    rnd = CryptoRandom(seed=11)
    lo, hi = [-128] * 30, [127] * 30
    for row in (lo, hi):
        enc = codec.encrypt(row, rand=rnd)
        total = enc
        for _ in range(2 ** pad - 1):
            total = total + enc
        assert codec.decrypt(total, paillier_sk).tolist() == [row[0] * 2 ** pad] * 30
        with pytest.raises(PackingOverflowError, match=r"pad=3 allows 8.*raise pad to at least 4"):
            total + enc


def test_paillier_sizes_and_wire_round_trip(paillier_sk):
    codec = PaillierPacking(paillier_sk.public_key, prec=32, pad=15)
    assert codec.slots == (512 - 1) // 47
    c = codec.encrypt(np.arange(-50, 50), rand=CryptoRandom(seed=12))
    data = c.to_bytes()
    assert len(data) == c.nbytes == codec.nbytes(100)
    back = PaillierVector.from_bytes(paillier_sk.public_key, data)
    assert codec.decrypt(back, paillier_sk).tolist() == list(range(-50, 50))
    with pytest.raises(ValueError, match="expected"):
        PaillierVector.from_bytes(paillier_sk.public_key, data[:-1])


def test_paillier_other_key_is_refused(paillier_sk):
    other = generate_keypair(512, rand=CryptoRandom(seed="other"))
    codec = PaillierPacking(paillier_sk.public_key)
    c = codec.encrypt([1, 2], rand=CryptoRandom(seed=13))
    with pytest.raises(ValueError, match="does not match"):
        codec.decrypt(c, other)
    with pytest.raises(ValueError, match="different Paillier keys"):
        c + PaillierPacking(other.public_key).encrypt([1, 2], rand=CryptoRandom(seed=14))


def test_paillier_parallel_decryption_and_pool_equal_serial(paillier_sk):
    codec = PaillierPacking(paillier_sk.public_key, prec=32, pad=15)
    v = np.arange(-200, 200)
    pool = RandomnessPool.fill(paillier_sk, codec.num_ciphertexts(len(v)), rand=CryptoRandom(seed=15), workers=2)
    c = codec.encrypt(v, pool=pool)
    assert codec.decrypt(c, paillier_sk, workers=2).tolist() == codec.decrypt(c, paillier_sk).tolist() == v.tolist()


def test_paillier_rejects_key_too_small_for_one_slot():
    with pytest.raises(ValueError, match="cannot hold one 63-bit slot"):
        from crowdlearn.crypto.paillier import slots_per_plaintext
        slots_per_plaintext(62, prec=48, pad=15)


def test_fixed_point_range_error_names_value_and_fix():
    with pytest.raises(FixedPointRangeError, match=r"value 200.0 at index 1.*\|x\| must be < 128"):
        FixedPoint(prec=32, frac_bits=24).encode([0.0, 200.0])


# ---------------------------------------------------------------- LWE

LWE_SMALL = LWEParams(n_lwe=48)


@pytest.fixture(scope="module")
def lwe_key():
    return LWEKey.generate(LWE_SMALL, length=37, rand=CryptoRandom(seed="lwe-test"))


@SETTINGS
@given(seed=st.integers(0, 2 ** 32), rows=st.integers(1, 40), n=st.integers(1, 50))
def test_lwe_matvec_is_exact_mod_q(seed, rows, n):
    rnd = CryptoRandom(seed=seed)
    S = rnd.gaussian((rows, n), 8.0, dtype=np.int8)
    a = [int(rnd.bits(77)) for _ in range(n)]
    hi, lo = zq_from_ints(a)
    got = zq_to_ints(*_matvec_zq(S, hi, lo, 77, chunk=7))
    want = [sum(int(s) * x for s, x in zip(row, a, strict=True)) % 2 ** 77 for row in S.tolist()]
    assert got == want


@SETTINGS
@given(data=st.data(), k=st.integers(1, 6), n_pu=st.integers(1, 4))
def test_lwe_decrypt_of_sum_is_sum_of_encodings(lwe_key, data, k, n_pu):
    vb = LWE_SMALL.value_bits
    rows = [data.draw(st.lists(signed(vb), min_size=37, max_size=37)) for _ in range(k)]
    rnd = CryptoRandom(seed=data.draw(st.integers(0, 1000)))
    total = None
    for row in rows:
        c = lwe_key.encrypt(row, n_pu=n_pu, rand=rnd)
        total = c if total is None else total + c
    assert total.count == k
    assert lwe_key.decrypt(total).tolist() == np.sum(rows, axis=0).tolist()


def test_lwe_value_bound_overflow_raises_and_limit_is_exact():
    params = LWEParams(n_lwe=16, value_bits=46)           # (p - 1) / 2**46 = 4 encodings
    assert params.max_count == 4
    key = LWEKey.generate(params, length=5, rand=CryptoRandom(seed=16))
    worst = [-(2 ** 45)] * 5
    c = key.encrypt(worst, rand=CryptoRandom(seed=17))
    total = c + c + c + c
    assert key.decrypt(total).tolist() == [-(2 ** 47)] * 5
    with pytest.raises(PackingOverflowError, match="allow 4"):
        total + c


def test_lwe_phong_parameters_bound_and_factor():
    pr = LWEParams()
    assert pr.q == 2 ** 77 and pr.p == 2 ** 48 + 1 and pr.tail == 96
    assert pr.max_count == 2 ** 15                       # the value bound binds, not the noise
    # Phong's formula equals the encoded size up to the 22-byte header and the final partial byte
    n_gd = 109_386
    measured = pr.nbytes(n_gd) / (4 * n_gd)
    assert abs(measured - pr.comm_factor(n_gd)) < 1e-3 and round(measured, 2) == 2.47


def test_lwe_wire_round_trip_and_size(lwe_key):
    c = lwe_key.encrypt(np.arange(-18, 19), n_pu=2, rand=CryptoRandom(seed=18))
    data = c.to_bytes()
    assert len(data) == c.nbytes == LWE_SMALL.nbytes(37, 2)
    back = LWEVector.from_bytes(LWE_SMALL, data)
    assert lwe_key.decrypt(back).tolist() == list(range(-18, 19))


def test_lwe_other_key_is_refused(lwe_key):
    other = LWEKey.generate(LWE_SMALL, length=37, rand=CryptoRandom(seed="other"))
    c = lwe_key.encrypt(np.zeros(37, np.int64), rand=CryptoRandom(seed=19))
    with pytest.raises(ValueError, match="another key"):
        other.decrypt(c)


# ---------------------------------------------------------------- HRES

@SETTINGS
@given(data=st.data(), k=st.integers(1, 4), length=st.integers(1, 25))
def test_hres_reencrypted_sum_opens_under_the_target_key_only(hres_setup, data, k, length):
    group, keys, PK = hres_setup
    codec = HRESPacking(group, prec=32, pad=15)
    rnd = CryptoRandom(seed=data.draw(st.integers(0, 1000)))
    rows = [data.draw(st.lists(signed(32), min_size=length, max_size=length)) for _ in range(k)]
    total = None
    for row in rows:
        c = codec.encrypt(row, PK, rand=rnd)
        total = c if total is None else total + c
    target = data.draw(st.sampled_from(["alice", "bob"]))
    req = dsp_reencrypt(group, total, keys["dsp"].sk, keys[target].pk, rand=rnd)
    out = kts_reencrypt(group, req, keys["kts"].sk, keys[target].pk, rand=rnd)
    assert codec.decrypt(out, keys[target].sk).tolist() == np.sum(rows, axis=0).tolist()
    for name in keys:
        if name != target:
            with pytest.raises(HRESDecryptionError):
                codec.decrypt(out, keys[name].sk)


def test_hres_upload_opens_under_no_single_key_and_no_coalition_of_dsp_and_participant(hres_setup):
    group, keys, PK = hres_setup
    codec = HRESPacking(group)
    c = codec.encrypt([5, -6], PK, rand=CryptoRandom(seed=20))
    for name in keys:
        with pytest.raises(HRESDecryptionError):
            codec.decrypt(c, keys[name].sk)
    # the DSP colluding with alice holds a and sk_alice: stripping the DSP share leaves a ciphertext
    # under pk_KTS, which neither of them opens
    stripped = dsp_reencrypt(group, c, keys["dsp"].sk, keys["alice"].pk, rand=CryptoRandom(seed=21))
    from crowdlearn.crypto.hres import HRESVector
    under_kts = HRESVector(group, b"", c.T, stripped.A, c.length, c.count, c.prec, c.pad)
    for sk in (keys["dsp"].sk, keys["alice"].sk, keys["dsp"].sk * keys["alice"].sk):
        with pytest.raises(HRESDecryptionError):
            codec.decrypt(under_kts, sk)
    # ... while the joint secret (never held by one party) does open it: the test is not vacuous
    assert codec.decrypt(c, keys["dsp"].sk * keys["kts"].sk).tolist() == [5, -6]


def test_hres_overflow_and_sizes(hres_setup):
    group, keys, PK = hres_setup
    codec = HRESPacking(group, prec=8, pad=1)
    c = codec.encrypt([127, -128], PK, rand=CryptoRandom(seed=22))
    assert codec.decrypt(c + c, keys["dsp"].sk * keys["kts"].sk).tolist() == [254, -256]
    with pytest.raises(PackingOverflowError):
        c + c + c
    assert len(c.to_bytes()) == c.nbytes == codec.nbytes(2)
    req = dsp_reencrypt(group, c, keys["dsp"].sk, keys["bob"].pk, rand=CryptoRandom(seed=23))
    assert req.nbytes == codec.request_nbytes(2)
    with pytest.raises(ValueError, match="another participant"):
        kts_reencrypt(group, req, keys["kts"].sk, keys["alice"].pk)


def test_he_modules_are_pure():
    # like tests/test_rings.py; socket is tolerated only because gmpy2 itself imports it
    # (importlib.metadata -> email.utils -> socket)
    import subprocess
    import sys
    code = """
import importlib, sys
import gmpy2
base = set(sys.modules)
for name in ('crowdlearn.crypto.paillier', 'crowdlearn.crypto.lwe', 'crowdlearn.crypto.hres'):
    importlib.import_module(name)
print(','.join(m for m in ('simpy', 'tensorflow', 'keras', 'asyncio', 'socket', 'random', 'time')
               if m in sys.modules and m not in base))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ""
