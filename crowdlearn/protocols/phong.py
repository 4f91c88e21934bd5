"""Phong et al.'s gradients-encrypted asynchronous SGD as sans-I/O machines.

Reference: L. T. Phong, Y. Aono, T. Hayashi, L. Wang, S. Moriai, "Privacy-Preserving Deep Learning
via Additively Homomorphic Encryption", IEEE TIFS 13(5), 2018.  Spec: ``spec/encrypted-asgd.md``.

One honest-but-curious server holds the global weights **encrypted**, ``E(W)``; every participant
holds the one shared key pair.  A participant's turn:

1. request and download ``E(W)`` (:class:`EncryptedModel`);
2. **decrypt** it (a crypto job on the device) and replace its local weights;
3. **train** ``local_epochs`` of mini-batch SGD on its own samples (a
   :class:`~crowdlearn.protocols.rounds.ReadTrainJob`, run by the executor);
4. **encrypt** the change ``ΔW = W_new − W`` (``= −α ΣG``) as fixed-point integers (a crypto job);
5. upload ``E(ΔW)`` (:class:`EncryptedUpdate`).

The server adds ``E(W) ← E(W) ⊕ E(ΔW)`` (a crypto job on the server, one at a time) and never
decrypts.  ``he.scheme = "none"`` runs the same schedule with plaintext float32 vectors.

Orders: ``asynchronous`` (each participant requests as soon as it is ready; downloads race with
other participants' uploads) or ``round_robin`` (the server grants one turn at a time, so the
schedule does not depend on timing and plaintext and encrypted runs follow the same sequence).
A run lasts ``rounds`` turns per participant.  Every ``len(participants)`` applied updates the
server reports ``round`` and ``global_model`` (the monitor's oracle view of ``W``: the plaintext
sum the ciphertext holds, see :mod:`crowdlearn.crypto.schemes`).

[ours] A turn trains ``local_epochs`` epochs on the device's samples rather than one mini-batch:
with ``local_epochs = 1`` and small shards it is a few dozen SGD steps per upload, which keeps the
number of (costly) encrypted transfers per epoch of data at one per participant.  The initial
``E(W0)`` is prepared by a key holder before the run and not charged.

Collusion: with one shared key, the server colluding with any participant decrypts every upload —
:meth:`PhongServer.collusion_view` returns what that coalition reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from crowdlearn.crypto.lwe import LWEParams
from crowdlearn.crypto.payload import Payload  # message field type, checked by wire
from crowdlearn.protocols.rounds import ReadTrainJob, TurnWindow, read_train_runners
from crowdlearn.registry import Protocol
from crowdlearn.schema import MISSING, Key, from_section, keys, param, validate
from crowdlearn.training.models import ModelSpec
from sim.machine import (
    Disconnected,
    Effect,
    Halt,
    Input,
    JobDone,
    JobFailed,
    Machine,
    NodeId,
    Received,
    Report,
    RunJob,
    Send,
    Start,
)
from sim.wire import message

if TYPE_CHECKING:
    from crowdlearn.crypto.schemes import Scheme

__all__ = ["CONFIG_SECTION", "PhongParams", "PhongServer", "PhongParticipant", "CryptoJob",
           "ModelRequest", "EncryptedModel", "EncryptedUpdate", "TurnGrant", "build",
           "cross_check", "flatten", "unflatten"]

SERVER: NodeId = "server"
ORDERS = ("asynchronous", "round_robin")
PAILLIER_VARIANTS = ("standard", "subgroup")   # == crowdlearn.crypto.paillier.VARIANTS
SCHEMES = ("paillier", "lwe", "none")      # == crowdlearn.crypto.schemes.SCHEMES (imported lazily:
MODES = ("real", "priced")                 # gmpy2 drags in socket, and config imports this module)


# ---------------------------------------------------------------- messages
@message(0x0A01)
@dataclass(frozen=True)
class TurnGrant:
    """Server → participant (round_robin): your turn ``turn``."""

    turn: int


@message(0x0A02)
@dataclass(frozen=True)
class ModelRequest:
    """Participant → server: send me ``E(W)``."""

    turn: int


@message(0x0A03)
@dataclass(frozen=True)
class EncryptedModel:
    """Server → participant: the whole encrypted weight vector."""

    turn: int
    payload: Payload


@message(0x0A04)
@dataclass(frozen=True)
class EncryptedUpdate:
    """Participant → server: ``E(ΔW)``."""

    turn: int
    payload: Payload


# ---------------------------------------------------------------- jobs
@dataclass(frozen=True, eq=False)
class CryptoJob:
    """Encrypt, decrypt or add on the machine that runs it; priced from the calibrated cost model."""

    op: str                   # "encrypt" | "decrypt" | "add"
    scheme: Any = field(repr=False)
    args: tuple = field(repr=False)
    flops: float
    seconds_here: float       # measured cost of the op on the calibrating host
    memory_bytes: int = 0
    kind: str = field(default="crypto", init=False)

    def run(self) -> Any:
        return getattr(self.scheme, self.op)(*self.args)


def run_crypto_jobs(jobs: Sequence[CryptoJob]) -> list:
    """Executor runner for ``kind == "crypto"``."""
    return [j.run() for j in jobs]


def flatten(weights) -> np.ndarray:
    """The weight arrays concatenated into one ``float64`` vector (inverse: :func:`unflatten`)."""
    return np.concatenate([np.asarray(w, np.float64).ravel() for w in weights])


def unflatten(flat, shapes) -> list[np.ndarray]:
    """``float32`` arrays of ``shapes`` cut from vector ``flat`` in order (inverse of :func:`flatten`)."""
    out, pos = [], 0
    for s in shapes:
        n = int(np.prod(s, dtype=np.int64))
        out.append(np.asarray(flat[pos:pos + n], np.float32).reshape(s))
        pos += n
    return out


@dataclass(frozen=True)
class PhongParams:
    """``rounds`` and the ``[he]`` config section (shared by phong and hres), declared once here
    (:mod:`crowdlearn.schema`: each field's default, documentation and limits): the scheme's
    sizes and the schedule and training parameters of encrypted ASGD.  The rules that depend on
    the protocol, the rounds and the fleet are :func:`cross_check`'s."""

    rounds: int = param(MISSING, "Turns per participant.", type=int, min=1, config=False)
    scheme: str = param("paillier", "Homomorphic scheme of protocol 'phong': 'paillier' "
                        "(packed), 'lwe' (Phong's LWE scheme) or 'none' (the same schedule in "
                        "plaintext). Protocol 'hres' always uses HRES, sized by key_bits, prec, "
                        "pad and frac_bits.", choices=SCHEMES)
    mode: str = param("real", "'real' runs the big-number work; 'priced' computes the same "
                      "fixed-point sums, sizes and calibrated costs without encrypting (for "
                      "sweeps).", choices=MODES)
    key_bits: int = param(3072, "Paillier (and HRES) modulus size in bits (Phong used 3072; 2048"
                          " is faster). Below 2048 is insecure and only for tests.", min=256)
    paillier_variant: str = param("standard", "Paillier key type: 'standard' (p, q random "
                                  "primes; decryption exponent p-1) or 'subgroup' (Paillier's "
                                  "scheme 3: 224-bit prime factors alpha_p of p-1 and alpha_q of "
                                  "q-1, randomness h^r, decryption exponent alpha_p; about 4x "
                                  "faster decryption, security under the decisional partial "
                                  "discrete log assumption). Same ciphertext sizes.",
                                  choices=PAILLIER_VARIANTS)
    prec: int = param(32, "Paillier: bits per packed value (fixed point).", min=2)
    pad: int = param(15, "Paillier: guard bits per slot; a ciphertext can sum 2**pad encodings.",
                     min=0)
    frac_bits: int = param(24, "Paillier: fractional bits of the fixed-point encoding (|value| <"
                           " 2**(prec-1-frac_bits)).", min=0)
    n_lwe: int = param(3000, "LWE dimension (Phong: 3000).", min=1)
    value_bits: int = param(33, "LWE: signed bits per encoded value at 32 fractional bits (33: "
                            "|value| < 1); a ciphertext can sum (p-1)/2**value_bits encodings.",
                            min=33, max=48)
    n_pu: int = param(1, "LWE only: processing units the weight vector is split over (each adds "
                      "an n_lwe-element c1 to a ciphertext). Paillier packs the whole vector (a "
                      "split would only round each part's ciphertext count up).", min=1)
    order: str = param("asynchronous", "Order of access: 'asynchronous' or 'round_robin'.",
                       choices=ORDERS)
    local_epochs: int = param(1, "Local epochs per turn.", min=1)
    batch_size: int = param(32, "Mini-batch size.", min=1)
    lr: float = param(0.05, "SGD learning rate α.", min=0, min_open=True)
    workers: int = param(1, "Processes (Paillier) or threads (LWE) for real-mode crypto on this "
                         "machine; does not change simulated costs.", min=1)


    def __post_init__(self):
        validate(self)


class _Costs:
    """Turns calibrated seconds into jobs and keeps crypto seconds per role."""

    def __init__(self, scheme: Scheme, calibration: dict):
        self.scheme, self.cal = scheme, calibration
        self.host_seconds: dict[str, float] = {}

    def job(self, op: str, *args, role: str) -> CryptoJob:
        s = float(self.cal.get(f"{op}_s", 0.0))
        self.host_seconds[f"{role}_{op}"] = self.host_seconds.get(f"{role}_{op}", 0.0) + s
        return CryptoJob(op, self.scheme, args, flops=s * float(self.cal.get("host_flops", 0.0)),
                         seconds_here=s)


# ---------------------------------------------------------------- server
class PhongServer(Machine):
    """Holds ``E(W)``, adds encrypted updates one at a time, serves downloads."""

    def __init__(self, node_id: NodeId, initial: Payload, shapes, participants: Sequence[NodeId],
                 params: PhongParams, costs: _Costs):
        super().__init__(node_id)
        self.enc_w = initial
        self.shapes = list(shapes)
        self.participants = list(participants)
        self.params, self.costs = params, costs
        self.accepted = {p: 0 for p in self.participants}
        self.pending: deque = deque()          # (src, turn, payload) waiting for the adder
        self.adding = False
        self.applied = 0
        self.window = TurnWindow()        # every len(participants) applied uploads
        self.phase = "idle"
        self.queue: deque = deque()
        self.grant: tuple | None = None
        self.next_turn = 0
        self.uploads_seen: list[tuple[NodeId, int, Payload]] = []   # what the server observes

    def handle(self, event: Input, now: float) -> list[Effect]:
        if self.phase == "done":
            return []
        if isinstance(event, Start):
            self.phase = "running"
            self.window.open(now)
            return self._grant_next(now) if self.params.order == "round_robin" else []
        if isinstance(event, Received):
            m = event.message
            if isinstance(m, ModelRequest):
                return self._on_request(event.src, m)
            if isinstance(m, EncryptedUpdate):
                return self._on_update(event.src, m, now)
            return [Report("unexpected_message", type(m).__name__, (("device", event.src),))]
        if isinstance(event, JobDone) and event.job_id == "add":
            self.enc_w = event.result
            self.adding = False
            self.applied += 1
            effects = []
            if self.applied % len(self.participants) == 0:
                effects += self._close_window(now)
            if self._finished():
                if self.applied % len(self.participants):
                    effects += self._close_window(now)
                self.phase = "done"
                return effects + [Halt()]
            effects += self._start_add()
            if self.params.order == "round_robin" and self.grant is None and not self.adding:
                effects += self._grant_next(now)
            return effects
        return []

    def _finished(self) -> bool:
        return (not self.pending and not self.adding
                and all(n >= self.params.rounds for n in self.accepted.values()))

    def _grant_next(self, now: float) -> list[Effect]:
        if not self.queue:
            self.queue = deque(p for p in self.participants if self.accepted[p] < self.params.rounds)
        if not self.queue:
            return []
        p = self.queue.popleft()
        self.grant = (p, self.next_turn)
        self.next_turn += 1
        return [Send(p, TurnGrant(self.grant[1]))]

    def _on_request(self, src, m: ModelRequest) -> list[Effect]:
        if src not in self.accepted or self.accepted[src] >= self.params.rounds:
            return []
        if self.params.order == "round_robin" and (self.grant is None or self.grant[0] != src):
            return [Report("unexpected_message", "ModelRequest", (("device", src),))]
        return [Send(src, EncryptedModel(m.turn, self.enc_w))]

    def _on_update(self, src, m: EncryptedUpdate, now: float) -> list[Effect]:
        raw = m.payload.raw                  # it crossed a wire: its length is checked here
        if raw is not None and len(raw) != self.costs.scheme.nbytes:
            return [Report("malformed_message", f"EncryptedUpdate of {len(raw)} bytes, not "
                           f"{self.costs.scheme.nbytes}", (("device", src),))]
        if src not in self.accepted or self.accepted[src] >= self.params.rounds:
            return [Report("late_update", 1, (("device", src), ("turn", m.turn)))]
        if self.params.order == "round_robin":
            if self.grant is None or self.grant != (src, m.turn):
                return [Report("late_update", 1, (("device", src), ("turn", m.turn)))]
            self.grant = None
        self.accepted[src] += 1
        self.uploads_seen.append((src, m.turn, m.payload))
        self.pending.append((src, m.turn, m.payload))
        return [Report("he_upload", m.payload.nbytes, (("device", src), ("turn", m.turn)))] \
            + self._start_add()

    def _start_add(self) -> list[Effect]:
        if self.adding or not self.pending:
            return []
        _, _, payload = self.pending.popleft()
        self.adding = True
        return [RunJob("add", self.costs.job("add", self.enc_w, payload, role="server"))]

    def _close_window(self, now: float) -> list[Effect]:
        w = self.costs.scheme.decode(self.enc_w.oracle)      # the monitor's oracle view
        return self.window.close(now, unflatten(w, self.shapes),
                                 selected=tuple(self.participants),
                                 aggregated=tuple(self.participants),
                                 uploads=len(self.participants))

    def collusion_view(self, scheme: Scheme, colluder: NodeId) -> dict[NodeId, list[np.ndarray]]:
        """What the server learns with ``colluder``'s key: under Phong's one shared key, every
        participant's decrypted update (float), by participant."""
        out: dict[NodeId, list[np.ndarray]] = {}
        for src, _, payload in self.uploads_seen:
            out.setdefault(src, []).append(scheme.decode(scheme.decrypt(payload)))
        return out


# ---------------------------------------------------------------- participant
class PhongParticipant(Machine):
    """Downloads and decrypts ``E(W)``, trains, encrypts and uploads ``E(ΔW)``."""

    def __init__(self, node_id: NodeId, spec: ModelSpec, shapes, indices, params: PhongParams,
                 costs: _Costs, *, rng: np.random.Generator, server: NodeId = SERVER):
        super().__init__(node_id)
        self.spec, self.shapes = spec, list(shapes)
        self.indices = np.asarray(indices, np.int64)
        self.params, self.costs, self.rng, self.server = params, costs, rng, server
        self.phase = "idle"
        self.turn = 0
        self.turns_done = 0
        self.w: np.ndarray | None = None
        #: whose key opens this participant's downloads: None = the one shared key (Phong);
        #: hres sets its own node id
        self.key_owner: NodeId | None = None

    def handle(self, event: Input, now: float) -> list[Effect]:
        scheme = self.costs.scheme
        if isinstance(event, Start):
            return self._request() if self.params.order == "asynchronous" else []
        if isinstance(event, Received):
            m = event.message
            if isinstance(m, TurnGrant):
                self.turn = m.turn
                return self._request()
            if isinstance(m, EncryptedModel) and self.phase == "requested":
                self.phase = "decrypting"
                own = () if self.key_owner is None else (self.key_owner,)
                return [RunJob(("decrypt", self.turn),
                               self.costs.job("decrypt", m.payload, *own, role="device"))]
            return []
        if isinstance(event, JobDone):
            op = event.job_id[0] if isinstance(event.job_id, tuple) else None
            if op == "decrypt" and self.phase == "decrypting":
                self.w = scheme.decode(event.result).astype(np.float64)
                self.phase = "training"
                p = self.params
                job = ReadTrainJob.build(self.spec, unflatten(self.w, self.shapes),
                                         self.indices, epochs=p.local_epochs,
                                         batch_size=p.batch_size, lr=p.lr, rng=self.rng)
                return [RunJob(("train", self.turn), job)]
            if op == "train" and self.phase == "training":
                new = flatten(event.result)
                delta = np.nan_to_num(new - self.w, nan=0.0, posinf=0.0, neginf=0.0)
                self.phase = "encrypting"
                v = scheme.encode(delta)
                return [RunJob(("encrypt", self.turn), self.costs.job("encrypt", v, role="device"))]
            if op == "encrypt" and self.phase == "encrypting":
                self.turns_done += 1
                self.phase = "idle"
                effects: list[Effect] = [Send(self.server, EncryptedUpdate(self.turn, event.result))]
                if self.params.order == "asynchronous" and self.turns_done < self.params.rounds:
                    self.turn += 1
                    effects += self._request()
                return effects
            return []
        if isinstance(event, JobFailed):
            self.phase = "idle"
            return [Report("job_failed", event.reason, (("device", self.node_id),))]
        if isinstance(event, Disconnected):
            self.phase = "idle"
            return []
        return []

    def _request(self) -> list[Effect]:
        self.phase = "requested"
        return [Send(self.server, ModelRequest(self.turn))]


# ---------------------------------------------------------------- configuration
#: The ``[he]`` configuration section (derived from :class:`PhongParams`).
CONFIG_SECTION: Mapping[str, Key] = keys(PhongParams)


def cross_check(section: dict, *, protocol: str = "phong", rounds: int = 1, devices: int = 1) -> list[str]:
    """Config-time problems: parameters that cannot hold the configured number of updates."""
    v = dict(section)
    out: list[str] = []
    if protocol not in ("phong", "hres"):
        return out
    if protocol == "hres":            # HRES packs like Paillier, whatever he.scheme says
        v["scheme"] = "paillier"
    if v["scheme"] == "paillier":
        if v["prec"] + v["pad"] > 63:
            out.append(f"he.prec + he.pad must be <= 63; got {v['prec']} + {v['pad']}")
            return out
        if v["frac_bits"] >= v["prec"]:
            out.append(f"he.frac_bits must be < he.prec = {v['prec']}; got {v['frac_bits']}")
        if (v["key_bits"] - 1) // (v["prec"] + v["pad"]) < 1:
            out.append(f"he.key_bits: a {v['key_bits']}-bit key cannot hold one "
                       f"{v['prec'] + v['pad']}-bit slot; use key_bits >= {v['prec'] + v['pad'] + 1}")
        # 224 == crowdlearn.crypto.paillier.SUBGROUP_ALPHA_BITS; p needs 16 bits beyond alpha_p
        if v.get("paillier_variant") == "subgroup" and v["key_bits"] < 2 * (224 + 16):
            out.append(f"he.paillier_variant = 'subgroup' puts a 224-bit prime factor in p-1 and q-1: "
                       f"he.key_bits must be >= 480; got {v['key_bits']}")
    if v["scheme"] == "lwe" and v["n_lwe"] * 96 * 2 ** 26 >= 2 ** 53:
        out.append(f"he.n_lwe: {v['n_lwe']} breaks the exact float64 product bound; use <= 1,400,000")
    if out:
        return out
    need = 1 + rounds * devices        # E(W0) plus every participant's updates
    cap = {"paillier": lambda: 1 << v["pad"], "none": lambda: 2 ** 62,
           "lwe": lambda: LWEParams(n_lwe=v["n_lwe"], value_bits=v["value_bits"]).max_count}[v["scheme"]]()
    if need > cap:
        if v["scheme"] == "paillier":
            fix = f"raise he.pad to {(need - 1).bit_length()} or lower rounds x devices"
        else:
            fix = "lower he.value_bits (smaller values per encoding) or rounds x devices"
        out.append(f"he: E(W) will sum {need} encodings (1 + rounds {rounds} x devices {devices}) "
                   f"but {v['scheme']} with these parameters holds at most {cap} before it can "
                   f"overflow; {fix}")
    return out


def setup(ctx, scheme_name: str, *, calibrate=None, rand=None, participants=()) -> tuple:
    """What the phong and hres builders share: ``(scheme, costs, params, shapes, E(W0))``, with the
    scheme's keys made here (real mode) and its costs calibrated by ``calibrate(scheme)``."""
    from crowdlearn.crypto.schemes import make_scheme
    cfg = ctx.config
    h = cfg.he
    shapes = [tuple(np.shape(w)) for w in ctx.init_weights]
    w0 = flatten(ctx.init_weights)
    scheme = make_scheme(scheme_name, mode=h.mode, length=w0.size, key_bits=h.key_bits,
                         prec=h.prec, pad=h.pad, frac_bits=h.frac_bits, n_lwe=h.n_lwe,
                         value_bits=h.value_bits, n_pu=h.n_pu, rand=rand, workers=h.workers,
                         participants=participants, paillier_variant=h.paillier_variant)
    costs = _Costs(scheme, calibrate(scheme) if calibrate is not None else {})
    params = from_section(PhongParams, h, rounds=cfg.rounds)
    ctx.extra["he"] = HEReport(scheme, costs)
    return scheme, costs, params, shapes, scheme.encrypt(scheme.encode(w0))


def build(ctx, *, calibrate=None, rand=None) -> dict:
    """Protocol builder (``crowdlearn.experiment.Context``); ``calibrate(scheme) -> dict`` prices crypto."""
    _, costs, params, shapes, initial = setup(ctx, ctx.config.he.scheme, calibrate=calibrate,
                                              rand=rand)
    machines: dict = {SERVER: PhongServer(SERVER, initial, shapes, ctx.devices, params, costs)}
    for d in ctx.devices:
        machines[d] = PhongParticipant(d, ctx.spec, shapes, ctx.parts[d], params, costs,
                                       rng=ctx.device_rngs[d])
    return machines


class HEReport:
    """What a Phong run adds to ``summary.json``."""

    def __init__(self, scheme: Scheme, costs: _Costs):
        self.scheme, self.costs = scheme, costs

    def summary(self) -> dict:
        s = self.scheme.summary()
        return {"he": s, "comm_factor": s["comm_factor"],
                "crypto_calibration": dict(self.costs.cal),
                # calibrated seconds on this host, summed per role and operation; the simulated
                # time on a device is this x host_flops / device FLOP/s
                "crypto_host_s_by_role": dict(sorted(self.costs.host_seconds.items()))}


# ---------------------------------------------------------------- the protocol's declaration
def _calibrated_build(ctx) -> dict:
    from crowdlearn.crypto.he_costs import calibrate  # crypto costs measured on this machine
    return build(ctx, calibrate=calibrate)


def check_section(v: dict) -> list[str]:
    """Problems of the ``[he]`` section (shared by phong and hres), in every config."""
    return cross_check(v["he"], protocol=v["protocol"], rounds=v["rounds"],
                       devices=v["fleet"]["devices"])


def he_summary(sim) -> dict:
    """The scheme's figures and the calibrated crypto costs (phong and hres)."""
    return sim.ctx.extra["he"].summary() if "he" in sim.ctx.extra else {}


def collusion_records(sim, uploads: int) -> tuple[dict, list]:
    """What the server colluding with participant 0 can decrypt of the other participants'
    uploads (Phong et al.'s threat model): summary fields and ``(device, indices, values)``
    records for the reconstruction attack."""
    if "he" not in sim.ctx.extra:
        return {}, []
    from crowdlearn.privacy.attacks.reconstruction import dense_to_sparse
    srv = sim.driver.machines[SERVER]
    view = srv.collusion_view(sim.ctx.extra["he"].scheme, colluder=0)
    others = [d for d, _, _ in srv.uploads_seen if d != 0]
    out = {"collusion_uploads_seen": len(others),
           "collusion_uploads_decrypted": sum(len(v) for d, v in view.items() if d != 0)}
    records = []
    for dev, deltas in view.items():
        if dev != 0:
            for delta in deltas:
                if len(records) < uploads:
                    records.append((dev, *dense_to_sparse(delta)))
    return out, records


_PARAMS = {"he": PhongParams}

def runners(sim) -> dict:
    """The executor's runners: the crypto jobs, and the local training a participant reads."""
    return {"crypto": run_crypto_jobs, **read_train_runners(sim)}


#: found by :mod:`crowdlearn.registry`
PROTOCOLS = (
    Protocol("phong", _calibrated_build, doc="Encrypted asynchronous SGD (Phong et al. 2018): "
             "additively homomorphic updates (packed Paillier or LWE).", params=_PARAMS,
             check_sections=check_section, runners=runners,
             summary=he_summary, attack_records=collusion_records),
)

