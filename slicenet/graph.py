"""The SliceNet cost graph: a model's hidden units as a weighted graph (ring 0, numpy/networkx only).

A model is described by a pure *layer description* (:class:`ModelDescription`, a tuple of the small
frozen layer dataclasses below, or plain dicts); :meth:`CostGraph.from_layers` turns it into the
graph that the partitioner slices.

Cost model (spec section 1, Chen et al.)
----------------------------------------
* **Vertices** are the *hidden* units only: the input and output layers stay whole with the
  dominator.  Dense layers are cut at neuron granularity (one vertex per neuron), or, with
  ``granularity="block"``, ``block_size`` consecutive neurons per vertex to keep huge graphs
  tractable.  Convolutions are always cut at **channel granularity** **[ours]**: one output
  feature map (all its ``H'·W'`` positions) is one vertex, together with the batch-norm,
  activation, dropout and max-pooling that follow it, which act channel by channel and so never
  need communication.
* **Ownership**: every weight belongs to the piece that holds its *source* unit.  Input→hidden-1
  weights belong to the dominator; last-hidden→output weights to the pieces holding the last hidden
  layer.  A unit's own bias and batch-norm parameters stay with the unit.
* **Compute** (``cost_model="paper"``, the default): every unit and every connection costs one
  unit, so a vertex costs ``units + outgoing connections`` -- ``1 + fan_out`` for a dense neuron.
  For the paper's MNIST MLP the hidden compute totals 101,700.  A *connection* is one
  multiply-add of the unrolled network: for a dense layer one per weight, for a convolution one
  per (output position, kernel tap) that lands inside the input.  ``cost_model="general"``
  charges ``(fan_in + fan_out) · f`` per unit (connections in and out, ``f =
  activation_cost``), the spec's general form.  Pooling, batch-norm and activations are free.
* **Memory** per vertex: ``4 · (owned weights + own params) + 4 · activation_batch · (units +
  out_units)`` bytes -- float32 weights, bias and batch-norm parameters (4 per feature: gamma,
  beta, moving mean and variance), and the pre-activation and (pooled) output of each sample
  kept for back-propagation.
* **Edges**: consecutive hidden layers are joined by one graph edge per (source vertex, target
  vertex) pair.  ``eweights`` holds its *multiplicity*: the number of model weights the edge
  stands for (1 for a neuron pair, the paper's "1 per edge"; ``k·k`` for a pair of conv channels;
  ``H·W`` between a flattened channel and a dense neuron; products of block sizes for blocks).
* **Traffic** (the spec's *weighted-sum refinement*): across a cut a piece sends, per target unit,
  one partial weighted sum of all of its own sources feeding that unit; backward, the target's
  piece sends one error value per target unit back to every source piece.  See
  :func:`traffic_per_sample`, which also counts the dominator↔hidden-1 and
  last-hidden↔output boundaries.  Traffic is the connectivity−1 metric of a hypergraph with one net
  ``{j} ∪ sources(j)`` per target ``j`` weighing ``2·units(j)``; METIS cannot optimise it directly
  (see :mod:`slicenet.partition`).

Examples
--------
>>> g = CostGraph.from_layers((784,), paper_mlp_description().layers)
>>> g.num_vertices, int(g.compute.sum()), g.total_neurons, g.total_weights
(700, 101700, 1494, 414600)
>>> g.dominator.neurons, g.dominator.weights
(794, 313600)

References
----------
L. Chen, T. Jung, H. Du, J. Qian, J. Hou, X.-Y. Li, "Crowdlearning: Crowded Deep Learning with
Data Privacy", IEEE SECON 2018.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slicenet.errors import UserError

__all__ = [
    "BYTES_PER_VALUE",
    "Activation",
    "BatchNorm",
    "Conv2D",
    "CostGraph",
    "Dense",
    "Dominator",
    "Dropout",
    "Flatten",
    "Layer",
    "MaxPool2D",
    "ModelDescription",
    "Traffic",
    "layer_from_dict",
    "paper_cnn_description",
    "paper_mlp_description",
    "traffic_per_sample",
]

BYTES_PER_VALUE = 4
"""float32: every weight, activation, partial sum and error value is 4 bytes."""

GRANULARITIES = ("neuron", "block")
COST_MODELS = ("paper", "general")


# --------------------------------------------------------------------------- layer description


def _pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    t = tuple(int(x) for x in v)
    if len(t) != 2:
        raise UserError(f"{name} must be an int or a pair of ints, got {v!r}")
    return t  # type: ignore[return-value]


@dataclass(frozen=True)
class Dense:
    """A fully connected layer of ``units`` neurons (``activation`` None = linear)."""

    units: int
    activation: str | None = None
    use_bias: bool = True


@dataclass(frozen=True)
class Conv2D:
    """A 2-D convolution, channels last; ``padding`` is ``"valid"`` or ``"same"``."""

    filters: int
    kernel: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    padding: str = "valid"
    activation: str | None = None
    use_bias: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel", _pair(self.kernel, "kernel"))
        object.__setattr__(self, "strides", _pair(self.strides, "strides"))
        if self.padding not in ("valid", "same"):
            raise UserError(f"Conv2D padding must be 'valid' or 'same', got {self.padding!r}")


@dataclass(frozen=True)
class MaxPool2D:
    """Max pooling over ``pool`` windows; ``strides`` None means ``strides = pool``."""

    pool: tuple[int, int] = (2, 2)
    strides: tuple[int, int] | None = None
    padding: str = "valid"

    def __post_init__(self) -> None:
        object.__setattr__(self, "pool", _pair(self.pool, "pool"))
        strides = self.pool if self.strides is None else _pair(self.strides, "strides")
        object.__setattr__(self, "strides", strides)
        if self.padding not in ("valid", "same"):
            raise UserError(f"MaxPool2D padding must be 'valid' or 'same', got {self.padding!r}")


@dataclass(frozen=True)
class Flatten:
    """Flatten a feature map, channels last (Keras order: position-major, channel-minor)."""


@dataclass(frozen=True)
class BatchNorm:
    """Batch normalisation over the last axis (4 parameters per feature)."""


@dataclass(frozen=True)
class Activation:
    """An element-wise activation, e.g. ``"relu"`` or ``"log_softmax"``."""

    name: str


@dataclass(frozen=True)
class Dropout:
    """Dropout with the given rate (no parameters, no cost)."""

    rate: float = 0.5


Layer = Dense | Conv2D | MaxPool2D | Flatten | BatchNorm | Activation | Dropout
_LAYER_TYPES = (Dense, Conv2D, MaxPool2D, Flatten, BatchNorm, Activation, Dropout)


def layer_from_dict(d: Mapping[str, Any]) -> list[Layer]:
    """Turn one dict (``{"kind": "dense", "units": 400, ...}``) into layer dataclasses.

    ``kind`` is one of ``dense``, ``conv2d``, ``maxpool``, ``flatten``, ``batchnorm``,
    ``activation``, ``dropout``.  For ``dense`` and ``conv2d``, ``"batchnorm": True`` is sugar for
    a :class:`BatchNorm` placed between the layer and its activation.  A list is returned because
    of that expansion.

    Examples
    --------
    >>> layer_from_dict({"kind": "dense", "units": 4, "activation": "relu", "batchnorm": True})
    [Dense(units=4, activation=None, use_bias=True), BatchNorm(), Activation(name='relu')]
    """
    d = dict(d)
    kind = str(d.pop("kind", d.pop("type", ""))).lower()
    bn = bool(d.pop("batchnorm", False))
    try:
        if kind == "dense":
            act = d.pop("activation", None)
            layer: Layer = Dense(int(d.pop("units")), None if bn else act, bool(d.pop("use_bias", True)))
        elif kind in ("conv2d", "conv"):
            act = d.pop("activation", None)
            layer = Conv2D(
                int(d.pop("filters")),
                d.pop("kernel", d.pop("kernel_size", 3)),
                d.pop("strides", d.pop("stride", 1)),
                d.pop("padding", "valid"),
                None if bn else act,
                bool(d.pop("use_bias", True)),
            )
        elif kind in ("maxpool", "maxpool2d", "maxpooling2d"):
            layer = MaxPool2D(d.pop("pool", d.pop("pool_size", 2)), d.pop("strides", None),
                              d.pop("padding", "valid"))
        elif kind == "flatten":
            layer = Flatten()
        elif kind in ("batchnorm", "batchnormalization"):
            layer = BatchNorm()
        elif kind == "activation":
            layer = Activation(str(d.pop("name", d.pop("activation", "linear"))))
        elif kind == "dropout":
            layer = Dropout(float(d.pop("rate", 0.5)))
        else:
            raise UserError(
                f"unknown layer kind {kind!r}; use one of dense, conv2d, maxpool, flatten, "
                "batchnorm, activation, dropout")
    except KeyError as e:
        raise UserError(f"layer {kind!r} needs the key {e.args[0]!r}") from None
    if d:
        raise UserError(f"layer {kind!r}: unknown key(s) {sorted(d)}")
    out: list[Layer] = [layer]
    if bn and kind in ("dense", "conv2d", "conv"):
        out.append(BatchNorm())
        act = act if act not in (None, "linear") else None
        if act is not None:
            out.append(Activation(str(act)))
    return out


def _normalise_layers(layers: Iterable[Layer | Mapping[str, Any]]) -> tuple[Layer, ...]:
    out: list[Layer] = []
    for lay in layers:
        if isinstance(lay, Mapping):
            out.extend(layer_from_dict(lay))
        elif isinstance(lay, _LAYER_TYPES):
            out.append(lay)
        else:
            raise UserError(
                f"not a layer description: {lay!r}; use slicenet.graph.Dense/Conv2D/MaxPool2D/"
                "Flatten/BatchNorm/Activation/Dropout or a dict with a 'kind' key")
    return tuple(out)


@dataclass(frozen=True)
class ModelDescription:
    """A pure model description: input shape (no batch axis) and a chain of layers.

    Examples
    --------
    >>> m = ModelDescription((4,), [{"kind": "dense", "units": 3}, {"kind": "dense", "units": 2}])
    >>> m.layers
    (Dense(units=3, activation=None, use_bias=True), Dense(units=2, activation=None, use_bias=True))
    """

    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    name: str = field(default="model", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "layers", _normalise_layers(self.layers))

    def graph(self, **kwargs: Any) -> CostGraph:
        """Shorthand for :meth:`CostGraph.from_layers` on this description."""
        kwargs.setdefault("name", self.name)
        return CostGraph.from_layers(self.input_shape, self.layers, **kwargs)


def paper_mlp_description() -> ModelDescription:
    """The paper's MNIST MLP: 784 → BN → 400 → BN → ReLU → 200 → BN → ReLU → 100 → BN → ReLU → 10
    → log-softmax.

    Examples
    --------
    >>> len(paper_mlp_description().layers)
    12
    """
    return ModelDescription(
        (784,),
        (
            BatchNorm(),
            Dense(400), BatchNorm(), Activation("relu"),
            Dense(200), BatchNorm(), Activation("relu"),
            Dense(100), BatchNorm(), Activation("relu"),
            Dense(10), Activation("log_softmax"),
        ),
        name="paper-mlp",
    )


def paper_cnn_description(first_filters: int = 64, *,
                          input_shape: Sequence[int] = (32, 32, 3)) -> ModelDescription:
    """The paper's CIFAR-10 CNN: 32×32×3 → conv 5×5 → ReLU → pool 2 → conv 5×5 (128) → ReLU → pool 2
    → flatten (3200) → 128 → ReLU → 64 → ReLU → 10 → log-softmax.

    The paper gives only the second convolution's width (128 maps); **[ours]** the first has
    ``first_filters = 64``.  ``input_shape = (28, 28, 1)`` is the Fashion-MNIST variant
    **[ours]**: the same layers, flatten 4·4·128 = 2048.

    Examples
    --------
    >>> CostGraph.from_layers((32, 32, 3), paper_cnn_description().layers).layer_sizes
    (64, 128, 128, 64)
    >>> paper_cnn_description(input_shape=(28, 28, 1)).graph().dominator.weights   # 5·5·1·64
    1600
    """
    return ModelDescription(
        tuple(input_shape),
        (
            Conv2D(first_filters, (5, 5), activation="relu"), MaxPool2D((2, 2)),
            Conv2D(128, (5, 5), activation="relu"), MaxPool2D((2, 2)),
            Flatten(),
            Dense(128, activation="relu"),
            Dense(64, activation="relu"),
            Dense(10), Activation("log_softmax"),
        ),
        name="paper-cnn",
    )


# --------------------------------------------------------------------------- stages


def _conv_axis(n_in: int, k: int, s: int, padding: str) -> tuple[int, int]:
    """Output length and the number of (output, tap) pairs landing inside the input."""
    if padding == "valid":
        if n_in < k:
            raise UserError(f"a {k}-wide window does not fit an input of size {n_in}")
        out = (n_in - k) // s + 1
        pad = 0
    else:
        out = -(-n_in // s)
        pad = max((out - 1) * s + k - n_in, 0) // 2
    pos = np.arange(out)[:, None] * s + np.arange(k)[None, :] - pad
    return out, int(((pos >= 0) & (pos < n_in)).sum())


def _pool_axis(n_in: int, p: int, s: int, padding: str) -> int:
    if padding == "valid":
        if n_in < p:
            raise UserError(f"a {p}-wide pooling window does not fit an input of size {n_in}")
        return (n_in - p) // s + 1
    return -(-n_in // s)


@dataclass
class _Stage:
    """One weighted layer with the channel-wise layers that follow it."""

    kind: str                    # "input" | "dense" | "conv"
    channels: int                # units (dense / flat input) or feature maps (conv / image input)
    units_per_channel: int       # pre-activation scalars per channel (H'·W' for conv)
    out_per_channel: int         # outputs per channel after pooling
    spatial: tuple[int, int] | None   # current (H, W) if not flattened
    flat: bool
    pair_weights: int = 0        # weights between one source channel and one of these channels
    pair_connections: int = 0    # multiply-adds between them
    params_per_channel: int = 0  # bias + 4 per batch-norm


def _compile(input_shape: tuple[int, ...], layers: tuple[Layer, ...]) -> tuple[_Stage, list[_Stage], int]:
    """Walk the chain; return (input stage with its params, weighted stages, input-side params)."""
    if len(input_shape) == 1:
        cur = _Stage("input", input_shape[0], 1, 1, None, True)
    elif len(input_shape) == 3:
        h, w, c = input_shape
        cur = _Stage("input", c, h * w, h * w, (h, w), False)
    else:
        raise UserError(
            f"input shape {input_shape} is not supported; use (features,) or (height, width, channels)")
    if min(input_shape) < 1:
        raise UserError(f"input shape {input_shape} has an empty axis")
    inp = cur
    stages: list[_Stage] = []
    for i, lay in enumerate(layers):
        where = f"layer {i} ({type(lay).__name__})"
        if isinstance(lay, Dense):
            if not cur.flat:
                raise UserError(f"{where}: a Dense layer on a feature map needs a Flatten before it")
            if lay.units < 1:
                raise UserError(f"{where}: units must be ≥ 1")
            cur = _Stage("dense", lay.units, 1, 1, None, True,
                         pair_weights=cur.out_per_channel, pair_connections=cur.out_per_channel,
                         params_per_channel=int(lay.use_bias))
            stages.append(cur)
        elif isinstance(lay, Conv2D):
            if cur.flat or cur.spatial is None:
                raise UserError(f"{where}: a Conv2D layer needs a (height, width, channels) input")
            if lay.filters < 1:
                raise UserError(f"{where}: filters must be ≥ 1")
            (kh, kw), (sh, sw) = lay.kernel, lay.strides
            oh, ch = _conv_axis(cur.spatial[0], kh, sh, lay.padding)
            ow, cw = _conv_axis(cur.spatial[1], kw, sw, lay.padding)
            cur = _Stage("conv", lay.filters, oh * ow, oh * ow, (oh, ow), False,
                         pair_weights=kh * kw, pair_connections=ch * cw,
                         params_per_channel=int(lay.use_bias))
            stages.append(cur)
        elif isinstance(lay, MaxPool2D):
            if cur.flat or cur.spatial is None:
                raise UserError(f"{where}: MaxPool2D needs a (height, width, channels) input")
            ph = _pool_axis(cur.spatial[0], lay.pool[0], lay.strides[0], lay.padding)
            pw = _pool_axis(cur.spatial[1], lay.pool[1], lay.strides[1], lay.padding)
            cur.spatial = (ph, pw)
            cur.out_per_channel = ph * pw
        elif isinstance(lay, Flatten):
            cur.flat = True
        elif isinstance(lay, BatchNorm):
            # per feature of the last axis: per channel on a map, per unit once flattened
            cur.params_per_channel += 4 * (cur.out_per_channel if cur.flat else 1)
        elif isinstance(lay, (Activation, Dropout)):
            pass
        else:  # pragma: no cover - _normalise_layers rejects these
            raise UserError(f"{where}: unsupported layer")
    return inp, stages, inp.params_per_channel


# --------------------------------------------------------------------------- graph


@dataclass(frozen=True)
class Dominator:
    """What the dominator holds: the input and output layers and the input→hidden-1 weights.

    ``neurons`` counts input units plus output units; ``weights`` the weights it owns (input→hidden-1,
    or input→output for a model without hidden layers); ``params`` biases and batch-norm
    parameters of the input and output layers; ``memory_bytes`` = ``4·(weights + params) +
    4·activation_batch·(input_units + output_units)``.
    """

    input_units: int
    output_units: int
    weights: int
    params: int
    memory_bytes: int

    @property
    def neurons(self) -> int:
        return self.input_units + self.output_units


def _ro(a: np.ndarray, dtype: Any = np.int64) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=dtype)
    a.setflags(write=False)
    return a


def _check_options(granularity: str, cost_model: str, block_size: int,
                   activation_batch: int) -> None:
    """The options of :meth:`CostGraph.from_layers`, each echoed back if invalid."""
    if granularity not in GRANULARITIES:
        raise UserError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if cost_model not in COST_MODELS:
        raise UserError(f"cost_model must be one of {COST_MODELS}, got {cost_model!r}")
    if int(block_size) < 1:
        raise UserError(f"block_size must be ≥ 1, got {block_size}")
    if int(activation_batch) < 0:
        raise UserError(f"activation_batch must be ≥ 0, got {activation_batch}")


def _vertices(hidden: list[_Stage], block_size: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The vertices of the hidden stages: ``(starts, layer, first, size)`` — each layer's first
    vertex (and the total, last), and per vertex its layer, first channel and channel count
    (dense layers cut in blocks of ``block_size`` neurons, convolutions one vertex per
    channel)."""
    per_layer_first, per_layer_size = [], []
    for st in hidden:
        step = block_size if st.kind == "dense" else 1
        f = np.arange(0, st.channels, step, dtype=np.int64)
        per_layer_first.append(f)
        per_layer_size.append(np.minimum(f + step, st.channels) - f)
    nv = [len(f) for f in per_layer_first]
    starts = np.concatenate([[0], np.cumsum(nv)]).astype(np.int64)
    layer = np.repeat(np.arange(len(hidden), dtype=np.int64), nv)
    first = np.concatenate(per_layer_first) if starts[-1] else np.zeros(0, np.int64)
    size = np.concatenate(per_layer_size) if starts[-1] else np.zeros(0, np.int64)
    return starts, layer, first, size


