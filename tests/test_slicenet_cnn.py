"""SliceNet on convolutional networks: the piece-by-piece step equals the monolithic step, which
equals Keras; messages are exactly the cost graph's traffic; the fused trainer equals repeated
monolithic steps (spec sections 1 and 3, channel granularity)."""

from __future__ import annotations

import numpy as np
import pytest

from crowdlearn.training.batching import TrainTask, make_batches
from slicenet.execution import PiecewiseNetwork, monolithic_step, piecewise_step, weight_specs
from slicenet.graph import (
    Activation,
    BatchNorm,
    Conv2D,
    Dense,
    Flatten,
    MaxPool2D,
    ModelDescription,
    paper_cnn_description,
)
from slicenet.keras_io import build_keras
from slicenet.partition import partition
from tests.test_slicenet_execution import _check_traffic, _keras_step, _maxdiff, _start

TOL = 1e-5
LR = 0.1


def small_cnn() -> ModelDescription:
    """Every supported layer once: same and valid padding, strides, BN on maps and after Flatten."""
    return ModelDescription((10, 10, 2), (
        BatchNorm(),
        Conv2D(6, 3, padding="same"), BatchNorm(), Activation("relu"), MaxPool2D(2),
        Conv2D(5, 2, strides=(1, 1), activation="tanh"), MaxPool2D(2, strides=(1, 1)),
        Flatten(), BatchNorm(),
        Dense(7), BatchNorm(), Activation("relu"),
        Dense(4), Activation("log_softmax"),
    ), name="small-cnn")


def _images(desc, seed, batch):
    rng = np.random.default_rng(seed)
    n_out = [lay for lay in desc.layers if isinstance(lay, Dense)][-1].units
    return (rng.normal(size=(batch, *desc.input_shape)).astype(np.float32),
            rng.integers(0, n_out, batch))


@pytest.fixture(scope="module")
def small():
    desc = small_cnn()
    w0 = _start(desc, 3)
    x, y = _images(desc, 4, 16)
    return desc, w0, x, y, monolithic_step(desc, w0, x, y, LR)


def test_layout_is_keras_order(small):
    desc = small[0]
    assert [s.shape for s in weight_specs(desc)] == \
        [w.shape for w in build_keras(desc).get_weights()]


def test_monolithic_cnn_step_equals_keras(small):
    desc, w0, x, y, (w_mono, loss) = small
    w_keras, loss_keras = _keras_step(desc, w0, x, y, LR)
    assert _maxdiff(w_mono, w_keras) <= TOL
    assert loss == pytest.approx(loss_keras, abs=1e-5)
    assert _maxdiff(w_mono, w0) > 1e-3          # the step moved the weights


@pytest.mark.parametrize("method,n", [("metis", 3), ("random", 4), ("layerwise", 2)])
def test_piecewise_cnn_step_equals_monolithic_and_traffic_is_the_plan(small, method, n):
    desc, w0, x, y, (w_mono, loss_mono) = small
    g = desc.graph()
    plan = partition(g, n, method=method, seed=1)
    w_pw, loss, msgs = piecewise_step(desc, plan, w0, x, y, LR)
    assert _maxdiff(w_pw, w_mono) <= TOL
    assert loss == pytest.approx(loss_mono, abs=1e-6)
    _check_traffic(g, plan.assignment, plan.n, msgs, batch=len(x))
    # a convolutional target's message carries H'·W' values per channel and sample
    conv = [m for m in msgs if m.kind == "forward" and m.layer in (0, 1)]
    assert conv and all(m.values.ndim == 4 for m in conv)


def test_paper_cnn_fashion_variant_piecewise_equals_monolithic_equals_keras():
    desc = paper_cnn_description(input_shape=(28, 28, 1))
    w0 = _start(desc, 5)
    x, y = _images(desc, 6, 8)
    w_mono, loss_mono = monolithic_step(desc, w0, x, y, 0.05)
    w_keras, loss_keras = _keras_step(desc, w0, x, y, 0.05)
    assert _maxdiff(w_mono, w_keras) <= TOL
    assert loss_mono == pytest.approx(loss_keras, abs=1e-5)
    g = desc.graph()
    plan = partition(g, 5, method="metis", objective="volume", seed=0)
    net = PiecewiseNetwork(desc, plan, w0)
    loss, msgs = net.step(x, y, 0.05)
    assert _maxdiff(net.get_weights(), w_mono) <= TOL
    assert loss == pytest.approx(loss_mono, abs=1e-6)
    _check_traffic(g, plan.assignment, plan.n, msgs, batch=len(x))


def test_stateful_cnn_over_steps(small):
    desc, w0, _, _, _ = small
    plan = partition(desc.graph(), 3, method="random", seed=2)
    net = PiecewiseNetwork(desc, plan, w0)
    w = w0
    for s in range(3):
        x, y = _images(desc, 10 + s, 12)
        net.step(x, y, LR)
        w, _ = monolithic_step(desc, w, x, y, LR)
    assert _maxdiff(net.get_weights(), w) <= 3 * TOL


