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

With ``evaluate_concurrently`` (an evaluator that may run beside the event loop: the fused
trainer's), a row's evaluation runs on a worker thread while the simulation goes on, and the
row (its other columns taken when the model was reported, as always) is written, and ``on_row``
called, once the evaluation is done: at the next report that finds it done, at the next row, at
:meth:`flush`, or when :attr:`rows` is read.  Same rows, in the same order, with the same
values; the next epoch's events no longer wait for the evaluation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
                 ledger_factory: Callable[..., Any] | None = None, infrastructure: tuple = (),
                 evaluate_concurrently: bool = False,
                 evaluate_round: Callable[[Any], bool] | None = None):
        # ledger_factory(delta=δ) builds the run's ε ledger on the first privacy_charge report
        # (the composition root passes crowdlearn's PrivacyLedger: the runtime knows no privacy
        # accounting of its own)
        self.server = server
        self.ledger_factory = ledger_factory
        self.infrastructure = frozenset(infrastructure)   # server-side nodes besides the server
        self.evaluator = evaluator
        self.on_row = on_row
        # a range stays a range: a fleet of millions need not list its ids
        self.devices = devices if isinstance(devices, range) else list(devices)
        self._rows: list[dict] = []
        self.evaluate_concurrently = evaluate_concurrently
        # which rows are scored (None: all); the latest row left unscored keeps its models, so
        # that flush() scores it if the run ends there (interrupted, stalled, out of time)
        self.evaluate_round = evaluate_round
        self._unscored: tuple[dict, list] | None = None
        # rows whose evaluation runs on a worker, oldest first: (row so far, the rest, future)
        self._evaluating: list[tuple[dict, dict, Future, ThreadPoolExecutor]] = []
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
        # per-device counters: a column per device of a range fleet, a dict for other ids
        self.dev = DeviceCounters(self.devices)
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
            self.dev.add(src, "bytes_sent", nbytes)
        if dst != self.server and dst not in self.infrastructure:
            self.bytes_down += nbytes
            self.dev.add(dst, "bytes_received", nbytes)

    def on_partial_transfer(self, src, dst, nbytes: float) -> None:
        """A transfer cut off by a drop-out: its bytes used the radio but delivered nothing."""
        self.bytes_lost += nbytes

    def on_message_dropped(self, src, dst, nbytes) -> None:
        self.messages_dropped += 1

    def on_compute(self, node: NodeId, flops: float, seconds: float, energy_j: float) -> None:
        self.flops += flops
        self.compute_s += seconds
        self.dev.add(node, "flops", flops)
        self.dev.add(node, "busy_s", seconds)

    def on_energy(self, node: NodeId, joules: float) -> None:
        self.energy_j += joules
        self.dev.add(node, "energy_j", joules)

    def on_offline(self, node: NodeId, reason: str, now: float) -> None:
        pass  # counted by the driver's DeviceState.drops

    def on_job_failed(self, node: NodeId, reason: str) -> None:
        self.dev.add(node, "jobs_failed", 1)

    # ------------------------------------------------------------ reports
    def on_report(self, node: NodeId, rep: Report, now: float) -> None:
        if self._evaluating and self._evaluating[0][2].done():
            self._write_evaluated(wait=False)
        self.reports[rep.name] += 1
        if rep.name == "round":
            info = dict(rep.value)
            for k in ("selected", "aggregated"):     # rounds.csv lists ids in numeric order
                if k in info:
                    info[k] = sorted(info[k], key=_id_order)
            for d in info["selected"]:
                self.dev.add(d, "rounds_selected", 1)
            for d in info["aggregated"]:
                self.dev.add(d, "rounds_aggregated", 1)
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
        """Evaluate standalone rounds that not every device finished (and write every row
        still being evaluated); a last row that the evaluation schedule skipped is scored now,
        so a run that ends early still has the scores of its last model."""
        for r in sorted(self._local):
            self._row(now, r, self._local.pop(r))
        self._write_evaluated(wait=True)
        if self._unscored is not None and self._rows and self._rows[-1] is self._unscored[0]:
            row, models = self._unscored
            _add_scores(row, self.evaluator(models))
        self._unscored = None

    @property
    def rows(self) -> list[dict]:
        """The metrics rows so far (evaluations still running are waited for)."""
        self._write_evaluated(wait=True)
        return self._rows

    def _row(self, now: float, rnd: Any, models: list) -> None:
        row: dict[str, Any] = {"time_s": now, "round": rnd}
        future = pool = None
        unscored = None
        if self.evaluator is not None and self.evaluate_round is not None \
                and not self.evaluate_round(rnd):
            # not scored (eval_every): kept for flush() in case the run ends at this row
            unscored = (row, [[np.array(w, copy=True) for w in m] for m in models]
                        if _plain(models) else models)
        elif self.evaluator is not None:
            if self.evaluate_concurrently and _plain(models):
                # the models are arrays the run no longer changes (copied all the same: a
                # machine could still hold them); evaluated on a thread of its own
                models = [[np.array(w, copy=True) for w in m] for m in models]
                pool = ThreadPoolExecutor(1, thread_name_prefix="crowdlearn-evaluate")
                future = pool.submit(self.evaluator, models)
                pool.shutdown(wait=False)        # the thread ends with this evaluation
            else:
                _add_scores(row, self.evaluator(models))
        rest: dict[str, Any] = {}
        info = self._pending_round if self._pending_round and self._pending_round["round"] == rnd \
            else None
        rest["clients_selected"] = len(info["selected"]) if info else len(models)
        rest["clients_aggregated"] = len(info["aggregated"]) if info else len(models)
        eps = self.device_epsilon()
        if eps is not None:
            # a release whose ε is no guarantee (DSSGD's release = "paper") names its column so
            rest["epsilon_nominal" if self.nominal else "epsilon"] = eps
        rest.update(bytes_up=self.bytes_up, bytes_down=self.bytes_down,
                    bytes_total=self.bytes_total, messages=self.messages, flops=self.flops,
                    compute_s=self.compute_s, energy_j=self.energy_j)
        if future is not None:
            self._evaluating.append((row, rest, future, pool))
            self._unscored = None
            return
        self._write_evaluated(wait=True)           # rows stay in order
        row.update(rest)
        # the previous row's models are let go only once this row is written: an interrupt
        # that lands inside this call leaves the last written row scorable by flush()
        self._write(row, unscored)

    def close(self) -> None:
        """Wait for the evaluations still running (a run that failed leaves no thread)."""
        for _, _, future, pool in self._evaluating:
            future.exception()
            pool.shutdown(wait=True)

    def _write(self, row: dict, unscored: tuple[dict, list] | None = None) -> None:
        """Append ``row`` (``unscored``: it with its models, when the schedule skipped it)."""
        self._rows.append(row)
        self._unscored = unscored
        if self.on_row is not None:
            self.on_row(row)

    def _write_evaluated(self, *, wait: bool) -> None:
        """Write the rows whose evaluation is done (all of them, waiting, if ``wait``), in
        order; an evaluation that failed raises here."""
        while self._evaluating and (wait or self._evaluating[0][2].done()):
            row, rest, future, pool = self._evaluating.pop(0)
            future.exception()
            pool.shutdown(wait=True)                # its thread is gone
            _add_scores(row, future.result())
            row.update(rest)
            self._write(row)

    # ------------------------------------------------------------ tables
    def device_rows(self, states: Mapping, sim_time: float) -> Sequence[dict]:
        """One row per device (:data:`DEVICE_FIELDS`), made on access from the driver's columns
        and the counters of the devices that did something."""
        snap = states.snapshot() if hasattr(states, "snapshot") else None
        return DeviceRows(self.devices, self.dev.copy(), states, snap, sim_time)


