"""Composition root: build a whole simulation from a :class:`~crowdlearn.config.Config` and run it.

Examples
--------
>>> from crowdlearn.config import from_dict
>>> res = run(from_dict({"rounds": 2, "fleet": {"devices": 10}}))     # doctest: +SKIP
>>> res.summary["final_accuracy"]                                       # doctest: +SKIP
0.83
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from crowdlearn.config import Config
from crowdlearn.crypto.sealing import KeyRing
from crowdlearn.data import load_dataset, partition
from crowdlearn.protocols import dssgd, fm
from crowdlearn.protocols.fedavg import (
    SERVER,
    CentralizedTrainer,
    FedAvgClient,
    FedAvgParams,
    FedAvgServer,
    StandaloneClient,
)
from crowdlearn.signals import as_interrupts, signal_of
from crowdlearn.training import models
from crowdlearn.training.jobs import Executor
from sim.availability import make_availability
from sim.driver import Driver, FaultParams, Fleet, LazyMachines
from sim.monitor import Monitor
from sim.network import CellTree, Network, cell_tree
from sim.profiles import TIERS, sample_fleet_table

MBPS = 1e6 / 8  # bytes per second in one Mbit/s

#: Seed-stream names, in spawn order (appending keeps earlier streams stable).
STREAMS = ("data", "fleet", "model", "protocol", "faults", "devices")


@dataclass
class Context:
    """Everything a protocol builder may use."""

    config: Config
    dataset: Any
    spec: models.ModelSpec
    parts: list[np.ndarray]
    init_weights: list[np.ndarray]
    rngs: dict[str, np.random.Generator]
    device_rngs: Sequence[np.random.Generator]
    topology: Any = None                    # a CellTree (or a networkx graph)
    d2d_pairs: list = field(default_factory=list)   # builders may ask for device-device links
    extra: dict = field(default_factory=dict)       # builders' objects for reports and tests

    @property
    def graph(self):
        """The topology as a networkx graph, for latencies and cells (built when first asked)."""
        return self.topology.graph if isinstance(self.topology, CellTree) else self.topology

    @graph.setter
    def graph(self, value) -> None:
        self.topology = value

    def path_latency(self, src, dst) -> float:
        import networkx as nx
        return nx.shortest_path_length(self.graph, src, dst, weight="latency")

    @property
    def devices(self) -> list[int]:
        return list(range(len(self.parts)))


class DeviceRngs(Sequence):
    """Device ``i``'s generator, ``default_rng(parent.spawn(n)[i])``, made on first use: a
    fleet of millions does not hold millions of generators, and the streams are those of
    ``SeedSequence.spawn`` (the same child seeds, whatever the order of use)."""

    def __init__(self, parent: np.random.SeedSequence, n: int):
        self.parent, self.n = parent, n
        self._made: dict[int, np.random.Generator] = {}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self.n))]
        i = int(i)
        g = self._made.get(i)
        if g is None:
            g = self._made[i] = self.fresh(i)
        return g

    def fresh(self, i: int) -> np.random.Generator:
        """A new generator at the start of device ``i``'s stream (not kept)."""
        i = int(i)
        if not 0 <= i < self.n:
            raise IndexError(f"device {i} out of range for {self.n} devices")
        p = self.parent
        return np.random.default_rng(np.random.SeedSequence(
            p.entropy, spawn_key=(*p.spawn_key, i), pool_size=p.pool_size))


