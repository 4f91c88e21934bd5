"""Model descriptions shared by the batched trainer and the Keras reference (ring 0, numpy only).

A :class:`ModelSpec` is an input shape, a tuple of :class:`LayerSpec` and a loss.  It knows its
parameter shapes (in the order of Keras ``Model.get_weights()``: kernel then bias for every dense
or conv layer), draws Glorot-uniform initial weights from a numpy ``Generator``, and counts the
FLOPs and memory one training job costs on a device.

Inputs always arrive flat, ``(N, prod(input_shape))``.  A model whose ``input_shape`` has three
axes ``(H, W, C)`` reshapes its input to that image shape first (both trainers do it the same way).

Cost model
----------
Forward FLOPs per sample:

* ``dense``: ``2·in·out`` multiply-adds plus ``out`` bias additions;
* ``conv2d`` (valid padding, stride 1): ``2·k·k·Cin·Cout·H'·W'`` (the bias addition is not
  counted, following the design note);
* ``maxpool`` and ``flatten``: free (they move data, they do no arithmetic worth charging);
* an activation (relu, tanh, sigmoid) adds one FLOP per output element of its layer.

Training costs ``3×`` forward per sample (the forward pass plus the two matmuls of the backward
pass).  Training memory is ``4·(3·num_params + 2·batch·activations)`` bytes: float32 weights, their
gradients and an update buffer, plus every layer's output and its gradient for each sample of the
batch.

Examples
--------
>>> spec = mlp(784, [128, 64], 10)
>>> spec.num_params()
109386
>>> [tuple(s) for s in spec.param_shapes()][:2]
[(784, 128), (128,)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from crowdlearn.errors import CrowdlearnError

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "LayerSpec",
    "ModelSpec",
    "cnn",
    "linear",
    "mlp",
]

ACTIVATIONS: tuple[str | None, ...] = (None, "relu", "tanh", "sigmoid")
LOSSES: tuple[str, ...] = ("sparse_ce", "mse")
_KINDS = ("dense", "conv2d", "maxpool", "flatten")


@dataclass(frozen=True)
class LayerSpec:
    """One layer of a :class:`ModelSpec`.

    Parameters
    ----------
    kind : str
        ``"dense"``, ``"conv2d"`` (valid padding, stride 1), ``"maxpool"`` (``pool×pool`` window,
        stride ``pool``, valid) or ``"flatten"``.
    units : int
        Output width of a dense layer.
    filters, kernel : int
        Output channels and square kernel size of a conv layer.
    pool : int
        Window (and stride) of a maxpool layer.
    activation : str or None
        ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``None`` (linear); dense and conv only.

    Examples
    --------
    >>> LayerSpec("dense", units=10)
    LayerSpec(kind='dense', units=10, filters=0, kernel=0, pool=0, activation=None)
    """

    kind: str
    units: int = 0
    filters: int = 0
    kernel: int = 0
    pool: int = 0
    activation: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A feed-forward model: input shape, layers and loss.  Validated on construction.

    Parameters
    ----------
    input_shape : tuple of int
        ``(d,)`` for flat inputs or ``(H, W, C)`` for images (inputs still arrive flat).
    layers : tuple of LayerSpec
        Must end with a linear dense layer (the logits, or the single regression output).
    loss : str
        ``"sparse_ce"`` (softmax cross-entropy from logits, integer labels, ≥ 2 outputs) or
        ``"mse"`` (regression with exactly 1 output).

    Raises
    ------
    CrowdlearnError
        If the spec is inconsistent; the message names the layer index and the fix.

    Examples
    --------
    >>> spec = ModelSpec((4,), (LayerSpec("dense", units=3),))
    >>> spec.param_shapes()
    [(4, 3), (3,)]
    >>> spec.forward_flops_per_sample()
    27
    """

    input_shape: tuple[int, ...]
    layers: tuple[LayerSpec, ...]
    loss: str = "sparse_ce"

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "layers", tuple(self.layers))
        # Computing the shapes validates every layer.
        object.__setattr__(self, "_shapes", self._infer_shapes())

    # ------------------------------------------------------------------ shapes and validation
    def _infer_shapes(self) -> tuple[tuple[int, ...], ...]:
        shape = self.input_shape
        if len(shape) not in (1, 3) or any(s <= 0 for s in shape):
            raise CrowdlearnError(
                f"model input_shape {shape} is not supported: use (d,) for flat inputs or "
                "(H, W, C) with positive sizes for images"
            )
        if self.loss not in LOSSES:
            raise CrowdlearnError(f"unknown loss {self.loss!r}: use one of {', '.join(LOSSES)}")
        if not self.layers:
            raise CrowdlearnError("model has no layers: add at least one dense output layer")
        out: list[tuple[int, ...]] = []
        for i, layer in enumerate(self.layers):
            where = f"layer {i} ({layer.kind})"
            if not isinstance(layer, LayerSpec):
                raise CrowdlearnError(f"layer {i} is {type(layer).__name__}, not a LayerSpec")
            if layer.kind not in _KINDS:
                raise CrowdlearnError(
                    f"layer {i}: unknown kind {layer.kind!r}; use one of {', '.join(_KINDS)}"
                )
            if layer.activation not in ACTIVATIONS:
                raise CrowdlearnError(
                    f"{where}: unknown activation {layer.activation!r}; use relu, tanh, sigmoid "
                    "or None (linear)"
                )
            if layer.kind in ("maxpool", "flatten") and layer.activation is not None:
                raise CrowdlearnError(
                    f"{where}: a {layer.kind} layer takes no activation; set activation=None "
                    "and put it on the layer before"
                )
            if layer.kind == "dense":
                if layer.units <= 0:
                    raise CrowdlearnError(f"{where}: units must be positive, got {layer.units}")
                if len(shape) != 1:
                    raise CrowdlearnError(
                        f"{where}: dense layer needs a flat input but gets shape {shape}; "
                        "insert LayerSpec('flatten') before it"
                    )
                shape = (layer.units,)
            elif layer.kind == "conv2d":
                if layer.filters <= 0 or layer.kernel <= 0:
                    raise CrowdlearnError(
                        f"{where}: filters and kernel must be positive, got filters="
                        f"{layer.filters}, kernel={layer.kernel}"
                    )
                if len(shape) != 3:
                    raise CrowdlearnError(
                        f"{where}: conv2d needs an image input (H, W, C) but gets shape {shape}; "
                        "give the model an image input_shape (e.g. (28, 28, 1)) and put conv "
                        "layers before any flatten/dense layer"
                    )
                h, w, _ = shape
                k = layer.kernel
                if k > h or k > w:
                    raise CrowdlearnError(
                        f"{where}: kernel {k} is larger than its {h}x{w} input; use a smaller "
                        "kernel or fewer conv/maxpool layers before it"
                    )
                shape = (h - k + 1, w - k + 1, layer.filters)
            elif layer.kind == "maxpool":
                if layer.pool <= 0:
                    raise CrowdlearnError(f"{where}: pool must be positive, got {layer.pool}")
                if len(shape) != 3:
                    raise CrowdlearnError(
                        f"{where}: maxpool needs an image input (H, W, C) but gets shape "
                        f"{shape}; put it before the flatten layer"
                    )
                h, w, c = shape
                p = layer.pool
                if p > h or p > w:
                    raise CrowdlearnError(
                        f"{where}: pool {p} is larger than its {h}x{w} input; use a smaller "
                        "pool or remove this layer"
                    )
                shape = (h // p, w // p, c)
            else:  # flatten
                shape = (math.prod(shape),)
            out.append(shape)
        last = self.layers[-1]
        n = len(self.layers) - 1
        if last.kind != "dense":
            raise CrowdlearnError(
                f"layer {n} ({last.kind}): the last layer must be dense (the outputs); "
                "append LayerSpec('dense', units=...)"
            )
        if last.activation is not None:
            raise CrowdlearnError(
                f"layer {n} (dense): the output layer must be linear (the loss works on logits); "
                "set activation=None"
            )
        if self.loss == "mse" and last.units != 1:
            raise CrowdlearnError(
                f"layer {n} (dense): loss 'mse' is single-output regression but the output layer "
                f"has {last.units} units; set units=1"
            )
        if self.loss == "sparse_ce" and last.units < 2:
            raise CrowdlearnError(
                f"layer {n} (dense): loss 'sparse_ce' needs one output per class (≥ 2) but the "
                f"output layer has {last.units}; set units=num_classes or use loss='mse'"
            )
        return tuple(out)

    @property
    def input_dim(self) -> int:
        """Length of a flat input row, ``prod(input_shape)``."""
        return math.prod(self.input_shape)

    @property
    def num_outputs(self) -> int:
        """Width of the output layer (classes, or 1 for regression)."""
        return self.layers[-1].units

    @property
    def is_image(self) -> bool:
        """True when the flat input is reshaped to an ``(H, W, C)`` image first."""
        return len(self.input_shape) == 3

    def output_shapes(self) -> list[tuple[int, ...]]:
        """Per-sample output shape of every layer.

        Examples
        --------
        >>> cnn((8, 8, 1), filters=(4,), dense=(), num_outputs=10).output_shapes()
        [(6, 6, 4), (3, 3, 4), (36,), (10,)]
        """
        return list(self._shapes)  # type: ignore[attr-defined]

    def _input_shapes(self) -> list[tuple[int, ...]]:
        return [self.input_shape, *self.output_shapes()[:-1]]

    # ------------------------------------------------------------------ parameters
    def param_shapes(self) -> list[tuple[int, ...]]:
        """Parameter shapes in Keras ``get_weights()`` order (kernel, bias per dense/conv layer).

        Examples
        --------
        >>> mlp(4, [3], 2).param_shapes()
        [(4, 3), (3,), (3, 2), (2,)]
        """
        shapes: list[tuple[int, ...]] = []
        for layer, ins in zip(self.layers, self._input_shapes(), strict=True):
            if layer.kind == "dense":
                shapes += [(ins[0], layer.units), (layer.units,)]
            elif layer.kind == "conv2d":
                k = layer.kernel
                shapes += [(k, k, ins[2], layer.filters), (layer.filters,)]
        return shapes

    def num_params(self) -> int:
        """Total number of trainable scalars.

        Examples
        --------
        >>> mlp(784, [128, 64], 10).num_params()
        109386
        """
        return sum(math.prod(s) for s in self.param_shapes())

    def init_weights(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Glorot-uniform kernels and zero biases, float32, in ``param_shapes()`` order.

        The Glorot limit is ``sqrt(6 / (fan_in + fan_out))`` with Keras' fans: ``in``/``out`` for
        dense kernels, ``k·k·Cin``/``k·k·Cout`` for conv kernels.

        Examples
        --------
        >>> w = mlp(4, [3], 2).init_weights(np.random.default_rng(0))
        >>> [a.dtype.name for a in w], float(np.abs(w[0]).max()) <= (6 / 7) ** 0.5
        (['float32', 'float32', 'float32', 'float32'], True)
        """
        out: list[np.ndarray] = []
        for shape in self.param_shapes():
            if len(shape) == 1:
                out.append(np.zeros(shape, np.float32))
                continue
            receptive = math.prod(shape[:-2])
            fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            out.append(rng.uniform(-limit, limit, size=shape).astype(np.float32))
        return out

    # ------------------------------------------------------------------ costs
    def forward_flops_per_sample(self) -> int:
        """FLOPs of one forward pass for one sample (see the module docstring for the rules).

        Examples
        --------
        >>> mlp(784, [128, 64], 10).forward_flops_per_sample()
        218762
        """
        total = 0
        for layer, ins, outs in zip(
            self.layers, self._input_shapes(), self.output_shapes(), strict=True
        ):
            if layer.kind == "dense":
                total += 2 * ins[0] * layer.units + layer.units
            elif layer.kind == "conv2d":
                k = layer.kernel
                total += 2 * k * k * ins[2] * layer.filters * outs[0] * outs[1]
            if layer.activation is not None:
                total += math.prod(outs)
        return total

    def train_flops_per_sample(self) -> int:
        """FLOPs of one SGD step for one sample: 3× the forward pass.

        Examples
        --------
        >>> mlp(784, [128, 64], 10).train_flops_per_sample()
        656286
        """
        return 3 * self.forward_flops_per_sample()

    def activation_floats_per_sample(self) -> int:
        """Sum of all layers' output sizes for one sample (the input itself is not counted).

        Examples
        --------
        >>> mlp(784, [128, 64], 10).activation_floats_per_sample()
        202
        """
        return sum(math.prod(s) for s in self.output_shapes())

    def train_memory_bytes(self, batch_size: int) -> int:
        """Bytes a training job needs: ``4·(3·num_params + 2·batch_size·activations)``.

        Weights, gradients and an update buffer (3 float32 copies of the parameters) plus every
        layer's activations and their gradients for a batch.

        Examples
        --------
        >>> mlp(784, [128, 64], 10).train_memory_bytes(32)
        1364344
        """
        return 4 * (
            3 * self.num_params() + 2 * int(batch_size) * self.activation_floats_per_sample()
        )


# ---------------------------------------------------------------------- constructors
def mlp(
    input_dim: int,
    hidden: Sequence[int],
    num_outputs: int,
    activation: str | None = "relu",
    loss: str = "sparse_ce",
) -> ModelSpec:
    """A multi-layer perceptron ``input_dim → hidden... → num_outputs`` (linear output).

    Examples
    --------
    >>> [layer.units for layer in mlp(64, [32], 10).layers]
    [32, 10]
    """
    layers = [LayerSpec("dense", units=int(h), activation=activation) for h in hidden]
    layers.append(LayerSpec("dense", units=int(num_outputs)))
    return ModelSpec((int(input_dim),), tuple(layers), loss)


def cnn(
    image_shape: Sequence[int],
    filters: Sequence[int] = (16, 32),
    kernel: int = 3,
    pool: int = 2,
    dense: Sequence[int] = (64,),
    num_outputs: int = 10,
    activation: str | None = "relu",
    loss: str = "sparse_ce",
) -> ModelSpec:
    """A small CNN: ``(conv2d + maxpool)`` per entry of ``filters``, flatten, dense layers, output.

    ``pool <= 1`` leaves the maxpool layers out.

    Examples
    --------
    >>> spec = cnn((28, 28, 1))
    >>> spec.output_shapes()[-3:]
    [(800,), (64,), (10,)]
    """
    layers: list[LayerSpec] = []
    for f in filters:
        layers.append(
            LayerSpec("conv2d", filters=int(f), kernel=int(kernel), activation=activation)
        )
        if pool > 1:
            layers.append(LayerSpec("maxpool", pool=int(pool)))
    layers.append(LayerSpec("flatten"))
    layers += [LayerSpec("dense", units=int(u), activation=activation) for u in dense]
    layers.append(LayerSpec("dense", units=int(num_outputs)))
    return ModelSpec(tuple(int(s) for s in image_shape), tuple(layers), loss)


def linear(input_dim: int, num_outputs: int, loss: str = "sparse_ce") -> ModelSpec:
    """A single dense layer: multinomial logistic (``sparse_ce``) or linear regression (``mse``).

    Examples
    --------
    >>> linear(10, 1, loss="mse").num_params()
    11
    """
    return ModelSpec((int(input_dim),), (LayerSpec("dense", units=int(num_outputs)),), loss)