def _add_scores(row: dict, scores: list[dict]) -> None:
    """The models' scores, averaged, into ``row``."""
    for key in scores[0]:
        row[key] = float(np.mean([s[key] for s in scores]))


def _plain(models: list) -> bool:
    """Whether every model is a list of numpy arrays (what can be copied and evaluated
    elsewhere; a deferred result is evaluated where it is read)."""
    return all(isinstance(m, (list, tuple)) and all(isinstance(w, np.ndarray) for w in m)
               for m in models)


class DeviceCounters(Mapping):
    """Per-device sums (bytes, FLOPs, busy time, energy, rounds, failures): ``counters[node]``
    is a dict of the device's non-zero sums.  Devices ``0..n-1`` of a ``range`` fleet are
    columns of one array (64 bytes each, whatever they did); other ids go to a dict."""

    FIELDS = ("bytes_sent", "bytes_received", "flops", "busy_s", "energy_j", "rounds_selected",
              "rounds_aggregated", "jobs_failed")
    _COL = {f: k for k, f in enumerate(FIELDS)}

    def __init__(self, devices):
        self._n = len(devices) if isinstance(devices, range) and devices.start == 0 \
            and devices.step == 1 else 0
        self._cols = np.zeros((len(self.FIELDS), self._n))
        self._other: dict = defaultdict(lambda: defaultdict(float))

    def _is_col(self, node) -> bool:
        return type(node) is int and 0 <= node < self._n

    def add(self, node, field: str, value: float) -> None:
        if self._is_col(node):
            self._cols[self._COL[field], node] += value
        else:
            self._other[node][field] += value

    def __getitem__(self, node) -> dict:
        if self._is_col(node):
            col = self._cols[:, node]
            return {f: float(col[k]) for k, f in enumerate(self.FIELDS) if col[k]}
        if node in self._other:
            return dict(self._other[node])
        raise KeyError(node)

    def get(self, node, default=None):
        try:
            return self[node]
        except KeyError:
            return default

    def __iter__(self):
        yield from np.flatnonzero(self._cols.any(axis=0)).tolist()
        yield from self._other

    def __len__(self) -> int:
        return int(self._cols.any(axis=0).sum()) + len(self._other)

    def copy(self) -> DeviceCounters:
        out = DeviceCounters.__new__(DeviceCounters)
        out._n, out._cols = self._n, self._cols.copy()
        out._other = {k: dict(v) for k, v in self._other.items()}
        return out