def _build_fedavg(ctx: Context) -> dict:
    cfg = ctx.config
    f = cfg.fedavg
    params = FedAvgParams(rounds=cfg.rounds, clients_per_round=cfg.clients_per_round,
                          local_epochs=f.local_epochs, batch_size=f.batch_size, lr=f.lr,
                          deadline_s=f.deadline_s, over_selection=f.over_selection,
                          min_clients=f.min_clients)
    from crowdlearn.privacy import dp_fedavg
    from crowdlearn.protocols import secagg
    dp_params = dp_fedavg.params_from_config(cfg)
    dp = dp_fedavg.DPFedAvg(dp_params) if dp_params is not None else None
    sa = secagg.params_from_config(cfg)
    if sa is None:
        server = FedAvgServer(SERVER, ctx.init_weights, params, rng=ctx.rngs["protocol"], dp=dp)

        def client(d, rng):
            return FedAvgClient(d, ctx.spec, ctx.parts[d], rng=rng)

        def park(m: FedAvgClient):   # an idle client is its generator's state
            return None if m.job_round is not None else _rng_state(m.rng)

        # a client exists once it is first selected (its Start does nothing), and is parked
        # between rounds
        return LazyMachines({SERVER: server}, lambda d: client(d, ctx.device_rngs.fresh(d)),
                            range(len(ctx.parts)), park=park,
                            unpark=lambda d, st: client(d, _rng_from_state(st)))
    # secure aggregation: crypto costs calibrated on this machine; key material from its own
    # per-device streams so that training draws exactly what it draws without SecAgg
    from crowdlearn.crypto.costs import calibrate
    costs = calibrate()
    ctx.extra["crypto_costs"] = costs
    streams = np.random.SeedSequence([cfg.seed, 0x5EC]).spawn(len(ctx.devices) + 1)
    machines = {SERVER: secagg.SecAggServer(SERVER, ctx.init_weights, params,
                                            rng=ctx.rngs["protocol"], secagg=sa, costs=costs,
                                            dp=dp, graph_rng=np.random.default_rng(streams[-1]))}
    for d in ctx.devices:
        machines[d] = secagg.SecAggClient(
            d, ctx.spec, ctx.parts[d], rng=ctx.device_rngs[d], params=sa, costs=costs,
            crypto_rng=np.random.default_rng(streams[d]),
            privatise=dp.client_privatise if dp is not None else None)
    return machines


def _rng_state(rng: np.random.Generator) -> tuple | None:
    st = rng.bit_generator.state
    if st["bit_generator"] != "PCG64":
        return None
    return (st["state"]["state"], st["state"]["inc"], st["has_uint32"], st["uinteger"])


def _rng_from_state(st: tuple) -> np.random.Generator:
    bg = np.random.PCG64()
    bg.state = {"bit_generator": "PCG64", "state": {"state": st[0], "inc": st[1]},
                "has_uint32": st[2], "uinteger": st[3]}
    return np.random.Generator(bg)


def _build_centralized(ctx: Context) -> dict:
    cfg, f = ctx.config, ctx.config.fedavg
    if cfg.slicenet.model == "paper-mlp" or cfg.slicenet.batchnorm:
        # C-SGD, the paper's baseline: the Crowdlearning network (BatchNorm included), trainer,
        # learning rate and batch size, on one node holding every sample
        return _build_crowdlearning(ctx, central=True)
    union = np.sort(np.concatenate(ctx.parts))
    return {SERVER: CentralizedTrainer(SERVER, ctx.spec, ctx.init_weights, union,
                                       rounds=cfg.rounds, epochs=f.local_epochs,
                                       batch_size=f.batch_size, lr=f.lr, rng=ctx.rngs["protocol"])}


def _build_standalone(ctx: Context) -> dict:
    cfg, f = ctx.config, ctx.config.fedavg
    return {d: StandaloneClient(d, ctx.spec, ctx.init_weights, ctx.parts[d], rounds=cfg.rounds,
                                epochs=f.local_epochs, batch_size=f.batch_size, lr=f.lr,
                                rng=ctx.device_rngs[d])
            for d in ctx.devices}


def _build_crowdlearning(ctx: Context, *, alone: bool = False, central: bool = False) -> dict:
    """Crowdlearning groups (or, ``alone``, S-SGD: every device its own group; ``central``,
    C-SGD: one group of one node that holds all the training data)."""
    from slicenet import protocol as sp
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
    trainer = _cached(key, lambda: FusedTrainer(desc, ds.x_train, ds.y_train))
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


