"""SliceNet execution: the piece-by-piece step equals the monolithic step, which equals Keras (spec
section 3), and its messages are exactly the traffic the cost graph predicts (spec section 1)."""

from __future__ import annotations

import numpy as np
import pytest

from crowdlearn.errors import CrowdlearnError
from slicenet.execution import (
    DOMINATOR,
    Message,
    PiecewiseNetwork,
    count_floats,
    monolithic_step,
    piecewise_step,
    weight_specs,
)
from slicenet.graph import (
    Activation,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    ModelDescription,
    paper_mlp_description,
    traffic_per_sample,
)
from slicenet.keras_io import build_keras
from slicenet.partition import partition

BATCH = 32
LR = 0.1
TOL = 1e-5


def _maxdiff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        assert u.shape == v.shape
    return max(float(np.abs(u - v).max()) for u, v in zip(a, b, strict=True))


def _start(desc: ModelDescription, seed: int) -> list[np.ndarray]:
    """Keras' initial weights, with biases and batch-norm parameters/statistics perturbed so that
    none of them sits at a trivial value (gamma 1, beta 0, mean 0, variance 1, bias 0)."""
    rng = np.random.default_rng(seed)
    ws = build_keras(desc, seed=seed).get_weights()
    out = []
    for w, s in zip(ws, weight_specs(desc), strict=True):
        if s.role in ("bias", "beta", "moving_mean"):
            w = w + rng.normal(scale=0.1, size=w.shape)
        elif s.role in ("gamma", "moving_variance"):
            w = w * rng.uniform(0.5, 1.5, size=w.shape)
        out.append(np.asarray(w, np.float32))
    return out


