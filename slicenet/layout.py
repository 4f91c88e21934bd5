"""The weight layout and the compiled layer program of a model description (pure: numpy only).

What the piece executor (:mod:`slicenet.execution`, TensorFlow) and the fused path run, and what
protocols and attack views need to know about a model without running it: the flat weight list
(:func:`weight_specs`, the order of ``build_keras(desc).get_weights()``), the messages a piecewise
step exchanges (:class:`Message`) and the BatchNorm constants.  Importing this module imports no
TensorFlow.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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

__all__ = ["BN_EPSILON", "BN_MOMENTUM", "DOMINATOR", "ConvProgram", "ConvStage", "Message",
           "WeightSpec", "channel_features", "conv_program", "count_floats", "is_convolutional",
           "weight_specs"]

DOMINATOR = -1
"""The dominator's id in :attr:`Message.src` / :attr:`Message.dst` (pieces are ``0 .. n-1``)."""

BN_MOMENTUM = 0.99
"""``keras.layers.BatchNormalization`` default momentum of the moving statistics."""

BN_EPSILON = 1e-3
"""``keras.layers.BatchNormalization`` default epsilon."""

_NOT_ELEMENTWISE = frozenset({"softmax", "log_softmax"})


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, eq=False)
class Message:
    """One boundary tensor of a piecewise step.

    Attributes
    ----------
    src, dst : int
        Sender and recipient: a piece index ``0 .. n-1`` or :data:`DOMINATOR` (``-1``).
    kind : {"forward", "backward"}
        Partial weighted sums (forward) or errors ``∂loss/∂z`` (backward).
    layer : int
        The weighted layer whose units the values belong to: ``0`` = hidden layer 1 (the graph's
        layer 0), ..., ``L-1`` = last hidden layer, ``L`` = the output layer.
    values : numpy.ndarray
        float32, shape ``(batch, len(units))``: one value per sample and unit of ``layer``.
    units : numpy.ndarray
        Indices of those units inside ``layer``.  Metadata both ends know from the plan; not
        counted as traffic.
    """

    src: int
    dst: int
    kind: str
    layer: int
    values: np.ndarray
    units: np.ndarray | None = None

    @property
    def floats(self) -> int:
        """Number of float values carried."""
        return int(self.values.size)

    @property
    def nbytes(self) -> int:
        """Payload bytes (float32)."""
        return 4 * self.floats


def count_floats(messages: Iterable[Message]) -> tuple[int, int]:
    """``(forward floats, backward floats)`` over ``messages``.

    Examples
    --------
    >>> m = Message(DOMINATOR, 0, "forward", 0, np.zeros((2, 3), np.float32))
    >>> count_floats([m, Message(0, DOMINATOR, "backward", 0, np.zeros((2, 3), np.float32))])
    (6, 6)
    """
    fw = bw = 0
    for m in messages:
        if m.kind == "forward":
            fw += m.floats
        else:
            bw += m.floats
    return fw, bw


# --------------------------------------------------------------------------- model program


@dataclass(frozen=True)
class WeightSpec:
    """One entry of the flat weight list: ``name``, ``shape``, the index of its layer in
    ``desc.layers``, its ``role`` (kernel, bias, gamma, beta, moving_mean, moving_variance) and
    whether SGD updates it (``trainable``; moving statistics are not)."""

    name: str
    shape: tuple[int, ...]
    layer: int
    role: str
    trainable: bool


@dataclass(frozen=True)
class _Op:
    kind: str      # "bn" | "act" | "pool" | "flatten" (the last two in convolutional programs)
    name: str      # activation name ("" otherwise)
    w: int = -1    # bn: index of gamma in the flat list (beta, mean, variance follow)
    pool: tuple[int, ...] = ()      # pool: window, strides and padding
    strides: tuple[int, ...] = ()
    padding: str = ""


