"""Who owns every parameter of a sliced model, what owners send each other, and their share of the
compute (pure: numpy only) -- for any model SliceNet executes, convolutional ones included.

:class:`SliceLayout` has the interface the Crowdlearning machines read from a layout
(``owner``, ``flat_owner``, ``flat_trainable``, ``offsets``, ``shapes``, ``num_params``,
``params_per_owner``, ``pair_floats``, ``hidden_layers``, ``num_outputs``,
``train_flops_per_sample``, :meth:`~OwnedIndices.owned_flat`, :meth:`~SliceLayout.flops_share`).
Ownership is the source ownership of :mod:`slicenet.convnet` (channel granularity on
convolutions): a hidden channel or neuron owns its bias, its batch-norm parameters (per channel
on a map; after ``Flatten``, the features it produces) and the weights of the next layer that read
it; the dominator owns the input side, the input → hidden-1 kernel, the output bias and what
follows the output layer.

``pair_floats[a + 1, b + 1]`` (row and column 0 the dominator) is what owner ``a`` sends owner
``b`` per training sample, forward partial sums plus backward errors, derived from the cost graph
exactly as :func:`slicenet.graph.traffic_per_sample` (its totals).

**[ours]** Compute share: each kernel entry stands for the multiply-adds it takes part in per
sample (1 for a dense weight, the ``H'·W'`` output positions for a convolution weight), and an
owner's share of a training step is its share of those multiply-adds (for a dense model this is
the share of kernel weights).  ``train_flops_per_sample`` is 3 × the forward FLOPs: 2 per
multiply-add, 1 per bias and activation output, 4 per batch-norm output, 1 per pooled input.

Examples
--------
>>> from slicenet.graph import paper_cnn_description
>>> from slicenet.partition import partition
>>> desc = paper_cnn_description(input_shape=(28, 28, 1))
>>> g = desc.graph()
>>> plan = partition(g, 4, method="contiguous")
>>> lay = SliceLayout(desc, g, plan.assignment, 4)
>>> int(lay.pair_floats.sum()) == g.traffic(plan.assignment).floats
True
>>> round(lay.flops_share([-1]), 3)    # the dominator: the first convolution
0.064
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from slicenet.errors import UserError
from slicenet.layout import DOMINATOR, ConvStage, _out_len, conv_program
from slicenet.weak import ByIdentity

__all__ = ["OwnedIndices", "SliceLayout", "gather", "index_flat", "scatter"]


# an index array's contiguous runs are copied slice by slice (memory copies) instead of
# gathered element by element when they are this long on average: a dominator's part of a
# layer-sliced dense model is a few runs of 10^5 entries, a piece's hundreds of runs of tens
MIN_RUN = 256

# a read-only index array -> its runs (or None)
_RUNS = ByIdentity()


def _runs(idx: np.ndarray) -> list[tuple[int, int, int]] | None:
    """``(start in the source, start in idx, length)`` of each run of consecutive indices in
    ``idx``, or None when its runs average under :data:`MIN_RUN` (a gather is then cheaper).
    Remembered for a read-only array (a layout's owned indices, asked for every pass)."""
    hit = _RUNS.get((idx,))
    if hit is not None:
        return hit or None
    runs = None
    if len(idx) >= MIN_RUN:
        cut = np.flatnonzero(np.diff(idx) != 1) + 1
        if len(idx) >= MIN_RUN * (len(cut) + 1):
            starts = np.concatenate([[0], cut]).tolist()
            ends = np.concatenate([cut, [len(idx)]]).tolist()
            runs = [(int(idx[s]), s, e - s) for s, e in zip(starts, ends, strict=True)]
    _RUNS.put((idx,), runs or [])          # ([] remembers "gather": None is "not known")
    return runs


def gather(src: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``np.take(src, idx)`` for a flat ``src``: a new array, by slice copies where ``idx`` is
    made of long runs (:func:`_runs`).

    >>> src = np.arange(1000.0)
    >>> idx = np.concatenate([np.arange(3, 600), np.arange(700, 990), [995]])
    >>> bool((gather(src, idx) == src[idx]).all()), gather(src, idx[:5]).tolist()
    (True, [3.0, 4.0, 5.0, 6.0, 7.0])
    """
    runs = _runs(idx)
    if runs is None:
        return np.take(src, idx)
    out = np.empty(len(idx), src.dtype)
    for a, o, n in runs:
        out[o:o + n] = src[a:a + n]
    return out


def scatter(dst: np.ndarray, idx: np.ndarray, values: np.ndarray) -> None:
    """``dst[idx] = values`` for a flat ``dst``, by slice copies where ``idx`` is made of long
    runs (:func:`_runs`).

    >>> dst, idx = np.zeros(1000), np.concatenate([np.arange(3, 600), np.arange(700, 990)])
    >>> scatter(dst, idx, np.ones(len(idx)))
    >>> float(dst.sum()), float(dst[idx].min()), float(dst[600:700].max())
    (887.0, 1.0, 0.0)
    """
    runs = _runs(idx)
    if runs is None:
        dst[idx] = values
        return
    values = np.asarray(values)
    for a, o, n in runs:
        dst[a:a + n] = values[o:o + n]


def index_flat(layout: Any, specs: Sequence, owner: Sequence[np.ndarray]) -> None:
    """Set a layout's flat view of its weights (shared by the dense ``Layout`` and
    :class:`SliceLayout`): ``shapes``, ``sizes``, ``offsets`` of each weight array in the flat
    vector, ``flat_owner`` (the owner of every scalar), ``flat_trainable`` (moving BatchNorm
    statistics travel with their piece but are not ranked or shared: no gradient) and
    ``num_params``.  ``specs`` have ``.shape`` and ``.trainable``; ``owner`` one array per spec."""
    layout.shapes = [s.shape for s in specs]
    layout.sizes = [int(np.prod(s)) for s in layout.shapes]
    layout.offsets = np.concatenate([[0], np.cumsum(layout.sizes)]).astype(np.int64)
    layout.flat_owner = np.concatenate([o.reshape(-1) for o in owner])
    layout.flat_trainable = np.concatenate([np.full(s.shape, s.trainable).reshape(-1)
                                            for s in specs])
    layout.num_params = int(layout.offsets[-1])


def _feature_owner(st: ConvStage, channel_owner: np.ndarray) -> np.ndarray:
    """Owner of every feature of ``st``'s (possibly flattened) output."""
    if st.kind == "conv" and len(st.out_shape) == 1:
        return channel_owner[np.arange(st.out_shape[0]) % st.channels]
    return channel_owner


class OwnedIndices:
    """The owner-set look-ups of a layout (the dense ``Layout`` and :class:`SliceLayout`), each
    made once per owner set: a layout has ``flat_owner``, ``flat_trainable``, ``num_params``
    (:func:`index_flat`) and a ``_owned`` dict.

    Examples
    --------
    >>> class Lay(OwnedIndices):
    ...     def __init__(self):
    ...         self.flat_owner = np.array([-1, 0, 1, 0, 1, -1])
    ...         self.flat_trainable = np.array([True, True, True, False, True, True])
    ...         self.num_params, self._owned = 6, {}
    >>> lay = Lay()
    >>> lay.owned_flat([0, 1]).tolist(), lay.owned_flat([0, 1], trainable=True).tolist()
    ([1, 2, 3, 4], [1, 2, 4])
    >>> lay.owns_all([0, 1], np.array([2, 4]), trainable=True), lay.owns_all([0], np.array([2]))
    (True, False)
    >>> [a.tolist() for a in lay.position_in([0, 1], 0)]   # at [1, 2, 4]; of 0's [1, 3]
    [[0], [0]]
    """

    def owned_flat(self, owners: Sequence[int], *, trainable: bool = False) -> np.ndarray:
        """Flat parameter indices owned by any of ``owners`` (pieces or ``DOMINATOR``); only the
        trainable ones (what is shared, spec §5) if ``trainable``."""
        key = (tuple(sorted(int(o) for o in owners)), bool(trainable))
        hit = self._owned.get(key)
        if hit is None:       # asked for every pass, hand-over and upload: computed once
            mine = np.isin(self.flat_owner, np.asarray(key[0], np.int64))
            hit = np.flatnonzero(mine & self.flat_trainable if trainable else mine)
            hit.setflags(write=False)
            self._owned[key] = hit
        return hit

    def position_in(self, owners: Sequence[int], owner: int) -> tuple[np.ndarray, np.ndarray]:
        """Where ``owner``'s trainable entries sit in ``owned_flat(owners, trainable=True)``
        (``owner`` one of ``owners``), and which of ``owner``'s entries
        (``owned_flat([owner])``) they are: a device's share works on its owned entries only,
        not on full-length vectors."""
        key = (tuple(sorted(int(o) for o in owners)), int(owner), "position")
        hit = self._owned.get(key)
        if hit is None:
            mine = self.owned_flat([owner])
            at = np.searchsorted(self.owned_flat(owners, trainable=True),
                                 self.owned_flat([owner], trainable=True))
            which = np.flatnonzero(self.flat_trainable[mine])
            at.setflags(write=False)
            which.setflags(write=False)
            hit = self._owned[key] = (at, which)
        return hit

    def owns_all(self, owners: Sequence[int], indices: np.ndarray, *,
                 trainable: bool = False) -> bool:
        """Whether every one of ``indices`` (in ``range(num_params)``, as
        :func:`crowdlearn.protocols.validate.check_sparse` has checked) is in
        :meth:`owned_flat` of ``owners``: the answer of its ``allowed`` check (a
        ``searchsorted`` of the indices in the owned ones), by a lookup per index in a mask
        (the upload and download checks of a 120-device epoch spent ≈ 0.1 s in the search)."""
        key = (tuple(sorted(int(o) for o in owners)), bool(trainable), "mask")
        mask = self._owned.get(key)
        if mask is None:
            mask = np.zeros(self.num_params, np.bool_)
            mask[self.owned_flat(owners, trainable=trainable)] = True
            mask.setflags(write=False)
            self._owned[key] = mask
        return bool(mask[np.asarray(indices)].all())


class SliceLayout(OwnedIndices):
    """Ownership, traffic and compute shares of a model under a plan (see the module docstring).

    Parameters
    ----------
    desc : ModelDescription
    graph : CostGraph or None
        The cost graph ``assignment`` refers to; None with ``pieces = 0`` (no slicing: the
        dominator owns everything, as in S-SGD and C-SGD).
    assignment : array of int or None
        Piece of every vertex of ``graph``.
    pieces : int
    """

    def __init__(self, desc, graph, assignment: Any, pieces: int) -> None:
        prog = conv_program(desc)
        self.desc = desc
        self.pieces = int(pieces)
        self.specs = prog.specs
        hidden = prog.hidden
        self.hidden_layers = len(hidden)
        self.num_outputs = prog.output.channels
        channel_owner: list[np.ndarray] = []
        if self.pieces == 0:
            channel_owner = [np.full(st.channels, DOMINATOR, np.int64) for st in hidden]
            a = None
        else:
            a = np.asarray(assignment, np.int64)
            if graph is None or a.shape != (graph.num_vertices,):
                raise UserError("a sliced layout needs the cost graph and one piece per vertex")
            if tuple(graph.layer_sizes) != tuple(st.channels for st in hidden):
                raise UserError(f"the graph's hidden layers {tuple(graph.layer_sizes)} do not "
                                "match the model's")
            for li in range(len(hidden)):
                sl = graph.layer_slice(li)
                channel_owner.append(np.repeat(a[sl], graph.size[sl]))
        owner = [np.full(s.shape, DOMINATOR, np.int64) for s in self.specs]
        macs = [np.zeros(s.shape, np.int64) for s in self.specs]
        for si, st in enumerate(prog.stages):
            macs[st.kernel][...] = int(np.prod(st.z_shape[:-1])) if st.kind == "conv" else 1
            if si == len(hidden):
                continue
            co = channel_owner[si]
            if st.bias is not None:
                owner[st.bias][...] = co
            flat = False
            for op in st.post:
                if op.kind == "flatten":
                    flat = True
                elif op.kind == "bn":
                    per = _feature_owner(st, co) if flat else co
                    for j in range(4):
                        owner[op.w + j][...] = per
            nxt = prog.stages[si + 1]
            if nxt.kind == "conv":
                owner[nxt.kernel][...] = co[None, None, :, None]
            else:
                owner[nxt.kernel][...] = _feature_owner(st, co)[:, None]
        self.owner = owner
        #: per hidden layer, the owner of every unit (a channel on a convolutional layer), as
        #: the dense layout's ``piece_of_unit``
        self.piece_of_unit = channel_owner
        #: per hidden layer, the values one unit's pre-activation sums hold per sample (the
        #: ``H'·W'`` positions of a feature map; 1 for a dense unit)
        self.unit_floats = [int(np.prod(st.z_shape[:-1])) for st in hidden]
        #: the first stage (what the dominator computes from the input, and sends on)
        self.first_stage = prog.stages[0]
        index_flat(self, self.specs, owner)
        self._owned: dict = {}
        self.params_per_owner = np.bincount(self.flat_owner + 1, minlength=self.pieces + 1)
        flat_macs = np.concatenate([m.reshape(-1) for m in macs])
        self.macs_per_owner = np.bincount(self.flat_owner + 1, weights=flat_macs,
                                          minlength=self.pieces + 1)
        self.pair_floats = self._traffic(graph, a)
        self.train_flops_per_sample = 3 * self._forward_flops(prog, int(flat_macs.sum()))

    def _traffic(self, graph, a) -> np.ndarray:
        n = self.pieces
        t = np.zeros((n + 1, n + 1), np.int64)
        if a is None or not self.hidden_layers:
            return t
        ps, pt = a[graph.edge_src], a[graph.edge_dst]
        foreign = ps != pt
        key = np.unique(graph.edge_dst[foreign] * n + ps[foreign])
        tgt, src = key // n, key % n
        u = graph.units[tgt]
        np.add.at(t, (src + 1, a[tgt] + 1), u)      # partial sums forward
        np.add.at(t, (a[tgt] + 1, src + 1), u)      # errors back
        h1 = graph.layer == 0
        np.add.at(t, (0, a[h1] + 1), graph.units[h1])
        np.add.at(t, (a[h1] + 1, 0), graph.units[h1])
        for q in np.unique(a[graph.layer == graph.num_layers - 1]):
            t[q + 1, 0] += graph.output_units
            t[0, q + 1] += graph.output_units
        return t

    @staticmethod
    def _forward_flops(prog, macs: int) -> int:
        flops = 2 * macs
        shape = prog.input_shape

        def ops(ops_, shape):
            f = 0
            for op in ops_:
                size = int(np.prod(shape))
                if op.kind == "bn":
                    f += 4 * size
                elif op.kind == "act":
                    f += size
                elif op.kind == "pool":
                    f += size
                    shape = tuple(_out_len(shape[i], op.pool[i], op.strides[i], op.padding, "")
                                  for i in (0, 1)) + (shape[2],)
                elif op.kind == "flatten":
                    shape = (size,)
            return f

        flops += ops(prog.pre, shape)
        for st in prog.stages:
            size = int(np.prod(st.z_shape))
            flops += size if st.bias is not None else 0
            flops += ops(st.post, st.z_shape)
        return int(flops)

    def flops_share(self, owners: Sequence[int]) -> float:
        """Fraction of a training step's multiply-adds done by ``owners`` (module docstring)."""
        total = float(self.macs_per_owner.sum())
        return sum(float(self.macs_per_owner[o + 1]) for o in owners) / total if total else 0.0