def test_conv_output_layer_is_rejected():
    from slicenet.errors import UserError

    desc = ModelDescription((6, 6, 1), (Conv2D(2, 3), Conv2D(3, 4)))
    with pytest.raises(UserError, match="output layer is a Conv2D"):
        weight_specs(desc)


@pytest.mark.parametrize("groups", [2, 7])
def test_fused_cnn_passes_equal_repeated_monolithic_steps(small, groups):
    from slicenet.fused import FusedTrainer

    desc = small[0]
    rng = np.random.default_rng(0)
    x, y = _images(desc, 7, 40 * groups)
    trainer = FusedTrainer(desc, x.reshape(len(x), -1), y)
    tasks = []
    for k in range(groups):
        w = [a + rng.normal(0, 0.05, a.shape).astype(np.float32) if s.role != "moving_variance"
             else a for a, s in zip(trainer.init_weights(rng), trainer.specs, strict=True)]
        lo, hi = 40 * k, 40 * k + 24 + 8 * (k % 2)       # different lengths, a padded batch
        tasks.append(TrainTask(tuple(w), make_batches(np.arange(lo, hi), epochs=1,
                                                      batch_size=16, rng=rng), 0.1))
    out = trainer.train(tasks, with_abs_grad=True)
    n = len(trainer.specs)
    for task, res in zip(tasks, out, strict=True):
        w = [np.asarray(a) for a in task.weights]
        acc = [np.zeros_like(a) for a in w]
        for batch in task.batches:
            idx = batch[batch >= 0]
            new, _ = monolithic_step(desc, w, x[idx], y[idx], 0.1)
            for i, s in enumerate(trainer.specs):
                if s.trainable:
                    acc[i] += np.abs(new[i] - w[i]) / 0.1
            w = new
        for i in range(n):
            np.testing.assert_allclose(res[i], w[i], atol=2e-5, rtol=1e-4)
            np.testing.assert_allclose(res[n + i], acc[i], atol=5e-3, rtol=5e-3)
    # evaluation (moving statistics) agrees with Keras in inference mode
    ev = trainer.evaluate([out[0][:n]], x[:50].reshape(50, -1), y[:50])
    model = build_keras(desc)
    model.set_weights(out[0][:n])
    logits = np.asarray(model(x[:50], training=False))
    assert ev[0][1] == pytest.approx(float(np.mean(logits.argmax(1) == y[:50])))


def test_scores_of_cnns_scored_together_are_each_models_own_and_keras():
    """Several CNNs scored in one ``evaluate`` call (chunks of rows on threads) get exactly the
    scores each gets alone; accuracy is an exact count of right rows over the rows, equal to
    Keras' inference-mode predictions whatever the chunking, and the loss Keras' mean
    cross-entropy (its last bits follow the chunking: float32 sums per chunk)."""
    import keras

    from slicenet.fused import FusedTrainer

    desc = small_cnn()
    x, y = _images(desc, 9, 137)                 # a prime count: a short last chunk
    trainer = FusedTrainer(desc, x.reshape(len(x), -1), y)
    rng = np.random.default_rng(5)
    models = [[a + rng.normal(0, 0.3, a.shape).astype(np.float32) if s.role != "moving_variance"
               else a for a, s in zip(trainer.init_weights(rng), trainer.specs, strict=True)]
              for _ in range(5)]
    flat = x.reshape(len(x), -1)
    together = trainer.evaluate(models, flat, y, max_floats=20_000)
    assert together == trainer.evaluate(models, flat, y, max_floats=20_000, threads=1)
    assert together == [trainer.evaluate([m], flat, y, max_floats=20_000)[0] for m in models]
    whole = [trainer.evaluate([m], flat, y)[0] for m in models]              # one chunk
    assert [a for _, a in whole] == [a for _, a in together]
    assert [lo for lo, _ in whole] == pytest.approx([lo for lo, _ in together], rel=1e-6)
    keras_model = build_keras(desc)
    lossf = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for (loss, acc), m in zip(together, models, strict=True):
        keras_model.set_weights(m)
        logits = np.asarray(keras_model(x, training=False))
        assert acc * len(x) == pytest.approx(round(acc * len(x)), abs=1e-9)
        assert acc == np.sum(logits.argmax(1) == y) / len(x)
        assert loss == pytest.approx(float(lossf(y, logits)), rel=1e-5)
    assert len({acc for _, acc in together}) > 1                 # the models differ


# --------------------------------------------------------------------------- in the fleet


def _digits_cnn(path):
    """A user's Keras CNN for the 8×8 digits, saved to a .keras file."""
    import keras

    L = keras.layers
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(6, 3, padding="same"),
                              L.BatchNormalization(), L.Activation("relu"), L.MaxPooling2D(2),
                              L.Conv2D(8, 3, activation="relu"), L.Flatten(),
                              L.Dense(16, activation="relu"), L.Dense(10)])
    model.save(path)
    return path


