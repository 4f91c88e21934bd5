"""The FedAvg family's declarations (:mod:`crowdlearn.registry`): FedAvg (with optional secure
aggregation, :mod:`crowdlearn.protocols.secagg`, and client-level DP,
:mod:`crowdlearn.privacy.dp_fedavg`) and the two baselines that share its ``[fedavg]`` section,
``centralized`` and ``standalone``.  The machines live in :mod:`crowdlearn.protocols.fedavg`.
"""

from __future__ import annotations

import math
import os

import numpy as np

from crowdlearn.privacy import dp_fedavg
from crowdlearn.protocols import secagg
from crowdlearn.protocols.crowdlearning import build as crowdlearning_build
from crowdlearn.protocols.crowdlearning import config as crowdlearning_config
from crowdlearn.protocols.fedavg import (
    SERVER,
    CentralizedTrainer,
    FedAvgClient,
    FedAvgParams,
    FedAvgServer,
    StandaloneClient,
)
from crowdlearn.protocols.rounds import read_train_runners
from crowdlearn.registry import Protocol
from crowdlearn.schema import from_section, keys
from sim.driver import LazyMachines

__all__ = ["CONFIG_SECTION", "PROTOCOLS", "build", "build_centralized", "build_standalone",
           "params_from_config"]


#: the ``[fedavg]`` config section, shared by FedAvg and the two baselines (centralized, standalone),
#: derived from :class:`~crowdlearn.protocols.fedavg.FedAvgParams`
CONFIG_SECTION = keys(FedAvgParams)


def params_from_config(cfg) -> FedAvgParams:
    """The FedAvg server's parameters from a config's ``rounds`` and ``[fedavg]`` section (its
    ``clients_per_round`` resolved: 0 means ``fraction`` of the fleet)."""
    return from_section(FedAvgParams, cfg.fedavg, rounds=cfg.rounds,
                        clients_per_round=cfg.clients_per_round)


def build(ctx) -> dict:
    """FedAvg's machines: the server and one client per device; with secure aggregation
    (``fedavg.secure_aggregation``) their SecAgg versions, with client-level DP (``[dp]``) the
    DP-FedAvg aggregation."""
    cfg = ctx.config
    params = params_from_config(cfg)
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
    # pairwise keys and mask keystreams derived once a pair; the agreements computed ahead in a
    # worker process (if any), ended when the run ends (Simulation.close)
    shared = secagg.SharedCrypto(process=agreement_process(cfg, sa))
    ctx.extra.setdefault("on_close", []).append(shared.close)
    machines = {SERVER: secagg.SecAggServer(SERVER, ctx.init_weights, params,
                                            rng=ctx.rngs["protocol"], secagg=sa, costs=costs,
                                            dp=dp, graph_rng=np.random.default_rng(streams[-1]),
                                            shared=shared)}
    for d in ctx.devices:
        machines[d] = secagg.SecAggClient(
            d, ctx.spec, ctx.parts[d], rng=ctx.device_rngs[d], params=sa, costs=costs,
            crypto_rng=np.random.default_rng(streams[d]),
            privatise=dp.client_privatise if dp is not None else None, shared=shared,
            noise=dp.client_noise if dp is not None else None)
    return machines


def agreement_process(cfg, sa):
    """The worker process of a SecAgg simulation's X25519 agreements, started now so that it has
    booted (≈ 36 ms) before the first key list, or None: only in a SimPy run on more than one
    core with the real cryptography (the asyncio runtime's machines may live in other
    processes; priced mode agrees on nothing)."""
    if sa.priced or (os.cpu_count() or 1) < 2 or cfg.runtime.engine != "simpy":
        return None
    from crowdlearn.crypto.agreement_process import AgreementProcess
    process = AgreementProcess()
    process.start()
    return process


def _rng_state(rng: np.random.Generator) -> bytes | None:
    """A PCG64 generator's whole state in 37 bytes (a parked client is just this: a tuple of
    Python ints took ~200 bytes a device)."""
    st = rng.bit_generator.state
    if st["bit_generator"] != "PCG64":
        return None
    inner = st["state"]
    return (inner["state"].to_bytes(16, "little") + inner["inc"].to_bytes(16, "little")
            + bytes([st["has_uint32"]]) + int(st["uinteger"]).to_bytes(4, "little"))


def _rng_from_state(st: bytes) -> np.random.Generator:
    bg = np.random.PCG64()
    bg.state = {"bit_generator": "PCG64",
                "state": {"state": int.from_bytes(st[:16], "little"),
                          "inc": int.from_bytes(st[16:32], "little")},
                "has_uint32": st[32], "uinteger": int.from_bytes(st[33:37], "little")}
    return np.random.Generator(bg)


