"""Which owner (a piece, or the dominator) holds every parameter of a dense model under a
slice plan, the boundary traffic per sample between owners, and each owner's share of the
training FLOPs (Chen et al., IEEE SECON 2018, spec §1: source ownership)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from crowdlearn.errors import CrowdlearnError
from slicenet.graph import Activation, BatchNorm, Dense, ModelDescription
from slicenet.ownership import OwnedIndices, index_flat

__all__ = ["DOMINATOR", "Layout", "description_for", "layout_from_plan", "whole_model_layout"]

DOMINATOR = -1            # owner id of the dominator's parameters


class Layout(OwnedIndices):
    """Ownership of a dense model's parameters under a slice plan, and its traffic.

    ``owner[k]`` (one int array per entry of :func:`slicenet.execution.weight_specs`, same
    shape) is the piece owning each entry, or ``DOMINATOR``.  Source ownership (spec §1): the
    kernel row of a hidden neuron belongs to the piece holding that neuron; input → hidden-1
    kernels, the input BatchNorm and the output bias belong to the dominator; a hidden neuron's
    bias and BatchNorm parameters to its piece.

    ``pair_floats[a, b]`` is the number of floats owner ``a`` sends owner ``b`` per training
    sample (forward partial sums + backward errors), indices shifted by one so that row/column 0
    is the dominator.
    """

    def __init__(self, desc: ModelDescription, piece_of_unit: Sequence[np.ndarray], pieces: int):
        from slicenet.layout import weight_specs

        dense = [i for i, layer in enumerate(desc.layers) if isinstance(layer, Dense)]
        if not dense:
            raise CrowdlearnError("Crowdlearning needs a model with at least one Dense layer")
        hidden = dense[:-1]
        if len(piece_of_unit) != len(hidden):
            raise ValueError(f"{len(piece_of_unit)} hidden assignments for {len(hidden)} layers")
        self.desc = desc
        self.pieces = int(pieces)
        self.piece_of_unit = [np.asarray(p, np.int64) for p in piece_of_unit]
        self.specs = weight_specs(desc)
        hidden_pos = {layer: h for h, layer in enumerate(hidden)}
        owner: list[np.ndarray] = []
        current: np.ndarray | None = None    # owners of the units the next layer reads
        for spec in self.specs:
            layer = desc.layers[spec.layer]
            if isinstance(layer, Dense):
                h = hidden_pos.get(spec.layer)
                if spec.role == "kernel":
                    owner.append(np.full(spec.shape, DOMINATOR, np.int64) if current is None
                                 else np.repeat(current[:, None], spec.shape[1], axis=1))
                if spec.role == "bias" or (spec.role == "kernel" and not layer.use_bias):
                    if spec.role == "bias":
                        owner.append(np.full(spec.shape, DOMINATOR, np.int64) if h is None
                                     else self.piece_of_unit[h].copy())
                    current = None if h is None else self.piece_of_unit[h]
            else:   # BatchNorm parameters follow the units they normalise
                owner.append(np.full(spec.shape, DOMINATOR, np.int64) if current is None
                             else current.copy())
        self.owner = owner
        # moving BatchNorm statistics travel with their piece but are not shared (θ counts
        # trainable weights only: they have no gradient to rank)
        index_flat(self, self.specs, owner)
        self.params_per_owner = np.bincount(self.flat_owner + 1, minlength=self.pieces + 1)
        self.hidden_layers = len(hidden)
        self.num_outputs = desc.layers[dense[-1]].units
        self.pair_floats = self._traffic()
        # training FLOPs per sample: 3 × forward (2 per multiply-add, 1 per bias / activation
        # output, 4 per BatchNorm output)
        fwd, width = 0, int(np.prod(desc.input_shape))
        for layer in desc.layers:
            if isinstance(layer, Dense):
                fwd += 2 * width * layer.units + layer.units
                width = layer.units
            elif isinstance(layer, BatchNorm):
                fwd += 4 * width
            elif isinstance(layer, Activation):
                fwd += width
        self.train_flops_per_sample = 3 * fwd
        self._owned: dict = {}

    def _traffic(self) -> np.ndarray:
        t = np.zeros((self.pieces + 1, self.pieces + 1), np.int64)
        if not self.hidden_layers:
            return t
        # dominator -> hidden-1 weighted sums, one per neuron; errors back
        np.add.at(t[0], self.piece_of_unit[0] + 1, 1)
        np.add.at(t[:, 0], self.piece_of_unit[0] + 1, 1)
        # hidden l -> hidden l+1: one partial sum per (target neuron, foreign source piece)
        for h in range(self.hidden_layers - 1):
            src_pieces = np.unique(self.piece_of_unit[h])
            for j_piece in np.unique(self.piece_of_unit[h + 1]):
                targets = int(np.sum(self.piece_of_unit[h + 1] == j_piece))
                for q in src_pieces:
                    if q != j_piece:     # dense: every source piece feeds every target
                        t[q + 1, j_piece + 1] += targets
                        t[j_piece + 1, q + 1] += targets
        # last hidden -> output: each holder sends output-many partial sums; errors back
        for q in np.unique(self.piece_of_unit[-1]):
            t[q + 1, 0] += self.num_outputs
            t[0, q + 1] += self.num_outputs
        np.fill_diagonal(t, 0)      # units an owner holds itself cost no traffic
        return t

    def flops_share(self, owners: Sequence[int]) -> float:
        """Fraction of a training step's FLOPs done by ``owners`` [ours: ∝ parameters owned]."""
        n = sum(int(self.params_per_owner[o + 1]) for o in owners)
        return n / self.num_params


def layout_from_plan(desc: ModelDescription, graph, plan) -> Layout:
    """A :class:`Layout` from a :class:`~slicenet.graph.CostGraph` plan (neuron or block
    granularity)."""
    pieces_of_layer = []
    for layer in range(len(graph.layer_sizes)):
        sl = graph.layer_slice(layer)
        pieces_of_layer.append(np.repeat(np.asarray(plan.assignment[sl]),
                                         np.asarray(graph.size[sl])))
    return Layout(desc, pieces_of_layer, len(plan.pieces))


def whole_model_layout(desc: ModelDescription) -> Layout:
    """No slicing (S-SGD): the single device owns everything as dominator."""
    hidden = [layer for layer in desc.layers if isinstance(layer, Dense)][:-1]
    return Layout(desc, [np.full(layer.units, DOMINATOR, np.int64) for layer in hidden], 0)


def description_for(hidden: Sequence[int], inputs: int, outputs: int, *,
                    activation: str = "relu", batchnorm: bool = False) -> ModelDescription:
    """A dense model description ``inputs → hidden... → outputs`` (optionally BatchNorm before
    every activation and on the input, as in the paper's MLP)."""
    layers: list = [BatchNorm()] if batchnorm else []
    for units in hidden:
        layers.append(Dense(int(units)))
        if batchnorm:
            layers.append(BatchNorm())
        layers.append(Activation(activation))
    layers.append(Dense(int(outputs)))
    return ModelDescription((int(inputs),), tuple(layers), name="mlp")
