"""Figures and tables of the protocol pages, from one small recorded run per protocol.

For every registered protocol, :func:`record` runs a small configuration (:data:`RUNS`) with the
monitor's transfer and report hooks wrapped, so every delivered message is logged as
``(time_s, src, dst, kind, bytes)`` -- ``bytes`` is the length of the encoded message, exactly what
the run's ``bytes_total`` counts.  From the log:

* ``figures/<name>_sequence.png``: a sequence diagram of the first round (the messages delivered
  up to the first report that closes a round or publishes a model; the first
  :data:`MAX_ARROWS` of those that involve only the first :data:`MAX_DEVICES` devices to appear,
  when the round has more), one arrow per message in delivery order,
  labelled with its kind and size;
* ``figures/<name>_network.png``: the run's fleet and network graph (devices coloured by tier,
  cells, core, server and any infrastructure node; device-to-device links dashed);
* ``protocols/<name>_run.md``: the configuration of the run, the figures, and the table of
  message kinds with their counts and encoded sizes (first round and whole run).

Runs are cached in ``build/docs-protocol-runs/`` under a key of the code and the configuration, so
a rebuild without code changes does not run them again.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

from executed_notebooks import ROOT, code_digest

CACHE = ROOT / "build" / "docs-protocol-runs"
MAX_ARROWS = 48
MAX_DEVICES = 4
ROUND_REPORTS = ("round", "global_model", "group_model", "epoch")

#: Small runs shown on the protocol pages (overrides of :data:`BASE`, digits unless stated).
RUNS = {
    "fedavg": {},
    "centralized": {"protocol": "centralized"},
    "standalone": {"protocol": "standalone"},
    "dssgd": {"protocol": "dssgd", "rounds": 1, "dssgd.dp": True},
    "fm": {"protocol": "fm", "rounds": 2, "data.dataset": "breast_cancer", "model.arch": "linear"},
    "phong": {"protocol": "phong", "rounds": 1, "model.hidden": [16], "he.key_bits": 512},
    "hres": {"protocol": "hres", "rounds": 1, "model.hidden": [16], "he.key_bits": 512},
    "crowdlearning": {"protocol": "crowdlearning", "rounds": 1, "fleet.devices": 10,
                      "model.hidden": [32, 16], "slicenet.group_size": 5,
                      "slicenet.deterministic_keys": True},
    "ssgd": {"protocol": "ssgd", "rounds": 1, "model.hidden": [32, 16]},
}
BASE = {"rounds": 2, "seed": 7, "fleet.devices": 4, "fleet.cells": 2, "model.hidden": [32],
        "fedavg.clients_per_round": 3, "fedavg.local_epochs": 1, "fedavg.batch_size": 16}


def config_of(name: str) -> dict:
    """The flat overrides of the run of protocol ``name`` (:data:`BASE` updated by its entry)."""
    return {**BASE, **RUNS.get(name, {"protocol": name})}


def _nested(flat: dict) -> dict:
    raw: dict = {}
    for key, value in flat.items():
        sec, _, k = key.rpartition(".")
        (raw.setdefault(sec, {}) if sec else raw)[k] = value
    return raw


def record(name: str) -> dict:
    """Run protocol ``name``'s small configuration; its message log, reports and network."""
    from crowdlearn.config import from_dict
    from crowdlearn.experiment import Simulation
    flat = config_of(name)
    sim = Simulation(from_dict(_nested(flat)))
    log, reports = [], []
    mon = sim.monitor
    on_transfer, on_report = mon.on_transfer, mon.on_report

    def transfer(src, dst, nbytes, now, msg=None):
        kind = getattr(msg, "kind", None)
        log.append((float(now), str(src), str(dst),
                    kind if isinstance(kind, str) else type(msg).__name__, int(nbytes)))
        return on_transfer(src, dst, nbytes, now, msg)

    def report(node, rep, now):
        reports.append((float(now), str(node), rep.name))
        return on_report(node, rep, now)

    mon.on_transfer, mon.on_report = transfer, report
    res = sim.run()
    g = sim.ctx.graph
    nodes = [(str(n), dict(d)) for n, d in g.nodes(data=True)]
    prof = sim.profiles
    tiers = {str(i): str(prof.tiers[t]) for i, t in enumerate(prof.tier_index)}
    edges = [(str(u), str(v), bool(d.get("d2d", False)) or d.get("kind") == "d2d")
             for u, v, d in g.edges(data=True)]
    return {"config": flat, "log": log, "reports": reports, "nodes": nodes, "edges": edges,
            "tiers": tiers, "bytes_total": int(res.summary["bytes_total"])}


