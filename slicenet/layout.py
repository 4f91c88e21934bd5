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

__all__ = ["BN_EPSILON", "BN_MOMENTUM", "DOMINATOR", "Message", "WeightSpec", "count_floats",
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
    kind: str      # "bn" | "act"
    name: str      # activation name ("" for bn)
    w: int = -1    # bn: index of gamma in the flat list (beta, mean, variance follow)


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


def weight_specs(desc: ModelDescription) -> tuple[WeightSpec, ...]:
    """The flat weight list layout of ``desc`` (the order of ``build_keras(desc).get_weights()``).

    Raises
    ------
    UserError
        For a model this module cannot execute (convolution, pooling, dropout, a non-element-wise
        activation on a hidden layer, no Dense layer).

    Examples
    --------
    >>> from slicenet.graph import paper_mlp_description
    >>> [s.name for s in weight_specs(paper_mlp_description())][:6]
    ['input/bn/gamma', 'input/bn/beta', 'input/bn/moving_mean', 'input/bn/moving_variance', 'dense0/kernel', 'dense0/bias']
    """
    return _program(desc).specs