def _batch(desc: ModelDescription, seed: int, batch: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_out = [lay for lay in desc.layers if isinstance(lay, Dense)][-1].units
    x = rng.normal(size=(batch, desc.input_shape[0])).astype(np.float32)
    return x, rng.integers(0, n_out, batch)


def _keras_step(desc, weights, x, y, lr):
    import keras

    model = build_keras(desc, seed=0)
    model.set_weights(weights)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    loss = model.train_on_batch(x, y)
    return model.get_weights(), float(np.asarray(loss).reshape(-1)[0])


def _check_traffic(graph, assignment, n, msgs, batch=BATCH) -> None:
    """Message floats == traffic_per_sample × batch: totals, per piece and for the dominator."""
    tr = traffic_per_sample(graph, assignment, n)
    assert count_floats(msgs) == (tr.forward_floats * batch, tr.backward_floats * batch)
    for p in range(n):
        load = sum(m.floats for m in msgs if p in (m.src, m.dst))
        assert load == tr.piece_floats[p] * batch, p
    dom = sum(m.floats for m in msgs if DOMINATOR in (m.src, m.dst))
    assert dom == tr.dominator_floats * batch


# --------------------------------------------------------------------------- paper MLP


@pytest.fixture(scope="module")
def mlp():
    desc = paper_mlp_description()
    return desc, desc.graph()


@pytest.fixture(scope="module")
def start(mlp):
    desc, _ = mlp
    return _start(desc, 11), *_batch(desc, 12)


@pytest.fixture(scope="module")
def mono(mlp, start):
    desc, _ = mlp
    w0, x, y = start
    return monolithic_step(desc, w0, x, y, LR)


def test_weight_layout_is_keras_get_weights_order(mlp):
    desc, _ = mlp
    specs = weight_specs(desc)
    assert [s.shape for s in specs] == [w.shape for w in build_keras(desc).get_weights()]
    assert [s.role for s in specs[:6]] == ["gamma", "beta", "moving_mean", "moving_variance",
                                           "kernel", "bias"]
    assert sum(s.trainable for s in specs) == 16   # 4 kernels, 4 biases, 4 × (gamma, beta)


def test_monolithic_step_matches_keras(mlp, start, mono):
    desc, _ = mlp
    w0, x, y = start
    w_mono, loss_mono = mono
    w_keras, loss_keras = _keras_step(desc, w0, x, y, LR)
    assert _maxdiff(w_mono, w_keras) <= TOL
    assert loss_mono == pytest.approx(loss_keras, abs=1e-5)
    # the step really moved the weights, moving statistics included.  Not the biases feeding a
    # batch norm, nor the input batch norm's beta: the next batch norm removes any per-feature
    # shift, so their gradient is 0 (up to rounding)
    still = {"input/bn/beta", "dense0/bias", "dense1/bias", "dense2/bias"}
    for w_new, w_old, s in zip(w_mono, w0, weight_specs(desc), strict=True):
        moved = float(np.abs(w_new - w_old).max())
        assert moved < 1e-6 if s.name in still else moved > 1e-4, s.name
    assert loss_mono == pytest.approx(float(np.log(10)), abs=1.0)


@pytest.mark.parametrize("n", [5, 10])
def test_piecewise_step_with_metis_plan_equals_monolithic(mlp, start, mono, n):
    desc, graph = mlp
    w0, x, y = start
    plan = partition(graph, n)
    w_piece, loss_piece, msgs = piecewise_step(desc, plan, w0, x, y, LR)
    w_mono, loss_mono = mono
    assert _maxdiff(w_piece, w_mono) <= TOL
    assert loss_piece == pytest.approx(loss_mono, abs=1e-6)
    _check_traffic(graph, plan.assignment, n, msgs)
    assert sum(m.nbytes for m in msgs) == plan.traffic_bytes_per_sample * BATCH


@pytest.mark.parametrize("method", ["random", "contiguous", "layerwise"])
def test_piecewise_step_with_other_plans_equals_monolithic(mlp, start, mono, method):
    desc, graph = mlp
    w0, x, y = start
    plan = partition(graph, 5, method=method, seed=3)
    w_piece, loss_piece, msgs = piecewise_step(desc, plan.assignment, w0, x, y, LR)
    assert _maxdiff(w_piece, mono[0]) <= TOL
    assert loss_piece == pytest.approx(mono[1], abs=1e-6)
    _check_traffic(graph, plan.assignment, 5, msgs)


def test_messages_follow_the_protocol(mlp, start):
    """Forward: dominator → hidden-1, piece → piece one partial sum per target unit, last hidden →
    dominator; backward: the same edges reversed, carrying one error per unit."""
    desc, graph = mlp
    w0, x, y = start
    plan = partition(graph, 5)
    _, _, msgs = piecewise_step(desc, plan, w0, x, y, LR)
    L = graph.num_layers
    fw = [m for m in msgs if m.kind == "forward"]
    bw = [m for m in msgs if m.kind == "backward"]
    assert len(fw) + len(bw) == len(msgs)
    for m in msgs:
        assert isinstance(m, Message) and m.src != m.dst
        assert m.values.dtype == np.float32 and m.values.shape == (BATCH, len(m.units))
        assert np.isfinite(m.values).all()
    for m in fw:
        if m.src == DOMINATOR:
            assert m.layer == 0
        elif m.dst == DOMINATOR:
            assert m.layer == L and m.values.shape[1] == graph.output_units
        else:
            assert 0 < m.layer < L
        if m.dst != DOMINATOR:   # the recipient holds exactly these units of that layer
            sl = graph.layer_slice(m.layer)
            held = graph.first[sl][plan.assignment[sl] == m.dst]
            assert np.array_equal(np.sort(m.units), np.sort(held))
    key = lambda m, rev: ((m.dst, m.src) if rev else (m.src, m.dst), m.layer, tuple(m.units))  # noqa: E731
    assert sorted(key(m, True) for m in fw) == sorted(key(m, False) for m in bw)
    # the dominator's hidden-1 sums are x_bn @ W1: every piece gets its neurons' columns only
    assert sum(m.floats for m in fw if m.src == DOMINATOR) == BATCH * graph.layer_sizes[0]


def test_stateful_network_over_several_steps(mlp, start):
    desc, graph = mlp
    w0, _, _ = start
    net = PiecewiseNetwork(desc, partition(graph, 5), w0)
    w_mono = w0
    for step in range(3):
        x, y = _batch(desc, 100 + step)
        loss_p, _ = net.step(x, y, LR)
        w_mono, loss_m = monolithic_step(desc, w_mono, x, y, LR)
        assert loss_p == pytest.approx(loss_m, abs=1e-5)
    assert _maxdiff(net.get_weights(), w_mono) <= TOL


def test_block_granularity_plan(mlp, start, mono):
    desc, _ = mlp
    w0, x, y = start
    graph = desc.graph(granularity="block", block_size=48)
    plan = partition(graph, 4)
    w_piece, _, msgs = piecewise_step(desc, plan, w0, x, y, LR, graph=graph)
    assert _maxdiff(w_piece, mono[0]) <= TOL
    _check_traffic(graph, plan.assignment, 4, msgs)


# --------------------------------------------------------------------------- other dense chains

ODD = ModelDescription(
    (6,),
    (Dense(5, activation="tanh", use_bias=False), Dense(4), Activation("sigmoid"), BatchNorm(),
     Dense(3), BatchNorm(), Activation("log_softmax")),
    name="odd",
)


def test_monolithic_matches_keras_on_unusual_chain():
    """No bias, activation inside Dense, BN after the activation, BN on the output layer."""
    w0, (x, y) = _start(ODD, 5), _batch(ODD, 6, batch=16)
    w_mono, loss = monolithic_step(ODD, w0, x, y, 0.5)
    w_keras, loss_keras = _keras_step(ODD, w0, x, y, 0.5)
    assert _maxdiff(w_mono, w_keras) <= TOL
    assert loss == pytest.approx(loss_keras, abs=1e-5)


@pytest.mark.parametrize(
    "assignment",
    [
        [0] * 9,                               # n = 1: everything on one piece, no hidden cut
        [0, 2, 0, 2, 0, 2, 2, 0, 2],           # piece 1 empty
        [1, 0, 0, 0, 0, 1, 0, 1, 1],           # both pieces span both layers
        [0, 1, 2, 3, 4, 5, 6, 7, 8],           # one neuron per piece
    ],
)
def test_piecewise_on_unusual_chain(assignment):
    w0, (x, y) = _start(ODD, 5), _batch(ODD, 6, batch=16)
    w_mono, loss_m = monolithic_step(ODD, w0, x, y, 0.5)
    w_piece, loss_p, msgs = piecewise_step(ODD, assignment, w0, x, y, 0.5)
    assert _maxdiff(w_piece, w_mono) <= TOL
    assert loss_p == pytest.approx(loss_m, abs=1e-6)
    n = max(assignment) + 1
    _check_traffic(ODD.graph(), assignment, n, msgs, batch=16)


def test_model_without_hidden_layer_sends_nothing():
    desc = ModelDescription((4,), (BatchNorm(), Dense(3)))
    w0, (x, y) = _start(desc, 1), _batch(desc, 2, batch=8)
    w_mono, loss_m = monolithic_step(desc, w0, x, y, 0.1)
    w_piece, loss_p, msgs = piecewise_step(desc, np.zeros(0, np.int64), w0, x, y, 0.1)
    assert msgs == [] and _maxdiff(w_piece, w_mono) <= TOL
    assert loss_p == pytest.approx(loss_m, abs=1e-6)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "desc, match",
    [
        # convolutional models are executed (tests/test_slicenet_cnn.py), dropout still is not
        (ModelDescription((6, 6, 1), (Conv2D(2, 3), Flatten(), Dropout(0.5), Dense(2))),
         "dropout"),
        (ModelDescription((4,), (Dense(3), Dropout(0.5), Dense(2))), "dropout"),
        (ModelDescription((4,), (Dense(3), Activation("softmax"), Dense(2))), "element-wise"),
        (ModelDescription((4,), (BatchNorm(),)), "no Dense"),
    ],
)
def test_unsupported_models_are_rejected(desc, match):
    with pytest.raises(CrowdlearnError, match=match):
        weight_specs(desc)


