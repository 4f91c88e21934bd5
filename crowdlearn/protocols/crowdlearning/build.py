"""Building the Crowdlearning (and S-SGD) machines from a config: groups, the slice plan, the
fused trainer, per-node key rings, and the runners of their job kinds."""

from __future__ import annotations

import numpy as np

from crowdlearn.crypto.sealing import KeyRing
from crowdlearn.protocols.crowdlearning import machines as sp

__all__ = ["build", "build_ssgd", "runners", "summary"]

SERVER = sp.SERVER


def build(ctx, *, alone: bool = False, central: bool = False) -> dict:
    """Crowdlearning groups (or, ``alone``, S-SGD: every device its own group; ``central``,
    C-SGD: one group of one node that holds all the training data)."""
    from slicenet.fused import FusedTrainer
    from slicenet.graph import paper_mlp_description
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
    if sc.model == "paper-mlp":
        desc = paper_mlp_description()
    else:
        desc = sp.description_for(cfg.model.hidden, ds.num_features, ds.num_classes,
                                  activation=cfg.model.activation, batchnorm=sc.batchnorm)
    # the fused path: every group's network trained together, BatchNorm included
    key = ("fused", desc, ds.name, cfg.data.path, cfg.seed, ds.x_train.shape)
    trainer = ctx.cached(key, lambda: FusedTrainer(desc, ds.x_train, ds.y_train))
    init = trainer.init_weights(ctx.rngs["model"])
    ctx.extra.update(trainer=trainer, desc=desc)
    if pieces:
        graph = desc.graph()
        plan = slice_partition(graph, pieces, method=sc.strategy, objective=sc.objective,
                               seed=cfg.seed)
        layout = sp.layout_from_plan(desc, graph, plan)
        ctx.extra["plan"] = plan
    else:
        layout = sp.whole_model_layout(desc)
    params = sp.SliceParams(epochs=cfg.rounds, group_size=n, pieces=pieces, theta=sc.theta,
                            tau=sc.tau, omega=sc.omega, batch_size=sc.batch_size, lr=sc.lr,
                            peer_to_peer=sc.peer_to_peer, pipeline_latency=sc.pipeline_latency)
    fused = sp.FusedGroups(init, len(groups))
    # every node generates its own key pair; only public keys travel (insecure derivation from
    # the seed only when slicenet.deterministic_keys is set, for reproducible crypto tests)
    det = cfg.seed if sc.deterministic_keys else None
    rings = {node: KeyRing(node, deterministic_seed=det) for node in [SERVER, *devices]}
    if sc.peer_to_peer and n > 1:
        ctx.d2d_pairs = [(a, b) for grp in groups for i, a in enumerate(grp) for b in grp[i + 1:]]
        latency = {d: cfg.fleet.d2d_latency_s / 2 for d in devices}
    else:
        latency = {d: ctx.path_latency(d, SERVER) for d in devices} if n > 1 else \
            {d: 0.0 for d in devices}
    ctx.extra.update(groups=groups, layout=layout, fused=fused)
    machines: dict = {SERVER: sp.SlicingServer(
        SERVER, layout, groups, params, fused,
        data_sizes={d: len(parts[d]) for d in devices}, latency=latency,
        ring=rings[SERVER], rng=rng)}
    for gid, grp in enumerate(groups):
        for d in grp:
            machines[d] = sp.SliceDevice(d, layout, fused, gid, parts[d], params,
                                         ring=rings[d], rng=ctx.device_rngs[d])
    return machines


def build_ssgd(ctx) -> dict:
    """S-SGD: every device its own group (no slicing, no collaboration inside a group)."""
    return build(ctx, alone=True)


def runners(sim) -> dict:
    """The executor's runners of Crowdlearning's job kinds: a group pass on the fused path
    (with the accumulated ``|gradient|`` the sharing rule needs); the followers' piece jobs carry
    their share of the time, their numbers being computed inside the fused pass."""
    return {"slice_pass": lambda jobs: sim.trainer.train([j.task for j in jobs],
                                                         with_abs_grad=True),
            "piece": lambda jobs: [None] * len(jobs)}


def summary(sim) -> dict:
    """The plan's balance and traffic per sample (when the model is sliced)."""
    plan = sim.ctx.extra.get("plan")
    if plan is None:
        return {}
    return {"slice_balance": float(plan.balance),
            "slice_traffic_bytes_per_sample": int(plan.traffic_bytes_per_sample)}