def build_centralized(ctx) -> dict:
    """The centralized baseline: the server trains on the union of the devices' data; with the
    paper's network (``slicenet.model`` not ``'config'``, or ``slicenet.batchnorm``) it is C-SGD,
    the Crowdlearning network, trainer, learning rate and batch size on one node holding every
    sample."""
    cfg, f = ctx.config, ctx.config.fedavg
    if cfg.slicenet.model != "config" or cfg.slicenet.batchnorm:
        return crowdlearning_build.build(ctx, central=True)
    union = np.sort(np.concatenate(ctx.parts))
    return {SERVER: CentralizedTrainer(SERVER, ctx.spec, ctx.init_weights, union,
                                       rounds=cfg.rounds, epochs=f.local_epochs,
                                       batch_size=f.batch_size, lr=f.lr, rng=ctx.rngs["protocol"])}


def build_standalone(ctx) -> dict:
    """The standalone baseline: every device trains alone on its own data."""
    cfg, f = ctx.config, ctx.config.fedavg
    return {d: StandaloneClient(d, ctx.spec, ctx.init_weights, ctx.parts[d], rounds=cfg.rounds,
                                epochs=f.local_epochs, batch_size=f.batch_size, lr=f.lr,
                                rng=ctx.device_rngs[d])
            for d in ctx.devices}


def check_section(v: dict) -> list[str]:
    """Problems of the ``[fedavg]``, ``[secagg]`` and ``[dp]`` sections, in every config."""
    fleet, fed, problems = v["fleet"], v["fedavg"], []
    if fleet["devices"] >= 1 and fed["clients_per_round"] > fleet["devices"]:
        problems.append(f"fedavg.clients_per_round: {fed['clients_per_round']} is more than "
                        f"fleet.devices = {fleet['devices']}")
    sampled = fed["clients_per_round"] or max(1, round(fed["fraction"] * fleet["devices"]))
    cohort = math.ceil(sampled * (1 + fed["over_selection"]))
    problems.extend(secagg.cross_check(v["secagg"], mode=fed["secure_aggregation"],
                                       protocol=v["protocol"], cohort=cohort))
    problems.extend(dp_fedavg.cross_check(v["dp"], protocol=v["protocol"], cohort=cohort,
                                          secure_aggregation=fed["secure_aggregation"],
                                          rounds=v["rounds"], population=fleet["devices"],
                                          sampled=sampled))
    return problems


def check_fedavg(v: dict) -> list[str]:
    fleet, fed = v["fleet"], v["fedavg"]
    if fleet["devices"] >= 1 and fed["min_clients"] > fleet["devices"]:
        return [f"fedavg.min_clients: {fed['min_clients']} devices must be present to "
                f"start a round but the fleet has fleet.devices = {fleet['devices']}, so "
                f"no round could ever start; lower min_clients to at most "
                f"{fleet['devices']} or add devices"]
    return []


def check_standalone(v: dict) -> list[str]:
    if v["fleet"]["devices"] > 2000:
        return ["fleet.devices: the standalone baseline evaluates every device's model; "
                "use at most 2000 devices"]
    return []


def runners(sim) -> dict:
    """Secure aggregation's crypto jobs: computed in the machine, charged as a job."""
    return {"secagg_crypto": lambda jobs: [None] * len(jobs)}


def summary(sim) -> dict:
    """Secure aggregation's and DP-FedAvg's own summary fields (when they ran)."""
    out: dict = {}
    server = sim.driver.machines.get(SERVER)
    if isinstance(server, secagg.SecAggServer):
        out.update(server.summary())
        kinds = sim.monitor.bytes_by_kind
        out["secagg_stage_bytes"] = {stage: {k: int(kinds.get(k, 0)) for k in names}
                                     for stage, names in secagg.STAGE_MESSAGES.items()}
        if "crypto_costs" in sim.ctx.extra:
            out["secagg_cost_model"] = sim.ctx.extra["crypto_costs"].to_dict()
    if getattr(server, "dp", None) is not None:
        out.update(server.dp.summary())
    return out


_PARAMS = {"fedavg": FedAvgParams, "secagg": secagg.SecAggSection, "dp": dp_fedavg.DPSection}

#: found by :mod:`crowdlearn.registry`
PROTOCOLS = (
    Protocol("fedavg", build, doc="Federated averaging (McMahan et al. 2017).",
             params=_PARAMS, check_sections=check_section, check=check_fedavg,
             runners=runners, summary=summary, server_view="crowdlearn.privacy.attacks.views:FedAvgServerView"),
    Protocol("centralized", build_centralized, doc="Baseline: one model trained on the union "
             "of the devices' data at the server (C-SGD with the paper's network).",
             params=_PARAMS, check=crowdlearning_config.check_paper_mlp,
             # C-SGD runs Crowdlearning's machines and jobs
             runners=lambda sim: {**crowdlearning_build.runners(sim),
                                  **read_train_runners(sim)},
             deferred_kinds=("slice_pass",),
             summary=crowdlearning_build.summary),
    Protocol("standalone", build_standalone, doc="Baseline: every device trains alone.",
             params=_PARAMS, check=check_standalone, runners=read_train_runners),
)