#: protocol name → builder(Context) -> {node: Machine}.  Later protocols register here.
PROTOCOLS: dict[str, Callable[[Context], dict]] = {
    "fedavg": _build_fedavg,
    "centralized": _build_centralized,
    "standalone": _build_standalone,
    "crowdlearning": _build_crowdlearning,
    "ssgd": lambda ctx: _build_crowdlearning(ctx, alone=True),
    "dssgd": dssgd.build,
    "fm": fm.build,
}

# -- encrypted asynchronous SGD (Phong et al.): crypto costs calibrated on this machine --
from crowdlearn.protocols import phong as _phong  # noqa: E402


def _build_phong(ctx: Context) -> dict:
    from crowdlearn.crypto.he_costs import calibrate
    return _phong.build(ctx, calibrate=calibrate)


PROTOCOLS["phong"] = _build_phong


def _build_hres(ctx: Context) -> dict:
    from crowdlearn.crypto.he_costs import calibrate
    from crowdlearn.protocols import hres
    return hres.build(ctx, calibrate=calibrate)


PROTOCOLS["hres"] = _build_hres


def build_model(cfg: Config, dataset) -> models.ModelSpec:
    m = cfg.model
    outputs = dataset.num_classes if dataset.task == "classification" else 1
    loss = "sparse_ce" if dataset.task == "classification" else "mse"
    if m.arch == "mlp":
        return models.mlp(dataset.num_features, m.hidden, outputs, activation=m.activation,
                          loss=loss)
    if m.arch == "linear":
        return models.linear(dataset.num_features, outputs, loss=loss)
    return models.cnn(dataset.image_shape, filters=m.filters, kernel=m.kernel, dense=m.dense,
                      num_outputs=outputs, activation=m.activation, loss=loss)


class NullTrainer:
    """``training.backend = "none"``: weights pass through unchanged; nothing is evaluated.

    Jobs are still priced and charged in simulated time, so a simulator-only study (network,
    availability, scheduling) measures everything but accuracy.
    """

    def __init__(self, spec, x, y):
        self.spec = spec

    def train(self, tasks):
        return [[np.asarray(w, np.float32) for w in t.weights] for t in tasks]

    def evaluate(self, weight_lists, x, y):
        return [(math.nan, math.nan) for _ in weight_lists]


def _batched():
    from crowdlearn.training.fleet_trainer import FleetTrainer
    return FleetTrainer


def _keras():
    from crowdlearn.training.keras_ref import KerasReferenceTrainer
    return KerasReferenceTrainer


#: training.backend → a zero-argument loader of the trainer class (imports TensorFlow lazily).
TRAINERS: dict[str, Callable[[], type]] = {
    "batched": _batched, "keras": _keras, "none": lambda: NullTrainer}


_TRAINER_CACHE: dict = {}


def _cached_trainer(cfg: Config, spec: models.ModelSpec, dataset):
    """Reuse a trainer (and its traced TensorFlow function and the training set it holds on the
    TF side) across simulations of the same model and data, as notebooks and sweeps run many.
    Trainers keep no state between ``train`` calls; the cache holds at most two."""
    key = (cfg.training.backend, spec, dataset.name, cfg.data.path, cfg.seed,
           dataset.x_train.shape)
    return _cached(key, lambda: TRAINERS[cfg.training.backend]()(spec, dataset.x_train,
                                                                 dataset.y_train))


def _cached(key, make):
    trainer = _TRAINER_CACHE.get(key)
    if trainer is None:
        trainer = make()
        while len(_TRAINER_CACHE) >= 2:
            _TRAINER_CACHE.pop(next(iter(_TRAINER_CACHE)))
        _TRAINER_CACHE[key] = trainer
    return trainer


