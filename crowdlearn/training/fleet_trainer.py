"""Train K devices' models in one TensorFlow computation (ring 1).

:class:`FleetTrainer` keeps the training set once as TF constants and runs a whole batch of
:class:`~crowdlearn.training.batching.TrainTask` s in one ``tf.function`` call.  Two strategies
compute the same thing:

``"per_device"`` (the default)
    One ``tf.map_fn`` over the devices (``parallel_devices`` at a time), each running its own
    ``tf.while_loop`` over its own steps with ordinary matmul / ``tf.nn.conv2d`` kernels on its
    ``[B, ...]`` batch (padding dropped, exactly the ops Keras runs).  It never retraces (one
    trace serves every K, step count and B), wastes nothing on devices with fewer steps, and its
    memory does not grow with K.

``"vectorized"``
    Stacks the K tasks' start weights along a leading device axis (``[K, in, out]`` kernels,
    ``[K, out]`` biases), pads every batch schedule to the longest one (rows of ``-1``) and runs
    the steps in one ``tf.while_loop``.  Each step gathers the batch ``[K, B, d]`` from the
    constant training set and runs the forward pass as batched matmuls (convolutions as im2col
    patches + batched matmul on ``[K, B·H'·W', k·k·Cin]``, pooling on the folded
    ``[K·B, H, W, C]`` tensor).  It differentiates the *sum over devices* of each device's masked
    mean loss: device k's loss depends only on device k's weights, so each device receives exactly
    its own gradient.  Plain SGD then updates ``w_k -= lr_k · g_k``; a device with no valid sample
    in a step (it ran out of steps) has its update multiplied by 0.  Compiled with XLA by default;
    to keep XLA from recompiling for every new fleet size, the step axis is padded to a power of
    two (the loop still stops after the real number of steps) and K to the next size in a grid
    ``{8..15}·2^e`` (≤ 12.5 % idle devices, which are masked out).

Why per_device is the default (``benchmarks/trainer_micro.py`` on 2 cores shared with other
jobs, so ranges over several runs): for the MLP round of 100 devices × 600 Fashion-MNIST samples,
batch 32, per_device took 0.38–0.45× a centralized Keras ``fit`` of the same samples *including*
its one-time trace, and 0.19–0.32× in steady state.  Vectorized+XLA reached 0.09–0.37× in steady
state, but its first call (trace + XLA compile) cost 0.35–0.82×, and every new (K, steps, B)
bucket recompiles (~0.5–1 s): ten rounds with varying fleet sizes took 13 s with per_device and
52 s with XLA on their first pass.  Without XLA the vectorized loop is 0.35–0.68×.  For CNNs the
vectorized ``[K·B, H, W, C]`` activations and im2col patches fall out of cache: 3–4× slower than
per_device and slower than Keras itself.

Both equal running each task separately with Keras ``train_on_batch`` and ``SGD(lr)`` (see
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
from slicenet.weak import weak_method

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
_STRATEGIES = ("auto", "vectorized", "per_device")


def _bucket_devices(k: int) -> int:
    """Smallest size ``>= k`` in ``{1..15} ∪ {8..15}·2^e`` (at most 12.5 % larger than ``k``).

    Examples
    --------
    >>> [_bucket_devices(k) for k in (1, 15, 17, 33, 100)]
    [1, 15, 18, 36, 104]
    """
    if k <= 15:
        return k
    step = 1 << ((k - 1).bit_length() - 4)  # 8·step < k <= 16·step
    return -(-k // step) * step


def _bucket_steps(s: int) -> int:
    """Next power of two ``>= s`` (padding steps costs nothing: the loop stops at the real count)."""
    return 1 << max(0, s - 1).bit_length()


def _im2col(h: tf.Tensor, k: int, out_h: int, out_w: int, impl: str) -> tf.Tensor:
    """``[N, H, W, C] → [N, H', W', k·k·C]`` valid, stride-1 patches, ordered (row, col, channel).

    This is exactly ``tf.image.extract_patches(h, [1,k,k,1], [1,1,1,1], [1,1,1,1], "VALID")``
    (``impl="patches"``); the default ``"slices"`` builds it from k·k strided slices, whose
    gradient is a cheap pad-and-add (extract_patches' gradient goes through a sparse matmul and
    measured ~1.4× slower).
    """
    if k == 1:
        return h
    if impl == "patches":
        return tf.image.extract_patches(h, [1, k, k, 1], [1, 1, 1, 1], [1, 1, 1, 1], "VALID")
    cols = [h[:, i : i + out_h, j : j + out_w, :] for i in range(k) for j in range(k)]
    return tf.concat(cols, axis=-1)


def _forward_stacked(
    spec: ModelSpec, params: Sequence[tf.Tensor], x: tf.Tensor, shared: bool, conv_impl: str
) -> tf.Tensor:
    """Forward pass of K stacked models (the vectorized strategy).

    ``x`` is ``[K, B, d]`` (one batch per model) or, with ``shared=True``, ``[B, d]`` fed to every
    model (evaluation).  Returns logits ``[K, B, out]``.
    """
    k_models = tf.shape(params[0])[0]
    b = tf.shape(x)[-2]
    # Image models use the folded layout [K·B, H, W, C] (or [B, H, W, C] while still shared).
    h = tf.reshape(x, [-1, *spec.input_shape]) if spec.is_image else x
    p = 0
    out_shapes = spec.output_shapes()
    in_shapes = [spec.input_shape, *out_shapes[:-1]]
    for layer, ins, outs in zip(spec.layers, in_shapes, out_shapes, strict=True):
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
            h = tf.reshape(h, [b, -1] if shared else [k_models, b, -1])
        act = _ACT[layer.activation]
        if act is not None:
            h = act(h)
    return h


def _forward_single(spec: ModelSpec, params: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
    """Forward pass of one model on ``[B, d]``, the same ops as the Keras layers; logits ``[B, out]``."""
    h = tf.reshape(x, [-1, *spec.input_shape]) if spec.is_image else x
    p = 0
    for layer in spec.layers:
        if layer.kind == "dense":
            h = tf.linalg.matmul(h, params[p]) + params[p + 1]
            p += 2
        elif layer.kind == "conv2d":
            h = tf.nn.conv2d(h, params[p], 1, "VALID") + params[p + 1]
            p += 2
        elif layer.kind == "maxpool":
            h = tf.nn.max_pool2d(h, layer.pool, layer.pool, "VALID")
        else:
            h = tf.reshape(h, [tf.shape(h)[0], -1])
        act = _ACT[layer.activation]
        if act is not None:
            h = act(h)
    return h


def _per_sample_loss(spec: ModelSpec, logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Per-sample losses, shape of ``y``."""
    if spec.loss == "sparse_ce":
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    return tf.math.squared_difference(logits[..., 0], y)


