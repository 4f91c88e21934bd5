"""Keras ↔ SliceNet layer descriptions, and the paper's two models (ring 1: imports Keras lazily).

:func:`from_keras` converts a Sequential model, or a functional model that is a single chain, made
of ``Input``, ``Dense``, ``Conv2D``, ``MaxPooling2D``, ``Flatten``, ``BatchNormalization``,
``Activation`` and ``Dropout`` layers into a :class:`~slicenet.graph.ModelDescription`;
:func:`build_keras` goes the other way.  Keras is imported only when one of them runs, so the
presets' pure descriptions cost nothing.

Examples
--------
>>> desc, build = paper_mlp()
>>> from_keras(build()) == desc
True

References
----------
L. Chen, T. Jung, H. Du, J. Qian, J. Hou, X.-Y. Li, "Crowdlearning: Crowded Deep Learning with
Data Privacy", IEEE SECON 2018.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from slicenet.errors import UserError
from slicenet.graph import (
    Activation,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    MaxPool2D,
    ModelDescription,
    paper_cnn_description,
    paper_mlp_description,
)

__all__ = ["SUPPORTED_LAYERS", "build_keras", "from_keras", "load_keras", "paper_cnn", "paper_mlp"]

SUPPORTED_LAYERS = ("InputLayer", "Dense", "Conv2D", "MaxPooling2D", "Flatten", "BatchNormalization",
                    "Activation", "Dropout")


def _act_name(act: Any) -> str | None:
    if act is None:
        return None
    name = act if isinstance(act, str) else getattr(act, "__name__", str(act))
    return None if name == "linear" else name


def _unsupported(layer: Any, why: str = "") -> UserError:
    extra = f" ({why})" if why else ""
    return UserError(
        f"layer {layer.name!r} of type {type(layer).__name__} cannot be sliced{extra}; SliceNet "
        f"supports a single chain of {', '.join(SUPPORTED_LAYERS)} layers")


def _convert(layer: Any) -> Layer | None:
    import keras

    L = keras.layers
    cfg = layer.get_config()
    if isinstance(layer, L.InputLayer):
        return None
    if isinstance(layer, L.Dense):
        return Dense(int(layer.units), _act_name(layer.activation), bool(layer.use_bias))
    if isinstance(layer, L.Conv2D) and type(layer) is L.Conv2D:
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise _unsupported(layer, "only data_format='channels_last'")
        if tuple(cfg.get("dilation_rate", (1, 1))) not in ((1, 1), (1,)) or cfg.get("groups", 1) != 1:
            raise _unsupported(layer, "dilation and groups must be 1")
        return Conv2D(int(layer.filters), tuple(layer.kernel_size), tuple(layer.strides),
                      str(layer.padding).lower(), _act_name(layer.activation), bool(layer.use_bias))
    if isinstance(layer, L.MaxPooling2D):
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise _unsupported(layer, "only data_format='channels_last'")
        return MaxPool2D(tuple(layer.pool_size), tuple(layer.strides), str(layer.padding).lower())
    if isinstance(layer, L.Flatten):
        return Flatten()
    if isinstance(layer, L.BatchNormalization):
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        rank = len(layer.input.shape) if getattr(layer, "input", None) is not None else None
        if axis != -1 and (rank is None or axis != rank - 1):
            raise _unsupported(layer, "batch normalisation must run over the last axis")
        return BatchNorm()
    if isinstance(layer, L.Activation):
        return Activation(_act_name(layer.activation) or "linear")
    if isinstance(layer, L.Dropout) and type(layer) is L.Dropout:
        return Dropout(float(layer.rate))
    raise _unsupported(layer)


def from_keras(model: Any, *, name: str | None = None) -> ModelDescription:
    """Convert a built Keras model (a chain of supported layers) to a layer description.

    Parameters
    ----------
    model : keras.Model
        Sequential, or functional with one input, one output and every layer fed by the previous
        one.  It must be built (give it an ``Input``).
    name : str, optional
        Name of the description (default: the model's name).

    Returns
    -------
    ModelDescription

    Raises
    ------
    UserError
        A layer of another type (named, with the supported list), a branching model, an unbuilt
        model.

    Examples
    --------
    >>> import keras
    >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"),
    ...                       keras.layers.Dense(2)])
    >>> from_keras(m).layers
    (Dense(units=3, activation='relu', use_bias=True), Dense(units=2, activation=None, use_bias=True))
    """
    import keras

    if not isinstance(model, keras.Model):
        raise UserError(f"expected a keras.Model, got {type(model).__name__}")
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs:
        raise UserError(
            f"model {model.name!r} is not built; give it an input, e.g. keras.Input(shape) as its "
            "first layer")
    if len(inputs) != 1 or len(outputs) != 1:
        raise UserError(
            f"model {model.name!r} has {len(inputs)} inputs and {len(outputs)} outputs; SliceNet "
            "slices a single chain with one input and one output")
    layers = [lay for lay in model.layers if not isinstance(lay, keras.layers.InputLayer)]
    if not isinstance(model, keras.Sequential):
        prev = inputs[0]
        for lay in layers:
            nodes = getattr(lay, "_inbound_nodes", [])
            if len(nodes) != 1 or lay.input is not prev:
                raise UserError(
                    f"layer {lay.name!r} is not fed by the layer before it (or is used twice); "
                    "SliceNet slices a single chain of layers, not branches or residual links")
            prev = lay.output
        if prev is not outputs[0]:
            raise UserError(f"model {model.name!r} is not a single chain of layers")
    shape = tuple(int(s) for s in inputs[0].shape[1:])
    converted = [c for c in (_convert(lay) for lay in layers) if c is not None]
    return ModelDescription(shape, tuple(converted), name=name or model.name)


def build_keras(desc: ModelDescription, *, seed: int | None = None) -> Any:
    """A ``keras.Sequential`` for a description (the inverse of :func:`from_keras`).

    Examples
    --------
    >>> m = build_keras(paper_cnn_description())
    >>> m.layers[4].output.shape[1:]   # the Flatten: 5 · 5 · 128
    (3200,)
    """
    import keras

    L = keras.layers
    out: list[Any] = [keras.Input(desc.input_shape)]
    for i, lay in enumerate(desc.layers):
        # a distinct seed per layer: one shared seed would give every kernel the same stream
        init = {} if seed is None else {
            "kernel_initializer": keras.initializers.GlorotUniform(seed * 1009 + i)}
        if isinstance(lay, Dense):
            out.append(L.Dense(lay.units, activation=lay.activation, use_bias=lay.use_bias, **init))
        elif isinstance(lay, Conv2D):
            out.append(L.Conv2D(lay.filters, lay.kernel, strides=lay.strides, padding=lay.padding,
                                activation=lay.activation, use_bias=lay.use_bias, **init))
        elif isinstance(lay, MaxPool2D):
            out.append(L.MaxPooling2D(lay.pool, strides=lay.strides, padding=lay.padding))
        elif isinstance(lay, Flatten):
            out.append(L.Flatten())
        elif isinstance(lay, BatchNorm):
            out.append(L.BatchNormalization())
        elif isinstance(lay, Activation):
            out.append(L.Activation(lay.name))
        elif isinstance(lay, Dropout):
            out.append(L.Dropout(lay.rate))
    return keras.Sequential(out, name=desc.name.replace("-", "_"))


def load_keras(path: str | Path) -> ModelDescription:
    """Load a ``.keras`` (or ``.h5``) file and convert it with :func:`from_keras`."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no model file at {p}; give paper-mlp, paper-cnn or a path to a .keras file")
    import keras

    try:
        model = keras.models.load_model(p, compile=False)
    except Exception as e:  # noqa: BLE001 - any loader failure is a user-fixable file problem
        raise UserError(f"cannot load the Keras model {p}: {e}") from e
    return from_keras(model, name=p.stem)


def paper_mlp() -> tuple[ModelDescription, Callable[[], Any]]:
    """The paper's MNIST MLP: ``(description, build)``; ``build()`` returns the Keras model.

    784 → BN → 400 → BN → ReLU → 200 → BN → ReLU → 100 → BN → ReLU → 10 → log-softmax.  The
    log-softmax outputs are valid logits, so train with
    ``SparseCategoricalCrossentropy(from_logits=True)``.

    Examples
    --------
    >>> desc, build = paper_mlp()
    >>> build().count_params() - 4 * (784 + 400 + 200 + 100)   # minus batch-norm parameters
    415310
    """
    desc = paper_mlp_description()
    return desc, (lambda: build_keras(desc))


def paper_cnn(first_filters: int = 64) -> tuple[ModelDescription, Callable[[], Any]]:
    """The paper's CIFAR-10 CNN: ``(description, build)``.

    **[ours]** the first convolution has ``first_filters = 64`` maps (the paper gives only the
    second one's 128).  Flatten size 5·5·128 = 3200.

    Examples
    --------
    >>> desc, build = paper_cnn()
    >>> from_keras(build()) == desc
    True
    """
    desc = paper_cnn_description(first_filters)
    return desc, (lambda: build_keras(desc))