@dataclass
class Results:
    config: Config
    metrics: list[dict]
    devices: list[dict]
    rounds: list[dict]
    summary: dict
    interrupted: bool = False
    extra: dict = field(default_factory=dict)
    privacy: list[dict] = field(default_factory=list)   # the ε ledger, one row per participant


def _server_link(cfg: Config) -> dict:
    """The core <-> server link from the server tier's profile (its rates and its own one-way
    latency); ``fleet.server_mbps > 0`` overrides the rate in both directions."""
    prof = TIERS[cfg.fleet.server_tier]
    up, down = prof.up_bps, prof.down_bps
    if cfg.fleet.server_mbps > 0:
        up = down = cfg.fleet.server_mbps * MBPS
    return {"server_bps": up, "server_down_bps": down, "server_latency_s": prof.latency_s}


class Simulation:
    """A built, not yet run, simulation (exposed for notebooks and tests)."""

    def __init__(self, cfg: Config, *, on_row: Callable[[dict], None] | None = None,
                 trainer_factory: Callable | None = None,
                 parts: list[np.ndarray] | None = None, dataset=None):
        self.config = cfg
        root = np.random.SeedSequence(cfg.seed)
        children = root.spawn(len(STREAMS))
        self.rngs = {name: np.random.default_rng(s) for name, s in zip(STREAMS, children)}
        n = cfg.fleet.devices
        # a caller's preloaded copy (sweeps share one per dataset, e.g. from Ray's object store)
        self.dataset = dataset if dataset is not None else load_dataset(
            cfg.data.dataset, path=cfg.data.path or None, seed=cfg.seed)
        params = {"iid": {}, "quantity": {"sigma": cfg.data.sigma, "min_size": cfg.data.min_size},
                  "dirichlet": {"alpha": cfg.data.alpha, "min_size": cfg.data.min_size},
                  "shards": {"shards_per_device": cfg.data.shards_per_device}}[cfg.data.partition]
        if parts is not None:     # a caller's own split (e.g. more devices than samples)
            if len(parts) != n:
                raise ValueError(f"parts has {len(parts)} entries for {n} devices")
            self.parts = [np.asarray(p, np.int64) for p in parts]
        else:
            self.parts = partition(self.dataset.y_train, n, method=cfg.data.partition,
                                   rng=self.rngs["data"], **params)
        self.spec = build_model(cfg, self.dataset)
        init = self.spec.init_weights(self.rngs["model"])
        device_rngs = DeviceRngs(children[-1], n)
        self.ctx = Context(cfg, self.dataset, self.spec, self.parts, init, self.rngs, device_rngs)

        self.profiles = sample_fleet_table(n, cfg.fleet.mix, rng=self.rngs["fleet"],
                                           jitter=cfg.fleet.jitter)
        server_profile = TIERS[cfg.fleet.server_tier]
        self.env = simpy.Environment()
        self.ctx.graph = self._topology(())

        machines = PROTOCOLS[cfg.protocol](self.ctx)
        if self.ctx.d2d_pairs:
            self.ctx.graph = self._topology(self.ctx.d2d_pairs)
        # server-side nodes a protocol adds besides the server (hres: the key transform server),
        # linked to the core like the server; node -> profile tier
        infra = self.ctx.extra.get("infrastructure", {})
        if infra:
            link = _server_link(cfg)         # the same link as the server's (fleet.server_tier)
            graph = self.ctx.graph           # a networkx graph holds the extra nodes
            for node in infra:
                graph.add_node(node, kind="server")
                graph.add_edge(node, "core", bandwidth=link["server_bps"],
                               latency=link["server_latency_s"])
                graph.add_edge("core", node, bandwidth=link["server_down_bps"],
                               latency=link["server_latency_s"])
            self.ctx.graph = graph
        self.network = Network(self.env, self.ctx.topology)
        if "trainer" in self.ctx.extra:          # a protocol with its own compute path
            self.trainer = self.ctx.extra["trainer"]
        elif trainer_factory is not None:
            self.trainer = trainer_factory(self.spec, self.dataset.x_train, self.dataset.y_train)
        else:
            self.trainer = _cached_trainer(cfg, self.spec, self.dataset)
        if cfg.training.executor == "ray" and "trainer" not in self.ctx.extra:
            from crowdlearn.training.ray_trainer import RayShardedTrainer
            self.trainer = RayShardedTrainer(
                TRAINERS[cfg.training.backend], self.spec, self.dataset.x_train,
                self.dataset.y_train, actors=cfg.training.ray_actors,
                address=cfg.training.ray_address, local=self.trainer)
        self.executor = Executor({
            "train": lambda jobs: self.trainer.train([j.task for j in jobs]),
            "slice_pass": lambda jobs: self.trainer.train([j.task for j in jobs],
                                                          with_abs_grad=True),
            "piece": lambda jobs: [None] * len(jobs),   # followers' share: time, not numbers
            "secagg_crypto": lambda jobs: [None] * len(jobs),  # secure aggregation: computed in the
                                                        # machine, charged as a job
            **fm.runners(self),
            "crypto": _phong.run_crypto_jobs,
        })
        self.monitor = Monitor(range(n), evaluator=self._evaluate, on_row=on_row,
                               infrastructure=tuple(infra))

        av = cfg.availability
        if av.model == "sessions":
            availability = make_availability("sessions", mean_online_s=av.mean_online_s,
                                             mean_offline_s=av.mean_offline_s,
                                             diurnal_amplitude=av.diurnal_amplitude,
                                             peak_hour=av.peak_hour)
        elif av.model == "trace":
            from pathlib import Path
            trace = Path(av.trace)
            if not trace.is_absolute():
                trace = getattr(cfg, "base_dir", Path.cwd()) / trace
            availability = make_availability("trace", path=str(trace))
        else:
            availability = make_availability("always")
        faults = FaultParams(churn=av.churn, churn_offline_s=av.churn_offline_s,
                             battery=av.battery, battery_min_fraction=av.battery_min_fraction,
                             recharge_s=av.recharge_s,
                             initial_battery=tuple(av.initial_battery))
        profiles = Fleet(self.profiles, {SERVER: server_profile,
                                         **{node: TIERS[tier] for node, tier in infra.items()}})
        self.driver = Driver(self.env, self.network, machines, profiles, executor=self.executor,
                             monitor=self.monitor, availability=availability, faults=faults,
                             rng=self.rngs["faults"],
                             server=SERVER if SERVER in machines else None,
                             infrastructure=tuple(infra))

    def _topology(self, d2d_pairs):
        cfg = self.config
        cols = self.profiles.columns
        return cell_tree(
            cfg.fleet.devices,
            device_up_bps=cols["up_bps"],
            device_down_bps=cols["down_bps"],
            device_latency_s=cols["latency_s"],
            cells=cfg.fleet.cells, backhaul_bps=cfg.fleet.backhaul_mbps * MBPS,
            **_server_link(cfg), d2d_pairs=d2d_pairs,
            d2d_bps=cfg.fleet.d2d_mbps * MBPS, d2d_latency_s=cfg.fleet.d2d_latency_s)

    def _evaluate(self, weight_lists: list) -> list[dict]:
        ds = self.dataset
        scores = self.trainer.evaluate(weight_lists, ds.x_test, ds.y_test)
        if ds.task == "classification":
            return [{"accuracy": acc, "loss": loss} for loss, acc in scores]
        return [{"rmse": rmse, "loss": mse} for mse, rmse in scores]

    def run(self) -> Results:
        cfg = self.config
        wall0 = time.perf_counter()
        interrupted = False
        self.driver.start()
        probe = None
        if cfg.privacy.attacks:
            from crowdlearn.privacy.attacks.views import PrivacyProbe
            probe = PrivacyProbe(self)
        halted = False
        self.signal = None
        try:
            with as_interrupts():      # SIGTERM and SIGHUP end a run like Ctrl-C does
                halted = self.driver.run(until=cfg.max_sim_time_s)
        except KeyboardInterrupt as exc:
            interrupted = True
            self.signal = signal_of(exc)[1]
            self.driver.finish()
        self.halted = halted
        self.monitor.flush(self.env.now)
        wall = time.perf_counter() - wall0
        results = self._results(wall, interrupted)
        results.summary["signal"] = self.signal
        results.summary["stopped_by"] = self._stopped_by(results)
        if probe is not None and not interrupted:
            from crowdlearn.privacy.attacks.views import privacy_report
            results.summary.update(privacy_report(self, probe, seed=cfg.seed))
        return results

    def _stopped_by(self, results: Results) -> str:
        """Why the run ended: ``completed``, the signal's name, ``max_sim_time_s``, or
        ``stalled`` (no event left: no round could start or finish, e.g. too few devices)."""
        if self.signal is not None:
            return self.signal
        if results.summary["completed"]:
            return "completed"
        if self.env.now >= self.config.max_sim_time_s:
            return "max_sim_time_s"
        return "stalled"

    def _results(self, wall: float, interrupted: bool) -> Results:
        cfg, mon = self.config, self.monitor
        rows = mon.rows
        metric = "accuracy" if self.dataset.task == "classification" else "rmse"
        values = [r[metric] for r in rows if metric in r and not math.isnan(r[metric])]
        best = (max(values) if metric == "accuracy" else min(values)) if values else None
        summary = {
            "protocol": cfg.protocol,
            "name": cfg.name,
            "dataset": cfg.data.dataset,
            "devices": cfg.fleet.devices,
            "rounds_completed": len(rows),
            "rounds_planned": cfg.rounds,
            f"final_{metric}": values[-1] if values else None,
            f"best_{metric}": best,
            "sim_time_s": float(self.env.now),
            "wall_time_s": wall,
            "bytes_up": int(mon.bytes_up),
            "bytes_down": int(mon.bytes_down),
            "bytes_total": int(mon.bytes_total),
            "messages": int(mon.messages),
            "messages_dropped": int(mon.messages_dropped),
            "bytes_lost_to_dropouts": int(mon.bytes_lost),
            "late_updates": int(mon.late_updates),
            "device_flops": float(mon.flops),
            "device_compute_s": float(mon.compute_s),
            "energy_j": float(mon.energy_j),
            "model_params": int(self.spec.num_params()),
            "batches_run": dict(self.executor.batches_run),
            "jobs_run": dict(self.executor.jobs_run),
            "events_handled": self.driver.events_handled,
            "interrupted": interrupted,
            # False when the run stopped early: interrupted, out of simulated time, or stalled
            # (e.g. every device offline for good)
            "completed": bool(len(rows) >= cfg.rounds and not interrupted),
            "takeovers": int(mon.takeovers),
            "bytes_by_kind": dict(sorted(mon.bytes_by_kind.items())),
            "messages_by_kind": dict(sorted(mon.messages_by_kind.items())),
        }
        if mon.bytes_by_role:
            summary["bytes_sent_by_role"] = dict(sorted(mon.bytes_by_role.items()))
        stall = getattr(self.driver.machines.get(SERVER), "stall_report", None)
        if stall is not None and stall():       # some groups did not finish (Crowdlearning)
            summary["completed"] = False
            summary["stall"] = stall()
        if "plan" in self.ctx.extra:
            plan = self.ctx.extra["plan"]
            summary["slice_balance"] = float(plan.balance)
            summary["slice_traffic_bytes_per_sample"] = int(plan.traffic_bytes_per_sample)
        server = self.driver.machines.get(SERVER)
        if hasattr(server, "summary"):          # secure aggregation
            summary.update(server.summary())
            from crowdlearn.protocols.secagg import STAGE_MESSAGES
            kinds = mon.bytes_by_kind
            summary["secagg_stage_bytes"] = {
                stage: {k: int(kinds.get(k, 0)) for k in names}
                for stage, names in STAGE_MESSAGES.items()}
            if "crypto_costs" in self.ctx.extra:
                summary["secagg_cost_model"] = self.ctx.extra["crypto_costs"].to_dict()
        if getattr(server, "dp", None) is not None:
            summary.update(server.dp.summary())
        if "he" in self.ctx.extra:
            summary.update(self.ctx.extra["he"].summary())
        if metric == "accuracy" and not values:
            summary["final_accuracy"] = summary["best_accuracy"] = None
        summary.update(self._privacy_summary())
        devices = mon.device_rows(self.driver.devices, float(self.env.now))
        return Results(cfg, rows, devices, mon.rounds, summary, interrupted,
                       privacy=self.monitor.ledger.rows() if self.monitor.ledger else [])

    def _privacy_summary(self) -> dict:
        """The summary's ε fields, for every protocol (``dp = false`` and ``None`` without DP).

        ``epsilon``: the largest composed ε of a device at ``delta``, from every release charged;
        ``accountant``/``accountant_fallback_to_basic``: how it was composed;
        ``epsilon_guarantee``: ``"dp"``, ``"nominal"`` (a release whose ε is not a guarantee,
        DSSGD's ``release = "paper"``) or ``"none"``; ``epsilon_audit``: where the protocol
        offers one (DSSGD under DP), the auditor's measured lower bound on the per-parameter ε
        at the largest value the run released; ``epsilon_quality_scores``: FM's scoring.
        """
        mon = self.monitor
        decl = self.ctx.extra.get("privacy") or {}
        rows = mon.ledger.rows() if mon.ledger else []
        dev = [r for r in rows if r["participant"] not in mon.privacy_subjects]
        scores = [r["epsilon"] for r in rows if r["participant"] == "validation"]
        out = {"dp": bool(decl or dev), "epsilon": None, "delta": None,
               "accountant": None, "accountant_fallback_to_basic": None,
               "epsilon_guarantee": "none", "privacy_mechanism": None,
               "epsilon_per_parameter": None,
               "epsilon_quality_scores": scores[0] if scores else None,
               "epsilon_audit": None}
        fed_dp = getattr(self.driver.machines.get(SERVER), "dp", None)
        if fed_dp is not None:              # DP-FedAvg: its own RDP/PLD accountant
            s = fed_dp.summary()
            out.update(dp=True, epsilon=s["epsilon"], delta=s["delta"], accountant=s["accountant"],
                       accountant_fallback_to_basic=False, epsilon_guarantee="dp",
                       privacy_mechanism=f"client-level Gaussian ({s['dp_mode']} noise)")
            return out
        if not out["dp"]:
            return out
        out.update(epsilon=max((r["epsilon"] for r in dev), default=0.0),
                   delta=mon.ledger.delta if mon.ledger else decl.get("delta"),
                   accountant="dp-accounting PLD (replace-one), basic composition beyond it",
                   accountant_fallback_to_basic=any(r["accountant"] == "basic" for r in dev),
                   privacy_mechanism=decl.get("mechanism"),
                   epsilon_guarantee="nominal" if decl.get("guarantee") == "nominal"
                   or any(r["guarantee"] == "nominal" for r in dev) else "dp")
        per = [r["epsilon_per_parameter"] for r in dev if r["epsilon_per_parameter"] is not None]
        if per:
            out["epsilon_per_parameter"] = max(per)
        if decl.get("audit") is not None and mon.max_released_value > 0:
            # a fixed stream of its own: auditing never shifts the run's random streams
            rng = np.random.default_rng([self.config.seed, 0xA0D17])
            res = decl["audit"](mon.max_released_value, rng)
            out["epsilon_audit"] = {"value": mon.max_released_value, **res.as_dict()}
        return out


def run(cfg: Config, *, on_row: Callable[[dict], None] | None = None) -> Results:
    """Build and run one simulation."""
    return Simulation(cfg, on_row=on_row).run()