class FleetTrainer:
    """Local SGD training of many devices' models on one shared training set, in one TF call.

    Parameters
    ----------
    spec : ModelSpec
        The model every task trains.
    x : numpy.ndarray
        ``(N, d)`` training inputs (flat; image models reshape them), stored once as float32.
    y : numpy.ndarray
        ``(N,)`` integer labels (``sparse_ce``) or float targets (``mse``).
    strategy : {"auto", "per_device", "vectorized"}
        See the module docstring; ``"auto"`` is ``"per_device"``.
    jit_compile : bool or None
        Compile the training loop with XLA.  ``None``: on for vectorized (2–3× faster steady
        state), off for per_device (XLA's CPU convolutions measured ~10× slower than oneDNN's).
    max_floats : int
        Vectorized only: split a group of K devices into several calls when ``K·B`` times the
        per-sample activations would exceed this many floats; also bounds evaluation chunks.
    parallel_devices : int
        Per_device only: how many devices the map over devices runs concurrently.
    conv_impl : {"slices", "patches"}
        Vectorized only: how im2col is built (see :func:`_im2col`).

    Examples
    --------
    >>> import numpy as np
    >>> from crowdlearn.training.models import linear
    >>> x = np.eye(3, dtype=np.float32); y = np.arange(3)
    >>> t = FleetTrainer(linear(3, 3), x, y)
    >>> t.strategy, t.jit_compile
    ('per_device', False)
    >>> w = linear(3, 3).init_weights(np.random.default_rng(0))
    >>> len(t.evaluate([w, w], x, y))
    2
    """

    def __init__(
        self,
        spec: ModelSpec,
        x: np.ndarray,
        y: np.ndarray,
        *,
        strategy: str = "auto",
        jit_compile: bool | None = None,
        max_floats: int = _DEFAULT_MAX_FLOATS,
        parallel_devices: int = 2,
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
        if strategy not in _STRATEGIES:
            raise ValueError(f"strategy must be one of {_STRATEGIES}, got {strategy!r}")
        if conv_impl not in ("slices", "patches"):
            raise ValueError(f"conv_impl must be 'slices' or 'patches', got {conv_impl!r}")
        if strategy == "auto":
            strategy = "per_device"
        self.strategy = strategy
        self.jit_compile = (strategy == "vectorized") if jit_compile is None else bool(jit_compile)
        self.num_samples = len(x)
        self.max_floats = int(max_floats)
        self.parallel_devices = max(1, int(parallel_devices))
        self.conv_impl = conv_impl
        self._x = tf.constant(x)
        self._y = tf.constant(y)
        self._shapes = [tuple(s) for s in spec.param_shapes()]
        param_sig = [tf.TensorSpec([None, *s], tf.float32) for s in self._shapes]
        y_dtype = tf.int32 if spec.loss == "sparse_ce" else tf.float32
        # through a weak reference: no cycle trainer -> tf.function -> bound method -> trainer
        # (slicenet.weak), so an evicted or dropped trainer and its training set go at once
        if strategy == "vectorized":
            train_body = weak_method(self, "_train_vectorized")
            eval_body = weak_method(self, "_eval_vectorized")
        else:
            train_body = weak_method(self, "_train_per_device")
            eval_body = weak_method(self, "_eval_per_device")
        self._train_fn = tf.function(
            train_body,
            input_signature=[
                param_sig,
                tf.TensorSpec([None, None, None], tf.int32),  # schedule
                tf.TensorSpec([None], tf.float32),  # lr [K]
                tf.TensorSpec([], tf.int32),  # number of steps to run (vectorized)
                # the training set, an argument rather than a capture: a traced function's
                # graph is a web of reference cycles, and a captured 188 MB tensor would stay
                # with it until the interpreter's next full collection
                tf.TensorSpec([None, *self._x.shape[1:]], self._x.dtype),
                tf.TensorSpec([None, *self._y.shape[1:]], self._y.dtype),
            ],
            jit_compile=self.jit_compile,
        )
        self._eval_fn = tf.function(
            eval_body,
            input_signature=[
                param_sig,
                tf.TensorSpec([None, spec.input_dim], tf.float32),
                tf.TensorSpec([None], y_dtype),
            ],
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
        """How many times the training function has been traced (to measure retracing).

        With XLA, shapes not seen before are also recompiled without retracing; the bucketing of
        K and of the step count bounds how often.
        """
        return int(self._train_fn.experimental_get_tracing_count())

    # ------------------------------------------------------------------ TF bodies: vectorized
    def _train_vectorized(self, params, batches, lr, n_steps, x_all, y_all):
        """``batches`` is ``[S, K, B]`` (rows of ``x_all``, ``y_all``: the training set);
        runs the first ``n_steps`` steps."""
        spec = self.spec
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
                logits = _forward_stacked(spec, ps, xb, False, self.conv_impl)
                per = _per_sample_loss(spec, logits, yb) * mask
                dev = tf.reduce_sum(per, axis=1) / tf.maximum(count, 1.0)
                total = tf.reduce_sum(dev)
            grads = tape.gradient(total, ps)
            scale = lr * tf.cast(count > 0, tf.float32)  # [K]; 0 = no update this step
            new = [
                p - tf.reshape(scale, [-1] + [1] * r) * g
                for p, g, r in zip(ps, grads, ranks, strict=True)
            ]
            return (s + 1, *new)

        out = tf.while_loop(
            lambda s, *ps: s < n_steps, body, (tf.constant(0), *params), parallel_iterations=1
        )
        return list(out[1:])

    def _eval_vectorized(self, params, x, y):
        logits = _forward_stacked(self.spec, list(params), x, True, self.conv_impl)  # [M, n, out]
        yb = tf.broadcast_to(y[None, :], tf.shape(logits)[:2])
        loss = tf.reduce_sum(_per_sample_loss(self.spec, logits, yb), axis=1)
        if self.spec.loss == "sparse_ce":
            pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
            metric = tf.reduce_sum(tf.cast(tf.equal(pred, yb), tf.float32), axis=1)
        else:
            metric = loss
        return loss, metric

    # ------------------------------------------------------------------ TF bodies: per device
    def _train_per_device(self, params, batches, lr, n_steps, x_all, y_all):
        """``batches`` is ``[K, S, B]`` (rows of ``x_all``, ``y_all``: the training set); each
        device runs up to its last non-empty row."""
        del n_steps  # every device stops after its own last step
        spec = self.spec
        rows = tf.range(1, tf.shape(batches)[1] + 1)

        def one_device(args):
            ps, sched, step_lr = list(args[0]), args[1], args[2]
            nonempty = tf.reduce_any(sched >= 0, axis=1)
            last = tf.reduce_max(tf.where(nonempty, rows, 0))

            def body(s, *ps):
                row = sched[s]
                idx = tf.boolean_mask(row, row >= 0)  # drop padding, as train_on_batch sees it
                xb = tf.gather(x_all, idx)
                yb = tf.gather(y_all, idx)
                ps = list(ps)
                with tf.GradientTape() as tape:
                    tape.watch(ps)
                    per = _per_sample_loss(spec, _forward_single(spec, ps, xb), yb)
                    # Keras' "sum over batch size": sum, then divide (0 for an empty row).
                    loss = tf.math.divide_no_nan(
                        tf.reduce_sum(per), tf.cast(tf.size(per), tf.float32)
                    )
                grads = tape.gradient(loss, ps)
                return (s + 1, *[p - step_lr * g for p, g in zip(ps, grads, strict=True)])

            out = tf.while_loop(lambda s, *ps: s < last, body, (tf.constant(0), *ps))
            return tuple(out[1:])

        out = tf.map_fn(
            one_device,
            (tuple(params), batches, lr),
            fn_output_signature=tuple(tf.TensorSpec(s, tf.float32) for s in self._shapes),
            parallel_iterations=self.parallel_devices,
        )
        return list(out)

    def _eval_per_device(self, params, x, y):
        def one_model(ps):
            logits = _forward_single(self.spec, list(ps), x)
            loss = tf.reduce_sum(_per_sample_loss(self.spec, logits, y))
            if self.spec.loss == "sparse_ce":
                pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
                return loss, tf.reduce_sum(tf.cast(tf.equal(pred, y), tf.float32))
            return loss, loss

        return tf.map_fn(
            one_model,
            tuple(params),
            fn_output_signature=(tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.float32)),
            parallel_iterations=self.parallel_devices,
        )

    # ------------------------------------------------------------------ public API
    def train(self, tasks: Sequence[TrainTask]) -> list[list[np.ndarray]]:
        """Run every task's SGD steps; returns each task's final weights (float32), in order.

        Vectorized: tasks are grouped by batch size B; each group (split further if it would
        exceed ``max_floats``) runs as one TF call padded to its longest schedule.  Per_device:
        all tasks run in one TF call.  A task without steps gets a copy of its start weights.

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
                tuple(np.shape(w)) != s for w, s in zip(task.weights, self._shapes, strict=True)
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
            key = int(batches.shape[1]) if self.strategy == "vectorized" else 0
            groups.setdefault(key, []).append(i)

        act = self.spec.activation_floats_per_sample() + self.spec.input_dim
        for b, members in groups.items():
            if self.strategy == "per_device":
                chunk = len(members)
            else:
                # Longest schedules first, so a split puts similar lengths together.
                members.sort(key=lambda i: -len(tasks[i].batches))
                chunk = max(1, self.max_floats // max(1, b * act))
            for start in range(0, len(members), chunk):
                part = members[start : start + chunk]
                for i, w in zip(part, self._train_group([tasks[i] for i in part]), strict=True):
                    results[i] = w
        return results  # type: ignore[return-value]

    def _train_group(self, tasks: Sequence[TrainTask]) -> list[list[np.ndarray]]:
        k = len(tasks)
        steps = max(len(t.batches) for t in tasks)
        b = max(int(np.asarray(t.batches).shape[1]) for t in tasks)
        k_pad, s_pad = k, steps
        if self.strategy == "vectorized" and self.jit_compile:
            k_pad, s_pad = _bucket_devices(k), _bucket_steps(steps)
        sched = np.full((k_pad, s_pad, b), -1, np.int32)
        for j, t in enumerate(tasks):
            tb = np.asarray(t.batches)
            sched[j, : tb.shape[0], : tb.shape[1]] = tb
        if self.strategy == "vectorized":
            sched = np.ascontiguousarray(sched.transpose(1, 0, 2))  # [S, K, B]
        params = []
        for p, shape in enumerate(self._shapes):
            stacked = np.zeros((k_pad, *shape), np.float32)
            for j, t in enumerate(tasks):
                stacked[j] = t.weights[p]
            params.append(tf.constant(stacked))
        lr = np.zeros(k_pad, np.float32)
        lr[:k] = [t.lr for t in tasks]
        out = self._train_fn(params, tf.constant(sched), tf.constant(lr), tf.constant(steps),
                             self._x, self._y)
        out = [o.numpy() for o in out]
        return [[o[j] for o in out] for j in range(k)]

    def evaluate(
        self,
        weights_list: Sequence[Sequence[np.ndarray]],
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int = 4096,
    ) -> list[tuple[float, float]]:
        """Evaluate several models on one data set, all models in one call per chunk of rows.

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
        >>> w = [np.array([[2.0]]), np.zeros(1)]
        >>> [tuple(round(v, 4) for v in r) for r in t.evaluate([w], x, y)]
        [(0.0, 0.0)]
        """
        m = len(weights_list)
        if m == 0:
            return []
        x = np.asarray(x, np.float32)
        x = x.reshape(len(x), -1)
        if x.shape[1] != self.spec.input_dim:
            raise CrowdlearnError(
                f"evaluation inputs have {x.shape[1]} features but the model expects "
                f"{self.spec.input_dim}"
            )
        y = self._labels(y)
        n = len(x)
        if n == 0:
            return [(math.nan, math.nan)] * m
        act = self.spec.activation_floats_per_sample()
        # Models evaluated together: all of them, unless even one row each would not fit.
        together = m if self.strategy == "vectorized" else self.parallel_devices
        models_per_call = max(1, min(m, self.max_floats // max(1, act)))
        loss_sum = np.zeros(m, np.float64)
        metric_sum = np.zeros(m, np.float64)
        for ms in range(0, m, models_per_call):
            sub = weights_list[ms : ms + models_per_call]
            params = [
                tf.constant(np.stack([np.asarray(w[p], np.float32) for w in sub]))
                for p in range(len(self._shapes))
            ]
            live = min(len(sub), together)
            rows = max(1, min(int(batch_size), self.max_floats // max(1, live * act)))
            for start in range(0, n, rows):
                lo, me = self._eval_fn(
                    params,
                    tf.constant(x[start : start + rows]),
                    tf.constant(y[start : start + rows]),
                )
                loss_sum[ms : ms + len(sub)] += lo.numpy()
                metric_sum[ms : ms + len(sub)] += me.numpy()
        if self.spec.loss == "sparse_ce":
            return [
                (float(lo / n), float(c / n)) for lo, c in zip(loss_sum, metric_sum, strict=True)
            ]
        return [(float(lo / n), float(math.sqrt(lo / n))) for lo in loss_sum]