def _vertex_costs(inp: _Stage, stages: list[_Stage], layer: np.ndarray, size: np.ndarray, *,
                  cost_model: str, activation_cost: float, activation_batch: int
                  ) -> dict[str, np.ndarray]:
    """Per vertex: ``units``, ``out_units``, ``weights_owned`` (its outgoing weights),
    ``params``, ``compute`` (under ``cost_model``) and ``memory_bytes``."""
    hidden = stages[:-1]
    upc = np.array([s.units_per_channel for s in hidden], dtype=np.int64)
    opc = np.array([s.out_per_channel for s in hidden], dtype=np.int64)
    ppc = np.array([s.params_per_channel for s in hidden], dtype=np.int64)
    nxt = stages[1:]  # the stage each hidden layer feeds
    fan_out_w = np.array([s.channels * s.pair_weights for s in nxt], dtype=np.int64)
    fan_out_c = np.array([s.channels * s.pair_connections for s in nxt], dtype=np.int64)
    prev = ([inp] + hidden)[:len(hidden)]
    fan_in_c = np.array([p.channels * s.pair_connections for p, s in zip(prev, hidden, strict=True)],
                        dtype=np.int64)
    if len(size):
        units = size * upc[layer]
        out_units = size * opc[layer]
        weights_owned = size * fan_out_w[layer]
        params = size * ppc[layer]
        out_conn = size * fan_out_c[layer]
        in_conn = size * fan_in_c[layer]
    else:
        units = out_units = weights_owned = params = out_conn = in_conn = np.zeros(0, np.int64)
    if cost_model == "paper":
        compute = units + out_conn
    else:
        compute = np.ceil((in_conn + out_conn) * float(activation_cost)).astype(np.int64)
        compute = np.maximum(compute, 1)
    memory = BYTES_PER_VALUE * (weights_owned + params) \
        + BYTES_PER_VALUE * activation_batch * (units + out_units)
    return {"compute": compute, "memory_bytes": memory, "units": units,
            "out_units": out_units, "weights_owned": weights_owned, "params": params}