def cached_record(name: str, code: str) -> dict:
    key = hashlib.sha256((code + json.dumps(config_of(name), sort_keys=True)).encode()).hexdigest()
    path = CACHE / f"{name}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("key") == key:
            return data
    data = {"key": key, **record(name)}
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, default=str))
    return data


def first_round(data: dict) -> tuple[list, str]:
    """The messages of the first round and a phrase saying where the cut is."""
    log = data["log"]
    ends = [t for t, _, what in data["reports"] if what in ROUND_REPORTS]
    if ends:
        cut = min(ends)
        msgs = [m for m in log if m[0] <= cut]
        if msgs:
            return msgs, f"up to the first `{_first_name(data, cut)}` report (t = {cut:.3g} s)"
    return log[:MAX_ARROWS], "the first messages of the run"


def _first_name(data, cut):
    return next(what for t, _, what in data["reports"] if t == cut and what in ROUND_REPORTS)


def _order(nodes: set) -> list:
    def k(n):
        return (0, int(n)) if n.isdigit() else (-1 if n == "server" else 1, n)
    return sorted(nodes, key=lambda n: (k(n)[0], k(n)[1] if isinstance(k(n)[1], int) else 0,
                                        str(n)))


def sequence_diagram(msgs: list, path: Path, title: str) -> int:
    """Draw ``msgs`` as a sequence diagram into ``path``; the number of arrows drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = msgs
    if len(msgs) > MAX_ARROWS:       # a big round: the messages of its first MAX_DEVICES devices
        devices = []
        for m in msgs:
            devices += [n for n in m[1:3] if n.isdigit() and n not in devices]
        keep = set(devices[:MAX_DEVICES])
        shown = [m for m in msgs if all(not n.isdigit() or n in keep for n in m[1:3])]
    shown = shown[:MAX_ARROWS]
    lanes = _order({m[1] for m in shown} | {m[2] for m in shown})
    x = {n: i for i, n in enumerate(lanes)}
    kinds = sorted({m[3] for m in shown})
    colours = {k: plt.cm.tab10(i % 10) for i, k in enumerate(kinds)}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(lanes) + 2), 1.2 + 0.32 * len(shown)))
    for n in lanes:
        ax.axvline(x[n], color="0.8", lw=1, zorder=0)
    for i, (t, src, dst, kind, nbytes) in enumerate(shown):
        y = -i
        ax.annotate("", xy=(x[dst], y), xytext=(x[src], y),
                    arrowprops={"arrowstyle": "->", "color": colours[kind], "lw": 1.2})
        ax.text((x[src] + x[dst]) / 2, y + 0.12, f"{kind} · {nbytes:,} B", ha="center",
                va="bottom", fontsize=7, color=colours[kind])
        ax.text(-0.6, y, f"{t:.3g} s", ha="right", va="center", fontsize=6, color="0.4")
    ax.set_xticks(range(len(lanes)), [n if not n.isdigit() else f"device {n}" for n in lanes],
                  fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    ax.set_xlim(-1.4, len(lanes) - 0.4)
    ax.set_ylim(-len(shown) + 0.3, 0.9)
    for s in ("left", "right", "bottom"):
        ax.spines[s].set_visible(False)
    ax.set_title(title, fontsize=9, pad=24)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return len(shown)


def network_picture(data: dict, path: Path, title: str) -> None:
    """Draw the run's graph: devices by tier, cells, core, server, infrastructure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx
    g = nx.Graph()
    for n, d in data["nodes"]:
        g.add_node(n, **d)
    d2d = set()
    for u, v, is_d2d in data["edges"]:
        g.add_edge(u, v)
        if is_d2d or (u.isdigit() and v.isdigit()):
            d2d.add(frozenset((u, v)))
    pos = nx.kamada_kawai_layout(g)
    tiers = sorted({data["tiers"].get(n, "device") for n in g if n.isdigit()})
    fig, ax = plt.subplots(figsize=(6, 4.5))
    plain = [e for e in g.edges if frozenset(e) not in d2d]
    nx.draw_networkx_edges(g, pos, edgelist=plain, ax=ax, edge_color="0.6")
    nx.draw_networkx_edges(g, pos, edgelist=[tuple(e) for e in d2d], ax=ax, style="dashed",
                           edge_color="tab:orange")
    for i, tier in enumerate(tiers):
        nodes = [n for n in g if n.isdigit() and data["tiers"].get(n, "device") == tier]
        nx.draw_networkx_nodes(g, pos, nodelist=nodes, ax=ax, node_size=160,
                               node_color=[plt.cm.Set2(i)], label=f"device ({tier})")
    other = [n for n in g if not n.isdigit()]
    nx.draw_networkx_nodes(g, pos, nodelist=other, ax=ax, node_size=420, node_shape="s",
                           node_color="lightsteelblue", label="cell / core / server")
    nx.draw_networkx_labels(g, pos, ax=ax, font_size=7)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _sizes(msgs: list) -> dict:
    out: dict = defaultdict(list)
    for _, _, _, kind, nbytes in msgs:
        out[kind].append(nbytes)
    return out