@dataclass(frozen=True)
class _Stage:
    units: int
    fan_in: int
    kernel: int
    bias: int | None
    post: tuple[_Op, ...]


@dataclass(frozen=True)
class _Program:
    input_dim: int
    pre: tuple[_Op, ...]
    stages: tuple[_Stage, ...]
    specs: tuple[WeightSpec, ...]

    @property
    def hidden(self) -> tuple[_Stage, ...]:
        return self.stages[:-1]

    @property
    def output(self) -> _Stage:
        return self.stages[-1]


def _sig(ops: Sequence[_Op]) -> tuple[tuple[str, str], ...]:
    return tuple((o.kind, o.name) for o in ops)


def _program(desc: ModelDescription) -> _Program:
    if not isinstance(desc, ModelDescription):
        raise UserError(f"expected a slicenet ModelDescription, got {type(desc).__name__}")
    return _compile_program(desc)


@functools.lru_cache(maxsize=32)
def _compile_program(desc: ModelDescription) -> _Program:
    if len(desc.input_shape) != 1:
        raise UserError(
            f"input shape {desc.input_shape}: slicenet.execution runs dense networks on flat "
            "(features,) inputs only; convolutional models are out of its scope")
    specs: list[WeightSpec] = []
    pre: list[_Op] = []
    stages: list[_Stage] = []
    cur: list[_Op] = pre
    width = desc.input_shape[0]
    pending: dict[str, Any] | None = None

    def close() -> None:
        if pending is not None:
            stages.append(_Stage(pending["units"], pending["fan_in"], pending["kernel"],
                                 pending["bias"], tuple(cur)))

    for i, lay in enumerate(desc.layers):
        where = f"layer {i} ({type(lay).__name__})"
        if isinstance(lay, (Conv2D, MaxPool2D)):
            raise UserError(
                f"{where}: convolution and pooling are out of scope of slicenet.execution, which "
                "executes dense networks (Dense, BatchNorm, element-wise Activation) only")
        if isinstance(lay, Dense):
            close()
            k = len(specs)
            specs.append(WeightSpec(f"dense{len(stages)}/kernel", (width, lay.units), i, "kernel", True))
            b = None
            if lay.use_bias:
                b = len(specs)
                specs.append(WeightSpec(f"dense{len(stages)}/bias", (lay.units,), i, "bias", True))
            pending = {"units": lay.units, "fan_in": width, "kernel": k, "bias": b}
            cur = []
            if lay.activation not in (None, "linear"):
                cur.append(_Op("act", str(lay.activation)))
            width = lay.units
        elif isinstance(lay, BatchNorm):
            k = len(specs)
            tag = "input" if pending is None else f"dense{len(stages)}"
            for role in ("gamma", "beta", "moving_mean", "moving_variance"):
                specs.append(WeightSpec(f"{tag}/bn/{role}", (width,), i, role,
                                        role in ("gamma", "beta")))
            cur.append(_Op("bn", "", k))
        elif isinstance(lay, Activation):
            if lay.name != "linear":
                cur.append(_Op("act", lay.name))
        elif isinstance(lay, Dropout):
            if lay.rate != 0:
                raise UserError(
                    f"{where}: dropout with rate {lay.rate} draws random masks in training mode, so "
                    "slicenet.execution cannot execute it reproducibly; remove it or use rate 0")
        elif isinstance(lay, Flatten):
            pass  # a no-op on a flat input
        else:  # pragma: no cover - ModelDescription rejects other types
            raise UserError(f"{where}: unsupported layer")
    if pending is None:
        raise UserError("the model has no Dense layer; add at least an output layer")
    close()
    for li, st in enumerate(stages[:-1]):
        for op in st.post:
            if op.kind == "act" and op.name in _NOT_ELEMENTWISE:
                raise UserError(
                    f"hidden layer {li + 1} uses the activation {op.name!r}, which mixes neurons; "
                    "only element-wise activations can be cut into pieces (use it after the "
                    "output layer only)")
    return _Program(desc.input_shape[0], tuple(pre), tuple(stages), tuple(specs))