def test_bad_inputs_are_rejected(mlp, start):
    desc, graph = mlp
    w0, x, y = start
    a = partition(graph, 5).assignment
    with pytest.raises(CrowdlearnError, match="weight arrays"):
        monolithic_step(desc, w0[:-1], x, y, LR)
    with pytest.raises(CrowdlearnError, match="shape"):
        monolithic_step(desc, [w.T for w in w0], x, y, LR)
    with pytest.raises(CrowdlearnError, match="x has shape"):
        monolithic_step(desc, w0, x[:, :10], y, LR)
    with pytest.raises(CrowdlearnError, match="labels"):
        monolithic_step(desc, w0, x, y + 10, LR)
    with pytest.raises(CrowdlearnError, match="assignment"):
        piecewise_step(desc, a[:-1], w0, x, y, LR)
    with pytest.raises(CrowdlearnError, match="do not match"):
        piecewise_step(desc, a, w0, x, y, LR, graph=ODD.graph())
    bad = ModelDescription((4,), (Dense(3), Activation("no_such_act"), Dense(2)))
    with pytest.raises(CrowdlearnError, match="activation"):
        monolithic_step(bad, [np.zeros(s.shape, np.float32) for s in weight_specs(bad)],
                        np.zeros((2, 4), np.float32), [0, 1], LR)
