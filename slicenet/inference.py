"""A dense model in inference mode as a short chain: every BatchNorm folded into a Dense layer.

In inference mode a BatchNorm is an affine map per feature, ``h ↦ h·s + t`` with ``s = γ/√(v + ε)``
and ``t = β − m·s`` (moving mean ``m``, moving variance ``v``, Keras' ε = 1e-3).  Right after a
linear Dense layer (``h = xW + b``) it folds into that layer's weights: ``W·s`` (each column by
its ``s``) and ``b·s + t``; right before one (after an activation, or on the input) it folds into
the next Dense layer's input side: ``diag(s)·W`` and ``b + tW``.  A dense network such as
``paper-mlp`` (BN → Dense → BN → ReLU → … → Dense) then scores as four products with their biases
and activations, without a pass over the activations per BatchNorm; :meth:`slicenet.fused.
FusedTrainer.evaluate` scores dense models through :func:`chain` and :func:`fold`.  The folding is
done in float64 and rounded to float32 once, so a score moves only in its last bits against the
layer-by-layer computation (tested against Keras in ``tests/test_slicenet_inference.py``).

A BatchNorm that has no Dense layer to fold into (e.g. after a Dense layer with its own
activation and nothing after it) stays an ``affine`` step; activations follow the Dense layer
they come after (``act`` of the step), or are steps of their own.  As in the fused trainer, a
last ``softmax``/``log_softmax`` is left out (the loss takes logits; the ranking is the same).

Examples
--------
>>> import numpy as np
>>> from slicenet.graph import Activation, BatchNorm, Dense, ModelDescription
>>> desc = ModelDescription((3,), (BatchNorm(), Dense(2), BatchNorm(), Activation("relu")))
>>> [(s.kind, s.act) for s in chain(desc)]
[('dense', 'relu')]
>>> ones, zeros = np.ones(3, np.float32), np.zeros(3, np.float32)
>>> w = [2 * ones, zeros, zeros, 3 * ones,                  # BN on the input: ×2/√(3 + ε)
...      np.eye(3, 2, dtype=np.float32), np.zeros(2, np.float32),
...      np.ones(2, np.float32), np.ones(2, np.float32),      # BN after the Dense: + 1
...      np.zeros(2, np.float32), np.ones(2, np.float32) - 1e-3]
>>> kernel, bias = fold(desc, w)
>>> [[round(float(v), 4) for v in row] for row in kernel], bias.tolist()
([[1.1545, 0.0], [0.0, 1.1545], [0.0, 0.0]], [1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from slicenet.graph import Activation, BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool2D
from slicenet.layout import BN_EPSILON

__all__ = ["Step", "chain", "fold", "packs_first"]

_LINEAR = (None, "linear", "log_softmax")      # a Dense layer's activations that leave it linear
#                                                 (log_softmax: the fused trainer leaves it out)


@dataclass(frozen=True)
class Step:
    """One step of the chain: ``dense`` (parameters: kernel ``[in, out]``, bias ``[out]``; then
    ``act``), ``affine`` (scale and shift ``[d]`` each) or ``act`` (an activation, no
    parameters)."""

    kind: str
    act: str | None = None

    @property
    def params(self) -> int:
        """How many arrays of :func:`fold`'s list are this step's."""
        return 0 if self.kind == "act" else 2


def chain(desc) -> tuple[Step, ...]:
    """The steps of ``desc`` in inference mode, its BatchNorms folded (a dense model only)."""
    return tuple(Step(kind, act) for kind, act, _ in _walk(desc, None))


def packs_first(steps: Sequence[Step]) -> bool:
    """Whether the chain's first step is a Dense layer, which reads the input rows themselves:
    then many models' first layers are one product of the rows with their kernels side by side
    (``[in, K·out]``; :class:`slicenet.fused.FusedTrainer` stacks, signs and scores it so).

    >>> from slicenet.graph import Activation, BatchNorm, Dense, ModelDescription
    >>> packs_first(chain(ModelDescription((3,), (BatchNorm(), Dense(2)))))
    True
    >>> packs_first(chain(ModelDescription((3,), (Activation("relu"), Dense(2)))))
    False
    """
    return bool(steps) and steps[0].kind == "dense"


def fold(desc, weights: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The parameters of :func:`chain`'s steps (float32) from a model's weight list (in
    :func:`slicenet.layout.weight_specs` order)."""
    return [p.astype(np.float32) for _, _, params in _walk(desc, weights) for p in params]


def _walk(desc, weights):
    """``[kind, act, params]`` per step; ``params`` float64 (empty when ``weights`` is None)."""
    it = None if weights is None else iter(weights)

    def take(shape) -> np.ndarray:
        return np.zeros(shape) if it is None else np.asarray(next(it), np.float64)

    steps: list[list] = []
    pending = None      # (s, t) of a BatchNorm (or several in a row) waiting for a Dense layer
    layers = desc.layers
    width = int(np.prod(desc.input_shape))
    for li, layer in enumerate(layers):
        if isinstance(layer, Dense):
            kernel = take((width, layer.units))
            bias = take(layer.units) if layer.use_bias else np.zeros(layer.units)
            if pending is not None and it is not None:
                s, t = pending
                bias = bias + t @ kernel
                kernel = s[:, None] * kernel
            pending = None
            act = None if layer.activation in _LINEAR else layer.activation
            steps.append(["dense", act, [kernel, bias]])
            width = layer.units
        elif isinstance(layer, BatchNorm):
            gamma, beta, mean, var = (take(width) for _ in range(4))
            s = gamma / np.sqrt(var + BN_EPSILON)
            t = beta - mean * s
            last = steps[-1] if steps else None
            if pending is None and last is not None and last[0] == "dense" and last[1] is None:
                kernel, bias = last[2]
                last[2] = [kernel * s[None, :], bias * s + t]       # after a linear Dense
            elif pending is not None:
                pending = (pending[0] * s, pending[1] * s + t)      # two in a row
            else:
                pending = (s, t)
        elif isinstance(layer, Activation):
            if layer.name in ("log_softmax", "softmax") and li == len(layers) - 1:
                continue
            if pending is not None:
                steps.append(["affine", None, list(pending)])
                pending = None
            last = steps[-1] if steps else None
            if last is not None and last[0] == "dense" and last[1] is None:
                last[1] = layer.name
            else:
                steps.append(["act", layer.name, []])
        elif isinstance(layer, (Dropout, Flatten)):
            continue            # Dropout(0) (the fused path refuses others); Flatten: 1-D already
        elif isinstance(layer, (Conv2D, MaxPool2D)):
            raise ValueError("inference.chain folds dense models only; "
                             f"{desc.name or 'this model'} has a {type(layer).__name__} layer")
        else:
            raise ValueError(f"inference.chain: unknown layer {layer!r}")
    if pending is not None:
        steps.append(["affine", None, list(pending)])
    return steps