def is_convolutional(desc: ModelDescription) -> bool:
    """Whether ``desc`` takes image inputs or has convolution or pooling layers (then the
    general program :func:`conv_program` describes it).

    >>> from slicenet.graph import paper_cnn_description, paper_mlp_description
    >>> is_convolutional(paper_cnn_description()), is_convolutional(paper_mlp_description())
    (True, False)
    """
    return len(desc.input_shape) != 1 or any(isinstance(lay, (Conv2D, MaxPool2D))
                                             for lay in desc.layers)


@dataclass(frozen=True)
class ConvStage:
    """One weighted layer of a general (convolutional) program and the per-channel layers after it.

    ``kind`` is ``"dense"`` or ``"conv"``; ``channels`` its units or feature maps; ``kernel`` and
    ``bias`` indices in the flat weight list; ``ksize``/``strides``/``padding`` the convolution's;
    ``in_shape`` the per-sample shape it reads, ``z_shape`` that of its pre-activation sums
    (``(units,)`` or ``(H', W', channels)``), ``post`` the batch norms, activations, poolings and
    flatten that follow it (each acts channel by channel), ``out_shape`` the shape after them.
    """

    kind: str
    channels: int
    kernel: int
    bias: int | None
    ksize: tuple[int, int]
    strides: tuple[int, int]
    padding: str
    in_shape: tuple[int, ...]
    z_shape: tuple[int, ...]
    post: tuple[_Op, ...]
    out_shape: tuple[int, ...]


@dataclass(frozen=True)
class ConvProgram:
    """A chain of Dense / Conv2D stages (the last one Dense: the logits) with the channel-wise
    layers between them; ``pre`` acts on the input (the dominator's)."""

    input_shape: tuple[int, ...]
    pre: tuple[_Op, ...]
    pre_shape: tuple[int, ...]
    stages: tuple[ConvStage, ...]
    specs: tuple[WeightSpec, ...]

    @property
    def hidden(self) -> tuple[ConvStage, ...]:
        return self.stages[:-1]

    @property
    def output(self) -> ConvStage:
        return self.stages[-1]


