"""Draw a slicing plan (matplotlib, Agg canvas; no global backend change).

Examples
--------
>>> import tempfile, os
>>> from slicenet.graph import paper_mlp_description
>>> from slicenet.partition import partition
>>> g = paper_mlp_description().graph()
>>> path = os.path.join(tempfile.mkdtemp(), "plan.png")
>>> plot_plan(g, partition(g, 5), path) == path
True

References
----------
L. Chen, T. Jung, H. Du, J. Qian, J. Hou, X.-Y. Li, "Crowdlearning: Crowded Deep Learning with
Data Privacy", IEEE SECON 2018.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slicenet.graph import CostGraph
from slicenet.plan import SlicePlan

__all__ = ["plot_plan"]


def plot_plan(graph: CostGraph, plan: SlicePlan, path: str | Path, *, max_points: int = 4000,
              dpi: int = 120) -> str:
    """Write a PNG: left, the hidden vertices by layer coloured by piece (input and output layers
    drawn as the dominator's bars); right, compute per piece against its target, with each
    piece's traffic per sample.

    Parameters
    ----------
    graph : CostGraph
    plan : SlicePlan
    path : str or Path
        Output file (PNG); parent directories are created.
    max_points : int
        Layers with more vertices are subsampled evenly for the scatter.
    dpi : int

    Returns
    -------
    str
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = plan.n
    cmap_name = "tab10" if n <= 10 else "tab20" if n <= 20 else "viridis"
    fig = Figure(figsize=(12, 5.5))
    FigureCanvasAgg(fig)
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    import matplotlib

    cmap = matplotlib.colormaps[cmap_name]
    colours = [cmap(i / max(n - 1, 1)) if cmap_name == "viridis" else cmap(i % cmap.N) for i in range(n)]

    L = graph.num_layers
    a = plan.assignment
    ax.axvspan(-0.6, -0.4, color="0.85")
    ax.axvspan(L - 0.4 + 1, L - 0.6 + 1, color="0.85")
    for layer in range(L):
        sl = graph.layer_slice(layer)
        idx = np.arange(sl.start, sl.stop)
        if len(idx) > max_points // max(L, 1):
            idx = idx[np.linspace(0, len(idx) - 1, max_points // max(L, 1)).astype(int)]
        y = (idx - sl.start + 0.5) / (sl.stop - sl.start)
        ax.scatter(np.full(len(idx), layer + 0.5), y, c=[colours[p] for p in a[idx]], s=8,
                   marker="s" if graph.layer_kinds[layer] == "conv" else "o", linewidths=0)
    ax.set_xticks([-0.5] + [i + 0.5 for i in range(L)] + [L + 0.5])
    ax.set_xticklabels(
        [f"input\n{graph.dominator.input_units}"]
        + [f"{k} {s}\n" for k, s in zip(graph.layer_kinds, graph.layer_sizes, strict=True)]
        + [f"output\n{graph.output_units}"], fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-1, L + 1)
    ax.set_title(f"{graph.description.name}: {plan.method}"
                 f"{'/' + plan.objective if plan.objective else ''}, n = {n} (grey: dominator)")

    comp = np.array(plan.compute, dtype=float)
    x = np.arange(n)
    bx.bar(x, comp, color=colours)
    bx.plot(x, np.array(plan.targets) * plan.total_compute, "k_", markersize=14, label="target")
    bx.set_ylim(0, 1.3 * max(comp.max(), max(plan.targets) * plan.total_compute))
    bx.set_xlabel("piece")
    bx.set_ylabel("compute (cost units)")
    bx.set_title(f"balance {plan.balance:.3f}, traffic {plan.traffic_bytes_per_sample:,} B/sample")
    if n <= 30:
        for i, t in enumerate(plan.piece_traffic_bytes_per_sample):
            bx.annotate(f"{t / 1024:.1f} KiB", (i, comp[i]), ha="center", va="bottom", fontsize=7,
                        rotation=90 if n > 8 else 0)
        bx.set_xticks(x)
    bx.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=dpi, format="png")
    return str(p)
