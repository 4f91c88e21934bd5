import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from crowdlearn.protocols import wire
from crowdlearn.protocols.messages import Decline, RoundStart, Update

arrays = hnp.arrays(dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8]),
                    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=5))


@settings(max_examples=50, deadline=None)
@given(rnd=st.integers(0, 2**31), ws=st.lists(arrays, max_size=4), n=st.integers(0, 10**6))
def test_update_round_trips_exactly(rnd, ws, n):
    msg = Update(rnd, tuple(ws), n)
    assert wire.size(msg) == len(wire.encode(msg))
    back = wire.decode(wire.encode(msg))
    assert back.round == rnd and back.num_samples == n
    assert len(back.weights) == len(ws)
    for a, b in zip(ws, back.weights):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_size_is_payload_plus_small_header():
    w = (np.zeros((784, 128), np.float32), np.zeros(128, np.float32))
    size = wire.size(Update(3, w, 600))
    payload = 4 * (784 * 128 + 128)
    assert payload < size < payload + 64
    # a size depends on shapes, never on values
    assert size == wire.size(Update(3, (np.ones((784, 128), np.float32),
                                        np.ones(128, np.float32)), 600))


def test_strings_floats_and_nested():
    msg = RoundStart(1, (np.arange(3, dtype=np.float32),), 2, 32, 0.125)
    assert wire.decode(wire.encode(msg)).lr == 0.125
    assert wire.decode(wire.encode(Decline(4, "memory"))).reason == "memory"


def test_unregistered_and_bad_values_are_rejected():
    with pytest.raises(TypeError, match="not a registered"):
        wire.encode(object())
    with pytest.raises(TypeError, match="cannot encode"):
        wire.encode(Decline(1, object()))
    with pytest.raises(ValueError):
        wire.decode(wire.encode(Decline(1, "x")) + b"junk")


def test_deferred_results_are_sized_without_computing_and_encode_their_value():
    from crowdlearn.training.jobs import Executor, TrainJob
    from crowdlearn.training.models import mlp
    spec = mlp(3, [2], 2)
    w = spec.init_weights(np.random.default_rng(0))
    calls = []

    def runner(jobs):
        calls.append(len(jobs))
        return [[a + 1 for a in j.task.weights] for j in jobs]

    ex = Executor({"train": runner})
    job = TrainJob.build(spec, w, np.arange(4), epochs=1, batch_size=2, lr=0.1,
                         rng=np.random.default_rng(0))
    lazy = ex.deferred(ex.submit(job))
    msg = Update(0, lazy, 4)
    eager = Update(0, tuple(w), 4)
    assert wire.size(msg) == wire.size(eager) and calls == []
    data = wire.encode(msg)
    assert calls == [1] and len(data) == wire.size(msg)
    np.testing.assert_array_equal(wire.decode(data).weights[1], w[1] + 1)
