"""Composition root: build a whole simulation from a :class:`~crowdlearn.config.Config` and run it.

Examples
--------
>>> from crowdlearn.config import from_dict
>>> res = run(from_dict({"rounds": 2, "fleet": {"devices": 10}}))     # doctest: +SKIP
>>> res.summary["final_accuracy"]                                       # doctest: +SKIP
0.83
"""

from __future__ import annotations

import gc
import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from crowdlearn import registry
from crowdlearn.config import Config, evaluation_schedule
from crowdlearn.data import load_dataset, partition
from crowdlearn.privacy.accountant import PrivacyLedger
from crowdlearn.protocols.fedavg import SERVER
from crowdlearn.signals import as_interrupts, signal_of
from crowdlearn.training import models
from crowdlearn.training.jobs import Executor, Trainer, TrainerFactory
from crowdlearn.training.tfimport import import_tensorflow
from crowdlearn.training.threads import RUN_SWITCH_INTERVAL_S, switch_interval, use_threads
from sim import wire
from sim.availability import make_availability
from sim.driver import Driver, FaultParams, Fleet
from sim.monitor import Monitor
from sim.network import CellTree, Network, cell_tree
from sim.profiles import TIERS, sample_fleet_table
from slicenet.weak import weak_method

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

    def cached(self, key, make):
        """``make()``, or the object made for the same ``key`` by an earlier simulation (a
        protocol's own trainer, whose traced functions and training set are costly)."""
        return _cached(key, make)

    @property
    def graph(self):
        """The topology as a networkx graph, for latencies and cells (built when first asked)."""
        return self.topology.graph if isinstance(self.topology, CellTree) else self.topology

    @graph.setter
    def graph(self, value) -> None:
        self.topology = value

    def path_latency(self, src, dst) -> float:
        """Latency (s) of the quickest path; from the cell tree's arrays when it has no d2d
        links (no networkx graph is built), else by networkx on :attr:`graph`."""
        if isinstance(self.topology, CellTree) and not self.topology.d2d_pairs:
            return self.topology.path_latency(src, dst)
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
TRAINERS: dict[str, Callable[[], TrainerFactory]] = {
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
                 trainer_factory: TrainerFactory | None = None,
                 parts: list[np.ndarray] | None = None, dataset=None):
        self.config = cfg
        if cfg.training.backend != "none" or registry.get(cfg.protocol).needs_tensorflow:
            import_tensorflow()     # on a helper thread (crowdlearn.training.tfimport)
            if cfg.training.threads:
                use_threads(cfg.training.threads)     # before TensorFlow's first op in the process
        root = np.random.SeedSequence(cfg.seed)
        children = root.spawn(len(STREAMS))
        self.rngs = {name: np.random.default_rng(s) for name, s in zip(STREAMS, children, strict=True)}
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

        self.protocol = registry.get(cfg.protocol)
        machines = self.protocol.build(self.ctx)
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
        self.trainer: Trainer
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
                address=cfg.training.ray_address, local=self.trainer,
                threads=cfg.training.threads)
        # the batched trainer may start a round's training on a worker thread once a job settles
        # it (SecAgg's key sharing; jobs.Executor: same batches and results); a protocol's own
        # trainer or Ray's: not
        early = ("train",) if "trainer" not in self.ctx.extra \
            and cfg.training.executor != "ray" else ()
        # the executor (its runners too: a weak proxy) and the monitor call back into this
        # simulation through weak references (slicenet.weak), so that a dropped simulation,
        # its trainer and its data go at once, not at the interpreter's next full collection
        self.executor = Executor({
            "train": weak_method(self, "_train_jobs"),
            **(self.protocol.runners(weakref.proxy(self)) if self.protocol.runners else {}),
        }, deferred_kinds=("train", *self.protocol.deferred_kinds), background_kinds=early)
        self.monitor = Monitor(range(n), evaluator=weak_method(self, "_evaluate"), on_row=on_row,
                               ledger_factory=PrivacyLedger, infrastructure=tuple(infra),
                               # a trainer whose evaluation may run beside the event loop
                               evaluate_concurrently=bool(
                                   getattr(self.trainer, "concurrent_evaluate", False)),
                               evaluate_round=evaluation_schedule(cfg))

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

    def _train_jobs(self, jobs) -> list:
        return self.trainer.train([j.task for j in jobs])

    def _evaluate(self, weight_lists: list) -> list[dict]:
        ds = self.dataset
        scores = self.trainer.evaluate(weight_lists, ds.x_test, ds.y_test)
        if ds.task == "classification":
            return [{"accuracy": acc, "loss": loss} for loss, acc in scores]
        return [{"rmse": rmse, "loss": mse} for mse, rmse in scores]

    #: the interpreter's switch interval while :meth:`run` runs (``None``: Python's as it is);
    #: see :mod:`crowdlearn.training.threads`
    switch_interval_s: float | None = RUN_SWITCH_INTERVAL_S

    def run(self) -> Results:
        with switch_interval(self.switch_interval_s):
            try:
                return self._run()
            finally:
                self.close()

    def close(self) -> None:
        """Release what the run started: a batch the executor runs ahead (``jobs.Executor``),
        an evaluation the monitor runs beside the event loop, what the protocol's builder
        started (``ctx.extra["on_close"]``: SecAgg's agreement worker process), and the events
        still scheduled (the simulation cannot be run further); idempotent, and called by
        :meth:`run` whether it ends or fails."""
        self.executor.close()
        self.monitor.close()
        for close in self.ctx.extra.get("on_close", ()):
            close()
        # the events still scheduled (timers past the run's end) hold the network's and the
        # machines' callbacks, and SimPy's environment is itself a reference cycle: dropped,
        # they would wait with the fleet's arrays for the interpreter's full collection
        queue = getattr(self.env, "_queue", None)
        if isinstance(queue, list):
            queue.clear()
        wire.forget()

    def _run(self) -> Results:
        cfg = self.config
        if cfg.runtime.engine == "asyncio":          # the same machines over loopback sockets
            from crowdlearn.realtime import run_asyncio
            return run_asyncio(self)
        wall0 = time.perf_counter()
        interrupted = False
        self.driver.start()
        probe = None
        if cfg.privacy.attacks:
            from crowdlearn.privacy.attacks.views import PrivacyProbe
            probe = PrivacyProbe(self)
        halted = False
        self.signal = None
        # What exists now (the fleet, the parts, the dataset) lives for the whole run: out of the
        # collector's sight (unfrozen when the run ends).  Raising the young generation's
        # threshold as well cut collection time by half at 1M devices but let RSS grow ~7 MB a
        # round instead of ~1 MB (docs/benchmarks.md), so the young generations' thresholds stay
        # (sim.driver.Driver.run makes full collections rarer during the run).
        gc.freeze()
        try:
            with as_interrupts():      # SIGTERM and SIGHUP end a run like Ctrl-C does
                halted = self.driver.run(until=cfg.max_sim_time_s)
        except KeyboardInterrupt as exc:
            interrupted = True
            self.signal = signal_of(exc)[1]
            self.driver.finish()
        finally:
            gc.unfreeze()
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
            "runtime": cfg.runtime.engine,
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
        if self.protocol.summary is not None:
            summary.update(self.protocol.summary(self))
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

