"""Models, batching, and the batched trainer against the Keras reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdlearn.errors import CrowdlearnError
from crowdlearn.training.batching import TrainTask, count_samples, make_batches
from crowdlearn.training.models import LayerSpec, ModelSpec, cnn, linear, mlp

tf = pytest.importorskip("tensorflow")

from crowdlearn.training.fleet_trainer import FleetTrainer, _bucket_devices  # noqa: E402
from crowdlearn.training.keras_ref import KerasReferenceTrainer, build_keras_model  # noqa: E402

ATOL = 1e-5


@pytest.fixture(scope="module")
def digits():
    """sklearn digits scaled to [0, 1], plus a little noise.

    The raw pixels take 17 values, so many pre-activations and max-pool windows tie *exactly*;
    at an exact tie a 1-ulp difference between two correct float32 implementations picks a
    different branch and the weights drift apart (measured: ~1e-3 after 20 steps on raw
    Fashion-MNIST).  The noise removes the ties without changing the learning problem.
    """
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    x = (x / 16.0 + rng.uniform(0, 1e-3, x.shape)).astype(np.float32)
    return x, y.astype(np.int64)


def _tasks(spec, n, sizes, *, epochs=2, batch_size=16, seed=1):
    """One task per size: different sample counts → different step counts and partial batches."""
    rng = np.random.default_rng(seed)
    tasks = []
    for i, size in enumerate(sizes):
        idx = rng.choice(n, size, replace=False)
        w0 = tuple(spec.init_weights(rng))
        lr = 0.05 + 0.05 * (i % 3)
        tasks.append(
            TrainTask(w0, make_batches(idx, epochs=epochs, batch_size=batch_size, rng=rng), lr)
        )
    return tasks


def _assert_same(a, b, atol=ATOL):
    assert len(a) == len(b)
    for wa, wb in zip(a, b, strict=True):
        assert len(wa) == len(wb)
        for u, v in zip(wa, wb, strict=True):
            assert u.dtype == np.float32 and u.shape == v.shape
            np.testing.assert_allclose(u, v, atol=atol, rtol=0)


def _assert_moved(out, tasks):
    for w, t in zip(out, tasks, strict=True):
        assert max(np.abs(a - b).max() for a, b in zip(w, t.weights, strict=True)) > 1e-3


# --------------------------------------------------------------------------- equality with Keras
SIZES = [50, 37, 13, 64, 5]  # batch 16: 4, 3, 1, 4, 1 steps per epoch, partial last batches


@pytest.mark.parametrize("strategy", ["vectorized", "per_device"])
def test_mlp_matches_keras(digits, strategy):
    x, y = digits
    spec = mlp(64, [32, 16], 10)
    tasks = _tasks(spec, len(x), SIZES)
    fleet = FleetTrainer(spec, x, y, strategy=strategy).train(tasks)
    ref = KerasReferenceTrainer(spec, x, y).train(tasks)
    _assert_same(fleet, ref)
    _assert_moved(fleet, tasks)


@pytest.mark.parametrize(
    "strategy, jit", [("per_device", None), ("vectorized", False), ("vectorized", True)]
)
def test_cnn_matches_keras(digits, strategy, jit):
    x, y = digits
    spec = cnn((8, 8, 1), filters=(6,), kernel=3, pool=2, dense=(16,), num_outputs=10)
    assert [layer.kind for layer in spec.layers] == [
        "conv2d",
        "maxpool",
        "flatten",
        "dense",
        "dense",
    ]
    tasks = _tasks(spec, len(x), SIZES[:4])
    fleet = FleetTrainer(spec, x, y, strategy=strategy, jit_compile=jit).train(tasks)
    ref = KerasReferenceTrainer(spec, x, y).train(tasks)
    _assert_same(fleet, ref)
    _assert_moved(fleet, tasks)


@pytest.mark.parametrize("strategy", ["vectorized", "per_device"])
def test_mse_matches_keras(strategy):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 5)).astype(np.float32)
    y = (x @ rng.normal(size=5) + 0.1 * rng.normal(size=120)).astype(np.float32)
    spec = mlp(5, [8], 1, activation="tanh", loss="mse")
    # 17 devices: the XLA path pads K to 18 with an idle device; steps 2..10 pad to 16.
    tasks = _tasks(spec, len(x), list(range(5, 39, 2)), batch_size=8)
    fleet_trainer = FleetTrainer(spec, x, y, strategy=strategy)
    fleet = fleet_trainer.train(tasks)
    ref_trainer = KerasReferenceTrainer(spec, x, y)
    _assert_same(fleet, ref_trainer.train(tasks))
    ev, ev_ref = fleet_trainer.evaluate(fleet, x, y), ref_trainer.evaluate(fleet[:3], x, y)
    assert len(ev) == len(tasks)
    ev = ev[:3]
    np.testing.assert_allclose(ev, ev_ref, rtol=1e-5)
    assert all(abs(r - np.sqrt(m)) < 1e-6 for m, r in ev)


def test_mixed_batch_sizes_and_idle_tasks(digits):
    """Groups by B (vectorized) / pads B (per_device); a task with no steps returns its weights."""
    x, y = digits
    spec = linear(64, 10)
    rng = np.random.default_rng(5)
    w0 = tuple(spec.init_weights(rng))
    tasks = [
        TrainTask(w0, make_batches(np.arange(40), epochs=1, batch_size=8, rng=rng), 0.1),
        TrainTask(w0, np.zeros((0, 4), np.int64), 0.1),
        TrainTask(w0, make_batches(np.arange(40, 70), epochs=2, batch_size=None, rng=rng), 0.3),
        TrainTask(w0, make_batches(np.arange(70, 81), epochs=1, batch_size=4, rng=rng), 0.2),
    ]
    ref = KerasReferenceTrainer(spec, x, y).train(tasks)
    for strategy in ("vectorized", "per_device"):
        out = FleetTrainer(spec, x, y, strategy=strategy).train(tasks)
        _assert_same(out, ref)
        assert all(np.array_equal(a, b) for a, b in zip(out[1], w0, strict=True))


def test_vectorized_does_not_retrace(digits):
    x, y = digits
    spec = mlp(64, [16], 10)
    trainer = FleetTrainer(spec, x, y, strategy="vectorized", jit_compile=False)
    trainer.train(_tasks(spec, len(x), [20, 30, 7], batch_size=8))
    trainer.train(_tasks(spec, len(x), [50, 3, 9, 11, 12, 40], batch_size=5))
    assert trainer.traces == 1


def test_bucket_devices_bounds_padding():
    for k in range(1, 600):
        b = _bucket_devices(k)
        assert k <= b <= max(k, int(k * 1.125) + 1)
    assert len({_bucket_devices(k) for k in range(1, 257)}) <= 16 + 8 * 4


# --------------------------------------------------------------------------- learning and evaluation
def test_training_learns_digits(digits):
    x, y = digits
    spec = mlp(64, [32], 10)
    tr, te = np.arange(0, 1400), np.arange(1400, len(x))
    trainer = FleetTrainer(spec, x, y)
    rng = np.random.default_rng(0)
    w0 = tuple(spec.init_weights(rng))
    halves = np.array_split(rng.permutation(tr), 2)
    tasks = [TrainTask(w0, make_batches(h, epochs=5, batch_size=32, rng=rng), 0.2) for h in halves]
    before = trainer.evaluate([list(w0)], x[te], y[te])[0]
    after = trainer.evaluate(trainer.train(tasks), x[te], y[te])
    assert before[1] < 0.3
    for loss, acc in after:
        assert acc > 0.8 and loss < before[0]


@pytest.mark.parametrize("strategy", ["vectorized", "per_device"])
def test_evaluate_matches_keras(digits, strategy):
    x, y = digits
    spec = cnn((8, 8, 1), filters=(4,), dense=(), num_outputs=10)
    rng = np.random.default_rng(2)
    weights = [spec.init_weights(rng) for _ in range(3)]
    trainer = FleetTrainer(spec, x, y, strategy=strategy, jit_compile=False, max_floats=20_000)
    got = trainer.evaluate(weights, x[:500], y[:500], batch_size=128)  # several row chunks
    want = KerasReferenceTrainer(spec, x, y).evaluate(weights, x[:500], y[:500])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- model specs
def test_mlp_counts():
    spec = mlp(784, [128, 64], 10)
    assert spec.param_shapes() == [(784, 128), (128,), (128, 64), (64,), (64, 10), (10,)]
    assert spec.num_params() == 109_386
    # 2·in·out + out per dense layer, + 1 per ReLU output (the output layer is linear)
    fwd = (2 * 784 * 128 + 128 + 128) + (2 * 128 * 64 + 64 + 64) + (2 * 64 * 10 + 10)
    assert fwd == 218_762
    assert spec.forward_flops_per_sample() == fwd
    assert spec.train_flops_per_sample() == 3 * fwd
    assert spec.activation_floats_per_sample() == 128 + 64 + 10
    assert spec.train_memory_bytes(32) == 4 * (3 * 109_386 + 2 * 32 * 202)


def test_cnn_counts():
    spec = cnn((8, 8, 1), filters=(4,), kernel=3, pool=2, dense=(16,), num_outputs=10)
    assert spec.output_shapes() == [(6, 6, 4), (3, 3, 4), (36,), (16,), (10,)]
    assert spec.param_shapes() == [(3, 3, 1, 4), (4,), (36, 16), (16,), (16, 10), (10,)]
    assert spec.num_params() == (9 * 4 + 4) + (36 * 16 + 16) + (16 * 10 + 10) == 802
    conv = 2 * 3 * 3 * 1 * 4 * 6 * 6 + 6 * 6 * 4  # conv + ReLU; pool and flatten are free
    dense = (2 * 36 * 16 + 16 + 16) + (2 * 16 * 10 + 10)
    assert spec.forward_flops_per_sample() == conv + dense == 4250
    assert spec.activation_floats_per_sample() == 144 + 36 + 36 + 16 + 10
    assert cnn((28, 28, 1)).num_params() == 160 + 4640 + 51_264 + 650


@pytest.mark.parametrize(
    "spec",
    [mlp(784, [128, 64], 10), cnn((8, 8, 1), filters=(4,), dense=(16,)), linear(7, 1, loss="mse")],
)
def test_shapes_match_keras(spec):
    model = build_keras_model(spec)
    assert [tuple(w.shape) for w in model.get_weights()] == spec.param_shapes()
    assert model.count_params() == spec.num_params()


def test_init_weights():
    spec = cnn((8, 8, 1), filters=(4,), dense=(16,))
    a = spec.init_weights(np.random.default_rng(7))
    b = spec.init_weights(np.random.default_rng(7))
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert [w.shape for w in a] == spec.param_shapes()
    assert all(w.dtype == np.float32 for w in a)
    assert all(not w.any() for w in a[1::2])  # zero biases
    limit = np.sqrt(6 / (9 * 1 + 9 * 4))  # conv fans: k·k·Cin, k·k·Cout
    assert 0.8 * limit < np.abs(a[0]).max() <= limit
    assert np.abs(a[2]).max() <= np.sqrt(6 / (36 + 16))


@pytest.mark.parametrize(
    "make, words",
    [
        (
            lambda: ModelSpec(
                (64,), (LayerSpec("conv2d", filters=4, kernel=3), LayerSpec("dense", units=10))
            ),
            ["layer 0", "image"],
        ),
        (
            lambda: ModelSpec(
                (8, 8, 1), (LayerSpec("conv2d", filters=4, kernel=3), LayerSpec("dense", units=10))
            ),
            ["layer 1", "flatten"],
        ),
        (lambda: mlp(10, [5], 3, activation="gelu"), ["layer 0", "activation"]),
        (
            lambda: ModelSpec((4,), (LayerSpec("dense", units=3, activation="relu"),)),
            ["layer 0", "activation=None"],
        ),
        (lambda: mlp(4, [3], 10, loss="mse"), ["layer 1", "units=1"]),
        (lambda: linear(4, 1), ["sparse_ce", "mse"]),
        (lambda: cnn((8, 8, 1)), ["layer 3", "pool"]),
        (
            lambda: ModelSpec(
                (8, 8, 1),
                (LayerSpec("flatten"), LayerSpec("maxpool", pool=2), LayerSpec("dense", units=2)),
            ),
            ["layer 1", "maxpool"],
        ),
        (
            lambda: ModelSpec((4,), (LayerSpec("dropout"), LayerSpec("dense", units=2))),
            ["layer 0", "kind"],
        ),
        (lambda: ModelSpec((4,), (LayerSpec("flatten"),)), ["last layer must be dense"]),
        (lambda: ModelSpec((4,), (LayerSpec("dense", units=2),), loss="hinge"), ["loss"]),
    ],
)
def test_invalid_specs(make, words):
    with pytest.raises(CrowdlearnError) as info:
        make()
    for w in words:
        assert w in str(info.value)


def test_spec_is_hashable_and_frozen():
    a, b = mlp(4, [3], 2), mlp(4, [3], 2)
    assert a == b and hash(a) == hash(b)
    with pytest.raises(AttributeError):
        a.loss = "mse"  # type: ignore[misc]


# --------------------------------------------------------------------------- batching
@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60),
    epochs=st.integers(1, 4),
    batch_size=st.one_of(st.none(), st.integers(-1, 70)),
    seed=st.integers(0, 2**32 - 1),
)
def test_make_batches_laws(n, epochs, batch_size, seed):
    idx = np.random.default_rng(seed).choice(1000, n, replace=False)
    out = make_batches(idx, epochs=epochs, batch_size=batch_size, rng=np.random.default_rng(seed))
    b = n if batch_size is None or batch_size <= 0 else batch_size
    per_epoch = -(-n // b)
    assert out.dtype == np.int64 and out.shape == (epochs * per_epoch, b)
    assert count_samples(out) == epochs * n
    for e in range(epochs):
        flat = out[e * per_epoch : (e + 1) * per_epoch].reshape(-1)
        real = flat[flat >= 0]
        assert sorted(real) == sorted(idx)  # every index exactly once per epoch
        assert (flat[len(real) :] == -1).all()  # padding only at the end of the epoch
        assert len(flat) - len(real) < b
    again = make_batches(idx, epochs=epochs, batch_size=batch_size, rng=np.random.default_rng(seed))
    assert np.array_equal(out, again)


def test_make_batches_shuffles_each_epoch():
    out = make_batches(np.arange(50), epochs=2, batch_size=10, rng=np.random.default_rng(0))
    assert not np.array_equal(out[:5], out[5:])
    other = make_batches(np.arange(50), epochs=2, batch_size=10, rng=np.random.default_rng(1))
    assert not np.array_equal(out, other)


def test_make_batches_edge_cases():
    rng = np.random.default_rng(0)
    assert make_batches(np.array([], np.int64), epochs=3, batch_size=4, rng=rng).shape == (0, 4)
    assert make_batches(np.arange(5), epochs=0, batch_size=2, rng=rng).shape == (0, 2)
    assert make_batches(np.arange(5), epochs=1, batch_size=0, rng=rng).shape == (1, 5)
    with pytest.raises(CrowdlearnError):
        make_batches(np.arange(5), epochs=-1, batch_size=2, rng=rng)
    with pytest.raises(CrowdlearnError):
        make_batches(np.array([3, -1]), epochs=1, batch_size=2, rng=rng)
    assert count_samples(np.array([[1, 2], [3, -1]])) == 3
