"""``FusedTrainer.evaluate`` by pieces of its chunks (h15j): the forward pass on pieces of a
chunk that fit the caches, the chunk's rows put together before its one reduction, gives the
scores of whole chunks bit for bit."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slicenet.fused import FusedTrainer
from slicenet.graph import Activation, BatchNorm, Dense, ModelDescription

_TRAINERS: dict = {}


def _setup(which: str):
    """A trainer, 3 perturbed models (BatchNorm statistics off their defaults) and 173 rows."""
    if which not in _TRAINERS:
        from tests.test_slicenet_cnn import small_cnn

        desc = small_cnn() if which == "cnn" else ModelDescription(
            (20,), (BatchNorm(), Dense(16), BatchNorm(), Activation("relu"), Dense(5),
                    Activation("log_softmax")), name="mlp")
        rng = np.random.default_rng(7)
        n, classes = int(np.prod(desc.input_shape)), desc.layers[-2].units
        x, y = rng.normal(size=(173, n)).astype(np.float32), rng.integers(0, classes, 173)
        trainer = FusedTrainer(desc, x[:10], y[:10])
        models = [_perturbed(trainer, np.random.default_rng(g)) for g in range(3)]
        _TRAINERS[which] = trainer, models, x, y
    return _TRAINERS[which]


def _perturbed(trainer: FusedTrainer, rng: np.random.Generator) -> list[np.ndarray]:
    """Initial weights moved by noise; moving variances kept positive (exp of the noise)."""
    out = []
    for w, spec in zip(trainer.init_weights(rng), trainer.specs, strict=True):
        noise = rng.normal(0, 0.3, w.shape).astype(np.float32)
        out.append(w * np.exp(noise) if spec.role == "moving_variance" else w + noise)
    return out


@pytest.mark.parametrize("which", ["dense", "cnn"])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunk_rows=st.integers(1, 200), piece_rows=st.integers(1, 60),
       threads=st.sampled_from([1, 2, 3]), models=st.integers(1, 3))
def test_pieces_of_chunks_score_as_whole_chunks(which, chunk_rows, piece_rows, threads, models):
    """Any chunk size (one chunk of all rows, a short last chunk, one row), any piece size
    (larger than a chunk: whole chunks; one row), 1-3 threads, 1-3 models: the scores equal
    the reference's (whole chunks, one after the other), every float bit for bit."""
    trainer, ms, x, y = _setup(which)
    ms = ms[:models]
    per_row = len(ms) * trainer._widest
    ref = trainer.evaluate(ms, x, y, max_floats=chunk_rows * per_row, threads=1,
                           piece_floats=None)
    got = trainer.evaluate(ms, x, y, max_floats=chunk_rows * per_row, threads=threads,
                           piece_floats=piece_rows * per_row)
    assert [tuple(float.hex(v) for v in s) for s in got] == \
        [tuple(float.hex(v) for v in s) for s in ref]
    assert not [t for t in threading.enumerate() if t.name.startswith("crowdlearn-evaluate")]


def test_piece_scores_are_chunk_scores_and_bad_pieces_are_refused():
    """The pieces' reduction is the chunk's, not the pieces' own means: with 64-row chunks in
    pieces of 7 rows the loss is the reference's, while averaging per piece would move it; a
    piece size below 1 is refused with the value."""
    trainer, ms, x, y = _setup("dense")
    per_row = len(ms) * trainer._widest
    ref = trainer.evaluate(ms, x, y, max_floats=64 * per_row, piece_floats=None)
    assert trainer.evaluate(ms, x, y, max_floats=64 * per_row, piece_floats=7 * per_row) == ref
    per_piece = trainer.evaluate(ms, x, y, max_floats=7 * per_row, piece_floats=None)
    assert [s[0] for s in per_piece] != [s[0] for s in ref]        # the check can fail
    with pytest.raises(ValueError, match="piece_floats must be >= 1 or None, got 0"):
        trainer.evaluate(ms, x, y, piece_floats=0)
