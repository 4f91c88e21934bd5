"""Executing one SGD step of a sliced *convolutional* network, whole or piece by piece (TF lazily).

The convolutional counterpart of :mod:`slicenet.execution` (which forwards here for any model
with an image input, a ``Conv2D`` or a ``MaxPool2D``): :func:`conv_monolithic_step` is one
plain SGD step of the whole network, :class:`ConvPiecewiseNetwork` the same step executed by the
dominator and the pieces of a plan, every boundary tensor a :class:`~slicenet.layout.Message`.
Layers: ``Conv2D`` (valid or same padding, any strides), ``MaxPool2D``, ``Flatten``, ``Dense``,
``BatchNorm`` (per channel on a map, per feature once flattened), element-wise activations,
``Dropout(0)``; the output layer is Dense (the logits).  Weights in Keras' ``get_weights()``
order (:func:`slicenet.layout.conv_program`).

Slicing at channel granularity (spec §1, **[ours]** for convolutions, as in the cost graph): a
vertex of a convolutional hidden layer is one feature map, with its bias, its batch norm and the
pooling after it, which act map by map.  Source ownership: the holder of map ``c`` owns the
outgoing weights ``K[:, :, c, :]`` of the next convolution, or, after ``Flatten``, the rows of the
next Dense kernel that read map ``c`` (``channel_features``).  Forward, the holder of maps ``J``
computes with its weights one partial pre-activation map per target channel of the next layer
(the weighted-sum refinement: the sum over its own sources, ``H'·W'`` values per target channel
and sample) and sends each other target piece the maps of its channels; backward, the target
piece returns ``∂loss/∂z`` of its channels (again ``H'·W'`` values per channel and sample) to
every source piece.  Messages carry ``(batch, H', W', |J|)`` arrays for convolutional targets,
``(batch, |J|)`` for dense ones, so ``count_floats`` equals ``traffic_per_sample(graph,
assignment) × batch`` exactly, forward and backward.

Each participant's backward recomputes its forward from the pre-activation sums it kept
(rematerialisation) under a ``tf.GradientTape`` and back-propagates the errors it assembled.
This module is about numerics and messages (tests), not speed: the fleet trains on
:class:`slicenet.fused.FusedTrainer`.

Examples
--------
>>> import numpy as np
>>> from slicenet.graph import Conv2D, Dense, Flatten, MaxPool2D, ModelDescription
>>> desc = ModelDescription((6, 6, 1), [Conv2D(2, 3, activation="relu"), MaxPool2D(2),
...                                     Conv2D(2, 2, activation="relu"), Flatten(), Dense(3)])
>>> from slicenet.layout import weight_specs
>>> rng = np.random.default_rng(0)
>>> w = [rng.normal(size=s.shape).astype("float32") for s in weight_specs(desc)]
>>> x, y = rng.normal(size=(4, 6, 6, 1)).astype("float32"), rng.integers(0, 3, 4)
>>> w1, _ = conv_monolithic_step(desc, w, x, y, 0.1)
>>> net = ConvPiecewiseNetwork(desc, [0, 1, 1, 0], w)
>>> _, msgs = net.step(x, y, 0.1)
>>> max(float(np.abs(a - b).max()) for a, b in zip(w1, net.get_weights())) < 1e-5
True
>>> from slicenet.layout import count_floats
>>> count_floats(msgs) == tuple(4 * v for v in (desc.graph().traffic([0, 1, 1, 0]).forward_floats,
...                                            desc.graph().traffic([0, 1, 1, 0]).backward_floats))
True

References
----------
L. Chen, T. Jung, H. Du, J. Qian, J. Hou, X.-Y. Li, "Crowdlearning: Crowded Deep Learning with
Data Privacy", IEEE SECON 2018.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from slicenet.errors import UserError
from slicenet.graph import CostGraph, ModelDescription
from slicenet.layout import (
    BN_EPSILON,
    BN_MOMENTUM,
    DOMINATOR,
    ConvProgram,
    ConvStage,
    Message,
    _check_labels,
    _check_weights,
    _Op,
    channel_features,
    conv_program,
)

__all__ = ["ConvPiecewiseNetwork", "conv_monolithic_step"]


def _check_batch(prog: ConvProgram, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    xa = np.asarray(x, dtype=np.float32)
    shape = prog.input_shape
    if xa.ndim == 2 and xa.shape[1] == int(np.prod(shape)):
        xa = xa.reshape(len(xa), *shape)
    if xa.shape[1:] != shape or xa.shape[0] < 1:
        raise UserError(f"x has shape {xa.shape}, expected (batch ≥ 1, {', '.join(map(str, shape))})")
    return xa, _check_labels(y, xa.shape[0], prog.output.channels)


# --------------------------------------------------------------------------- TF building blocks


def _act(name: str) -> Any:
    import keras

    try:
        return keras.activations.get(name)
    except (ValueError, TypeError) as e:
        raise UserError(f"unknown activation {name!r}: {e}") from None


def _ops(ops: Sequence[_Op], h: Any, params: dict[int, Any], moving: dict[int, Any] | None,
         *, last: bool = False) -> Any:
    """Apply channel-wise ops in training mode; ``params[gamma index]`` etc. hold the (possibly
    sliced) batch-norm parameters; new moving statistics go to ``moving`` if given.  After the
    output layer (``last``) a trailing (log-)softmax is skipped: the loss takes logits."""
    import tensorflow as tf

    for i, op in enumerate(ops):
        if op.kind == "bn":
            g, b, mm, mv = (params[op.w + j] for j in range(4))
            mean, var = tf.nn.moments(h, list(range(len(h.shape) - 1)))
            h = tf.nn.batch_normalization(h, mean, var, b, g, BN_EPSILON)
            if moving is not None:
                moving[op.w + 2] = mm * BN_MOMENTUM + mean * (1.0 - BN_MOMENTUM)
                moving[op.w + 3] = mv * BN_MOMENTUM + var * (1.0 - BN_MOMENTUM)
        elif op.kind == "act":
            if last and i == len(ops) - 1 and op.name in ("softmax", "log_softmax"):
                continue
            h = _act(op.name)(h)
        elif op.kind == "pool":
            h = tf.nn.max_pool2d(h, op.pool, op.strides, op.padding.upper())
        elif op.kind == "flatten":
            h = tf.reshape(h, [tf.shape(h)[0], -1])
    return h


def _linear(st: ConvStage, h: Any, kernel: Any) -> Any:
    import tensorflow as tf

    if st.kind == "conv":
        return tf.nn.conv2d(h, kernel, st.strides, st.padding.upper())
    return tf.matmul(h, kernel)


def _loss(logits: Any, y: Any) -> Any:
    import tensorflow as tf

    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))


def _bn_indices(ops: Sequence[_Op]) -> list[int]:
    return [op.w + j for op in ops if op.kind == "bn" for j in range(4)]


# --------------------------------------------------------------------------- monolithic


def conv_monolithic_step(desc: ModelDescription, weights: Sequence[Any], x: Any, y: Any,
                         lr: float) -> tuple[list[np.ndarray], float]:
    """One SGD step of the whole (convolutional) network; as
    :func:`slicenet.execution.monolithic_step` (which calls this for convolutional models)."""
    import tensorflow as tf

    prog = conv_program(desc)
    ws = _check_weights(prog.specs, weights)
    xa, ya = _check_batch(prog, x, y)
    vs = [tf.Variable(w) for w in ws]
    moving: dict[int, Any] = {}
    train = [v for v, s in zip(vs, prog.specs, strict=True) if s.trainable]
    with tf.GradientTape() as tape:
        p = dict(enumerate(vs))
        h = _ops(prog.pre, tf.constant(xa), p, moving)
        for si, st in enumerate(prog.stages):
            h = _linear(st, h, vs[st.kernel])
            if st.bias is not None:
                h = h + vs[st.bias]
            h = _ops(st.post, h, p, moving, last=si == len(prog.stages) - 1)
        loss = _loss(h, tf.constant(ya))
    grads = tape.gradient(loss, train)
    out = [w.copy() for w in ws]
    it = iter(grads)
    for i, s in enumerate(prog.specs):
        if s.trainable:
            out[i] = ws[i] - np.float32(lr) * next(it).numpy()
        elif i in moving:
            out[i] = moving[i].numpy()
    return out, float(loss)


# --------------------------------------------------------------------------- piecewise


class _Piece:
    """What one piece holds of one hidden layer: channels ``J``, their bias, their batch-norm
    parameters (by flat-list index, sliced), the outgoing weights they own and the
    pre-activation sums of the last forward."""

    __slots__ = ("units", "b", "params", "w", "s", "bn_idx")

    def __init__(self, units, b, params, w, bn_idx):
        self.units, self.b, self.params, self.w, self.bn_idx = units, b, params, w, bn_idx
        self.s = None


def _local_bn(st: ConvStage, J: np.ndarray) -> dict[int, np.ndarray]:
    """For each batch-norm op after ``st``: the entries of its parameters that channels ``J``
    hold (per channel on a map, per flattened feature after Flatten)."""
    out: dict[int, np.ndarray] = {}
    flat = False
    for op in st.post:
        if op.kind == "flatten":
            flat = True
        elif op.kind == "bn":
            idx = channel_features(st, J) if flat else J
            for j in range(4):
                out[op.w + j] = idx
    return out


def _outgoing(st: ConvStage, nxt: ConvStage, J: np.ndarray) -> tuple[Any, ...]:
    """Index into the next kernel of the weights channels ``J`` of ``st`` own."""
    if nxt.kind == "conv":
        return (slice(None), slice(None), J, slice(None))
    return (channel_features(st, J), slice(None))


class ConvPiecewiseNetwork:
    """A (convolutional) network held by a dominator and the pieces of a plan; stateful.

    Same interface as :class:`slicenet.execution.PiecewiseNetwork` (which returns one of these
    for convolutional models): :meth:`step` → ``(loss, messages)``, :meth:`get_weights`.

    Parameters
    ----------
    desc : ModelDescription
    assignment : array of int, or SlicePlan
        The piece of every vertex of ``graph`` (one per feature map of a convolution, one per
        neuron or block of a dense layer).
    weights : sequence of array
        Start weights, Keras ``get_weights()`` order.
    graph : CostGraph, optional
        The graph the assignment refers to; default ``desc.graph()``.
    """

    def __init__(self, desc: ModelDescription, assignment: Any, weights: Sequence[Any], *,
                 graph: CostGraph | None = None) -> None:
        import tensorflow as tf

        prog = conv_program(desc)
        ws = _check_weights(prog.specs, weights)
        n_plan = getattr(assignment, "n", None)
        a = np.asarray(getattr(assignment, "assignment", assignment), dtype=np.int64)
        g = desc.graph() if graph is None else graph
        sizes = tuple(st.channels for st in prog.hidden)
        if tuple(g.layer_sizes) != sizes or g.output_units != prog.output.channels:
            raise UserError(
                f"the graph's hidden layers {tuple(g.layer_sizes)} (output {g.output_units}) do "
                f"not match the model's {sizes} (output {prog.output.channels})")
        if a.shape != (g.num_vertices,):
            raise UserError(f"assignment has shape {a.shape}, expected ({g.num_vertices},): one "
                            "piece per vertex of the cost graph")
        if len(a) and a.min() < 0:
            raise UserError("assignment values must be ≥ 0")
        self.desc, self._prog, self._template = desc, prog, ws
        self.n = int(n_plan) if n_plan is not None else (int(a.max()) + 1 if len(a) else 0)
        L = self.num_hidden = len(prog.hidden)
        self.units: list[dict[int, np.ndarray]] = []
        for li in range(L):
            sl = g.layer_slice(li)
            unit_piece = np.repeat(a[sl], g.size[sl])
            self.units.append({int(p): np.flatnonzero(unit_piece == p) for p in np.unique(unit_piece)})
        self.holders = [sorted(u) for u in self.units]
        c = tf.constant
        self._dom = {i: c(ws[i]) for i in _bn_indices(prog.pre)}
        self._dom[prog.stages[0].kernel] = c(ws[prog.stages[0].kernel])
        out = prog.output
        for i in _bn_indices(out.post) + ([out.bias] if out.bias is not None else []):
            self._dom[i] = c(ws[i])
        self._parts: list[dict[int, _Piece]] = []
        for li, st in enumerate(prog.hidden):
            nxt = prog.stages[li + 1]
            d = {}
            for p, J in self.units[li].items():
                b = c(ws[st.bias][J]) if st.bias is not None else c(np.zeros(len(J), np.float32))
                bn_idx = _local_bn(st, J)
                params = {i: c(ws[i][idx]) for i, idx in bn_idx.items()}
                d[p] = _Piece(J, b, params, c(ws[nxt.kernel][_outgoing(st, nxt, J)]), bn_idx)
            self._parts.append(d)

    # ------------------------------------------------------------------ step
    def step(self, x: Any, y: Any, lr: float) -> tuple[float, list[Message]]:
        """One SGD step piece by piece; returns ``(loss, messages)`` (forward, then backward)."""
        import tensorflow as tf

        prog, L, D = self._prog, self.num_hidden, DOMINATOR
        xa, ya = _check_batch(prog, x, y)
        B = xa.shape[0]
        lr32 = tf.constant(lr, tf.float32)
        msgs: list[Message] = []
        xt = tf.constant(xa)
        st0 = prog.stages[0]
        k0 = st0.kernel
        out_units = np.arange(prog.output.channels)
        # ---- dominator: input side
        moving: dict[int, Any] = {}
        sums = _linear(st0, _ops(prog.pre, xt, self._dom, moving), self._dom[k0]).numpy()
        self._dom.update(moving)
        inbox: dict[tuple[int, int], list[np.ndarray]] = {}
        out_parts: list[np.ndarray] = []
        if L == 0:
            out_parts.append(sums)
        for p in (self.holders[0] if L else []):
            J = self.units[0][p]
            v = sums[..., J]
            msgs.append(Message(D, p, "forward", 0, v, J))
            inbox[p, 0] = [v]
        # ---- forward through the pieces
        for li in range(L):
            st, nxt = prog.hidden[li], prog.stages[li + 1]
            for p in self.holders[li]:
                part = self._parts[li][p]
                part.s = tf.add_n([tf.constant(v) for v in inbox.pop((p, li))])
                moving = {}
                h = _ops(st.post, part.s + part.b, part.params, moving)
                part.params.update(moving)
                out = _linear(nxt, h, part.w).numpy()
                if li + 1 < L:
                    for q in self.holders[li + 1]:
                        J = self.units[li + 1][q]
                        v = out[..., J]
                        if q != p:
                            msgs.append(Message(p, q, "forward", li + 1, v, J))
                        inbox.setdefault((q, li + 1), []).append(v)
                else:
                    msgs.append(Message(p, D, "forward", L, out, out_units))
                    out_parts.append(out)
        # ---- dominator: output layer, loss, output errors
        out_st = prog.output
        s = tf.add_n([tf.constant(v) for v in out_parts])
        b_out = self._dom[out_st.bias] if out_st.bias is not None else tf.zeros(len(out_units))
        train_idx = [i for i in _bn_indices(out_st.post) if prog.specs[i].trainable]
        with tf.GradientTape() as tape:
            tape.watch([s, b_out] + [self._dom[i] for i in train_idx])
            moving = {}
            logits = _ops(out_st.post, s + b_out, self._dom, moving, last=True)
            loss = _loss(logits, tf.constant(ya))
        gs, gb, *gt = tape.gradient(loss, [s, b_out] + [self._dom[i] for i in train_idx])
        self._dom.update(moving)
        if out_st.bias is not None:
            self._dom[out_st.bias] = b_out - lr32 * gb
        for i, gr in zip(train_idx, gt, strict=True):
            self._dom[i] = self._dom[i] - lr32 * gr
        delta = gs.numpy()
        # ---- backward through the pieces
        dnext: dict[tuple[int, int], np.ndarray] = {}
        for p in (self.holders[L - 1] if L else []):
            msgs.append(Message(D, p, "backward", L, delta, out_units))
            dnext[p, L - 1] = delta
        delta_first = delta if L == 0 else np.empty((B, *prog.stages[0].z_shape), np.float32)
        for li in reversed(range(L)):
            st, nxt = prog.hidden[li], prog.stages[li + 1]
            for p in self.holders[li]:
                part = self._parts[li][p]
                tidx = [i for i in part.params if prog.specs[i].trainable]
                watched = [part.s, part.b, part.w] + [part.params[i] for i in tidx]
                with tf.GradientTape() as tape:
                    tape.watch(watched)
                    h = _ops(st.post, part.s + part.b, part.params, None)
                    out = _linear(nxt, h, part.w)
                gs, gb, gw, *gt = tape.gradient(out, watched,
                                                output_gradients=tf.constant(dnext.pop((p, li))))
                part.b = part.b - lr32 * gb
                part.w = part.w - lr32 * gw
                for i, gr in zip(tidx, gt, strict=True):
                    part.params[i] = part.params[i] - lr32 * gr
                part.s = None
                gs = gs.numpy()
                J = part.units
                if li == 0:
                    msgs.append(Message(p, D, "backward", 0, gs, J))
                    delta_first[..., J] = gs
                    continue
                for q in self.holders[li - 1]:
                    if q != p:
                        msgs.append(Message(p, q, "backward", li, gs, J))
                    buf = dnext.get((q, li - 1))
                    if buf is None:
                        buf = dnext[q, li - 1] = np.empty((B, *st.z_shape), np.float32)
                    buf[..., J] = gs
        # ---- dominator: input side
        tidx = [i for i in _bn_indices(prog.pre) if prog.specs[i].trainable]
        watched = [self._dom[k0]] + [self._dom[i] for i in tidx]
        with tf.GradientTape() as tape:
            tape.watch(watched)
            out = _linear(st0, _ops(prog.pre, xt, self._dom, None), self._dom[k0])
        grads = tape.gradient(out, watched, output_gradients=tf.constant(delta_first))
        for i, gr in zip([k0, *tidx], grads, strict=True):
            self._dom[i] = self._dom[i] - lr32 * gr
        return float(loss), msgs

    # ------------------------------------------------------------------ weights
    def get_weights(self) -> list[np.ndarray]:
        """The current flat weight list (gathered from all participants)."""
        prog = self._prog
        ws = [w.copy() for w in self._template]
        for i, v in self._dom.items():
            ws[i][...] = v.numpy()
        for li, st in enumerate(prog.hidden):
            nxt = prog.stages[li + 1]
            for part in self._parts[li].values():
                J = part.units
                if st.bias is not None:
                    ws[st.bias][J] = part.b.numpy()
                for i, idx in part.bn_idx.items():
                    ws[i][idx] = part.params[i].numpy()
                ws[nxt.kernel][_outgoing(st, nxt, J)] = part.w.numpy()
        return ws
