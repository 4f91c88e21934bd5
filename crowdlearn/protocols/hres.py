"""Tang et al.'s two-server encrypted ASGD with homomorphic re-encryption (HRES) as machines.

Reference: X. Tang et al., "Privacy-Preserving Distributed Deep Learning via Homomorphic
Re-Encryption", Electronics 8(4):411, 2019; the HRES scheme of Ding, Yan and Deng (Information
Sciences 2017), :mod:`crowdlearn.crypto.hres`.  Spec: ``spec/encrypted-asgd.md``.

The schedule is Phong's (:mod:`crowdlearn.protocols.phong`): participants download the model,
decrypt, train one local epoch, encrypt and upload ``E_PK(ΔW)`` under the **joint key** ``PK`` of
the data service provider (DSP, the node ``"server"``) and the key transform server (KTS, node
``"kts"``); the DSP adds ciphertexts.  What changes is the download: on every request the DSP runs
re-encryption stage 1 toward the participant's **own** key (a job on the DSP), sends the
:class:`ReencryptRequest` to the KTS (DSP ↔ KTS traffic on the wire), the KTS runs stage 2 (a job on
the KTS) and sends the participant ``E_pk_j(W)``, which only ``sk_j`` opens.

Collusion: the DSP colluding with participant ``j`` holds ``sk_DSP`` and ``sk_j``; uploads are under
``g^(sk_DSP·sk_KTS)`` and open under neither (:meth:`HRESServer.collusion_view` returns nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

from crowdlearn.crypto.payload import Payload  # message field type, checked by wire
from crowdlearn.protocols import phong
from crowdlearn.protocols.phong import (
    SERVER,
    EncryptedModel,
    ModelRequest,
    PhongParticipant,
    PhongServer,
    _Costs,
    setup,
)
from crowdlearn.registry import Protocol
from sim.machine import (
    Effect,
    Input,
    JobDone,
    Machine,
    NodeId,
    Received,
    Report,
    RunJob,
    Send,
)
from sim.wire import message

__all__ = ["KTS", "HRESServer", "KeyTransformServer", "ReencryptRequest", "build"]

KTS: NodeId = "kts"


@message(0x0A05)
@dataclass(frozen=True)
class ReencryptRequest:
    """DSP → KTS: stage-1 output for participant ``dst``'s download of turn ``turn``."""

    dst: NodeId
    turn: int
    payload: Payload


class HRESServer(PhongServer):
    """The DSP: Phong's server, but every download goes through re-encryption with the KTS."""

    def __init__(self, *args, kts: NodeId = KTS, **kwargs):
        super().__init__(*args, **kwargs)
        self.kts = kts

    def handle(self, event: Input, now: float) -> list[Effect]:
        if isinstance(event, JobDone) and isinstance(event.job_id, tuple) \
                and event.job_id[0] == "reencrypt":
            _, dst, turn = event.job_id
            return [Send(self.kts, ReencryptRequest(dst, turn, event.result))]
        return super().handle(event, now)

    def _on_request(self, src, m: ModelRequest) -> list[Effect]:
        served = super()._on_request(src, m)
        if not served or not isinstance(served[0], Send):
            return served
        return [RunJob(("reencrypt", src, m.turn),
                       self.costs.job("dsp_stage", self.enc_w, src, role="dsp"))]

    def collusion_view(self, scheme, colluder: NodeId) -> dict:
        """Uploads the DSP colluding with ``colluder`` opens with the keys they hold (none)."""
        from crowdlearn.crypto.hres import HRESDecryptionError
        out: dict = {}
        for src, _, payload in self.uploads_seen:
            for who in ("dsp", colluder):
                try:
                    out.setdefault(src, []).append(scheme.decode(scheme.decrypt(payload, who)))
                except HRESDecryptionError:
                    pass
        return {k: v for k, v in out.items() if v}


class KeyTransformServer(Machine):
    """The KTS: stage 2 of every re-encryption, then the download goes to the participant."""

    def __init__(self, node_id: NodeId, costs: _Costs):
        super().__init__(node_id)
        self.costs = costs

    def handle(self, event: Input, now: float) -> list[Effect]:
        if isinstance(event, Received):
            m = event.message
            if isinstance(m, ReencryptRequest):
                return [RunJob(("kts", m.dst, m.turn),
                               self.costs.job("kts_stage", m.payload, m.dst, role="kts"))]
            return [Report("unexpected_message", type(m).__name__, (("device", event.src),))]
        if isinstance(event, JobDone) and isinstance(event.job_id, tuple) and event.job_id[0] == "kts":
            _, dst, turn = event.job_id
            return [Send(dst, EncryptedModel(turn, event.result))]
        return []


def build(ctx, *, calibrate=None, rand=None) -> dict:
    """Protocol builder: DSP (``"server"``), KTS (``"kts"``, an edge-server profile next to the
    DSP) and one participant per device with its own key pair."""
    _, costs, params, shapes, initial = setup(ctx, "hres", calibrate=calibrate, rand=rand,
                                              participants=list(ctx.devices))
    ctx.extra["infrastructure"] = {KTS: ctx.config.fleet.server_tier}
    machines: dict = {SERVER: HRESServer(SERVER, initial, shapes, ctx.devices, params, costs),
                      KTS: KeyTransformServer(KTS, costs)}
    for d in ctx.devices:
        p = PhongParticipant(d, ctx.spec, shapes, ctx.parts[d], params, costs,
                             rng=ctx.device_rngs[d])
        p.key_owner = d
        machines[d] = p
    return machines


# ---------------------------------------------------------------- the protocol's declaration
def _calibrated_build(ctx) -> dict:
    from crowdlearn.crypto.he_costs import calibrate  # crypto costs measured on this machine
    return build(ctx, calibrate=calibrate)


#: found by :mod:`crowdlearn.registry`
PROTOCOLS = (
    Protocol("hres", _calibrated_build, doc="HRES: encrypted asynchronous SGD with per-"
             "participant keys and a key transform server.", params=phong._PARAMS,
             check_sections=phong.check_section,
             runners=phong.runners, summary=phong.he_summary,
             attack_records=phong.collusion_records),
)