class DeviceRows(Sequence):
    """The per-device table as a sequence of dicts, built row by row when read (a list of a
    million dicts would take a gigabyte).  Holds plain data (numpy columns and the counters of
    active devices), so it pickles."""

    def __init__(self, devices, dev: Mapping, states: Mapping, snap: dict | None,
                 sim_time: float):
        self.devices, self.dev, self.sim_time = devices, dev, sim_time
        if snap is None:   # a plain {node: state} mapping: copy what the rows need
            snap = {"tiers": [], "tier": {}, "online_s": {}, "drops": {}}
            for node in devices:
                st = states.get(node)
                if st is not None:
                    snap["tier"][node] = st.profile.tier
                    snap["online_s"][node] = st.online_s
                    snap["drops"][node] = [st.drops[r] for r in
                                           ("availability", "battery", "churn")]
        self.snap = snap

    def __len__(self) -> int:
        return len(self.devices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        return self._row(self.devices[i])

    def _row(self, node) -> dict:
        d = self.dev.get(node, {})
        snap, t = self.snap, self.sim_time
        row = snap["row_of"](node) if "row_of" in snap else node
        known = row is not None and (row in snap["online_s"] if isinstance(snap["online_s"], dict)
                                     else True)
        tier = (snap["tier"][row] if isinstance(snap["tier"], dict)
                else snap["tiers"][snap["tier"][row]]) if known else ""
        drops = [int(x) for x in snap["drops"][row]] if known else [0, 0, 0]
        sel, agg = int(d.get("rounds_selected", 0)), int(d.get("rounds_aggregated", 0))
        return {
            "device": node,
            "tier": tier,
            "bytes_sent": int(d.get("bytes_sent", 0)),
            "bytes_received": int(d.get("bytes_received", 0)),
            "flops": float(d.get("flops", 0.0)),
            "busy_s": float(d.get("busy_s", 0.0)),
            "energy_j": float(d.get("energy_j", 0.0)),
            "online_fraction": (float(snap["online_s"][row]) / t) if known and t > 0 else 1.0,
            "rounds_selected": sel,
            "rounds_aggregated": agg,
            "rounds_missed": sel - agg,
            "drops_availability": drops[0],
            "drops_battery": drops[1],
            "drops_churn": drops[2],
            "jobs_failed": int(d.get("jobs_failed", 0)),
        }

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"DeviceRows({len(self)} devices)"
