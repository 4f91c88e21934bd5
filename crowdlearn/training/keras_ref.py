"""Keras reference implementation of the training interface (ring 1).

:class:`KerasReferenceTrainer` trains every task separately with a plain Keras model,
``keras.optimizers.SGD(lr)`` and ``train_on_batch`` on exactly the task's batches (padding
dropped).  It is slow and obviously right; :class:`~crowdlearn.training.fleet_trainer.FleetTrainer`
must produce the same weights (``tests/test_training.py``).

Examples
--------
>>> from crowdlearn.training.models import mlp
>>> build_keras_model(mlp(4, [8], 3)).count_params()
67
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np

from crowdlearn.errors import CrowdlearnError
from crowdlearn.training.batching import TrainTask
from crowdlearn.training.models import ModelSpec

__all__ = ["KerasReferenceTrainer", "build_keras_model", "keras_loss"]


def build_keras_model(spec: ModelSpec) -> keras.Model:
    """The Keras model for ``spec``: flat ``Input`` → ``Reshape`` (image models) → layers.

    Its ``get_weights()`` order and shapes equal ``spec.param_shapes()``; the last Dense layer is
    linear (logits or the regression output).

    Examples
    --------
    >>> from crowdlearn.training.models import cnn
    >>> m = build_keras_model(cnn((8, 8, 1), filters=(4,), dense=()))
    >>> [tuple(w.shape) for w in m.get_weights()]
    [(3, 3, 1, 4), (4,), (36, 10), (10,)]
    """
    inp = keras.Input(shape=(spec.input_dim,), dtype="float32")
    h = inp
    if spec.is_image:
        h = keras.layers.Reshape(spec.input_shape)(h)
    for layer in spec.layers:
        if layer.kind == "dense":
            h = keras.layers.Dense(layer.units, activation=layer.activation)(h)
        elif layer.kind == "conv2d":
            h = keras.layers.Conv2D(
                layer.filters, layer.kernel, padding="valid", activation=layer.activation
            )(h)
        elif layer.kind == "maxpool":
            h = keras.layers.MaxPooling2D(layer.pool, strides=layer.pool, padding="valid")(h)
        else:
            h = keras.layers.Flatten()(h)
    return keras.Model(inp, h)


def keras_loss(spec: ModelSpec) -> keras.losses.Loss:
    """``SparseCategoricalCrossentropy(from_logits=True)`` or ``MeanSquaredError()``.

    Examples
    --------
    >>> from crowdlearn.training.models import linear
    >>> type(keras_loss(linear(3, 1, loss="mse"))).__name__
    'MeanSquaredError'
    """
    if spec.loss == "sparse_ce":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return keras.losses.MeanSquaredError()


class KerasReferenceTrainer:
    """One Keras model per task, ``train_on_batch`` per step: the reference for FleetTrainer.

    Parameters
    ----------
    spec : ModelSpec
    x : numpy.ndarray
        ``(N, d)`` flat training inputs.
    y : numpy.ndarray
        ``(N,)`` integer labels or float targets.

    Examples
    --------
    >>> import numpy as np
    >>> from crowdlearn.training.models import linear
    >>> from crowdlearn.training.batching import TrainTask
    >>> spec = linear(2, 2)
    >>> ref = KerasReferenceTrainer(spec, np.eye(2, dtype=np.float32), np.array([0, 1]))
    >>> w = tuple(spec.init_weights(np.random.default_rng(0)))
    >>> out = ref.train([TrainTask(w, np.array([[0, 1]]), 0.1)])
    >>> [a.shape for a in out[0]]
    [(2, 2), (2,)]
    """

    def __init__(self, spec: ModelSpec, x: np.ndarray, y: np.ndarray) -> None:
        self.spec = spec
        x = np.asarray(x, np.float32)
        self.x = x.reshape(len(x), -1)
        if self.x.shape[1] != spec.input_dim:
            raise CrowdlearnError(
                f"training inputs have {self.x.shape[1]} features per sample but the model "
                f"expects {spec.input_dim}"
            )
        self.y = self._labels(y)
        self._model: keras.Model | None = None

    def _labels(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y).reshape(-1)
        if self.spec.loss == "sparse_ce":
            return y.astype(np.int32)
        return y.astype(np.float32).reshape(-1, 1)

    def _compiled_model(self, lr: float) -> keras.Model:
        # One compiled model is reused for every task: plain SGD keeps no per-model state besides
        # its learning rate, and set_weights() replaces everything else.
        if self._model is None:
            self._model = build_keras_model(self.spec)
            self._model.compile(
                optimizer=keras.optimizers.SGD(learning_rate=lr), loss=keras_loss(self.spec)
            )
        self._model.optimizer.learning_rate = lr
        return self._model

    def train(self, tasks: Sequence[TrainTask]) -> list[list[np.ndarray]]:
        """Train each task from its start weights; returns the final weights per task.

        Examples
        --------
        >>> # see the class example
        """
        out: list[list[np.ndarray]] = []
        for task in tasks:
            model = self._compiled_model(float(task.lr))
            model.set_weights([np.asarray(w, np.float32) for w in task.weights])
            for row in np.asarray(task.batches):
                idx = row[row >= 0]
                if idx.size:
                    model.train_on_batch(self.x[idx], self.y[idx])
            out.append([np.asarray(w, np.float32) for w in model.get_weights()])
        return out

    def evaluate(
        self,
        weights_list: Sequence[Sequence[np.ndarray]],
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int = 4096,
    ) -> list[tuple[float, float]]:
        """Per model ``(mean loss, accuracy)`` (``sparse_ce``) or ``(mse, rmse)`` (``mse``).

        Examples
        --------
        >>> # same contract as FleetTrainer.evaluate
        """
        if self._model is None:
            self._model = build_keras_model(self.spec)
        x = np.asarray(x, np.float32).reshape(len(x), -1)
        y = self._labels(y)
        loss_fn = keras_loss(self.spec)
        results = []
        for weights in weights_list:
            self._model.set_weights([np.asarray(w, np.float32) for w in weights])
            pred = np.asarray(self._model.predict(x, batch_size=batch_size, verbose=0))
            loss = float(loss_fn(y, pred))
            if self.spec.loss == "sparse_ce":
                results.append((loss, float(np.mean(pred.argmax(axis=1) == y))))
            else:
                results.append((loss, math.sqrt(loss)))
        return results