def _out_len(n: int, k: int, s: int, padding: str, where: str) -> int:
    if padding == "valid":
        if n < k:
            raise UserError(f"{where}: a {k}-wide window does not fit an input of size {n}")
        return (n - k) // s + 1
    return -(-n // s)


@functools.lru_cache(maxsize=32)
def conv_program(desc: ModelDescription) -> ConvProgram:
    """The general program of ``desc`` (dense or convolutional chain, channels last).

    Weight order is Keras' ``get_weights()``: a ``Conv2D`` contributes ``kernel (kh, kw, c_in,
    filters)`` then ``bias (filters,)``; a ``Dense`` ``kernel (fan_in, units)`` then ``bias``; a
    ``BatchNorm`` gamma, beta, moving mean and variance over the last axis (channels on a map,
    features once flattened).

    Raises
    ------
    UserError
        The output layer is not Dense, a Dense on a map without Flatten, dropout with a non-zero
        rate, a non-element-wise activation on a hidden layer, a window larger than its input.

    Examples
    --------
    >>> from slicenet.graph import paper_cnn_description
    >>> p = conv_program(paper_cnn_description(input_shape=(28, 28, 1)))
    >>> [(s.kind, s.z_shape, s.out_shape) for s in p.stages][:3]
    [('conv', (24, 24, 64), (12, 12, 64)), ('conv', (8, 8, 128), (2048,)), ('dense', (128,), (128,))]
    """
    if not isinstance(desc, ModelDescription):
        raise UserError(f"expected a slicenet ModelDescription, got {type(desc).__name__}")
    shape = tuple(desc.input_shape)
    if len(shape) not in (1, 3):
        raise UserError(f"input shape {shape}: use (features,) or (height, width, channels)")
    specs: list[WeightSpec] = []
    pre: list[_Op] = []
    pre_shape: tuple[int, ...] | None = None
    stages: list[ConvStage] = []
    cur: list[_Op] = pre
    pending: dict[str, Any] | None = None

    def close(out_shape: tuple[int, ...]) -> None:
        if pending is not None:
            stages.append(ConvStage(**pending, post=tuple(cur), out_shape=out_shape))

    for i, lay in enumerate(desc.layers):
        where = f"layer {i} ({type(lay).__name__})"
        if isinstance(lay, (Dense, Conv2D)):
            close(shape)
            if pending is None:
                pre_shape = shape
            n = len(stages)
            k = len(specs)
            if isinstance(lay, Dense):
                if len(shape) != 1:
                    raise UserError(f"{where}: a Dense layer on a feature map needs a Flatten "
                                    "before it")
                tag = f"dense{n}"
                specs.append(WeightSpec(f"{tag}/kernel", (shape[0], lay.units), i, "kernel", True))
                z_shape: tuple[int, ...] = (lay.units,)
                geo: dict[str, Any] = {"kind": "dense", "channels": lay.units, "ksize": (),
                                       "strides": (), "padding": ""}
            else:
                if len(shape) != 3:
                    raise UserError(f"{where}: a Conv2D layer needs a (height, width, channels) "
                                    "input")
                (kh, kw), (sh, sw) = lay.kernel, lay.strides
                tag = f"conv{n}"
                specs.append(WeightSpec(f"{tag}/kernel", (kh, kw, shape[2], lay.filters), i,
                                        "kernel", True))
                z_shape = (_out_len(shape[0], kh, sh, lay.padding, where),
                           _out_len(shape[1], kw, sw, lay.padding, where), lay.filters)
                geo = {"kind": "conv", "channels": lay.filters, "ksize": (kh, kw),
                       "strides": (sh, sw), "padding": lay.padding}
            b = None
            if lay.use_bias:
                b = len(specs)
                specs.append(WeightSpec(f"{tag}/bias", (geo["channels"],), i, "bias", True))
            pending = {**geo, "kernel": k, "bias": b, "in_shape": shape, "z_shape": z_shape}
            cur = []
            if lay.activation not in (None, "linear"):
                cur.append(_Op("act", str(lay.activation)))
            shape = z_shape
        elif isinstance(lay, MaxPool2D):
            if len(shape) != 3:
                raise UserError(f"{where}: MaxPool2D needs a (height, width, channels) input")
            cur.append(_Op("pool", "", pool=lay.pool, strides=lay.strides, padding=lay.padding))
            shape = (_out_len(shape[0], lay.pool[0], lay.strides[0], lay.padding, where),
                     _out_len(shape[1], lay.pool[1], lay.strides[1], lay.padding, where), shape[2])
        elif isinstance(lay, Flatten):
            if len(shape) == 3:
                cur.append(_Op("flatten", ""))
                shape = (int(np.prod(shape)),)
        elif isinstance(lay, BatchNorm):
            k = len(specs)
            tag = "input" if pending is None else f"{pending['kind']}{len(stages)}"
            for role in ("gamma", "beta", "moving_mean", "moving_variance"):
                specs.append(WeightSpec(f"{tag}/bn/{role}", (shape[-1],), i, role,
                                        role in ("gamma", "beta")))
            cur.append(_Op("bn", "", k))
        elif isinstance(lay, Activation):
            if lay.name != "linear":
                cur.append(_Op("act", lay.name))
        elif isinstance(lay, Dropout):
            if lay.rate != 0:
                raise UserError(
                    f"{where}: dropout with rate {lay.rate} draws random masks in training mode; "
                    "SliceNet cannot execute it reproducibly; remove it or use rate 0")
        else:  # pragma: no cover - ModelDescription rejects other types
            raise UserError(f"{where}: unsupported layer")
    if pending is None:
        raise UserError("the model has no Dense or Conv2D layer; add at least an output layer")
    if pending["kind"] != "dense":
        raise UserError("the output layer is a Conv2D; end the model with Flatten and a Dense "
                        "layer whose units are the classes")
    close(shape)
    for li, st in enumerate(stages[:-1]):
        for op in st.post:
            if op.kind == "act" and op.name in _NOT_ELEMENTWISE:
                raise UserError(
                    f"hidden layer {li + 1} uses the activation {op.name!r}, which mixes units; "
                    "only element-wise activations can be cut into pieces")
    return ConvProgram(tuple(desc.input_shape), tuple(pre), pre_shape or shape, tuple(stages),
                       tuple(specs))


def channel_features(stage: ConvStage, channels: np.ndarray) -> np.ndarray:
    """Indices, in ``stage``'s output (after its per-channel layers), of the features that
    ``channels`` produce, in the order a piece holding them lays them out: channel-last maps
    flattened position-major (Keras' ``Flatten``).

    >>> from slicenet.graph import paper_cnn_description
    >>> st = conv_program(paper_cnn_description(input_shape=(28, 28, 1))).stages[1]
    >>> channel_features(st, np.array([3, 5]))[:4].tolist()    # 4·4 positions × 128 channels
    [3, 5, 131, 133]
    """
    channels = np.asarray(channels, np.int64)
    if len(stage.out_shape) == 1 and stage.kind == "conv":
        positions = stage.out_shape[0] // stage.channels
        return (np.arange(positions)[:, None] * stage.channels + channels[None, :]).reshape(-1)
    return channels


def _check_weights(specs: Sequence[WeightSpec], weights: Sequence[Any]) -> list[np.ndarray]:
    """``weights`` as float32 arrays, one per spec in Keras order, or a :class:`UserError`."""
    ws = list(weights)
    if len(ws) != len(specs):
        raise UserError(
            f"got {len(ws)} weight arrays, the model has {len(specs)} (see weight_specs(desc): "
            "the order of build_keras(desc).get_weights())")
    out = []
    for w, s in zip(ws, specs, strict=True):
        a = np.asarray(w, dtype=np.float32)
        if a.shape != s.shape:
            raise UserError(f"weight {s.name} has shape {a.shape}, expected {s.shape}")
        out.append(a)
    return out


def _check_labels(y: Any, n: int, classes: int) -> np.ndarray:
    """``y`` as ``n`` int32 labels in ``0..classes - 1``, or a :class:`UserError`."""
    ya = np.asarray(y)
    if ya.shape != (n,) or not np.issubdtype(ya.dtype, np.integer):
        raise UserError(f"y must be {n} integer labels, got shape {ya.shape} dtype {ya.dtype}")
    if ya.min() < 0 or ya.max() >= classes:
        raise UserError(f"labels must lie in 0..{classes - 1}")
    return ya.astype(np.int32)


def weight_specs(desc: ModelDescription) -> tuple[WeightSpec, ...]:
    """The flat weight list layout of ``desc`` (the order of ``build_keras(desc).get_weights()``).

    Raises
    ------
    UserError
        For a model SliceNet cannot execute (dropout, a non-element-wise activation on a hidden
        layer, no Dense output layer); convolutional models follow :func:`conv_program`.

    Examples
    --------
    >>> from slicenet.graph import paper_mlp_description
    >>> [s.name for s in weight_specs(paper_mlp_description())][:6]
    ['input/bn/gamma', 'input/bn/beta', 'input/bn/moving_mean', 'input/bn/moving_variance', 'dense0/kernel', 'dense0/bias']
    """
    if isinstance(desc, ModelDescription) and is_convolutional(desc):
        return conv_program(desc).specs
    return _program(desc).specs
