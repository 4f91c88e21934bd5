"""The fused path: every group's whole network trained in one batched TensorFlow computation.

A Crowdlearning pass is, numerically, SGD of the group's whole network on the dominator's batches
(spec §3; ``tests/test_slicenet_execution.py`` proves the piece-by-piece step equal to
:func:`slicenet.execution.monolithic_step`).  :class:`FusedTrainer` runs the passes of many groups
together: weights stacked along a leading group axis, dense layers as batched matmuls,
convolutions as one grouped convolution (the groups side by side on the channel axis, each with its
own kernels), max pooling and Flatten on the folded group × batch axis, BatchNorm in training mode
with per-group masked batch statistics (padding rows excluded; over rows and positions on a
feature map), Keras' defaults (momentum 0.99, epsilon 1e-3, biased variance).  It also returns, per weight, the sum over the
pass's mini-batches of |mean gradient| (spec §5, the ranking for top-θ sharing).

``tests/test_slicenet_fused.py`` (dense) and ``tests/test_slicenet_cnn.py`` (convolutional) prove a
fused pass equal to repeated ``monolithic_step`` calls.

References: Chen et al., "Crowdlearning: Crowded Deep Learning with Data Privacy", SECON 2018.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np
import tensorflow as tf

from slicenet import inference
from slicenet.errors import UserError
from slicenet.graph import (
    Activation,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPool2D,
    ModelDescription,
)
from slicenet.layout import BN_EPSILON, BN_MOMENTUM, conv_program, is_convolutional, weight_specs
from slicenet.ownership import SliceLayout
from slicenet.weak import weak_method

_ACTS = {"relu": tf.nn.relu, "tanh": tf.tanh, "sigmoid": tf.sigmoid, "linear": tf.identity,
         None: tf.identity}


XLA_GROUPS = 6      # train this many groups or more in one XLA-compiled call (dense models)
XLA_MIN_FLOPS = 1e9  # ... or fewer groups when the call's training FLOPs reach this: the
#                     compiled loop does about 1.7x the work per CPU second (paper-mlp, 1-12
#                     groups of 16 steps: 55-91 against 43-50 GFLOP per CPU second, measured
#                     in one run), which repays a compilation (seconds, once per padded shape)
CONV_EVAL_MODELS = 1  # convolutional models scored per call: one (a plain convolution) costs
#                       less CPU than a grouped one over several models (FusedTrainer.evaluate)


def _cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:        # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _split(members: Sequence[int], lengths: Sequence[int], parts: int) -> list[list[int]]:
    """``members`` cut into at most ``parts`` lists of about equal total ``lengths`` (steps),
    longest first to the lightest list; each list keeps ascending order.

    >>> _split([0, 1, 2, 3, 4], [16, 16, 16, 16, 8], 2)
    [[0, 2, 4], [1, 3]]
    """
    parts = max(1, min(parts, len(members)))
    load = [0] * parts
    out: list[list[int]] = [[] for _ in range(parts)]
    for m, n in sorted(zip(members, lengths, strict=True), key=lambda t: -t[1]):
        j = load.index(min(load))
        out[j].append(m)
        load[j] += n
    return [sorted(o) for o in out if o]


def _grouped_conv(h, w, layer: Conv2D):
    """``h`` [K, B, H, W, C] convolved with each group's own kernels ``w`` [K, kh, kw, C, O]:
    one grouped convolution with the K groups side by side on the channel axis (XLA compiles
    grouped convolutions poorly on a CPU, about 30 times slower here: convolutional models stay
    off the XLA path)."""
    s, ws = tf.shape(h), tf.shape(w)
    k, c, o = s[0], s[4], ws[4]
    x = tf.reshape(tf.transpose(h, [1, 2, 3, 0, 4]), [s[1], s[2], s[3], k * c])
    f = tf.reshape(tf.transpose(w, [1, 2, 3, 0, 4]), [ws[1], ws[2], ws[3], k * o])
    y = tf.nn.conv2d(x, f, layer.strides, layer.padding.upper())
    ys = tf.shape(y)
    return tf.transpose(tf.reshape(y, [ys[0], ys[1], ys[2], k, o]), [3, 0, 1, 2, 4])


def _bcast(p, rank):
    """A per-group, per-channel parameter [K, C] shaped to broadcast over [K, B, ..., C]."""
    return tf.reshape(p, tf.concat([tf.shape(p)[:1], tf.ones([rank - 2], tf.int32),
                                    tf.shape(p)[1:]], 0))


def _ladder(n: int) -> int:
    """The smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (2^k and 3·2^k) that is >= ``n``.

    >>> [_ladder(n) for n in (1, 5, 7, 13, 100)]
    [1, 6, 8, 16, 128]
    """
    m = 1
    while True:
        for c in (m, 3 * m // 2):
            if c >= n and c >= 1:
                return c
        m *= 2


class FusedTrainer:
    """Batched training and evaluation of many copies of one model (dense or convolutional,
    with BatchNorm).

    ``train(tasks, with_abs_grad=True)`` takes :class:`~crowdlearn.training.batching.TrainTask`s
    (weights in :func:`slicenet.execution.weight_specs` order, batches ``[steps, B]`` with ``-1``
    padding) and returns per task the new weights followed, if asked, by Σ|mean gradient| per
    weight (zeros for moving statistics).
    """

    #: :meth:`evaluate` may run on another thread while training calls run (TensorFlow's
    #: functions are thread-safe; it reads nothing that training changes): the monitor
    #: evaluates a metrics row beside the event loop (``sim.monitor``).
    concurrent_evaluate = True
    #: dense models scored through their inference chain (:mod:`slicenet.inference`); False:
    #: layer by layer, as convolutional models are (the reference of
    #: ``benchmarks/slicenet_throughput.py --ab-chain``)
    chain_evaluate = True

    def __init__(self, desc: ModelDescription, x: np.ndarray, y: np.ndarray):
        self.desc = desc
        self.specs = weight_specs(desc)
        self._conv = is_convolutional(desc)
        for layer in desc.layers:
            if isinstance(layer, Dropout) and layer.rate > 0:
                raise UserError("the fused path does not model dropout; use rate 0")
        if self._conv:
            prog = conv_program(desc)     # checks the chain
            self._widest = max([int(np.prod(desc.input_shape))]
                               + [int(np.prod(st.z_shape)) for st in prog.stages])
        else:
            self._widest = max([int(np.prod(desc.input_shape))]
                               + [lay.units for lay in desc.layers if isinstance(lay, Dense)])
        x = np.asarray(x, np.float32)
        self._x = tf.constant(x.reshape(len(x), *desc.input_shape) if self._conv
                              else x.reshape(len(x), -1))
        self._y = tf.constant(np.asarray(y, np.int32))
        self._trainable = [s.trainable for s in self.specs]
        self.threads = _cores()     # compiled calls: groups cut into this many shares
        self._compiled: set = set()   # (groups, steps, batch) of the XLA programs built
        self.flops_per_sample = SliceLayout(desc, None, None, 0).train_flops_per_sample
        sig = [tf.TensorSpec([None, *s.shape], tf.float32) for s in self.specs]
        # many groups at once: compiled with XLA (about twice the throughput of the op-by-op
        # loop on a CPU); XLA compiles once per shape (seconds each), so train() pads the group
        # and step counts to a short ladder; calls of fewer than XLA_GROUPS groups and less
        # than XLA_MIN_FLOPS of training run op by op
        # the training set is an argument, not a capture: a traced graph is a web of reference
        # cycles that would keep a captured dataset until the interpreter's next full collection
        train_sig = [sig, tf.TensorSpec([None, None, None], tf.int32),
                     tf.TensorSpec([None], tf.float32), tf.TensorSpec([], tf.int32),
                     tf.TensorSpec([None, *self._x.shape[1:]], tf.float32),
                     tf.TensorSpec([None], tf.int32)]
        # (through a weak reference, slicenet.weak: no cycle through the traced functions)
        loop = weak_method(self, "_train_loop")
        self._train_fn = tf.function(loop, input_signature=train_sig, reduce_retracing=True)
        self._train_xla = tf.function(loop, input_signature=train_sig, reduce_retracing=True,
                                      jit_compile=True)
        self._eval_fn = tf.function(weak_method(self, "_eval"), input_signature=[
            sig, tf.TensorSpec([None, *self._x.shape[1:]], tf.float32),
            tf.TensorSpec([None], tf.int32)],
            reduce_retracing=True)
        # dense models are scored through their inference chain (slicenet.inference: every
        # BatchNorm folded into a Dense layer), the first Dense layer of all the models one
        # matrix product (their kernels side by side: they read the same rows)
        self._chain = None if self._conv else inference.chain(desc)
        #: the chain's first step is a Dense layer, its models' kernels side by side: decided
        #: here once, for the signature, the stacking (_chain_params) and the scoring
        self._packed_first = self._chain is not None and inference.packs_first(self._chain)
        if self._chain is not None:
            chain_sig = []
            for j, step in enumerate(self._chain):
                if step.kind == "act":
                    continue
                if j == 0 and self._packed_first:       # [in, K·out] and [K·out]
                    shapes = [None, None], [None]
                else:                                   # [K, in, out] and [K, out]; [K, d] twice
                    shapes = [None] * (3 if step.kind == "dense" else 2), [None, None]
                chain_sig += [tf.TensorSpec(shape, tf.float32) for shape in shapes]
            self._eval_chain_fn = tf.function(weak_method(self, "_eval_chain"), input_signature=[
                chain_sig, tf.TensorSpec([], tf.int32),
                tf.TensorSpec([None, *self._x.shape[1:]], tf.float32),
                tf.TensorSpec([None], tf.int32)], reduce_retracing=True)

    # ------------------------------------------------------------------ forward
    def _forward(self, ps, h, mask, count, training):
        """``h``: [K, B, d]; returns logits and, in training, the new moving statistics."""
        k = 0
        moving = {}
        layers = self.desc.layers
        for li, layer in enumerate(layers):
            if isinstance(layer, Dense):
                h = tf.einsum("kbi,kio->kbo", h, ps[k])
                k += 1
                if layer.use_bias:
                    h = h + ps[k][:, None, :]
                    k += 1
                h = _ACTS[layer.activation](h) if layer.activation != "log_softmax" else h
            elif isinstance(layer, Conv2D):
                h = _grouped_conv(h, ps[k], layer)
                k += 1
                if layer.use_bias:
                    h = h + _bcast(ps[k], 5)
                    k += 1
                h = _ACTS[layer.activation](h)
            elif isinstance(layer, MaxPool2D):
                s = tf.shape(h)
                f = tf.nn.max_pool2d(tf.reshape(h, tf.concat([[-1], s[2:]], 0)), layer.pool,
                                     layer.strides, layer.padding.upper())
                h = tf.reshape(f, tf.concat([s[:2], tf.shape(f)[1:]], 0))
            elif isinstance(layer, Flatten):
                if h.shape.rank == 5:
                    s = tf.shape(h)
                    h = tf.reshape(h, [s[0], s[1], -1])
            elif isinstance(layer, BatchNorm):
                gamma, beta, mm, mv = ps[k], ps[k + 1], ps[k + 2], ps[k + 3]
                rank = h.shape.rank
                if training:      # masked statistics over rows (and positions on a map)
                    axes = list(range(1, rank - 1))
                    w = tf.reshape(mask, tf.concat([tf.shape(mask), tf.ones([rank - 2],
                                                                            tf.int32)], 0))
                    per_row = tf.cast(tf.reduce_prod(tf.shape(h)[2:rank - 1]), tf.float32)
                    n = _bcast(tf.maximum(count, 1.0)[:, None] * per_row, rank)
                    mean = tf.reduce_sum(h * w, axis=axes, keepdims=True) / n
                    var = tf.reduce_sum(tf.square(h - mean) * w, axis=axes, keepdims=True) / n
                    flat_mean = tf.reshape(mean, tf.shape(mm))
                    flat_var = tf.reshape(var, tf.shape(mv))
                    moving[k + 2] = mm * BN_MOMENTUM + flat_mean * (1 - BN_MOMENTUM)
                    moving[k + 3] = mv * BN_MOMENTUM + flat_var * (1 - BN_MOMENTUM)
                else:
                    mean, var = _bcast(mm, rank), _bcast(mv, rank)
                h = (h - mean) * tf.math.rsqrt(var + BN_EPSILON) * _bcast(gamma, rank) \
                    + _bcast(beta, rank)
                k += 4
            elif isinstance(layer, Activation):
                if layer.name not in ("log_softmax", "softmax") or li != len(layers) - 1:
                    h = _ACTS[layer.name](h)
            # Dropout(0): nothing
        return h, moving

    def _train_loop(self, params, batches, lr, steps, x_all, y_all):
        trainable = self._trainable
        acc0 = [tf.zeros_like(p) for p in params]

        def body(s, ps, acc):
            idx = batches[s]
            valid = idx >= 0
            mask = tf.cast(valid, tf.float32)
            count = tf.reduce_sum(mask, axis=1)
            xb = tf.gather(x_all, tf.maximum(idx, 0))
            yb = tf.gather(y_all, tf.maximum(idx, 0))
            ps = list(ps)
            watched = [p for p, t in zip(ps, trainable, strict=True) if t]
            with tf.GradientTape() as tape:
                tape.watch(watched)
                logits, moving = self._forward(ps, xb, mask, count, True)
                per = tf.nn.sparse_softmax_cross_entropy_with_logits(yb, logits) * mask
                loss = tf.reduce_sum(tf.reduce_sum(per, axis=1) / tf.maximum(count, 1.0))
            grads = iter(tape.gradient(loss, watched))
            active = tf.cast(count > 0, tf.float32)
            new, new_acc = [], []
            for i, (p, a) in enumerate(zip(ps, acc, strict=True)):
                shape = [-1] + [1] * (len(p.shape) - 1)
                on = tf.reshape(active, shape)
                if trainable[i]:
                    g = next(grads)
                    new.append(p - tf.reshape(lr * active, shape) * g)
                    new_acc.append(a + on * tf.abs(g))
                else:   # moving statistics change only on steps that had data
                    new.append(on * moving[i] + (1 - on) * p)
                    new_acc.append(a)
            return s + 1, new, new_acc

        _, out, acc = tf.while_loop(lambda s, ps, a: s < steps, body,
                                    (tf.constant(0), list(params), acc0),
                                    parallel_iterations=1)
        return out, acc

    def _eval(self, params, x, y):
        """Per model: the sum of the rows' losses and the count of rows classified right."""
        k = tf.shape(params[0])[0]
        xb = tf.broadcast_to(x[None], tf.concat([[k], tf.shape(x)], 0))
        logits, _ = self._forward(list(params), xb, None, None, False)
        yb = tf.broadcast_to(y[None], [k, tf.shape(y)[0]])
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, logits), axis=1)
        right = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), yb),
                                      tf.int32), axis=1)
        return loss, right

    def _eval_chain(self, params, k, x, y):
        """:meth:`_eval` for a dense model's inference chain: ``params`` as
        :meth:`_chain_params` stacks them for ``k`` models."""
        steps = self._chain
        if self._packed_first:          # the first step: one product for all the models
            step = steps[0]
            h = _ACTS[step.act](tf.matmul(x, params[0]) + params[1])
            h = tf.transpose(tf.reshape(h, [tf.shape(x)[0], k, -1]), [1, 0, 2])
            i, steps = 2, steps[1:]
        else:
            h = tf.broadcast_to(x[None], tf.concat([[k], tf.shape(x)], 0))
            i = 0
        for step in steps:
            if step.kind == "dense":
                h = _ACTS[step.act](tf.matmul(h, params[i]) + params[i + 1][:, None, :])
            elif step.kind == "affine":
                h = h * params[i][:, None, :] + params[i + 1][:, None, :]
            else:
                h = _ACTS[step.act](h)
            i += step.params
        yb = tf.broadcast_to(y[None], [k, tf.shape(y)[0]])
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, h), axis=1)
        right = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(h, -1, output_type=tf.int32), yb),
                                      tf.int32), axis=1)
        return loss, right

    def _chain_params(self, weight_lists) -> list:
        """The models' folded chain parameters (:mod:`slicenet.inference`), stacked along a
        leading model axis, except the first Dense layer's: its kernels side by side
        (``[in, K·out]``) and its biases end to end.

        Each model is folded and written into its place at once, so one model's folded copy is
        held at a time, and each array is handed to TensorFlow (which copies it) and dropped
        in turn: the peak is that of the layer-by-layer path's stacking, not a folded copy of
        every model more (120 ``paper-mlp`` models, S-SGD's row: peak 752 → 492–538 MB,
        ``benchmarks/eval_row_memory.py``; ``tests/test_slicenet_inference.py``)."""
        k = len(weight_lists)
        bufs: list = []              # (each set to None once TensorFlow holds its copy)
        for m, w in enumerate(weight_lists):
            f = inference.fold(self.desc, w)
            i = 0
            for j, step in enumerate(self._chain):
                if step.kind == "act":
                    continue
                a, b = f[i], f[i + 1]
                first = j == 0 and self._packed_first      # [in, K·out] and [K·out]
                if m == 0:                                  # (else [K, …] each)
                    bufs += [np.empty((a.shape[0], k * a.shape[1]) if first else (k, *a.shape),
                                      np.float32),
                             np.empty((k * b.shape[0],) if first else (k, *b.shape), np.float32)]
                if first:
                    bufs[i][:, m * a.shape[1]:(m + 1) * a.shape[1]] = a
                    bufs[i + 1][m * b.shape[0]:(m + 1) * b.shape[0]] = b
                else:
                    bufs[i][m], bufs[i + 1][m] = a, b
                i += 2
            del f
        out = []
        for i in range(len(bufs)):
            out.append(tf.constant(bufs[i]))
            bufs[i] = None
        return out

    # ------------------------------------------------------------------ public
    def train(self, tasks: Sequence, *, with_abs_grad: bool = True,
              share_threads: int | None = None) -> list[list[np.ndarray]]:
        """Run the tasks' SGD steps together; see the class docstring for the result layout.

        A compiled call's shares (:meth:`_calls`) run side by side on ``share_threads`` threads
        (by default one per core, :attr:`threads`; the threads end with the call) once their
        program is compiled, else one after the other.  Each share is its own call of the same
        program, so the results are the same bits either way (tested); side by side they take
        ≈ 20 % less wall when a core is free (12 ``paper-mlp`` groups of 17 steps: 0.21 → 0.17 s,
        ``docs/benchmarks.md``, "Seventeenth session").  A caller beside other work (the
        executor's overlap worker, beside the event loop) passes 1."""
        if not tasks:
            return []
        threads = self.threads if share_threads is None else int(share_threads)
        if threads < 1:
            raise ValueError(f"share_threads must be >= 1, got {share_threads!r}")
        out: list = [None] * len(tasks)
        schedules = [t.batches for t in tasks]
        for b, xla, shares in self._calls(schedules):
            if threads > 1 and len(shares) > 1 and xla and self._all_compiled(schedules, shares,
                                                                               b):
                with ThreadPoolExecutor(min(threads, len(shares)),
                                        thread_name_prefix="crowdlearn-share") as pool:
                    done = list(pool.map(partial(self._run, tasks, b=b, xla=xla), shares))
            else:
                done = [self._run(tasks, share, b, xla) for share in shares]
            for share, (new, acc) in zip(shares, done, strict=True):
                for j, i in enumerate(share):
                    w = [a[j] for a in new]
                    out[i] = w + [a[j] for a in acc] if with_abs_grad else w
        return out

    def _calls(self, schedules: Sequence) -> list[tuple[int, bool, list[list[int]]]]:
        """How :meth:`train` runs tasks with these batch schedules: per mini-batch size ``b``,
        whether compiled, and the shares (task positions) of one call each."""
        by_b: dict[int, list[int]] = {}
        for i, sched in enumerate(schedules):
            by_b.setdefault(int(np.asarray(sched).shape[1]), []).append(i)
        calls = []
        for b, members in by_b.items():
            # padding groups train nothing (no sample, lr 0); padding steps are never run
            lengths = [len(schedules[i]) for i in members]
            work = self.flops_per_sample * b * sum(lengths)
            xla = not self._conv and (len(members) >= XLA_GROUPS or work >= XLA_MIN_FLOPS)
            # a compiled call's groups are cut into shares (one per core, by default) and each
            # share pads its own group count: fewer padding groups, a smaller working set (each
            # group's arithmetic is its own whichever call holds it).  train() runs them side by
            # side once compiled (on the sixth session's machine two threads did not overlap;
            # on the seventeenth's they take 20 % less wall, the same bits)
            calls.append((b, xla, _split(members, lengths, self.threads if xla else 1)))
        return calls

    def _all_compiled(self, schedules: Sequence, shares: Sequence, b: int) -> bool:
        """Whether every share's padded program (mini-batches of ``b``) is compiled."""
        return all((_ladder(len(share)), _ladder(max(len(schedules[i]) for i in share)), b)
                   in self._compiled for share in shares)

    def compiled_for(self, schedules: Sequence) -> bool:
        """Whether :meth:`train` on tasks with these batch schedules would run only programs
        already compiled (XLA compiles each padded shape once, in seconds): a caller that may
        train ahead of need (the executor's overlap) leaves new shapes to the call that
        needs them."""
        return all(self._all_compiled(schedules, shares, b)
                   for b, xla, shares in self._calls(schedules) if xla)

    def _run(self, tasks: Sequence, members: Sequence[int], b: int, xla: bool):
        """One compiled (``xla``) or op-by-op call training ``tasks[i]`` for ``i`` in
        ``members`` (mini-batches of ``b``); the stacked new weights and Σ|g| as numpy."""
        steps = max(len(tasks[i].batches) for i in members)
        k = _ladder(len(members)) if xla else len(members)
        sched = np.full((_ladder(steps) if xla else steps, k, b), -1, np.int32)
        for j, i in enumerate(members):
            sched[:len(tasks[i].batches), j] = tasks[i].batches
        rows = list(members) + [members[0]] * (k - len(members))
        params = [tf.constant(np.stack([np.asarray(tasks[i].weights[p], np.float32)
                                        for i in rows]))
                  for p in range(len(self.specs))]
        lr = tf.constant(np.array([tasks[i].lr for i in members] + [0.0] * (k - len(members)),
                                  np.float32))
        fn = self._train_xla if xla else self._train_fn
        new, acc = fn(params, tf.constant(sched), lr, tf.constant(steps), self._x, self._y)
        if xla:
            self._compiled.add(sched.shape[:2][::-1] + (b,))
        return [t.numpy() for t in new], [t.numpy() for t in acc]

    def evaluate(self, weight_lists: Sequence[Sequence[np.ndarray]], x: np.ndarray,
                 y: np.ndarray, max_floats: int = 2 ** 24, *,
                 threads: int | None = None) -> list[tuple[float, float]]:
        """(mean loss, accuracy) per model, BatchNorm in inference mode.

        Dense models are scored together (one batched call per chunk of rows) through their
        inference chain (:mod:`slicenet.inference`: every BatchNorm folded into a Dense layer,
        the first Dense layer of all the models one matrix product; ``paper-mlp``, 12 models on
        10,000 rows: ≈ 25 % less CPU than layer by layer, ``docs/benchmarks.md``, "Fifteenth
        and sixteenth sessions"; the loss moves in its last bits); convolutional
        models one at a time (:data:`CONV_EVAL_MODELS`), since a grouped convolution over many
        models costs more than the models' plain convolutions (paper-cnn, 28x28x1, quiet
        machine: 12 models on 2,000 images 5.5 s of CPU together against 4.2 s one by one; 120
        models 2.0x; ``docs/benchmarks.md``, "Scoring CNNs one model at a time").  Rows are
        taken in chunks so that each call's activations stay under ``max_floats``; ``threads``
        calls (by default one per core, :attr:`threads`) run at a time, each on a thread of a
        pool that ends with this call.  A model's score is its rows' summed losses (float32 per
        chunk, added in chunk order in float64) over their count, and its count of rows
        classified right over the row count: exact, and the same bit for bit whatever
        ``threads`` (one chunk after the other with ``threads=1``).  At most
        ``threads × max_floats`` floats of activations are in flight.

        >>> from slicenet.graph import Dense, ModelDescription
        >>> t = FusedTrainer(ModelDescription((4,), (Dense(3),)), np.zeros((1, 4)), np.zeros(1))
        >>> ws = [t.init_weights(np.random.default_rng(i)) for i in range(2)]
        >>> x, y = np.random.default_rng(0).normal(size=(50, 4)), np.arange(50) % 3
        >>> t.evaluate(ws, x, y, max_floats=64) == t.evaluate(ws, x, y, max_floats=64, threads=1)
        True
        """
        if not weight_lists:
            return []
        threads = self.threads if threads is None else int(threads)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads!r}")
        per_call = CONV_EVAL_MODELS if self._conv else len(weight_lists)
        x = np.asarray(x, np.float32)
        x = x.reshape(len(x), *self.desc.input_shape) if self._conv else x.reshape(len(x), -1)
        y = np.asarray(y, np.int32)
        by_chain = self._chain is not None and self.chain_evaluate
        calls = []                    # (first model, its params, first row, rows)
        for m in range(0, len(weight_lists), per_call):
            share = weight_lists[m:m + per_call]
            chunk = max(1, max_floats // (len(share) * self._widest))
            if by_chain:
                params = self._chain_params(share)
            else:
                params = [tf.constant(np.stack([np.asarray(w[p], np.float32) for w in share]))
                          for p in range(len(self.specs))]
            calls += [(m, params, s, chunk) for s in range(0, len(x), chunk)]
        k = tf.constant(min(per_call, len(weight_lists)), tf.int32)

        def scores(call) -> tuple[np.ndarray, np.ndarray]:
            _, params, s, chunk = call
            xs, ys = tf.constant(x[s:s + chunk]), tf.constant(y[s:s + chunk])
            if by_chain:
                loss, right = self._eval_chain_fn(params, k, xs, ys)
            else:
                loss, right = self._eval_fn(params, xs, ys)
            return loss.numpy(), right.numpy()

        if threads == 1 or len(calls) == 1:
            done = map(scores, calls)
        else:
            with ThreadPoolExecutor(min(threads, len(calls)),
                                    thread_name_prefix="crowdlearn-evaluate-chunk") as pool:
                done = list(pool.map(scores, calls))       # (the threads end here)
        tot_loss = np.zeros(len(weight_lists))
        right = np.zeros(len(weight_lists), np.int64)
        for (m, _, _, _), (loss, ok) in zip(calls, done, strict=True):
            tot_loss[m:m + len(loss)] += loss
            right[m:m + len(ok)] += ok
        return [(float(a), float(b))
                for a, b in zip(tot_loss / len(x), right / len(x), strict=True)]

    def init_weights(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Glorot-uniform kernels (Keras' fans: receptive field × input / output channels for a
        convolution), zero biases, BN gamma 1 / beta 0 / mean 0 / variance 1."""
        out = []
        for s in self.specs:
            if s.role == "kernel":
                field = int(np.prod(s.shape[:-2]))
                lim = np.sqrt(6.0 / (field * (s.shape[-2] + s.shape[-1])))
                out.append(rng.uniform(-lim, lim, s.shape).astype(np.float32))
            elif s.role in ("gamma", "moving_variance"):
                out.append(np.ones(s.shape, np.float32))
            else:
                out.append(np.zeros(s.shape, np.float32))
        return out