def test_crowdlearning_trains_a_users_keras_cnn_and_sends_the_plans_traffic(tmp_path):
    from crowdlearn.experiment import Simulation
    from slicenet.keras_io import load_keras
    from slicenet.ownership import SliceLayout
    from tests.conftest import small_config

    path = _digits_cnn(str(tmp_path / "digits_cnn.keras"))
    cfg = small_config(**{"protocol": "crowdlearning", "rounds": 3, "fleet.devices": 8,
                          "slicenet.group_size": 4, "slicenet.lr": 0.1,
                          "slicenet.model": path})
    sim = Simulation(cfg)
    res = sim.run()
    assert res.summary["completed"] and len(res.metrics) == 3
    acc = [r["accuracy"] for r in res.metrics]
    assert acc[-1] > 0.5 and acc[-1] > acc[0]          # 10 classes: chance is 0.1
    import keras

    assert res.summary["model_params"] == keras.models.load_model(path).count_params()
    layout, plan = sim.ctx.extra["layout"], sim.ctx.extra["plan"]
    assert isinstance(layout, SliceLayout) and plan.n == 3
    desc = load_keras(path)
    g = desc.graph()
    assert int(layout.pair_floats.sum()) == g.traffic(plan.assignment).floats
    # the boundary bytes of the run: each pass's planned bytes, which are the plan's per-sample
    # traffic × the dominator's samples (+ the sealing overhead) -- at least that much went out
    samples = sum(len(p) for p in sim.parts)
    assert res.summary["bytes_total"] > plan.traffic_bytes_per_sample * samples * 3


def test_ownership_equals_the_dense_layout_on_the_paper_mlp():
    from crowdlearn.protocols.crowdlearning.machines import layout_from_plan
    from slicenet.graph import paper_mlp_description
    from slicenet.ownership import SliceLayout

    desc = paper_mlp_description()
    g = desc.graph()
    plan = partition(g, 6, method="metis", seed=0)
    dense = layout_from_plan(desc, g, plan)
    general = SliceLayout(desc, g, plan.assignment, 6)
    for a, b in zip(dense.owner, general.owner, strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(dense.pair_floats, general.pair_floats)
    assert dense.train_flops_per_sample == pytest.approx(general.train_flops_per_sample,
                                                         rel=0.01)


def test_cnn_ownership_follows_the_source_channel():
    from slicenet.ownership import SliceLayout

    desc = small_cnn()
    g = desc.graph()
    plan = partition(g, 3, method="random", seed=4)
    lay = SliceLayout(desc, g, plan.assignment, 3)
    prog_specs = weight_specs(desc)
    conv1 = [i for i, s in enumerate(prog_specs) if s.name == "conv1/kernel"][0]
    ch0 = np.repeat(plan.assignment[g.layer_slice(0)], g.size[g.layer_slice(0)])
    # conv1's kernel [:, :, c, :] belongs to the holder of conv0's channel c
    assert np.array_equal(lay.owner[conv1][0, 0, :, 0], ch0)
    # the piecewise executor's pieces hold exactly the entries the layout gives them
    net = PiecewiseNetwork(desc, plan, _start(desc, 1))
    for p, part in net._parts[0].items():
        assert sorted(part.units.tolist()) == np.flatnonzero(ch0 == p).tolist()


@pytest.mark.parametrize("model, dataset, match", [
    ("paper-cnn", "digits", "28x28x1 \\(fashion_mnist\\) or 32x32x3 \\(cifar10\\)"),
    ("no/such/model.keras", "digits", "no Keras model file"),
    ("resnet", "digits", "neither one of"),
])
def test_bad_slicenet_models_are_config_errors(model, dataset, match):
    from crowdlearn.errors import ConfigError
    from tests.conftest import small_config

    with pytest.raises(ConfigError, match=match):
        small_config(**{"protocol": "crowdlearning", "data.dataset": dataset,
                        "slicenet.model": model})


def test_a_cnn_runs_over_the_in_memory_wire_with_real_boundary_payloads(tmp_path):
    """The boundary tensors of a convolutional pass are replayed piece by piece when the
    messages are encoded: every message kind crosses the wire with the bytes the SimPy run
    charged (the replay's channel-wise tensors have exactly the plan's sizes)."""
    from crowdlearn.experiment import Simulation
    from sim.harness import Wire
    from tests.conftest import small_config

    path = _digits_cnn(str(tmp_path / "digits_cnn.keras"))
    cfg = small_config(**{"protocol": "crowdlearning", "rounds": 1, "fleet.devices": 8,
                          "slicenet.group_size": 4, "slicenet.lr": 0.1,
                          "slicenet.model": path})
    sim = Simulation(cfg)
    w = Wire(sim.driver.machines, executor=sim.executor, server=sim.driver.server,
             latency=0.01)
    w.start()
    assert w.run()
    by_kind: dict = {}
    for _, _, msg, n in w.sent:
        kind = getattr(msg, "kind", None) if type(msg).__name__ == "Relayed" else None
        key = kind or type(msg).__name__
        if type(msg).__name__ != "Relay":          # relayed bytes: counted once, as under SimPy
            by_kind[key] = by_kind.get(key, 0) + n
    ref = Simulation(cfg).run().summary["bytes_by_kind"]
    assert by_kind["boundary"] > 0
    assert by_kind["boundary"] * 2 == ref["boundary"]     # up to the server and down again
