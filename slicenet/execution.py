"""Executing one SGD step of a sliced dense network, whole or piece by piece (ring 1: TF lazily).

The spec (section 3) says that training a group's network piece by piece is numerically the same
computation as training the whole network on the dominator's batch.  This module makes that claim
checkable:

* :func:`monolithic_step` -- one plain SGD step of the whole network as **one** TensorFlow
  computation (a ``tf.function``), batch normalisation in training mode;
* :func:`piecewise_step` (and the stateful :class:`PiecewiseNetwork` behind it) -- the same step
  executed by the dominator and the ``n`` pieces of a slicing plan, each layer of each participant
  being its own small TensorFlow computation, all boundary tensors passed as explicit
  :class:`Message` objects (numpy arrays) that are returned so their floats can be counted.

Scope: chains of ``Dense`` layers with optional ``BatchNorm`` and element-wise ``Activation``
layers (the paper's MLP 784 → BN → 400 → BN → ReLU → 200 → BN → ReLU → 100 → BN → ReLU → 10 →
log-softmax).  Models with an image input, ``Conv2D`` or ``MaxPool2D`` layers are executed by
:mod:`slicenet.convnet` (channel granularity), to which :func:`monolithic_step`,
:func:`piecewise_step` and :class:`PiecewiseNetwork` forward.  (Non-zero) dropout raises
:class:`UserError`.

Weights
-------
One flat list of float32 arrays, in the order of ``build_keras(desc).get_weights()`` (so a Keras
model is the reference): walking ``desc.layers``, a ``Dense`` contributes ``kernel (fan_in,
units)`` then ``bias (units,)`` (if ``use_bias``), a ``BatchNorm`` contributes ``gamma, beta,
moving_mean, moving_variance`` (each ``(features,)``).  :func:`weight_specs` lists them by name.

The step
--------
Loss: mean softmax cross-entropy of the integer labels ``y`` against the network's output taken as
logits (what ``SparseCategoricalCrossentropy(from_logits=True)`` computes; the paper's trailing
log-softmax is idempotent under it).  Update: ``w ← w − lr · ∂loss/∂w`` for every kernel, bias,
gamma and beta.  Batch norm in training mode, as ``keras.layers.BatchNormalization`` with its
defaults: normalise with the batch mean and (biased) variance, ``ε = 1e-3``; moving statistics
``m ← 0.99·m + 0.01·batch statistic``.

Piece-by-piece execution (spec sections 1 and 3)
------------------------------------------------
Ownership follows the cost graph (:mod:`slicenet.graph`): a weight belongs to the holder of its
**source** neuron; the dominator holds the input layer (and any batch norm / activation on it),
the input → hidden-1 weights and the output layer's bias and whatever follows the output layer;
a hidden neuron's bias and batch-norm parameters stay with its piece.

Forward, per mini-batch:

1. the dominator normalises its input and computes the weighted sums feeding hidden layer 1; it
   sends each piece holding hidden-1 neurons the sums of its neurons (``layer=0``);
2. a piece holding neurons ``J`` of hidden layer ``l`` adds the partial sums it received (and its
   own local one), its bias, applies batch norm and activation to ``J`` -- local, since batch norm
   normalises each neuron over the batch -- and computes with the outgoing weights it owns one
   partial weighted sum per neuron of layer ``l+1`` (the **weighted-sum refinement**).  It sends
   every other piece holding layer ``l+1`` neurons the partial sums of that piece's neurons
   (``layer=l+1``); after the last hidden layer it sends all ``output_units`` partial sums to the
   dominator (``layer=L``).  A receiver thus never learns the sender's individual activations;
3. the dominator adds the partial sums and the output bias, applies what follows the output layer
   and computes the loss and the output errors ``∂loss/∂z``.

Backward, the same path in reverse: the dominator sends the output errors to every piece holding
last-hidden neurons (``layer=L``).  A piece holding ``J`` in layer ``l`` assembles the errors of
all layer ``l+1`` neurons (one value per target neuron and sample, from each target piece),
computes the gradient of the outgoing weights it owns, back-propagates through them and through
its activation and batch norm to get the errors ``∂loss/∂z_J`` of its own neurons and the
gradients of its bias, gamma and beta, updates its parameters, and sends ``∂loss/∂z_J`` to every
other piece holding layer ``l−1`` neurons (their owned weights feed ``J``), or to the dominator
for ``l = 0``; the dominator finishes with the input → hidden-1 weights and the input batch norm.
With source ownership those backward values are complete errors, not partial sums: the summation
over targets happens at the source piece, which owns all of its neurons' outgoing weights.

The floats of the returned messages per step are exactly ``traffic_per_sample(graph,
assignment)`` × batch, forward and backward separately (``tests/test_slicenet_execution.py``).

**[ours]** Each participant's layer step is one ``tf.function`` (shape-generic, shared by all
pieces); its backward *recomputes* the piece's batch norm and activation from the pre-activation
sums kept from the forward pass (rematerialisation), instead of keeping a gradient tape between
the two passes.  Pipelining of successive mini-batches is not modelled here: this module is about
numerics and messages, :mod:`crowdlearn.protocols.crowdlearning.machines` about time.

Examples
--------
>>> import numpy as np
>>> from slicenet.graph import Dense, ModelDescription
>>> desc = ModelDescription((3,), [Dense(4, activation="relu"), Dense(2)])
>>> rng = np.random.default_rng(0)
>>> w = [rng.normal(size=s.shape).astype("float32") for s in weight_specs(desc)]
>>> x, y = rng.normal(size=(8, 3)).astype("float32"), rng.integers(0, 2, 8)
>>> w1, loss1 = monolithic_step(desc, w, x, y, 0.1)
>>> w2, loss2, msgs = piecewise_step(desc, [0, 0, 1, 1], w, x, y, 0.1)
>>> max(float(np.abs(a - b).max()) for a, b in zip(w1, w2)) < 1e-6
True
>>> count_floats(msgs)   # per sample: 4 + 2·2 forward, the same backward; batch 8
(64, 64)

References
----------
L. Chen, T. Jung, H. Du, J. Qian, J. Hou, X.-Y. Li, "Crowdlearning: Crowded Deep Learning with
Data Privacy", IEEE SECON 2018.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from slicenet.errors import UserError
from slicenet.graph import (
    CostGraph,
    ModelDescription,
)
from slicenet.layout import (  # the pure layout, re-exported: the executor's public names
    BN_EPSILON,
    BN_MOMENTUM,
    DOMINATOR,
    Message,
    WeightSpec,
    _check_labels,
    _check_weights,
    _Op,
    _Program,
    _program,
    _sig,
    count_floats,
    is_convolutional,
    weight_specs,
)

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "DOMINATOR",
    "Message",
    "PiecewiseNetwork",
    "WeightSpec",
    "count_floats",
    "monolithic_step",
    "piecewise_step",
    "weight_specs",
]

def _check_batch(prog: _Program, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    xa = np.asarray(x, dtype=np.float32)
    if xa.ndim != 2 or xa.shape[1] != prog.input_dim or xa.shape[0] < 1:
        raise UserError(f"x has shape {xa.shape}, expected (batch ≥ 1, {prog.input_dim})")
    return xa, _check_labels(y, xa.shape[0], prog.output.units)


# --------------------------------------------------------------------------- TF kernels


def _activation(name: str) -> Any:
    import keras

    try:
        return keras.activations.get(name)
    except (ValueError, TypeError) as e:
        raise UserError(f"unknown activation {name!r}: {e}") from None


def _check_activations(prog: _Program) -> None:
    for op in prog.pre + tuple(o for st in prog.stages for o in st.post):
        if op.kind == "act":
            _activation(op.name)


def _chain(sig: tuple[tuple[str, str], ...], z: Any, params: Sequence[Any]) -> tuple[Any, list[Any]]:
    """Apply batch norms (training mode) and activations; returns (output, new moving stats)."""
    import tensorflow as tf

    moving: list[Any] = []
    i = 0
    for kind, name in sig:
        if kind == "bn":
            gamma, beta, mm, mv = params[4 * i: 4 * i + 4]
            i += 1
            mean, var = tf.nn.moments(z, [0])
            z = tf.nn.batch_normalization(z, mean, var, beta, gamma, BN_EPSILON)
            moving += [mm * BN_MOMENTUM + mean * (1.0 - BN_MOMENTUM),
                       mv * BN_MOMENTUM + var * (1.0 - BN_MOMENTUM)]
        else:
            z = _activation(name)(z)
    return z, moving


def _trainable(params: Sequence[Any]) -> list[Any]:
    """gamma and beta of every batch norm in a flat [g, b, mean, var]* parameter list."""
    return [p for i, p in enumerate(params) if i % 4 < 2]


def _moving(params: Sequence[Any]) -> list[Any]:
    """moving mean and variance of every batch norm in a flat [g, b, mean, var]* parameter list."""
    return [p for i, p in enumerate(params) if i % 4 >= 2]


def _with_moving(params: Sequence[Any], train: Sequence[Any], moving: Sequence[Any]) -> list[Any]:
    """Reassemble a flat [g, b, mean, var]* list from new (g, b) pairs and new moving stats."""
    out = []
    for j in range(len(params) // 4):
        out += [train[2 * j], train[2 * j + 1], moving[2 * j], moving[2 * j + 1]]
    return out


_KERNELS: dict[tuple, Any] = {}


def _kernel(kind: str, sig: tuple[tuple[str, str], ...]) -> Any:
    """A cached, shape-generic ``tf.function`` for one kind of participant layer step."""
    key = (kind, sig)
    if key in _KERNELS:
        return _KERNELS[key]
    import tensorflow as tf

    if kind == "input_fwd":
        def f(x, params, w):
            a, moving = _chain(sig, x, params)
            return tf.matmul(a, w), moving
    elif kind == "input_bwd":
        def f(x, params, w, delta, lr):
            train = _trainable(params)
            with tf.GradientTape() as tape:
                tape.watch(train)
                a, _ = _chain(sig, x, params)
            gw = tf.matmul(a, delta, transpose_a=True)
            new_train = []
            if train:
                da = tf.matmul(delta, w, transpose_b=True)
                grads = tape.gradient(a, train, output_gradients=da)
                new_train = [t - lr * g for t, g in zip(train, grads, strict=True)]
            return w - lr * gw, new_train
    elif kind == "hidden_fwd":
        def f(parts, b, params, w):
            s = tf.reduce_sum(parts, axis=0)
            a, moving = _chain(sig, s + b, params)
            return s, tf.matmul(a, w), moving
    elif kind == "hidden_bwd":
        def f(s, b, params, w, delta_next, lr):
            train = _trainable(params)
            with tf.GradientTape() as tape:
                tape.watch([s, b, *train])
                a, _ = _chain(sig, s + b, params)
            da = tf.matmul(delta_next, w, transpose_b=True)
            gw = tf.matmul(a, delta_next, transpose_a=True)
            gs, gb, *gt = tape.gradient(a, [s, b, *train], output_gradients=da)
            return gs, w - lr * gw, b - lr * gb, [t - lr * g for t, g in zip(train, gt, strict=True)]
    elif kind == "output":
        def f(parts, b, params, y):
            train = _trainable(params)
            s = tf.reduce_sum(parts, axis=0)
            with tf.GradientTape() as tape:
                tape.watch([s, b, *train])
                out, moving = _chain(sig, s + b, params)
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=out))
            gs, gb, *gt = tape.gradient(loss, [s, b, *train])
            return loss, gs, gb, gt, moving
    else:  # pragma: no cover
        raise AssertionError(kind)
    fn = tf.function(f, reduce_retracing=True)
    _KERNELS[key] = fn
    return fn


_MONO: dict[_Program, Any] = {}


def _monolithic_kernel(prog: _Program) -> Any:
    if prog in _MONO:
        return _MONO[prog]
    import tensorflow as tf

    train_idx = [i for i, s in enumerate(prog.specs) if s.trainable]

    def params_of(ops: Sequence[_Op], ws: Sequence[Any]) -> list[Any]:
        return [ws[o.w + j] for o in ops if o.kind == "bn" for j in range(4)]

    def moving_idx(ops: Sequence[_Op]) -> list[int]:
        return [o.w + j for o in ops if o.kind == "bn" for j in (2, 3)]

    def f(ws, x, y, lr):
        ws = list(ws)
        new = list(ws)
        with tf.GradientTape() as tape:
            tape.watch([ws[i] for i in train_idx])
            h, moving = _chain(_sig(prog.pre), x, params_of(prog.pre, ws))
            for i, v in zip(moving_idx(prog.pre), moving, strict=True):
                new[i] = v
            for st in prog.stages:
                z = tf.matmul(h, ws[st.kernel])
                if st.bias is not None:
                    z = z + ws[st.bias]
                h, moving = _chain(_sig(st.post), z, params_of(st.post, ws))
                for i, v in zip(moving_idx(st.post), moving, strict=True):
                    new[i] = v
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=h))
        grads = tape.gradient(loss, [ws[i] for i in train_idx])
        for i, g in zip(train_idx, grads, strict=True):
            new[i] = ws[i] - lr * g
        return new, loss

    fn = tf.function(f, reduce_retracing=True)
    _MONO[prog] = fn
    return fn


# --------------------------------------------------------------------------- monolithic


def monolithic_step(
    desc: ModelDescription,
    weights: Sequence[Any],
    x: Any,
    y: Any,
    lr: float,
) -> tuple[list[np.ndarray], float]:
    """One SGD step of the whole network as a single TensorFlow computation.

    Parameters
    ----------
    desc : ModelDescription
        A dense chain (see the module docstring).
    weights : sequence of array
        The flat weight list, in :func:`weight_specs` order (= ``build_keras(desc).get_weights()``).
    x : array, shape (batch, features)
    y : array of int, shape (batch,)
        Class labels in ``0 .. output_units-1``.
    lr : float
        Learning rate of ``w ← w − lr · grad``.

    Returns
    -------
    new_weights : list of numpy.ndarray
        Same order; trainable weights stepped, batch-norm moving statistics updated
        (momentum 0.99).
    loss : float
        Mean softmax cross-entropy of the batch before the step.

    Raises
    ------
    UserError
        Unsupported model, wrong weight list, wrong batch.

    References
    ----------
    L. Chen et al., "Crowdlearning: Crowded Deep Learning with Data Privacy", IEEE SECON 2018,
    section III (the group trains the whole network on the dominator's batch).
    """
    import tensorflow as tf

    if isinstance(desc, ModelDescription) and is_convolutional(desc):
        from slicenet.convnet import conv_monolithic_step
        return conv_monolithic_step(desc, weights, x, y, lr)
    prog = _program(desc)
    _check_activations(prog)
    ws = _check_weights(prog.specs, weights)
    xa, ya = _check_batch(prog, x, y)
    new, loss = _monolithic_kernel(prog)([tf.constant(w) for w in ws], tf.constant(xa),
                                         tf.constant(ya), tf.constant(lr, tf.float32))
    return [w.numpy() for w in new], float(loss)


# --------------------------------------------------------------------------- piecewise


@functools.lru_cache(maxsize=8)
def _default_graph(desc: ModelDescription) -> CostGraph:
    return desc.graph()


class _Part:
    """What one piece holds of one hidden layer: its units ``J``, their bias and batch-norm
    parameters, the outgoing weights ``W[J, :]`` and the pre-activation sums of the last forward."""

    __slots__ = ("units", "b", "params", "w", "s")

    def __init__(self, units: np.ndarray, b: Any, params: list[Any], w: Any) -> None:
        self.units = units
        self.b = b
        self.params = params
        self.w = w
        self.s: Any = None


class PiecewiseNetwork:
    """A dense network held by a dominator and the pieces of a slicing plan; stateful.

    The weights live distributed, as in a deployment: each participant keeps the parameters it
    owns between steps (see the module docstring for ownership).  :meth:`step` runs one SGD step
    piece by piece and returns the messages; :meth:`get_weights` gathers the flat list (a test
    convenience, not traffic).

    Parameters
    ----------
    desc : ModelDescription
    assignment : array of int, or SlicePlan
        The piece of every vertex of ``graph`` (a :class:`~slicenet.plan.SlicePlan`'s
        ``assignment`` is taken).
    weights : sequence of array
        Start weights in :func:`weight_specs` order.
    graph : CostGraph, optional
        The cost graph the assignment refers to (any granularity); default
        ``desc.graph()`` (one vertex per neuron).

    Examples
    --------
    >>> from slicenet.graph import Dense, ModelDescription
    >>> desc = ModelDescription((3,), [Dense(2), Dense(2), Dense(1)])
    >>> net = PiecewiseNetwork(desc, [0, 1, 0, 1], [np.ones(s.shape, "float32") for s in weight_specs(desc)])
    >>> net.n, [len(h) for h in net.holders]
    (2, [2, 2])

    References
    ----------
    L. Chen et al., "Crowdlearning: Crowded Deep Learning with Data Privacy", IEEE SECON 2018,
    sections III-B (slicing) and III-C (intra-group training).
    """

    def __new__(cls, desc: Any = None, *args: Any, **kwargs: Any) -> Any:
        if cls is PiecewiseNetwork and isinstance(desc, ModelDescription) \
                and is_convolutional(desc):     # a convolutional model: slicenet.convnet
            from slicenet.convnet import ConvPiecewiseNetwork
            return ConvPiecewiseNetwork(desc, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        desc: ModelDescription,
        assignment: Any,
        weights: Sequence[Any],
        *,
        graph: CostGraph | None = None,
    ) -> None:
        import tensorflow as tf

        prog = _program(desc)
        _check_activations(prog)
        ws = _check_weights(prog.specs, weights)
        n_plan = getattr(assignment, "n", None)
        a = np.asarray(getattr(assignment, "assignment", assignment), dtype=np.int64)
        g = _default_graph(desc) if graph is None else graph
        sizes = tuple(st.units for st in prog.hidden)
        if tuple(g.layer_sizes) != sizes or g.output_units != prog.output.units:
            raise UserError(
                f"the graph's hidden layers {tuple(g.layer_sizes)} (output {g.output_units}) do not "
                f"match the model's {sizes} (output {prog.output.units})")
        if a.shape != (g.num_vertices,):
            raise UserError(
                f"assignment has shape {a.shape}, expected ({g.num_vertices},): one piece per "
                "vertex of the cost graph (pass graph= for a block-granularity plan)")
        if len(a) and a.min() < 0:
            raise UserError("assignment values must be ≥ 0")
        self.desc = desc
        self.n = int(n_plan) if n_plan is not None else (int(a.max()) + 1 if len(a) else 0)
        self._prog = prog
        self._template = ws
        L = len(prog.hidden)
        self.num_hidden = L

        # units of every (piece, layer)
        self.units: list[dict[int, np.ndarray]] = []
        for li in range(L):
            sl = g.layer_slice(li)
            first, size, piece = g.first[sl], g.size[sl], a[sl]
            unit_piece = np.empty(sizes[li], dtype=np.int64)
            for f, s, p in zip(first, size, piece, strict=True):
                unit_piece[f:f + s] = p
            self.units.append({int(p): np.flatnonzero(unit_piece == p) for p in np.unique(unit_piece)})
        self.holders: list[list[int]] = [sorted(u) for u in self.units]

        c = tf.constant

        def bn_params(ops: Sequence[_Op], idx: np.ndarray | None = None) -> list[Any]:
            out = []
            for o in ops:
                if o.kind == "bn":
                    for j in range(4):
                        w = ws[o.w + j]
                        out.append(c(w if idx is None else w[idx]))
            return out

        # dominator: input-side ops, input→first weights, output bias and output-side ops
        out_st = prog.output
        self._dom_pre = bn_params(prog.pre)
        self._dom_w = c(ws[prog.stages[0].kernel])
        self._dom_b = c(ws[out_st.bias] if out_st.bias is not None else np.zeros(out_st.units, np.float32))
        self._dom_post = bn_params(out_st.post)
        # pieces
        self._parts: list[dict[int, _Part]] = []
        for li, st in enumerate(prog.hidden):
            nxt = prog.stages[li + 1]
            d = {}
            for p, J in self.units[li].items():
                b = ws[st.bias][J] if st.bias is not None else np.zeros(len(J), np.float32)
                d[p] = _Part(J, c(b), bn_params(st.post, J), c(ws[nxt.kernel][J]))
            self._parts.append(d)

    # ------------------------------------------------------------------ step
    def step(self, x: Any, y: Any, lr: float) -> tuple[float, list[Message]]:
        """One SGD step piece by piece; returns ``(loss, messages)``.

        The messages are in the order they are produced: forward layer by layer, then backward.
        """
        import tensorflow as tf

        prog = self._prog
        xa, ya = _check_batch(prog, x, y)
        B = xa.shape[0]
        L = self.num_hidden
        D = DOMINATOR
        msgs: list[Message] = []
        xt, yt, lrt = tf.constant(xa), tf.constant(ya), tf.constant(lr, tf.float32)
        n_out = prog.output.units
        out_units = np.arange(n_out)

        # ---- forward: dominator input side
        sums, moving = _kernel("input_fwd", _sig(prog.pre))(xt, self._dom_pre, self._dom_w)
        self._dom_pre = self._set_moving(self._dom_pre, moving)
        sums = sums.numpy()
        out_parts: list[np.ndarray] = []
        inbox: dict[tuple[int, int], list[np.ndarray]] = {}
        if L == 0:
            out_parts.append(sums)
        else:
            for p in self.holders[0]:
                J = self.units[0][p]
                v = sums[:, J]
                msgs.append(Message(D, p, "forward", 0, v, J))
                inbox[p, 0] = [v]
        # ---- forward: pieces, layer by layer
        for li in range(L):
            fwd = _kernel("hidden_fwd", _sig(prog.hidden[li].post))
            for p in self.holders[li]:
                part = self._parts[li][p]
                s, out, moving = fwd(tf.constant(np.stack(inbox.pop((p, li)))), part.b, part.params,
                                     part.w)
                part.s = s
                part.params = self._set_moving(part.params, moving)
                out = out.numpy()
                if li + 1 < L:
                    for q in self.holders[li + 1]:
                        J = self.units[li + 1][q]
                        v = out[:, J]
                        if q != p:
                            msgs.append(Message(p, q, "forward", li + 1, v, J))
                        inbox.setdefault((q, li + 1), []).append(v)
                else:
                    msgs.append(Message(p, D, "forward", L, out, out_units))
                    out_parts.append(out)
        # ---- dominator: output layer, loss and output errors
        loss, delta, gb, gt, moving = _kernel("output", _sig(prog.output.post))(
            tf.constant(np.stack(out_parts)), self._dom_b, self._dom_post, yt)
        self._dom_b = self._dom_b - lrt * gb
        train = [t - lrt * g for t, g in zip(_trainable(self._dom_post), gt, strict=True)]
        self._dom_post = _with_moving(self._dom_post, train, moving)
        delta = delta.numpy()
        # ---- backward
        if L == 0:
            delta_first = delta
        else:
            dnext: dict[tuple[int, int], np.ndarray] = {}
            for p in self.holders[L - 1]:
                msgs.append(Message(D, p, "backward", L, delta, out_units))
                dnext[p, L - 1] = delta
            delta_first = np.empty((B, prog.hidden[0].units), np.float32)
            for li in reversed(range(L)):
                bwd = _kernel("hidden_bwd", _sig(prog.hidden[li].post))
                width = prog.hidden[li].units
                for p in self.holders[li]:
                    part = self._parts[li][p]
                    gs, part.w, part.b, train = bwd(part.s, part.b, part.params, part.w,
                                                    tf.constant(dnext.pop((p, li))), lrt)
                    part.params = _with_moving(part.params, train, _moving(part.params))
                    part.s = None
                    gs = gs.numpy()
                    J = part.units
                    if li > 0:
                        for q in self.holders[li - 1]:
                            if q != p:
                                msgs.append(Message(p, q, "backward", li, gs, J))
                            buf = dnext.get((q, li - 1))
                            if buf is None:
                                buf = dnext[q, li - 1] = np.empty((B, width), np.float32)
                            buf[:, J] = gs
                    else:
                        msgs.append(Message(p, D, "backward", 0, gs, J))
                        delta_first[:, J] = gs
        # ---- dominator: input side
        self._dom_w, train = _kernel("input_bwd", _sig(prog.pre))(
            xt, self._dom_pre, self._dom_w, tf.constant(delta_first), lrt)
        self._dom_pre = _with_moving(self._dom_pre, train, _moving(self._dom_pre))
        return float(loss), msgs

    @staticmethod
    def _set_moving(params: list[Any], moving: Sequence[Any]) -> list[Any]:
        return _with_moving(params, _trainable(params), moving)

    # ------------------------------------------------------------------ weights
    def get_weights(self) -> list[np.ndarray]:
        """The current flat weight list (gathered from all participants)."""
        prog = self._prog
        ws = [w.copy() for w in self._template]

        def put_bn(ops: Sequence[_Op], params: list[Any], idx: np.ndarray | None = None) -> None:
            k = 0
            for o in ops:
                if o.kind == "bn":
                    for j in range(4):
                        if idx is None:
                            ws[o.w + j][...] = params[k].numpy()
                        else:
                            ws[o.w + j][idx] = params[k].numpy()
                        k += 1

        put_bn(prog.pre, self._dom_pre)
        ws[prog.stages[0].kernel][...] = self._dom_w.numpy()
        if prog.output.bias is not None:
            ws[prog.output.bias][...] = self._dom_b.numpy()
        put_bn(prog.output.post, self._dom_post)
        for li, st in enumerate(prog.hidden):
            nxt = prog.stages[li + 1]
            for part in self._parts[li].values():
                J = part.units
                if st.bias is not None:
                    ws[st.bias][J] = part.b.numpy()
                put_bn(st.post, part.params, J)
                ws[nxt.kernel][J] = part.w.numpy()
        return ws


def piecewise_step(
    desc: ModelDescription,
    assignment: Any,
    weights: Sequence[Any],
    x: Any,
    y: Any,
    lr: float,
    *,
    graph: CostGraph | None = None,
) -> tuple[list[np.ndarray], float, list[Message]]:
    """One SGD step executed piece by piece by the dominator and the pieces of a plan.

    Parameters
    ----------
    desc : ModelDescription
        A dense chain (see the module docstring).
    assignment : array of int, or SlicePlan
        Piece of every cost-graph vertex (``plan.assignment``).
    weights : sequence of array
        Flat weight list in :func:`weight_specs` order.
    x, y, lr
        As in :func:`monolithic_step`.
    graph : CostGraph, optional
        The graph ``assignment`` refers to; default ``desc.graph()`` (neuron granularity).

    Returns
    -------
    new_weights : list of numpy.ndarray
        Equal to :func:`monolithic_step`'s up to float32 rounding (summation order).
    loss : float
    messages : list of Message
        Every boundary tensor of the step; ``count_floats(messages)`` equals
        ``traffic_per_sample(graph, assignment)`` forward/backward floats × batch.

    References
    ----------
    L. Chen et al., "Crowdlearning: Crowded Deep Learning with Data Privacy", IEEE SECON 2018,
    section III.
    """
    net = PiecewiseNetwork(desc, assignment, weights, graph=graph)
    loss, msgs = net.step(x, y, lr)
    return net.get_weights(), loss, msgs
