"""Turns what happened in a run into tables.  Never prints.

The driver calls ``on_*`` hooks for transfers, compute, energy and presence; machines' ``Report``
effects arrive through :meth:`Monitor.on_report`.  Every evaluation point becomes a row of
``metrics`` (the future ``metrics.csv``); per-device totals become ``device_rows()``.

Privacy: a machine that releases something under differential privacy reports
``privacy_charge`` (``{"epsilon_turn", "c", "mechanism", "guarantee"}``, tagged with the
``device`` that released or carrying a ``subject`` such as FM's ``"validation"``) at the moment
of the release; the monitor charges it to the run's :class:`~crowdlearn.privacy.accountant.
PrivacyLedger`, and every row's ``epsilon`` is the largest composed ε of a *device* at that
moment, i.e. everything released up to the model the row evaluates (``epsilon_nominal`` instead
when a release's ε is not a guarantee).

Evaluation is delegated to ``evaluator(list_of_weight_lists) -> list[dict]`` so the monitor stays
free of TensorFlow.  ``global_model`` reports are evaluated at once; ``local_model`` reports of the
standalone baseline are collected per round and evaluated together when every device has reported
(or at :meth:`flush`), their metrics averaged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from numbers import Integral
from typing import Any

import numpy as np

from sim.machine import NodeId, Report

Evaluator = Callable[[list], list[dict]]

DEVICE_FIELDS = ("device", "tier", "bytes_sent", "bytes_received", "flops", "busy_s", "energy_j",
                 "online_fraction", "rounds_selected", "rounds_aggregated", "rounds_missed",
                 "drops_availability", "drops_battery", "drops_churn", "jobs_failed")


def _id_order(node: NodeId) -> tuple:
    """Sort key: integer device ids numerically, then any other node names as text."""
    return (0, int(node), "") if isinstance(node, Integral) else (1, 0, str(node))


class Monitor:
    def __init__(self, devices: Iterable[NodeId], *, evaluator: Evaluator | None = None,
                 server: NodeId = "server", on_row: Callable[[dict], None] | None = None,
                 ledger_factory: Callable[..., Any] | None = None, infrastructure: tuple = ()):
        # ledger_factory(delta=δ) builds the run's ε ledger on the first privacy_charge report
        # (the composition root passes crowdlearn's PrivacyLedger: the runtime knows no privacy
        # accounting of its own)
        self.server = server
        self.ledger_factory = ledger_factory
        self.infrastructure = frozenset(infrastructure)   # server-side nodes besides the server
        self.evaluator = evaluator
        self.on_row = on_row
        self.devices = list(devices)
        self.rows: list[dict] = []
        self.bytes_up = 0          # bytes sent by devices
        self.bytes_down = 0        # bytes received by devices
        self.bytes_total = 0       # every delivered message, once
        self.messages = 0
        self.messages_dropped = 0
        self.bytes_lost = 0.0      # partial transfers cut off by drop-outs
        self.bytes_by_kind: dict[str, int] = defaultdict(int)
        self.bytes_by_role: dict[str, int] = defaultdict(int)
        self.messages_by_kind: dict[str, int] = defaultdict(int)
        self.flops = 0.0
        self.compute_s = 0.0
        self.energy_j = 0.0
        self.late_updates = 0
        self.takeovers = 0
        self.epsilon: float | None = None      # a protocol's own "epsilon" report, if any
        self.privacy_ledger = None
        self.ledger = None                     # the run's ε ledger, from privacy_charge reports
        self.privacy_subjects: set = set()     # ledger keys that are not devices ("validation")
        self.max_released_value = 0.0          # largest |value| released (before its noise)
        self.dev: dict[NodeId, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.rounds: list[dict] = []
        self._pending_round: dict | None = None
        self._local: dict[int, list] = defaultdict(list)
        self.reports: dict[str, int] = defaultdict(int)

    # ------------------------------------------------------------ driver hooks
    def on_transfer(self, src: NodeId, dst: NodeId, nbytes: int, now: float,
                    msg: Any = None) -> None:
        self.messages += 1
        self.bytes_total += nbytes
        if msg is not None:   # by message kind: boundary / handover / Upload / RoundStart ...
            kind = getattr(msg, "kind", None)
            key = kind if isinstance(kind, str) else type(msg).__name__
            self.bytes_by_kind[key] += nbytes
            self.messages_by_kind[key] += 1
        if src != self.server and src not in self.infrastructure:
            self.bytes_up += nbytes
            self.dev[src]["bytes_sent"] += nbytes
        if dst != self.server and dst not in self.infrastructure:
            self.bytes_down += nbytes
            self.dev[dst]["bytes_received"] += nbytes

    def on_partial_transfer(self, src, dst, nbytes: float) -> None:
        """A transfer cut off by a drop-out: its bytes used the radio but delivered nothing."""
        self.bytes_lost += nbytes

    def on_message_dropped(self, src, dst, nbytes) -> None:
        self.messages_dropped += 1

    def on_compute(self, node: NodeId, flops: float, seconds: float, energy_j: float) -> None:
        self.flops += flops
        self.compute_s += seconds
        d = self.dev[node]
        d["flops"] += flops
        d["busy_s"] += seconds

    def on_energy(self, node: NodeId, joules: float) -> None:
        self.energy_j += joules
        self.dev[node]["energy_j"] += joules

    def on_offline(self, node: NodeId, reason: str, now: float) -> None:
        pass  # counted by the driver's DeviceState.drops

    def on_job_failed(self, node: NodeId, reason: str) -> None:
        self.dev[node]["jobs_failed"] += 1

    # ------------------------------------------------------------ reports
    def on_report(self, node: NodeId, rep: Report, now: float) -> None:
        self.reports[rep.name] += 1
        if rep.name == "round":
            info = dict(rep.value)
            for k in ("selected", "aggregated"):     # rounds.csv lists ids in numeric order
                if k in info:
                    info[k] = sorted(info[k], key=_id_order)
            for d in info["selected"]:
                self.dev[d]["rounds_selected"] += 1
            for d in info["aggregated"]:
                self.dev[d]["rounds_aggregated"] += 1
            self.rounds.append(info)
            self._pending_round = info
        elif rep.name == "global_model":
            self._row(now, rep.tag("round"), [rep.value])
        elif rep.name in ("local_model", "group_model"):
            # one model per device (standalone) or per group (crowdlearning); averaged per round
            r = rep.tag("round")
            self._local[r].append(rep.value)
            if len(self._local[r]) == rep.tag("of", len(self.devices)):
                self._row(now, r, self._local.pop(r))
        elif rep.name == "late_update":
            self.late_updates += 1
        elif rep.name == "privacy_charge":
            self._charge(node, rep)
        elif rep.name == "epsilon":
            self.epsilon = float(rep.value)      # the accountant's composed ε so far
        elif rep.name == "privacy_ledger":
            self.privacy_ledger = rep.value
        elif rep.name == "role_bytes":
            self.bytes_by_role[rep.tag("role")] += int(rep.value)
        elif rep.name == "takeover":
            self.takeovers += 1

    def _charge(self, node: NodeId, rep: Report) -> None:
        v = rep.value
        if self.ledger is None:
            if self.ledger_factory is None:
                raise RuntimeError("a privacy_charge report reached a Monitor built without a "
                                   "ledger_factory; pass ledger_factory=PrivacyLedger")
            self.ledger = self.ledger_factory(delta=float(v.get("delta", 1e-5)))
        subject = v.get("subject")
        if subject is not None:
            self.privacy_subjects.add(subject)
        else:
            subject = rep.tag("device", node)
        self.ledger.record(subject, epsilon_turn=float(v["epsilon_turn"]), c=v.get("c"),
                           mechanism=v.get("mechanism", "svt"),
                           guarantee=bool(v.get("guarantee", True)))
        self.max_released_value = max(self.max_released_value,
                                      float(v.get("max_abs_value", 0.0)))

    @property
    def nominal(self) -> bool:
        """Whether a device's charged ε is only nominal (not a differential-privacy guarantee)."""
        return self.ledger is not None and not all(
            self.ledger.guaranteed(p) for p in self.ledger.participants)

    def device_epsilon(self) -> float | None:
        """The largest composed ε of a device so far (``None`` before any device charge)."""
        if self.ledger is None:
            return self.epsilon
        eps = [self.ledger.composed_epsilon(p) for p in self.ledger.participants
               if p not in self.privacy_subjects]
        return max(eps) if eps else self.epsilon

    def flush(self, now: float) -> None:
        """Evaluate standalone rounds that not every device finished."""
        for r in sorted(self._local):
            self._row(now, r, self._local.pop(r))

    def _row(self, now: float, rnd: Any, models: list) -> None:
        row: dict[str, Any] = {"time_s": now, "round": rnd}
        if self.evaluator is not None:
            scores = self.evaluator(models)
            for key in scores[0]:
                row[key] = float(np.mean([s[key] for s in scores]))
        info = self._pending_round if self._pending_round and self._pending_round["round"] == rnd \
            else None
        row["clients_selected"] = len(info["selected"]) if info else len(models)
        row["clients_aggregated"] = len(info["aggregated"]) if info else len(models)
        eps = self.device_epsilon()
        if eps is not None:
            # a release whose ε is no guarantee (DSSGD's release = "paper") names its column so
            row["epsilon_nominal" if self.nominal else "epsilon"] = eps
        row.update(bytes_up=self.bytes_up, bytes_down=self.bytes_down,
                   bytes_total=self.bytes_total, messages=self.messages, flops=self.flops,
                   compute_s=self.compute_s, energy_j=self.energy_j)
        self.rows.append(row)
        if self.on_row is not None:
            self.on_row(row)

    # ------------------------------------------------------------ tables
    def device_rows(self, states: dict, sim_time: float) -> list[dict]:
        out = []
        for node in self.devices:
            d = self.dev.get(node, {})
            st = states.get(node)
            sel, agg = int(d.get("rounds_selected", 0)), int(d.get("rounds_aggregated", 0))
            out.append({
                "device": node,
                "tier": st.profile.tier if st else "",
                "bytes_sent": int(d.get("bytes_sent", 0)),
                "bytes_received": int(d.get("bytes_received", 0)),
                "flops": float(d.get("flops", 0.0)),
                "busy_s": float(d.get("busy_s", 0.0)),
                "energy_j": float(d.get("energy_j", 0.0)),
                "online_fraction": (st.online_s / sim_time) if st and sim_time > 0 else 1.0,
                "rounds_selected": sel,
                "rounds_aggregated": agg,
                "rounds_missed": sel - agg,
                "drops_availability": st.drops["availability"] if st else 0,
                "drops_battery": st.drops["battery"] if st else 0,
                "drops_churn": st.drops["churn"] if st else 0,
                "jobs_failed": int(d.get("jobs_failed", 0)),
            })
        return out
