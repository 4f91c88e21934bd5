"""Laws of the secure-aggregation primitives: Shamir, PRG masks, quantisation, key agreement."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdlearn.crypto import keyagreement as ka
from crowdlearn.crypto import masking, shamir

secrets_ = st.integers(min_value=0, max_value=int(shamir.PRIME) - 1)


@settings(max_examples=40, deadline=None)
@given(secret=secrets_, n=st.integers(1, 12), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_any_t_shares_reconstruct_the_secret(secret, n, data, seed):
    t = data.draw(st.integers(1, n))
    shares = shamir.split(secret, n=n, t=t, rng=np.random.default_rng(seed))
    pick = data.draw(st.lists(st.sampled_from(range(n)), min_size=t, max_size=n, unique=True))
    assert shamir.reconstruct([shares[i] for i in pick]) == secret


@settings(max_examples=30, deadline=None)
@given(secret=secrets_, other=secrets_, n=st.integers(2, 8), data=st.data(),
       seed=st.integers(0, 2**32 - 1))
def test_t_minus_one_shares_are_consistent_with_any_secret(secret, other, n, data, seed):
    """Hiding: for t-1 shares of ``secret`` there is a degree t-1 polynomial through them with
    constant term ``other`` (so they say nothing about which secret was shared)."""
    t = data.draw(st.integers(2, n))
    shares = shamir.split(secret, n=n, t=t, rng=np.random.default_rng(seed))[:t - 1]
    # the polynomial through (0, other) and the t-1 shares has degree <= t-1: evaluate it at a
    # fresh point and check that those t points reconstruct ``other``
    pts = [(0, other)] + shares
    xs = [x for x, _ in pts]
    x_new = n + 1
    y_new = 0
    for j, (xj, yj) in enumerate(pts):
        num = den = 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * (x_new - xm) % int(shamir.PRIME)
                den = den * (xj - xm) % int(shamir.PRIME)
        y_new = (y_new + yj * num * pow(den, -1, int(shamir.PRIME))) % int(shamir.PRIME)
    assert shamir.reconstruct(shares + [(x_new, y_new)]) == other


def test_shamir_rejects_bad_parameters(rng):
    with pytest.raises(ValueError, match="threshold t must be in"):
        shamir.split(1, n=3, t=4, rng=rng)
    with pytest.raises(ValueError, match="distinct"):
        shamir.lagrange_at_zero([1, 1])
    y = shamir.split(5, n=3, t=2, rng=rng)[0][1]
    assert shamir.share_from_bytes(shamir.share_to_bytes(y)) == y


@settings(max_examples=30, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), d=st.integers(0, 300), bits=st.integers(1, 62))
def test_prg_is_deterministic_in_range_and_masks_cancel(seed, d, bits):
    m = masking.prg(seed, d, bits)
    assert m.shape == (d,) and (m < np.uint64(1) << np.uint64(bits)).all()
    assert np.array_equal(m, masking.prg(seed, d, bits))
    x = masking.prg(bytes(32), d, bits)
    assert np.array_equal(masking.sub_mod(masking.add_mod(x, m, bits), m, bits), x)


def test_prg_output_is_uniform_chi_square():
    from scipy.stats import chisquare
    m = masking.prg(b"\x01" * 32, 200_000, 16)
    counts = np.bincount((m >> np.uint64(8)).astype(np.int64), minlength=256)   # top byte
    assert chisquare(counts).pvalue > 1e-3
    assert not np.array_equal(m, masking.prg(b"\x02" * 32, 200_000, 16))


@settings(max_examples=50, deadline=None)
@given(xs=st.lists(st.lists(st.floats(-3, 3), min_size=5, max_size=5), min_size=1, max_size=30),
       qb=st.integers(2, 20), clip=st.floats(0.01, 4.0))
def test_sum_of_quantised_vectors_is_exact_below_the_bound(xs, qb, clip):
    n = len(xs)
    bits = masking.min_modulus_bits(n, qb)
    qs = [masking.quantise(np.array(x), clip=clip, quant_bits=qb, modulus_bits=bits) for x in xs]
    total = np.zeros(5, np.uint64)
    for q in qs:
        total = masking.add_mod(total, q, bits)
    ints = [np.rint(np.clip(x, -clip, clip) * (masking.levels(qb) / clip)) for x in xs]
    expect = np.sum(ints, axis=0) * (clip / masking.levels(qb))
    np.testing.assert_allclose(masking.dequantise(total, clip=clip, quant_bits=qb,
                                                  modulus_bits=bits), expect, rtol=0, atol=1e-9)
    # and the quantisation error of one vector is at most half a step
    step = clip / masking.levels(qb)
    back = masking.dequantise(qs[0], clip=clip, quant_bits=qb, modulus_bits=bits)
    assert np.all(np.abs(back - np.clip(xs[0], -clip, clip)) <= step / 2 + 1e-9)


@settings(max_examples=40, deadline=None)
@given(d=st.integers(0, 200), bits=st.integers(1, 62), seed=st.integers(0, 2**32 - 1))
def test_pack_roundtrip_and_length(d, bits, seed):
    v = masking.prg(np.random.default_rng(seed).bytes(32), d, bits)
    data = masking.pack(v, bits)
    assert len(data) == masking.packed_len(d, bits)
    assert np.array_equal(masking.unpack(data, d, bits), v)
    with pytest.raises(ValueError, match="take"):
        masking.unpack(data + b"x", d, bits)


@settings(max_examples=20, deadline=None)
@given(a=st.binary(min_size=32, max_size=32), b=st.binary(min_size=32, max_size=32),
       msg=st.binary(max_size=100), info=st.binary(max_size=20))
def test_key_agreement_is_symmetric_and_aead_authenticates(a, b, msg, info):
    ka_, kb = ka.keypair(a), ka.keypair(b)
    k = ka.agree(ka_, ka.public_bytes(kb), info)
    assert k == ka.agree(kb, ka.public_bytes(ka_), info) and len(k) == 32
    assert k != ka.agree(ka_, ka.public_bytes(kb), info + b"x")
    box = ka.seal(k, msg, aad=b"hdr")
    assert ka.open_sealed(k, box, aad=b"hdr") == msg
    with pytest.raises(ka.InvalidTag):
        ka.open_sealed(k, box, aad=b"other")


def test_doctests_of_the_secagg_and_dp_modules():
    import doctest

    from crowdlearn.crypto import costs
    from crowdlearn.privacy import dp_fedavg
    from crowdlearn.protocols import secagg
    for module in (shamir, masking, ka, costs, secagg, dp_fedavg):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__
