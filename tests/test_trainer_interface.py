"""The declared trainer interface (:class:`crowdlearn.training.jobs.Trainer`): every trainer the
simulator can be handed satisfies it, and the training ones agree on what ``train`` returns."""
import numpy as np
import pytest

from crowdlearn.data import load_dataset
from crowdlearn.experiment import TRAINERS, NullTrainer
from crowdlearn.protocols.fm import LinearEvaluator
from crowdlearn.training import models
from crowdlearn.training.batching import TrainTask, make_batches
from crowdlearn.training.jobs import Trainer


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits", seed=0)
    spec = models.mlp(ds.num_features, [16], ds.num_classes)
    return ds, spec


@pytest.mark.parametrize("backend", ["batched", "keras", "none"])
def test_each_backend_builds_a_trainer_that_trains_and_evaluates(digits, backend):
    ds, spec = digits
    trainer = TRAINERS[backend]()(spec, ds.x_train, ds.y_train)
    assert isinstance(trainer, Trainer)
    rng = np.random.default_rng(0)
    w0 = tuple(spec.init_weights(rng))
    tasks = [TrainTask(w0, make_batches(np.arange(k * 40, k * 40 + 40), epochs=1, batch_size=8,
                                        rng=rng), 0.1) for k in range(3)]
    out = trainer.train(tasks)
    assert len(out) == 3
    for ws in out:
        assert [np.shape(w) for w in ws] == [np.shape(w) for w in w0]
    scores = trainer.evaluate(out, ds.x_test, ds.y_test)
    assert len(scores) == 3 and all(len(s) == 2 for s in scores)
    if backend == "none":            # weights pass through, nothing is scored
        assert all(np.array_equal(a, b) for a, b in zip(out[0], w0, strict=True))
    else:                            # SGD moved the weights; accuracy is a fraction
        assert not np.array_equal(out[0][0], w0[0])
        assert all(0.0 <= acc <= 1.0 for _, acc in scores)


def test_the_fm_evaluator_and_the_null_trainer_are_trainers(digits):
    ds, _ = digits
    linear = models.linear(ds.num_features, ds.num_classes)
    assert isinstance(LinearEvaluator(linear, ds.x_train, ds.y_train), Trainer)
    assert isinstance(NullTrainer(linear, ds.x_train, ds.y_train), Trainer)
    assert not isinstance(object(), Trainer)