def _layer_edges(hidden: list[_Stage], starts: np.ndarray, size: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Directed edges between consecutive hidden layers (complete bipartite between their
    vertex sets): ``(src, dst, weights, connections)``."""
    srcs, dsts, ws, cs = [], [], [], []
    for li in range(len(hidden) - 1):
        a = np.arange(starts[li], starts[li + 1], dtype=np.int64)
        b = np.arange(starts[li + 1], starts[li + 2], dtype=np.int64)
        s = np.repeat(a, len(b))
        d = np.tile(b, len(a))
        sz = size[s] * size[d]
        srcs.append(s)
        dsts.append(d)
        ws.append(sz * hidden[li + 1].pair_weights)
        cs.append(sz * hidden[li + 1].pair_connections)

    def cat(xs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(xs) if xs else np.zeros(0, np.int64)

    return cat(srcs), cat(dsts), cat(ws), cat(cs)


def _undirected_csr(src: np.ndarray, dst: np.ndarray, num_vertices: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The undirected CSR of directed edges: ``(xadj, adjncy, edge_id)``, each vertex's
    neighbours sorted, ``edge_id`` the directed edge behind every adjacency entry."""
    E = len(src)
    u = np.concatenate([src, dst])
    v = np.concatenate([dst, src])
    eid = np.concatenate([np.arange(E), np.arange(E)]).astype(np.int64)
    order = np.lexsort((v, u))
    xadj = np.concatenate([[0], np.cumsum(np.bincount(u, minlength=num_vertices))]).astype(np.int64)
    return xadj, v[order], eid[order]


def _dominator(inp: _Stage, stages: list[_Stage], input_params: int,
               activation_batch: int) -> Dominator:
    """What the dominator holds: the input and output layers, the input→first-stage weights."""
    out, first_stage = stages[-1], stages[0]
    in_units = inp.channels * inp.units_per_channel
    out_units = out.channels * out.units_per_channel
    weights = inp.channels * first_stage.channels * first_stage.pair_weights
    params = input_params * inp.channels + out.params_per_channel * out.channels
    return Dominator(in_units, out_units, int(weights), int(params),
                     int(BYTES_PER_VALUE * (weights + params)
                         + BYTES_PER_VALUE * activation_batch * (in_units + out_units)))


@dataclass(frozen=True, eq=False)
class CostGraph:
    """The cost graph of a model's hidden units (see the module docstring for the cost model).

    Per-vertex arrays (length ``num_vertices``, vertices ordered by layer then unit):
    ``compute`` (int64 cost units), ``memory_bytes``, ``layer`` (hidden-layer index, 0-based),
    ``first`` and ``size`` (the vertex holds channels/units ``first .. first+size-1`` of its
    layer), ``units`` (pre-activation scalars per sample = partial sums it receives),
    ``out_units`` (outputs per sample after pooling), ``weights_owned``, ``params``.

    Directed model edges (source layer l → target layer l+1, one per vertex pair):
    ``edge_src``, ``edge_dst``, ``edge_weights`` (multiplicity: model weights it stands for),
    ``edge_connections`` (multiply-adds).  Undirected CSR for METIS: ``xadj``, ``adjncy``,
    ``eweights`` (the multiplicity of the model edge, i.e. the paper's "1 per edge") and
    ``edge_id`` (CSR slot → directed edge index).

    Examples
    --------
    >>> g = CostGraph.from_layers((3,), [Dense(4), Dense(3), Dense(2), Dense(2)])
    >>> g.num_vertices, g.num_edges, g.compute.tolist()
    (9, 18, [4, 4, 4, 4, 3, 3, 3, 3, 3])
    """

    description: ModelDescription
    granularity: str
    block_size: int
    cost_model: str
    activation_cost: float
    activation_batch: int
    layer_kinds: tuple[str, ...]
    layer_sizes: tuple[int, ...]          # channels (conv) or units (dense) per hidden layer
    output_units: int
    dominator: Dominator
    total_neurons: int
    total_weights: int
    compute: np.ndarray
    memory_bytes: np.ndarray
    layer: np.ndarray
    first: np.ndarray
    size: np.ndarray
    units: np.ndarray
    out_units: np.ndarray
    weights_owned: np.ndarray
    params: np.ndarray
    edge_src: np.ndarray
    edge_dst: np.ndarray
    edge_weights: np.ndarray
    edge_connections: np.ndarray
    xadj: np.ndarray
    adjncy: np.ndarray
    eweights: np.ndarray
    edge_id: np.ndarray
    _cache: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_layers(
        cls,
        input_shape: Sequence[int],
        layers: Iterable[Layer | Mapping[str, Any]],
        *,
        granularity: str = "neuron",
        block_size: int = 16,
        cost_model: str = "paper",
        activation_cost: float = 1.0,
        activation_batch: int = 1,
        name: str = "model",
    ) -> CostGraph:
        """Build the cost graph of a chain of layers.

        Parameters
        ----------
        input_shape : sequence of int
            ``(features,)`` or ``(height, width, channels)``, without the batch axis.
        layers : iterable of layer dataclasses or dicts
            The chain after the input; the last Dense/Conv2D is the output layer.
        granularity : {"neuron", "block"}
            Dense layers: one vertex per neuron, or per ``block_size`` consecutive neurons (the last
            block of a layer may be smaller).  Convolutions are always one vertex per channel.
        block_size : int
            Neurons per vertex with ``granularity="block"``.
        cost_model : {"paper", "general"}
            ``"paper"``: a vertex costs its units plus its outgoing connections (``1 + fan_out``
            per dense neuron).  ``"general"``: ``(fan_in + fan_out) · activation_cost`` per unit,
            rounded up to an integer per vertex.
        activation_cost : float
            ``f`` of the general cost model.
        activation_batch : int
            Samples whose activations are counted in ``memory_bytes`` (1 = per sample).
        name : str
            Name stored in the description.

        Returns
        -------
        CostGraph

        Examples
        --------
        >>> g = CostGraph.from_layers((784,), paper_mlp_description().layers, granularity="block",
        ...                           block_size=50)
        >>> g.num_vertices, int(g.compute.sum())
        (14, 101700)
        """
        _check_options(granularity, cost_model, block_size, activation_batch)
        desc = ModelDescription(tuple(input_shape), tuple(layers), name=name)  # type: ignore[arg-type]
        inp, stages, input_params = _compile(desc.input_shape, desc.layers)
        if not stages:
            raise UserError("the model has no Dense or Conv2D layer; add at least an output layer")
        hidden, out = stages[:-1], stages[-1]
        bsz = int(block_size) if granularity == "block" else 1
        ab = int(activation_batch)
        starts, layer, first, size = _vertices(hidden, bsz)
        v = _vertex_costs(inp, stages, layer, size, cost_model=cost_model,
                          activation_cost=float(activation_cost), activation_batch=ab)
        esrc, edst, ew, ec = _layer_edges(hidden, starts, size)
        xadj, adjncy, eid = _undirected_csr(esrc, edst, int(starts[-1]))
        dom = _dominator(inp, stages, input_params, ab)
        out_units_total = out.channels * out.units_per_channel
        total_neurons = dom.input_units + out_units_total + int(v["units"].sum())
        total_weights = int(dom.weights + v["weights_owned"].sum())

        return cls(
            description=desc,
            granularity=granularity,
            block_size=bsz,
            cost_model=cost_model,
            activation_cost=float(activation_cost),
            activation_batch=ab,
            layer_kinds=tuple(s.kind for s in hidden),
            layer_sizes=tuple(s.channels for s in hidden),
            output_units=int(out_units_total),
            dominator=dom,
            total_neurons=int(total_neurons),
            total_weights=total_weights,
            layer=_ro(layer),
            first=_ro(first),
            size=_ro(size),
            **{k: _ro(x) for k, x in v.items()},
            edge_src=_ro(esrc),
            edge_dst=_ro(edst),
            edge_weights=_ro(ew),
            edge_connections=_ro(ec),
            xadj=_ro(xadj),
            adjncy=_ro(adjncy),
            eweights=_ro(ew[eid]),
            edge_id=_ro(eid),
        )

    # ------------------------------------------------------------------ queries
    @property
    def num_vertices(self) -> int:
        """Number of vertices (hidden neurons, blocks or channels)."""
        return len(self.compute)

    @property
    def num_edges(self) -> int:
        """Number of (undirected) graph edges; the CSR holds each twice."""
        return len(self.edge_src)

    @property
    def num_layers(self) -> int:
        """Number of hidden layers."""
        return len(self.layer_sizes)

    @property
    def hidden_neurons(self) -> int:
        """Hidden units (pre-activation scalars per sample) over all vertices."""
        return int(self.units.sum())

    def layer_slice(self, layer: int) -> slice:
        """The vertex index range of hidden layer ``layer``."""
        starts = self._starts()
        return slice(int(starts[layer]), int(starts[layer + 1]))

    def _starts(self) -> np.ndarray:
        if "starts" not in self._cache:
            self._cache["starts"] = np.searchsorted(self.layer, np.arange(self.num_layers + 1))
        return self._cache["starts"]

    def successors_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """Directed out-edges as CSR ``(offsets, targets)`` (cached)."""
        if "succ" not in self._cache:
            order = np.argsort(self.edge_src, kind="stable")
            off = np.concatenate([[0], np.cumsum(np.bincount(self.edge_src, minlength=self.num_vertices))])
            self._cache["succ"] = (off.astype(np.int64), self.edge_dst[order])
        return self._cache["succ"]

    def predecessors_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """Directed in-edges as CSR ``(offsets, sources)`` (cached)."""
        if "pred" not in self._cache:
            order = np.argsort(self.edge_dst, kind="stable")
            off = np.concatenate([[0], np.cumsum(np.bincount(self.edge_dst, minlength=self.num_vertices))])
            self._cache["pred"] = (off.astype(np.int64), self.edge_src[order])
        return self._cache["pred"]

    def edge_cut(self, assignment: Sequence[int] | np.ndarray) -> int:
        """Total multiplicity of the edges whose ends lie in different pieces (the paper's objective).

        Examples
        --------
        >>> g = CostGraph.from_layers((3,), [Dense(2), Dense(2), Dense(1)])
        >>> g.edge_cut([0, 1, 0, 1])
        2
        """
        a = np.asarray(assignment)
        cut = a[self.edge_src] != a[self.edge_dst]
        return int(self.edge_weights[cut].sum())

    def traffic(self, assignment: Sequence[int] | np.ndarray, n: int | None = None) -> Traffic:
        """Shorthand for :func:`traffic_per_sample` on this graph."""
        return traffic_per_sample(self, assignment, n)

    def to_networkx(self, *, max_edges: int = 200_000):
        """A ``networkx.DiGraph`` of the vertices (source → target), with the vertex arrays and the
        edge ``weights``/``connections`` as attributes.  Meant for small graphs.

        Examples
        --------
        >>> g = CostGraph.from_layers((3,), [Dense(2), Dense(2), Dense(1)]).to_networkx()
        >>> g.number_of_nodes(), g.number_of_edges(), g.nodes[0]["compute"]
        (4, 4, 3)
        """
        import networkx as nx

        if self.num_edges > max_edges:
            raise UserError(
                f"the graph has {self.num_edges} edges, more than max_edges={max_edges}; raise "
                "max_edges or use granularity='block'")
        g = nx.DiGraph()
        for i in range(self.num_vertices):
            g.add_node(i, layer=int(self.layer[i]), first=int(self.first[i]), size=int(self.size[i]),
                       compute=int(self.compute[i]), memory_bytes=int(self.memory_bytes[i]),
                       units=int(self.units[i]))
        g.add_edges_from(
            (int(s), int(d), {"weights": int(w), "connections": int(c)})
            for s, d, w, c in zip(self.edge_src, self.edge_dst, self.edge_weights, self.edge_connections,
                                     strict=True)
        )
        return g

    def summary(self) -> str:
        """One line: vertices, edges, neurons, weights, hidden compute."""
        return (f"{self.description.name}: {self.num_vertices} vertices, {self.num_edges} edges, "
                f"{self.total_neurons} neurons, {self.total_weights} weights, hidden compute "
                f"{int(self.compute.sum())} ({self.cost_model} cost model, {self.granularity} granularity)")


# --------------------------------------------------------------------------- traffic


@dataclass(frozen=True, eq=False)
class Traffic:
    """Floats exchanged per training sample (forward + backward) for one assignment.

    ``floats`` counts every message once.  ``piece_floats[p]`` is what piece ``p`` sends plus what
    it receives (the load on its link); ``dominator_floats`` the same for the dominator.
    Multiply by ``bytes_per_value`` (float32: 4) for bytes.
    """

    forward_floats: int
    backward_floats: int
    piece_floats: np.ndarray
    dominator_floats: int
    bytes_per_value: int = BYTES_PER_VALUE

    @property
    def floats(self) -> int:
        return self.forward_floats + self.backward_floats

    @property
    def bytes(self) -> int:
        return self.floats * self.bytes_per_value

    @property
    def piece_bytes(self) -> np.ndarray:
        return self.piece_floats * self.bytes_per_value

    @property
    def dominator_bytes(self) -> int:
        return self.dominator_floats * self.bytes_per_value


def traffic_per_sample(
    graph: CostGraph,
    assignment: Sequence[int] | np.ndarray,
    n: int | None = None,
    *,
    bytes_per_value: int = BYTES_PER_VALUE,
) -> Traffic:
    """Exact forward + backward traffic per training sample under the weighted-sum refinement.

    Forward: for every hidden target vertex ``j`` and every piece ``q ≠ piece(j)`` holding at least
    one source of ``j``, ``q`` sends ``units(j)`` partial sums.  Backward: ``piece(j)`` sends
    ``units(j)`` error values back to each such ``q``.  Boundaries (counted, **[ours]**): the
    dominator sends each hidden-1 vertex its ``units`` weighted sums and receives as many errors
    back; every piece holding part of the last hidden layer sends ``output_units`` partial sums
    to the dominator and receives ``output_units`` errors back.  A model with no hidden layer has
    no traffic.

    Parameters
    ----------
    graph : CostGraph
    assignment : array of int
        Piece of every vertex, in ``0 .. n-1``.
    n : int, optional
        Number of pieces (default: ``max(assignment) + 1``).
    bytes_per_value : int
        4 for float32.

    Returns
    -------
    Traffic

    Examples
    --------
    >>> g = CostGraph.from_layers((3,), [Dense(2), Dense(2), Dense(1)])
    >>> t = traffic_per_sample(g, [0, 1, 0, 1])
    >>> t.forward_floats, t.floats   # 2 cut targets + 2 into hidden-1 + 1 per piece to the output
    (6, 12)
    """
    a = np.asarray(assignment, dtype=np.int64)
    V = graph.num_vertices
    if a.shape != (V,):
        raise UserError(f"assignment has shape {a.shape}, expected ({V},)")
    if V == 0:
        return Traffic(0, 0, np.zeros(n or 0, np.int64), 0, bytes_per_value)
    n = int(a.max()) + 1 if n is None else int(n)
    if a.min() < 0 or a.max() >= n:
        raise UserError(f"assignment values must lie in 0..{n - 1}")
    piece = np.zeros(n, dtype=np.int64)
    # hidden → hidden: one message per (target, foreign source piece)
    ps, pt = a[graph.edge_src], a[graph.edge_dst]
    foreign = ps != pt
    key = np.unique(graph.edge_dst[foreign] * n + ps[foreign])
    tgt, src_piece = key // n, key % n
    u = graph.units[tgt]
    hidden_fw = int(u.sum())
    np.add.at(piece, src_piece, 2 * u)            # sends forward, receives backward
    np.add.at(piece, a[tgt], 2 * u)               # receives forward, sends backward
    # dominator → hidden-1
    h1 = graph.layer == 0
    in_fw = int(graph.units[h1].sum())
    np.add.at(piece, a[h1], 2 * graph.units[h1])
    # last hidden → output
    last = graph.layer == graph.num_layers - 1
    holders = np.unique(a[last])
    out_fw = int(len(holders) * graph.output_units)
    piece[holders] += 2 * graph.output_units
    fw = hidden_fw + in_fw + out_fw
    return Traffic(fw, fw, piece, 2 * (in_fw + out_fw), bytes_per_value)
