"""The fused path (all groups batched) equals the proven monolithic step, BatchNorm included."""
import threading

import numpy as np
import pytest

from crowdlearn.training.batching import TrainTask, make_batches
from slicenet.execution import monolithic_step, weight_specs
from slicenet.fused import FusedTrainer
from slicenet.graph import Activation, BatchNorm, Dense, ModelDescription, paper_mlp_description


def small_bn_mlp():
    return ModelDescription((20,), (BatchNorm(), Dense(16), BatchNorm(), Activation("relu"),
                                    Dense(8), BatchNorm(), Activation("relu"), Dense(4)))


def perturbed_init(trainer, rng):
    w = trainer.init_weights(rng)
    # move biases, BN parameters and statistics off their trivial values
    return [a + rng.normal(0, 0.1, a.shape).astype(np.float32) if s.role != "moving_variance"
            else a * rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
            for a, s in zip(w, trainer.specs, strict=True)]


def _groups(seed: int, groups: int, rows: int, stride: int):
    """A trainer of :func:`small_bn_mlp` on random rows and ``groups`` tasks from perturbed
    weights, group g on rows ``stride·g`` on, 24–40 samples in mini-batches of 8."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 20)).astype(np.float32)
    y = rng.integers(0, 4, rows)
    trainer = FusedTrainer(small_bn_mlp(), x, y)
    tasks = [TrainTask(tuple(perturbed_init(trainer, rng)),
                       make_batches(np.arange(stride * g, stride * g + 24 + 8 * (g % 3)),
                                    epochs=1, batch_size=8, rng=rng), 0.1)
             for g in range(groups)]
    return trainer, tasks


@pytest.mark.parametrize("desc_fn", [small_bn_mlp, paper_mlp_description])
def test_fused_passes_equal_repeated_monolithic_steps(desc_fn):
    desc = desc_fn()
    rng = np.random.default_rng(0)
    d = desc.input_shape[0]
    x = rng.normal(size=(300, d)).astype(np.float32)
    y = rng.integers(0, desc.layers[-2 if isinstance(desc.layers[-1], Activation) else -1].units,
                     300)
    trainer = FusedTrainer(desc, x, y)
    tasks = []
    # different lengths, one with a padded last batch (8 of 16; a 2-sample batch would make
    # BatchNorm divide by a tiny variance and amplify float rounding)
    for lo, hi in [(0, 72), (72, 120)]:
        w = perturbed_init(trainer, rng)
        batches = make_batches(np.arange(lo, hi), epochs=1, batch_size=16, rng=rng)
        tasks.append(TrainTask(tuple(w), batches, 0.1))
    out = trainer.train(tasks, with_abs_grad=True)
    n = len(weight_specs(desc))
    for task, res in zip(tasks, out, strict=True):
        w = [np.asarray(a) for a in task.weights]
        acc = [np.zeros_like(a) for a in w]
        for batch in task.batches:
            idx = batch[batch >= 0]
            new, _ = monolithic_step(desc, w, x[idx], y[idx], 0.1)
            for i, s in enumerate(weight_specs(desc)):
                if s.trainable:   # one SGD step: |g| = |Δw| / lr
                    acc[i] += np.abs(np.asarray(new[i]) - w[i]) / 0.1
            w = [np.asarray(a) for a in new]
        for i in range(n):
            np.testing.assert_allclose(res[i], w[i], atol=2e-5, rtol=1e-4)
            np.testing.assert_allclose(res[n + i], acc[i], atol=5e-3, rtol=5e-3)


def test_evaluate_uses_moving_statistics():
    desc = small_bn_mlp()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 20)).astype(np.float32)
    y = rng.integers(0, 4, 64)
    t = FusedTrainer(desc, x, y)
    w = perturbed_init(t, rng)
    import keras

    from slicenet.keras_io import build_keras
    model = build_keras(desc)
    model.set_weights(w)
    logits = model(x, training=False).numpy()
    loss_ref = float(np.mean(keras.losses.sparse_categorical_crossentropy(y, logits,
                                                                          from_logits=True)))
    acc_ref = float(np.mean(np.argmax(logits, 1) == y))
    (loss, acc), = t.evaluate([w], x, y)
    assert loss == pytest.approx(loss_ref, rel=1e-5) and acc == pytest.approx(acc_ref)


def test_many_groups_take_the_xla_path_and_equal_one_group_at_a_time():
    """From ``XLA_GROUPS`` groups on, a call is XLA-compiled with the group and step counts
    padded (padding groups train nothing, padding steps never run): each group's result equals
    training it alone on the op-by-op path."""
    from slicenet.fused import XLA_GROUPS
    trainer, tasks = _groups(3, XLA_GROUPS + 1, 400, 40)      # 7 groups: padded to 8
    together = trainer.train(tasks)
    for task, got in zip(tasks, together, strict=True):
        alone = trainer.train([task])[0]
        for a, b in zip(got, alone, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_a_large_call_of_few_groups_is_compiled_and_equals_the_op_by_op_loop(monkeypatch):
    """Two paper-mlp groups of 13 steps (≈ 2 GFLOP) reach XLA_MIN_FLOPS: the call is compiled,
    and each group's result equals the op-by-op loop's."""
    import slicenet.fused as fused

    desc = paper_mlp_description()
    rng = np.random.default_rng(5)
    x = rng.normal(size=(900, 784)).astype(np.float32)
    y = rng.integers(0, 10, 900)
    trainer = FusedTrainer(desc, x, y)
    tasks = [TrainTask(tuple(perturbed_init(trainer, rng)),
                       make_batches(np.arange(400 * g, 400 * g + 416), epochs=1, batch_size=32,
                                    rng=rng), 0.05) for g in range(2)]
    assert trainer.flops_per_sample * 32 * 26 >= fused.XLA_MIN_FLOPS
    compiled = trainer.train(tasks)
    assert trainer._train_xla.experimental_get_tracing_count() == 1
    monkeypatch.setattr(fused, "XLA_MIN_FLOPS", float("inf"))
    loop = trainer.train(tasks)
    assert trainer._train_fn.experimental_get_tracing_count() == 1
    for a_list, b_list in zip(compiled, loop, strict=True):
        for a, b in zip(a_list, b_list, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)


def test_a_compiled_call_cut_into_shares_gives_each_group_the_same_pass():
    """A compiled call's groups cut into shares (each its own padded call) give every group
    the result of the single call within float rounding (the shares' padded group counts
    differ, so XLA may order sums differently), Σ|g| included."""
    trainer, tasks = _groups(11, 9, 600, 50)       # 9 groups ≥ XLA_GROUPS: compiled
    trainer.threads = 1
    one = trainer.train(tasks)
    trainer.threads = 3
    split = trainer.train(tasks)
    assert trainer._train_xla.experimental_get_tracing_count() >= 1
    for a_list, b_list in zip(one, split, strict=True):
        for a, b in zip(a_list, b_list, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_shares_side_by_side_give_the_bits_of_shares_in_turn():
    """A compiled call's shares run on threads side by side (once compiled) or one after the
    other: each share is its own call of the same program, so every result is the same bits."""
    trainer, tasks = _groups(12, 12, 600, 50)      # compiled, cut into 3 shares of 4
    trainer.threads = 3
    first = trainer.train(tasks, share_threads=3)           # compiles: the shares in turn
    calls: list = []
    run = trainer._run
    trainer._run = lambda *a, **k: calls.append(threading.current_thread().name) or run(*a, **k)
    side = trainer.train(tasks, share_threads=3)
    turn = trainer.train(tasks, share_threads=1)
    assert sum(name.startswith("crowdlearn-share") for name in calls) == 3      # side by side
    assert calls[3:] == [threading.current_thread().name] * 3                   # in turn
    for a_list, b_list, c_list in zip(first, side, turn, strict=True):
        for a, b, c in zip(a_list, b_list, c_list, strict=True):
            assert np.array_equal(a, b) and np.array_equal(b, c)
    with pytest.raises(ValueError, match="share_threads"):
        trainer.train(tasks, share_threads=0)


def test_split_balances_steps_and_keeps_every_group_once():
    from slicenet.fused import _split

    rng = np.random.default_rng(2)
    for _ in range(50):
        n = int(rng.integers(1, 14))
        lengths = rng.integers(1, 20, n).tolist()
        members = sorted(rng.choice(100, n, replace=False).tolist())
        parts = int(rng.integers(1, 4))
        shares = _split(members, lengths, parts)
        assert sorted(sum(shares, [])) == members and len(shares) == min(parts, n)
        load = [sum(lengths[members.index(m)] for m in s) for s in shares]
        assert max(load) - min(load) <= max(lengths)       # greedy: within one task's steps
