"""Train K devices' models in one batched TensorFlow computation (ring 1).

:class:`FleetTrainer` keeps the training set once as TF constants.  ``train(tasks)`` stacks the K
tasks' start weights along a leading device axis (``[K, in, out]`` kernels, ``[K, out]`` biases),
pads every batch schedule to the longest one (rows of ``-1``), and runs all steps inside one
``tf.function`` loop.  Each step gathers the batch ``[K, B, d]`` from the constant training set,
runs the forward pass as batched matmuls (convolutions as im2col patches + batched matmul, pooling
on the folded ``[K·B, H, W, C]`` tensor), and differentiates the *sum over devices* of every
device's masked mean loss: since device k's loss depends only on device k's weights, each device
receives exactly its own gradient.  Plain SGD then updates ``w_k -= lr_k · g_k``; a device with no
valid sample in a step (it ran out of steps) has its update multiplied by 0 and stays unchanged.

The result equals running each task separately with Keras ``train_on_batch`` and ``SGD(lr)`` (see
:mod:`crowdlearn.training.keras_ref` and ``tests/test_training.py``) up to float32 rounding.

Examples
--------
>>> import numpy as np
>>> from crowdlearn.training.models import mlp
>>> from crowdlearn.training.batching import TrainTask, make_batches
>>> rng = np.random.default_rng(0)
>>> x, y = rng.normal(size=(20, 4)).astype(np.float32), rng.integers(0, 3, 20)
>>> spec = mlp(4, [8], 3)
>>> trainer = FleetTrainer(spec, x, y)
>>> w0 = tuple(spec.init_weights(rng))
>>> tasks = [TrainTask(w0, make_batches(np.arange(k, 20, 2), epochs=1, batch_size=4, rng=rng), 0.1)
...          for k in range(2)]
>>> out = trainer.train(tasks)
>>> len(out), [w.shape for w in out[0]] == [w.shape for w in w0]
(2, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from crowdlearn.errors import CrowdlearnError
from crowdlearn.training.batching import TrainTask
from crowdlearn.training.models import ModelSpec

__all__ = ["FleetTrainer"]

_ACT = {
    None: None,
    "relu": tf.nn.relu,
    "tanh": tf.math.tanh,
    "sigmoid": tf.math.sigmoid,
}

# Upper bound on the floats one call keeps alive per layer of activations (K·B·activations);
# bigger groups of devices are split into several calls.  2**26 floats = 256 MiB.
_DEFAULT_MAX_FLOATS = 2**26


def _im2col(h: tf.Tensor, k: int, out_h: int, out_w: int, impl: str) -> tf.Tensor:
    """``[N, H, W, C] → [N, H', W', k·k·C]`` valid, stride-1 patches, ordered (row, col, channel).

    This is exactly ``tf.image.extract_patches(h, [1,k,k,1], [1,1,1,1], [1,1,1,1], "VALID")``;
    the default ``"slices"`` implementation builds it from k·k strided slices instead, whose
    gradient is a cheap pad-and-add (extract_patches' gradient goes through a sparse matmul).
    """
    if k == 1:
        return h
    if impl == "patches":
        return tf.image.extract_patches(h, [1, k, k, 1], [1, 1, 1, 1], [1, 1, 1, 1], "VALID")
    cols = [h[:, i : i + out_h, j : j + out_w, :] for i in range(k) for j in range(k)]
    return tf.concat(cols, axis=-1)


def _forward(spec: ModelSpec, params: Sequence[tf.Tensor], x: tf.Tensor, shared: bool,
             conv_impl: str) -> tf.Tensor:
    """Forward pass of K stacked models.

    ``x`` is ``[K, B, d]`` (one batch per model) or, with ``shared=True``, ``[B, d]`` fed to every
    model (evaluation).  Returns logits ``[K, B, out]``.
    """
    k_models = tf.shape(params[0])[0]
    b = tf.shape(x)[-2]
    if spec.is_image:
        # Folded image layout: [K·B, H, W, C] (or [B, H, W, C] while still shared).
        h = tf.reshape(x, [-1, *spec.input_shape])
    else:
        h = x
    p = 0
    out_shapes = spec.output_shapes()
    in_shapes = [spec.input_shape, *out_shapes[:-1]]
    for layer, ins, outs in zip(spec.layers, in_shapes, out_shapes):
        if layer.kind == "dense":
            w, bias = params[p], params[p + 1]
            p += 2
            if shared:
                h = tf.einsum("bi,kio->kbo", h, w)
                shared = False
            else:
                h = tf.linalg.matmul(h, w)
            h = h + bias[:, None, :]
        elif layer.kind == "conv2d":
            w, bias = params[p], params[p + 1]
            p += 2
            kk, cin, cout = layer.kernel, ins[2], layer.filters
            oh, ow = outs[0], outs[1]
            cols = _im2col(h, kk, oh, ow, conv_impl)
            w2 = tf.reshape(w, [k_models, kk * kk * cin, cout])
            if shared:
                cols = tf.reshape(cols, [-1, kk * kk * cin])
                h = tf.einsum("pq,kqc->kpc", cols, w2)
                shared = False
            else:
                cols = tf.reshape(cols, [k_models, -1, kk * kk * cin])
                h = tf.linalg.matmul(cols, w2)
            h = h + bias[:, None, :]
            h = tf.reshape(h, [-1, oh, ow, cout])
        elif layer.kind == "maxpool":
            h = tf.nn.max_pool2d(h, layer.pool, layer.pool, "VALID")
        else:  # flatten
            if shared:
                h = tf.reshape(h, [b, -1])
            else:
                h = tf.reshape(h, [k_models, b, -1])
        act = _ACT[layer.activation]
        if act is not None:
            h = act(h)
    return h


def _per_sample_loss(spec: ModelSpec, logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """``[K, B]`` per-sample losses."""
    if spec.loss == "sparse_ce":
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    return tf.math.squared_difference(logits[..., 0], y)


class FleetTrainer:
    """Batched local training of many devices' models on one shared training set.

    Parameters
    ----------
    spec : ModelSpec
        The model every task trains.
    x : numpy.ndarray
        ``(N, d)`` training inputs (flat; image models reshape them), stored once as float32.
    y : numpy.ndarray
        ``(N,)`` integer labels (``sparse_ce``) or float targets (``mse``).
    jit_compile : bool
        Compile the training loop with XLA.  Off by default: on CPU the plain TF graph was faster
        for the sizes we run (``benchmarks/trainer_micro.py`` measures both).
    max_floats : int
        Split a group of K devices into several calls when ``K·B·activations`` per sample would
        exceed this many floats (keeps memory bounded for big fleets or big CNNs).

    Examples
    --------
    >>> import numpy as np
    >>> from crowdlearn.training.models import linear
    >>> x = np.eye(3, dtype=np.float32); y = np.arange(3)
    >>> t = FleetTrainer(linear(3, 3), x, y)
    >>> w = linear(3, 3).init_weights(np.random.default_rng(0))
    >>> [round(v, 3) for v in t.evaluate([w, w], x, y)[0]][1] <= 1.0
    True
    """

    def __init__(
        self,
        spec: ModelSpec,
        x: np.ndarray,
        y: np.ndarray,
        *,
        jit_compile: bool = False,
        max_floats: int = _DEFAULT_MAX_FLOATS,
        conv_impl: str = "slices",
    ) -> None:
        self.spec = spec
        x = np.asarray(x, dtype=np.float32)
        x = x.reshape(len(x), -1)
        if x.shape[1] != spec.input_dim:
            raise CrowdlearnError(
                f"training inputs have {x.shape[1]} features per sample but the model expects "
                f"{spec.input_dim} (input_shape {spec.input_shape})"
            )
        y = self._labels(y)
        if len(y) != len(x):
            raise CrowdlearnError(f"x has {len(x)} rows but y has {len(y)}")
        if conv_impl not in ("slices", "patches"):
            raise ValueError(f"conv_impl must be 'slices' or 'patches', got {conv_impl!r}")
        self.num_samples = len(x)
        self.jit_compile = bool(jit_compile)
        self.max_floats = int(max_floats)
        self.conv_impl = conv_impl
        self._x = tf.constant(x)
        self._y = tf.constant(y)
        self._shapes = [tuple(s) for s in spec.param_shapes()]
        param_sig = [tf.TensorSpec([None, *s], tf.float32) for s in self._shapes]
        self._train_fn = tf.function(
            self._train_loop,
            input_signature=[
                param_sig,
                tf.TensorSpec([None, None, None], tf.int32),  # batches [S, K, B]
                tf.TensorSpec([None], tf.float32),  # lr [K]
            ],
            jit_compile=self.jit_compile,
            reduce_retracing=True,
        )
        self._eval_fn = tf.function(
            self._eval_chunk,
            input_signature=[
                param_sig,
                tf.TensorSpec([None, spec.input_dim], tf.float32),
                tf.TensorSpec([None], tf.int32 if spec.loss == "sparse_ce" else tf.float32),
            ],
            reduce_retracing=True,
        )

    # ------------------------------------------------------------------ helpers
    def _labels(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y).reshape(-1)
        if self.spec.loss == "sparse_ce":
            if y.size and (y.min() < 0 or y.max() >= self.spec.num_outputs):
                raise CrowdlearnError(
                    f"labels must lie in [0, {self.spec.num_outputs}) for a model with "
                    f"{self.spec.num_outputs} outputs; got [{y.min()}, {y.max()}]"
                )
            return y.astype(np.int32)
        return y.astype(np.float32)

    @property
    def traces(self) -> int:
        """How many times the training loop has been traced (for retracing measurements)."""
        return int(self._train_fn.experimental_get_tracing_count())

    # ------------------------------------------------------------------ TF bodies
    def _train_loop(self, params, batches, lr):
        spec, x_all, y_all = self.spec, self._x, self._y
        steps = tf.shape(batches)[0]
        params = list(params)
        ranks = [len(s) for s in self._shapes]

        def body(s, *ps):
            idx = batches[s]  # [K, B]
            valid = idx >= 0
            idx = tf.maximum(idx, 0)
            mask = tf.cast(valid, tf.float32)
            count = tf.reduce_sum(mask, axis=1)  # [K]
            xb = tf.gather(x_all, idx)  # [K, B, d]
            yb = tf.gather(y_all, idx)  # [K, B]
            ps = list(ps)
            with tf.GradientTape() as tape:
                tape.watch(ps)
                logits = _forward(spec, ps, xb, False, self.conv_impl)
                per = _per_sample_loss(spec, logits, yb) * mask
                dev = tf.reduce_sum(per, axis=1) / tf.maximum(count, 1.0)
                total = tf.reduce_sum(dev)
            grads = tape.gradient(total, ps)
            scale = lr * tf.cast(count > 0, tf.float32)  # [K]; 0 = no update this step
            new = [
                p - tf.reshape(scale, [-1] + [1] * r) * g
                for p, g, r in zip(ps, grads, ranks)
            ]
            return (s + 1, *new)

        out = tf.while_loop(
            lambda s, *ps: s < steps,
            body,
            (tf.constant(0), *params),
            parallel_iterations=1,
        )
        return list(out[1:])

    def _eval_chunk(self, params, x, y):
        logits = _forward(self.spec, list(params), x, True, self.conv_impl)  # [M, n, out]
        k_models = tf.shape(params[0])[0]
        yb = tf.broadcast_to(y[None, :], [k_models, tf.shape(y)[0]])
        loss = tf.reduce_sum(_per_sample_loss(self.spec, logits, yb), axis=1)
        if self.spec.loss == "sparse_ce":
            pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
            metric = tf.reduce_sum(tf.cast(tf.equal(pred, yb), tf.float32), axis=1)
        else:
            metric = loss
        return loss, metric

    # ------------------------------------------------------------------ public API
    def train(self, tasks: Sequence[TrainTask]) -> list[list[np.ndarray]]:
        """Run every task's SGD steps; returns each task's final weights (float32), in order.

        Tasks are grouped by batch size B; each group (split further if it would exceed
        ``max_floats``) runs as one batched TF computation padded to its longest schedule.

        Examples
        --------
        >>> import numpy as np
        >>> from crowdlearn.training.models import linear
        >>> spec = linear(2, 2)
        >>> t = FleetTrainer(spec, np.eye(2, dtype=np.float32), np.array([0, 1]))
        >>> w = tuple(spec.init_weights(np.random.default_rng(0)))
        >>> idle = TrainTask(w, np.zeros((0, 1), np.int64), 0.5)   # no steps: unchanged
        >>> all(np.array_equal(a, b) for a, b in zip(t.train([idle])[0], w))
        True
        """
        results: list[list[np.ndarray] | None] = [None] * len(tasks)
        groups: dict[int, list[int]] = {}
        for i, task in enumerate(tasks):
            batches = np.asarray(task.batches)
            if batches.ndim != 2:
                raise CrowdlearnError(
                    f"task {i}: batches must be a [steps, B] array, got shape {batches.shape}"
                )
            if len(task.weights) != len(self._shapes) or any(
                tuple(np.shape(w)) != s for w, s in zip(task.weights, self._shapes)
            ):
                raise CrowdlearnError(
                    f"task {i}: weight shapes {[tuple(np.shape(w)) for w in task.weights]} do not "
                    f"match the model's {self._shapes}"
                )
            if batches.size and batches.max() >= self.num_samples:
                raise CrowdlearnError(
                    f"task {i}: batch index {int(batches.max())} is out of range for a training "
                    f"set of {self.num_samples} samples"
                )
            if batches.shape[0] == 0 or not (batches >= 0).any():
                results[i] = [np.array(w, dtype=np.float32, copy=True) for w in task.weights]
                continue
            groups.setdefault(int(batches.shape[1]), []).append(i)

        act = self.spec.activation_floats_per_sample() + self.spec.input_dim
        for b, members in groups.items():
            # Longest schedules first, so a split puts similar lengths together (less padding).
            members.sort(key=lambda i: -len(tasks[i].batches))
            chunk = max(1, self.max_floats // max(1, b * act))
            for start in range(0, len(members), chunk):
                part = members[start : start + chunk]
                for i, w in zip(part, self._train_group([tasks[i] for i in part])):
                    results[i] = w
        return results  # type: ignore[return-value]

    def _train_group(self, tasks: Sequence[TrainTask]) -> list[list[np.ndarray]]:
        k = len(tasks)
        steps = max(len(t.batches) for t in tasks)
        b = int(np.asarray(tasks[0].batches).shape[1])
        sched = np.full((steps, k, b), -1, np.int32)
        for j, t in enumerate(tasks):
            sched[: len(t.batches), j, :] = t.batches
        params = [
            tf.constant(np.stack([np.asarray(t.weights[p], np.float32) for t in tasks]))
            for p in range(len(self._shapes))
        ]
        lr = tf.constant(np.array([t.lr for t in tasks], np.float32))
        out = [o.numpy() for o in self._train_fn(params, tf.constant(sched), lr)]
        return [[o[j] for o in out] for j in range(k)]

    def evaluate(
        self,
        weights_list: Sequence[Sequence[np.ndarray]],
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int = 4096,
    ) -> list[tuple[float, float]]:
        """Evaluate several models on one data set, all models batched together.

        Returns, per model, ``(mean loss, accuracy)`` for ``sparse_ce`` or ``(mse, rmse)`` for
        ``mse``.  ``batch_size`` bounds the rows per call; it is lowered further so that
        ``models·rows·activations`` stays within ``max_floats``.

        Examples
        --------
        >>> import numpy as np
        >>> from crowdlearn.training.models import linear
        >>> spec = linear(1, 1, loss="mse")
        >>> x = np.array([[1.0], [2.0]], np.float32); y = np.array([2.0, 4.0], np.float32)
        >>> t = FleetTrainer(spec, x, y)
        >>> [tuple(round(v, 4) for v in r) for r in t.evaluate([[np.array([[2.0]]), np.zeros(1)]], x, y)]
        [(0.0, 0.0)]
        """
        m = len(weights_list)
        if m == 0:
            return []
        x = np.asarray(x, np.float32)
        x = x.reshape(len(x), -1)
        y = self._labels(y)
        n = len(x)
        if n == 0:
            return [(math.nan, math.nan)] * m
        act = self.spec.activation_floats_per_sample()
        loss_sum = np.zeros(m, np.float64)
        metric_sum = np.zeros(m, np.float64)
        # Split the models too if even a single row per call would exceed the budget.
        per_model_chunk = max(1, self.max_floats // max(1, act))
        for ms in range(0, m, per_model_chunk):
            sub = weights_list[ms : ms + per_model_chunk]
            params = [
                tf.constant(np.stack([np.asarray(w[p], np.float32) for w in sub]))
                for p in range(len(self._shapes))
            ]
            rows = max(1, min(int(batch_size), self.max_floats // max(1, len(sub) * act)))
            for start in range(0, n, rows):
                lo, me = self._eval_fn(
                    params, tf.constant(x[start : start + rows]), tf.constant(y[start : start + rows])
                )
                loss_sum[ms : ms + len(sub)] += lo.numpy()
                metric_sum[ms : ms + len(sub)] += me.numpy()
        if self.spec.loss == "sparse_ce":
            return [(float(lo / n), float(c / n)) for lo, c in zip(loss_sum, metric_sum)]
        return [(float(lo / n), float(math.sqrt(lo / n))) for lo in loss_sum]
