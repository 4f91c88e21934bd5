"""Building the Crowdlearning (and S-SGD) machines from a config: groups, the slice plan, the
fused trainer, per-node key rings, and the runners of their job kinds."""

from __future__ import annotations

import numpy as np

from crowdlearn.crypto.sealing import KeyRing
from crowdlearn.protocols.crowdlearning import config as _config
from crowdlearn.protocols.crowdlearning import machines as sp
from crowdlearn.protocols.crowdlearning.passjob import as_array
from crowdlearn.training.jobs import Outcome, running_ahead
from slicenet.ownership import gather, scatter
from slicenet.weak import ByIdentity

__all__ = ["PassRunner", "build", "build_ssgd", "model_description", "runners", "summary"]

SERVER = sp.SERVER


def build(ctx, *, alone: bool = False, central: bool = False) -> dict:
    """Crowdlearning groups (or, ``alone``, S-SGD: every device its own group; ``central``,
    C-SGD: one group of one node that holds all the training data)."""
    from slicenet.fused import FusedTrainer
    from slicenet.layout import is_convolutional
    from slicenet.ownership import SliceLayout
    from slicenet.partition import partition as slice_partition

    cfg, sc = ctx.config, ctx.config.slicenet
    n = 1 if alone or central else sc.group_size
    pieces = 0 if n == 1 else (sc.pieces or n - 1)
    rng = ctx.rngs["protocol"]
    devices = ctx.devices
    parts = ctx.parts
    if central:
        devices = devices[:1]
        parts = {devices[0]: np.sort(np.concatenate(ctx.parts))}
    if sc.grouping == "proximity":   # same cell first, random within a cell
        cells = {d: next(iter(ctx.graph.successors(d))) for d in devices}
        order = sorted(devices, key=lambda d: (str(cells[d]), rng.random()))
    else:
        order = [devices[i] for i in rng.permutation(len(devices))]
    g = max(1, len(order) // n)
    groups = [order[i * n:(i + 1) * n] for i in range(g)]
    for k, d in enumerate(order[g * n:]):         # leftovers join groups round-robin [ours]
        groups[k % g].append(d)
    ds = ctx.dataset
    desc = model_description(cfg, ds)
    # the fused path: every group's network trained together, BatchNorm included
    key = ("fused", desc, ds.name, cfg.data.path, cfg.seed, ds.x_train.shape)
    trainer = ctx.cached(key, lambda: FusedTrainer(desc, ds.x_train, ds.y_train))
    init = trainer.init_weights(ctx.rngs["model"])
    ctx.extra.update(trainer=trainer, desc=desc)
    conv = is_convolutional(desc)
    if pieces:
        graph = desc.graph()
        plan = slice_partition(graph, pieces, method=sc.strategy, objective=sc.objective,
                               seed=cfg.seed)
        # convolutional models: channel-granularity ownership (slicenet.ownership), same
        # interface as the dense Layout
        layout = SliceLayout(desc, graph, plan.assignment, len(plan.pieces)) if conv else \
            sp.layout_from_plan(desc, graph, plan)
        ctx.extra.update(plan=plan, graph=graph)
    else:
        layout = SliceLayout(desc, None, None, 0) if conv else sp.whole_model_layout(desc)
    params = _config.params_from_config(cfg).slice_params(epochs=cfg.rounds, group_size=n,
                                                          pieces=pieces)
    # every node generates its own key pair; only public keys travel (insecure derivation from
    # the seed only when slicenet.deterministic_keys is set, for reproducible crypto tests)
    det = cfg.seed if sc.deterministic_keys else None
    rings = {node: KeyRing(node, deterministic_seed=det) for node in [SERVER, *devices]}
    if sc.peer_to_peer and n > 1:
        ctx.d2d_pairs = [(a, b) for grp in groups for i, a in enumerate(grp) for b in grp[i + 1:]]
    ctx.extra.update(groups=groups, layout=layout)
    machines: dict = {SERVER: sp.SlicingServer(
        SERVER, layout, groups, params, init,
        data_sizes={d: len(parts[d]) for d in devices},
        ring=rings[SERVER], rng=rng)}
    for gid, grp in enumerate(groups):
        for d in grp:
            machines[d] = sp.SliceDevice(d, layout, gid, parts[d], params,
                                         ring=rings[d], rng=ctx.device_rngs[d])
    return machines


def model_description(cfg, ds):
    """The network ``slicenet.model`` names: the paper's MLP, the paper's CNN on the dataset's
    image shape (28×28×1 for Fashion-MNIST), a Keras file, or the ``[model]`` MLP."""
    from slicenet.graph import paper_cnn_description, paper_mlp_description
    from slicenet.keras_io import load_keras

    sc = cfg.slicenet
    if sc.model == "paper-mlp":
        return paper_mlp_description()
    if sc.model == "paper-cnn":
        return paper_cnn_description(input_shape=ds.image_shape)
    if sc.model != "config":
        from crowdlearn.errors import ConfigError

        desc = load_keras(sc.model)
        units = [lay for lay in desc.layers if hasattr(lay, "units")]
        if int(np.prod(desc.input_shape)) != ds.num_features or \
                (units and units[-1].units != ds.num_classes):
            raise ConfigError(
                f"slicenet.model: {sc.model} takes inputs {desc.input_shape} and gives "
                f"{units[-1].units if units else '?'} outputs; the dataset {ds.name!r} has "
                f"{ds.num_features} features (images {ds.image_shape}) and {ds.num_classes} "
                "classes")
        return desc
    return sp.description_for(cfg.model.hidden, ds.num_features, ds.num_classes,
                              activation=cfg.model.activation, batchnorm=sc.batchnorm)


def build_ssgd(ctx) -> dict:
    """S-SGD: every device its own group (no slicing, no collaboration inside a group)."""
    return build(ctx, alone=True)


def runners(sim) -> dict:
    """The executor's runners of Crowdlearning's job kinds: every pass whose participants' parts
    are all in, trained together on the fused path (with the accumulated ``|gradient|`` the sharing
    rule needs), each participant given back its own entries; and the pipeline's drain, which
    computes nothing (its time is the runtime's)."""
    return {"slice_pass": PassRunner(sim, _replayer(sim)),
            "pipeline_drain": lambda jobs: [None] * len(jobs)}


class PassRunner:
    """The ``slice_pass`` runner: :func:`run_passes` on the simulation's trainer.  It may run
    on the executor's overlap worker ahead of the first read (``overlap``): it reads nothing
    but its jobs (deferred inputs through the executor) and changes nothing until the executor
    commits its :class:`~crowdlearn.training.jobs.Outcome` (the passes' promises filled)."""

    overlap = True

    def __init__(self, sim, replay=None):
        self.sim, self.replay = sim, replay

    def __call__(self, jobs) -> list:
        return run_passes(jobs, self.sim.trainer, self.replay)

    def ahead_ok(self, jobs) -> bool:
        """Whether running these parts ahead needs no new compiled program (a compilation,
        seconds of both cores, is left to the read that needs it, as without overlap)."""
        compiled = getattr(self.sim.trainer, "compiled_for", None)
        if compiled is None:
            return True
        schedules: dict = {}
        for j in jobs:                 # the passes in run_passes' order, each its dominator's
            schedules.setdefault(j.key, None)
            if j.batches is not None:
                schedules[j.key] = j.batches
        found = list(schedules.values())
        return all(x is not None for x in found) and compiled(found)


def run_passes(jobs, trainer, replay=None) -> Outcome:
    """Results of :class:`~crowdlearn.protocols.crowdlearning.machines.SlicePassJob` parts:
    the parts of each pass joined into the group's whole network (every value comes from a
    part's job), all passes trained in one :meth:`FusedTrainer.train` call, and each part's
    entries handed back (new values per owner, then ``|gradient|`` sums of its trainable entries
    per owner).  Each part's promise gets a :class:`PassRecord` of the pass (start weights and
    schedule), from which its boundary payloads are computed if they are ever encoded, when the
    executor commits the results (the returned :class:`~crowdlearn.training.jobs.Outcome`)."""
    from crowdlearn.training.batching import TrainTask

    shapes = [tuple(s.shape) for s in trainer.specs]
    offsets = np.concatenate([[0], np.cumsum([int(np.prod(s)) for s in shapes])])
    passes: dict = {}
    for i, j in enumerate(jobs):
        passes.setdefault(j.key, []).append(i)
    tasks, records = [], []
    for key, members in passes.items():
        flat = np.empty(int(offsets[-1]), np.float32)
        dom = None
        for i in members:
            for idx, _, values in jobs[i].parts:
                scatter(flat, idx, as_array(values))
            if jobs[i].batches is not None:
                dom = jobs[i]
        if dom is None:
            raise RuntimeError(f"pass {key} ran without all its parts")
        _check_cover(key, [p[0] for i in members for p in jobs[i].parts], len(flat))
        start = tuple(flat[offsets[k]:offsets[k + 1]].reshape(s) for k, s in enumerate(shapes))
        tasks.append(TrainTask(start, dom.batches, dom.lr))
        records.append(PassRecord(start, dom.batches, dom.lr,
                                  {jobs[i].node: jobs[i].owners for i in members}, replay))
    # a compiled call's shares side by side at a read (the loop waits for them), one after the
    # other on the overlap worker (beside the loop's Python); the same bits either way
    results = trainer.train(tasks, with_abs_grad=True,
                            share_threads=1 if running_ahead() else None)
    out: list = [None] * len(jobs)
    promised: list = []
    n = len(shapes)
    for members, res, record in zip(passes.values(), results, records, strict=True):
        new = np.concatenate([np.asarray(a, np.float32).reshape(-1) for a in res[:n]])
        acc = np.concatenate([np.asarray(a, np.float32).reshape(-1) for a in res[n:]])
        for i in members:
            parts = jobs[i].parts
            out[i] = [gather(new, p[0]) for p in parts] + [gather(acc, p[1]) for p in parts]
            promised.append((jobs[i].promise, record))

    def fulfil():
        for promise, record in promised:
            promise.fulfil(record)
    return Outcome(out, on_commit=fulfil)


def _check_cover(key, parts: list, size: int) -> None:
    """The parts of a pass cover every weight once (as many distinct indices as indices, and
    all of them), else :class:`RuntimeError`.  The parts are a layout's read-only index arrays,
    the same few sets pass after pass: a set found whole is remembered (by the arrays'
    identities, held weakly) and not marked out again."""
    parts = tuple(sorted(parts, key=id))        # (the same set in any order)
    if _COVERS.get(parts) == size:
        return
    covered = np.zeros(size, bool)
    given = 0
    for idx in parts:
        covered[idx] = True
        given += len(idx)
    distinct = int(np.count_nonzero(covered))
    if distinct != given:
        raise RuntimeError(f"pass {key}: two parts hold the same weights")
    if distinct != size:
        raise RuntimeError(f"pass {key} ran without all its parts")
    _COVERS.put(parts, size)


# a pass's part index arrays (read-only, by identity) -> the size they were found to cover
_COVERS = ByIdentity()


class PassRecord:
    """What the executor knows of one pass it ran: the whole network's start weights (joined
    from the participants' parts), the dominator's schedule, and who held which owners.

    :meth:`boundary` gives the real boundary tensors one participant sent another during the
    pass: the pass is replayed piece by piece (:class:`slicenet.execution.PiecewiseNetwork`,
    proven equal to the fused step up to float rounding) and the messages from the sender's
    owners to the receiver's are stacked, mini-batch by mini-batch in the order they are
    produced (forward, then backward).  Computed only if asked (a message encoded), once."""

    def __init__(self, start, batches, lr, owners_of: dict, replay):
        self.start, self.batches, self.lr = start, batches, lr
        self.owners_of = owners_of
        self._replay = replay
        self._steps: list | None = None

    def messages(self) -> list:
        """Per mini-batch, the :class:`slicenet.layout.Message` list of its piecewise step."""
        if self._steps is None:
            if self._replay is None:
                raise RuntimeError("no replay: the pass's boundary tensors cannot be computed")
            self._steps = self._replay(self.start, self.batches, self.lr)
        return self._steps

    def boundary(self, src, dst) -> np.ndarray:
        oa, ob = set(self.owners_of[src]), set(self.owners_of[dst])
        vals = [np.asarray(m.values, np.float32).reshape(-1) for step in self.messages()
                for m in step if m.src in oa and m.dst in ob]
        return np.concatenate(vals) if vals else np.zeros(0, np.float32)


def _replayer(sim):
    """``replay(start, batches, lr)``: the pass's messages, mini-batch by mini-batch."""
    ctx = sim.ctx
    plan, graph, desc = ctx.extra.get("plan"), ctx.extra.get("graph"), ctx.extra.get("desc")
    if plan is None:
        return None          # S-SGD / C-SGD: nothing is sliced, no boundary traffic

    def replay(start, batches, lr):
        from slicenet.execution import PiecewiseNetwork

        ds = ctx.dataset
        x = np.asarray(ds.x_train, np.float32).reshape(len(ds.x_train), -1)
        y = np.asarray(ds.y_train)
        net = PiecewiseNetwork(desc, plan.assignment, start, graph=graph)
        steps = []
        for row in np.asarray(batches):
            rows = row[row >= 0]
            if len(rows):
                steps.append(net.step(x[rows], y[rows], lr)[1])
        return steps
    return replay


def summary(sim) -> dict:
    """The parameters of the network trained (not the ``[model]`` MLP's), the plan's balance
    and traffic per sample (when the model is sliced)."""
    out: dict = {}
    layout = sim.ctx.extra.get("layout")
    if layout is not None:
        out["model_params"] = int(layout.num_params)
    plan = sim.ctx.extra.get("plan")
    if plan is not None:
        out.update(slice_balance=float(plan.balance),
                   slice_traffic_bytes_per_sample=int(plan.traffic_bytes_per_sample))
    return out