def page(name: str, data: dict, msgs: list, where: str, drawn: int) -> str:
    overrides = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in data["config"].items())
    first, whole = _sizes(msgs), _sizes(data["log"])
    rows = ["| kind | messages in round 1 | bytes each (round 1) | messages in the run | "
            "bytes in the run |", "| --- | ---: | ---: | ---: | ---: |"]
    for kind in sorted(whole):
        f = first.get(kind, [])
        each = (f"{min(f):,}" if f and min(f) == max(f) else f"{min(f):,}–{max(f):,}") if f else "–"
        rows.append(f"| `{kind}` | {len(f)} | {each} | {len(whole[kind])} | "
                    f"{sum(whole[kind]):,} |")
    more = "" if drawn == len(msgs) else (
        f" ({drawn} of its {len(msgs)} messages: the first {drawn} that involve only the first "
        f"{MAX_DEVICES} devices to appear)")
    if not data["log"]:
        seq = ["This protocol sends no messages over the simulated network: its run had "
               "nothing to draw in a sequence diagram.", ""]
    else:
        seq = [f"```{{figure}} /_generated/figures/{name}_sequence.png",
               f":alt: {name} message sequence", "",
               f"The first round's messages in delivery order{more}: {where}. Times are "
               "simulated; sizes are the encoded messages' lengths.", "```", ""]
    return "\n".join([
        "## A recorded run", "",
        f"Generated at build time from a small run of `{name}` (digits unless stated; overrides "
        f"of the defaults: {overrides}). Every message the simulator delivered was logged with "
        f"its encoded size; the run sent {len(data['log'])} messages, "
        f"{data['bytes_total']:,} bytes in all.", "",
        *seq,
        f"```{{figure}} /_generated/figures/{name}_network.png", f":alt: {name} fleet and network", "",
        "The run's fleet and network: devices (by tier) attach to cells, cells to the core, "
        "the core to the server.", "```", "",
        *(["Message kinds and their encoded sizes:", "", *rows, ""] if whole else [])])


def generate(gen: Path, names=None) -> list[str]:
    from crowdlearn import registry
    code = code_digest()
    (gen / "figures").mkdir(parents=True, exist_ok=True)
    (gen / "protocols").mkdir(parents=True, exist_ok=True)
    done = []
    for name in names or registry.names():
        data = cached_record(name, code)
        msgs, where = first_round(data)
        drawn = sequence_diagram(msgs, gen / "figures" / f"{name}_sequence.png",
                                 f"{name}: one round's messages") if msgs else 0
        network_picture(data, gen / "figures" / f"{name}_network.png",
                        f"{name}: the fleet and network of the recorded run")
        text = page(name, data, msgs, where, drawn)
        out = gen / "protocols" / f"{name}_run.md"
        if not out.is_file() or out.read_text() != text:
            out.write_text(text)
        done.append(name)
    return done
