"""Dense models scored through their inference chain (slicenet.inference: BatchNorm folded into
the Dense layers; the first Dense layer of all the models one product): the same scores as Keras'
layer-by-layer inference, for any order of Dense, BatchNorm, activation and Dropout(0) layers."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slicenet import graph, inference
from slicenet.fused import FusedTrainer
from slicenet.graph import Activation, BatchNorm, Conv2D, Dense, Dropout, Flatten, ModelDescription

CLASSES = 4

_hidden = st.one_of(
    st.builds(Dense, st.integers(1, 9), st.sampled_from([None, "linear", "relu", "tanh"]),
              st.booleans()),
    st.just(BatchNorm()),
    st.sampled_from([Activation("relu"), Activation("sigmoid"), Activation("tanh")]),
    st.just(Dropout(0.0)),
)


@st.composite
def dense_models(draw):
    layers = [Flatten()] if draw(st.booleans()) else []
    layers += draw(st.lists(_hidden, max_size=7))
    tail = draw(st.sampled_from([[], [Activation("log_softmax")], [BatchNorm()],
                                 [BatchNorm(), Activation("log_softmax")]]))
    # (log-softmax only last: the loss takes logits, and the fused path leaves it out)
    last = draw(st.sampled_from([None, "log_softmax"])) if not tail else None
    layers += [Dense(CLASSES, last, draw(st.booleans())), *tail]
    return ModelDescription((draw(st.integers(1, 6)),), tuple(layers))


def _weights(trainer, rng):
    """Initial weights with biases, BN parameters and moving statistics off their trivial
    values (so that a fold that dropped one would show)."""
    out = []
    for a, s in zip(trainer.init_weights(rng), trainer.specs, strict=True):
        if s.role == "moving_variance":
            out.append(rng.uniform(0.3, 2.0, a.shape).astype(np.float32))
        elif s.role == "kernel":
            out.append(a)
        else:
            out.append((a + rng.normal(0, 0.5, a.shape)).astype(np.float32))
    return out


def _keras_scores(desc, weights, x, y) -> tuple[float, float]:
    import keras

    from slicenet.keras_io import build_keras
    model = build_keras(desc)
    model.set_weights(weights)
    logits = model(x, training=False).numpy()
    loss = float(np.mean(keras.losses.sparse_categorical_crossentropy(y, logits,
                                                                      from_logits=True)))
    return loss, logits


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(desc=dense_models(), seed=st.integers(0, 2 ** 16), models=st.integers(1, 3))
def test_a_dense_models_chain_scores_as_keras_layer_by_layer(desc, seed, models):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(37, desc.input_shape[0])).astype(np.float32)
    y = rng.integers(0, CLASSES, len(x))
    trainer = FusedTrainer(desc, x, y)
    weights = [_weights(trainer, rng) for _ in range(models)]
    got = trainer.evaluate(weights, x, y, max_floats=64)      # several chunks of rows
    for w, (loss, acc) in zip(weights, got, strict=True):
        want_loss, logits = _keras_scores(desc, w, x, y)
        assert loss == pytest.approx(want_loss, rel=1e-5, abs=1e-6)
        # a row whose two best logits are within rounding may go either way
        top2 = np.sort(logits, axis=1)[:, -2:]
        near = np.abs(top2[:, 1] - top2[:, 0]) <= 1e-5 * (1 + np.abs(top2[:, 1]))
        right = np.argmax(logits, 1) == y
        assert abs(acc * len(x) - right.sum()) <= near.sum()


def test_paper_mlp_is_four_products_and_its_scores_match_keras():
    desc = graph.paper_mlp_description()
    assert [(s.kind, s.act) for s in inference.chain(desc)] == \
        [("dense", "relu")] * 3 + [("dense", None)]
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(300, 784)).astype(np.float32)
    y = rng.integers(0, 10, len(x))
    trainer = FusedTrainer(desc, x, y)
    weights = [_weights(trainer, rng) for _ in range(3)]
    got = trainer.evaluate(weights, x, y)
    for w, (loss, acc) in zip(weights, got, strict=True):
        want_loss, logits = _keras_scores(desc, w, x, y)
        assert loss == pytest.approx(want_loss, rel=1e-5)
        assert acc == pytest.approx(np.mean(np.argmax(logits, 1) == y))


def test_a_batchnorm_with_no_dense_layer_to_fold_into_stays_a_step():
    desc = ModelDescription((3,), (Dense(4, "relu"), BatchNorm()))
    assert [(s.kind, s.act) for s in inference.chain(desc)] == [("dense", "relu"),
                                                                 ("affine", None)]
    w = [np.eye(3, 4, dtype=np.float32), np.zeros(4, np.float32),
         np.full(4, 2.0, np.float32), np.ones(4, np.float32), np.ones(4, np.float32),
         np.full(4, 1 - 1e-3, np.float32)]
    kernel, bias, scale, shift = inference.fold(desc, w)
    assert scale == pytest.approx(np.full(4, 2.0)) and shift == pytest.approx(np.full(4, -1.0))
    assert kernel.dtype == np.float32 and bias.tolist() == [0.0] * 4


def test_convolutional_models_are_refused_with_the_layer_named():
    with pytest.raises(ValueError, match="Conv2D"):
        inference.chain(graph.paper_cnn_description(input_shape=(28, 28, 1)))
    with pytest.raises(ValueError, match="Conv2D"):
        inference.chain(ModelDescription((4, 4, 1), (Conv2D(2, (3, 3)), Flatten(), Dense(2))))


def test_many_models_are_folded_one_at_a_time_into_their_places():
    """Scoring K dense models holds their folded parameters packed once, plus TensorFlow's copy
    of them (tracemalloc sees both) taken one array at a time: not also a folded copy of every
    model (the S-SGD row scores 120 paper-mlp models, ≈ 200 MB each way).  Before: ≈ 2.9× the
    packed size here; now ≈ 1.93× (the packed arrays, and the largest one twice while
    TensorFlow copies it)."""
    import tracemalloc

    desc = ModelDescription((64,), (BatchNorm(), Dense(48), BatchNorm(), Activation("relu"),
                                    Dense(CLASSES)))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 64)).astype(np.float32)
    y = rng.integers(0, CLASSES, len(x))
    trainer = FusedTrainer(desc, x, y)
    weights = [_weights(trainer, rng) for _ in range(60)]
    want = trainer.evaluate(weights[:2], x, y)           # (traced before measuring)
    one = inference.fold(desc, weights[0])
    packed = sum(p.nbytes for p in one) * len(weights)
    largest = max(p.nbytes for p in one) * len(weights)
    tracemalloc.start()
    try:
        got = trainer.evaluate(weights, x, y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    for (loss, acc), (want_loss, want_acc) in zip(got[:2], want, strict=True):
        assert loss == pytest.approx(want_loss, rel=1e-6) and acc == want_acc   # in its place
    assert peak < packed + largest + 0.1 * packed, (peak, packed, largest)
