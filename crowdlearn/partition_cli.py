"""``crowdlearn partition``: slice a model's hidden layers and print the plan.

Examples
--------
::

    crowdlearn partition --model paper-mlp --pieces 5
    crowdlearn partition --model paper-cnn --pieces 10 --objective volume --plot cnn10.png
    crowdlearn partition --model my_model.keras --pieces 4 --fleet fleet.toml --json

A fleet file sets heterogeneous piece sizes (and optionally memory limits), one entry per piece::

    [fleet]
    speeds = [1.0, 1.0, 2.0, 4.0]     # relative speeds -> target piece sizes
    memory_mib = [1, 1, 2, 2]         # optional: per piece (or one number for all)

References
----------
L. Chen, T. Jung, H. Du, J. Qian, J. Hou, X.-Y. Li, "Crowdlearning: Crowded Deep Learning with
Data Privacy", IEEE SECON 2018.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from crowdlearn.errors import CrowdlearnError
from slicenet.graph import CostGraph, ModelDescription, paper_cnn_description, paper_mlp_description
from slicenet.partition import OBJECTIVES, STRATEGIES, partition
from slicenet.plan import SlicePlan

__all__ = ["add_partition_parser", "load_fleet", "resolve_model", "run_partition"]

PRESETS = {"paper-mlp": paper_mlp_description, "paper-cnn": paper_cnn_description}
MIB = 1024 * 1024
DEFAULT_BLOCK = 16


def add_partition_parser(subparsers: Any, **kwargs: Any) -> argparse.ArgumentParser:
    """Add the ``partition`` sub-command to an ``argparse`` sub-parser set (``func=run_partition``).

    ``kwargs`` go to ``add_parser`` (e.g. ``parents`` with options shared by every command).
    """
    p = subparsers.add_parser(
        "partition", help="slice a model's hidden layers into pieces (SliceNet) and print the plan",
        description="Slice a model's hidden units into pieces with balanced compute and little "
                    "traffic (SliceNet, Chen et al. SECON 2018) and print one row per piece. "
                    "Exit status 2 when a piece cannot meet its memory limit (the plan is still "
                    "printed).", **kwargs)
    p.add_argument("--model", default="paper-mlp",
                   help="paper-mlp, paper-cnn or a path to a .keras file (default paper-mlp)")
    p.add_argument("--pieces", "-n", type=int, default=5, help="number of pieces (default 5)")
    p.add_argument("--strategy", default="metis", choices=sorted(STRATEGIES),
                   help="partitioner (default metis)")
    p.add_argument("--objective", default="cut", choices=OBJECTIVES,
                   help="METIS objective: the paper's edge cut, or the real weighted-sum traffic "
                        "(volume) (default cut)")
    p.add_argument("--fleet", metavar="FLEET.toml",
                   help="TOML with [fleet] speeds = [...] (one per piece; target piece sizes) and "
                        "optionally memory_mib")
    p.add_argument("--memory-mib", type=float, metavar="MIB",
                   help="memory limit of every piece in MiB (overrides the fleet file)")
    p.add_argument("--granularity", default="neuron", choices=("neuron", "block"),
                   help="dense layers: one vertex per neuron, or per --block-size neurons")
    p.add_argument("--block-size", type=int, default=None,
                   help=f"neurons per vertex with --granularity block (default {DEFAULT_BLOCK})")
    p.add_argument("--cost-model", default="paper", choices=("paper", "general"),
                   help="vertex compute: paper (1 + fan_out per neuron) or general ((fan_in + fan_out)·f)")
    p.add_argument("--imbalance", type=float, default=0.03,
                   help="allowed compute imbalance (default 0.03, i.e. max/ideal <= 1.03)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.add_argument("--plot", metavar="PATH.png", help="also draw the plan to this PNG")
    p.set_defaults(func=run_partition)
    return p


def resolve_model(spec: str) -> ModelDescription:
    """A preset name (``paper-mlp``, ``paper-cnn``) or a ``.keras``/``.h5`` path → description."""
    if spec in PRESETS:
        return PRESETS[spec]()
    path = Path(spec)
    if path.suffix not in (".keras", ".h5"):
        raise CrowdlearnError(
            f"unknown model {spec!r}; use {', '.join(PRESETS)} or a path to a .keras file")
    if not path.is_file():
        raise CrowdlearnError(f"--model {spec}: no model file there; give {', '.join(PRESETS)} or the "
                              "path of a model saved with model.save('name.keras')")
    if not _looks_like_keras(path):
        kind = "a zip archive" if path.suffix == ".keras" else "an HDF5 file"
        raise CrowdlearnError(
            f"--model {spec}: the file exists but is not a Keras model (a {path.suffix} file is "
            f"{kind}; this one is not, so it is damaged or of another kind); save the model again "
            "with model.save('name.keras')")
    from crowdlearn.training.tfimport import import_tensorflow
    from slicenet.keras_io import load_keras

    import_tensorflow(quiet=True)
    return load_keras(path)


def _looks_like_keras(path: Path) -> bool:
    """A ``.keras`` file is a zip archive; an ``.h5`` file starts with the HDF5 signature."""
    import zipfile
    if path.suffix == ".keras":
        return zipfile.is_zipfile(path)
    with path.open("rb") as fh:
        return fh.read(8) == b"\x89HDF\r\n\x1a\n"


def load_fleet(path: str | Path, n: int) -> tuple[list[float] | None, list[int] | None]:
    """Read ``[fleet] speeds`` (and optional ``memory_mib``) from a TOML file.

    Returns ``(targets, memory_limits_in_bytes)``; each list has ``n`` entries or is None.
    """
    import tomllib

    p = Path(path)
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise CrowdlearnError(f"fleet file {p} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise CrowdlearnError(f"fleet file {p} is not valid TOML: {e}") from None
    fleet = data.get("fleet")
    if not isinstance(fleet, dict) or ("speeds" not in fleet and "memory_mib" not in fleet):
        raise CrowdlearnError(
            f"fleet file {p} needs a [fleet] table with speeds = [...] (one relative speed per "
            f"piece) and/or memory_mib")
    speeds = fleet.get("speeds")
    targets = None
    if speeds is not None:
        if (not isinstance(speeds, list) or len(speeds) != n
                or not all(isinstance(s, (int, float)) and s > 0 for s in speeds)):
            raise CrowdlearnError(
                f"fleet file {p}: speeds must be a list of {n} positive numbers (one per piece), "
                f"got {speeds!r}")
        targets = [float(s) for s in speeds]
    mem = fleet.get("memory_mib")
    limits = None
    if mem is not None:
        mem_list = mem if isinstance(mem, list) else [mem] * n
        if len(mem_list) != n or not all(isinstance(m, (int, float)) and m > 0 for m in mem_list):
            raise CrowdlearnError(
                f"fleet file {p}: memory_mib must be one positive number or {n} of them, got {mem!r}")
        limits = [int(m * MIB) for m in mem_list]
    return targets, limits


def plan_for_args(args: argparse.Namespace) -> tuple[CostGraph, SlicePlan]:
    """Build the graph and the plan the arguments ask for."""
    if args.block_size is not None and args.granularity != "block":
        print(f"crowdlearn partition: warning: --block-size {args.block_size} only applies with "
              "--granularity block; ignored (one vertex per neuron). Add --granularity block to "
              "use it.", file=sys.stderr)
    if args.block_size is not None and args.block_size < 1:
        raise CrowdlearnError(f"--block-size must be at least 1, got {args.block_size}")
    desc = resolve_model(args.model)
    block = DEFAULT_BLOCK if args.block_size is None else args.block_size
    graph = CostGraph.from_layers(desc.input_shape, desc.layers, granularity=args.granularity,
                                  block_size=block, cost_model=args.cost_model,
                                  name=desc.name)
    targets = limits = None
    if args.fleet:
        targets, limits = load_fleet(args.fleet, args.pieces)
    if args.memory_mib is not None:
        if args.memory_mib <= 0:
            raise CrowdlearnError(f"--memory-mib must be positive, got {args.memory_mib}")
        limits = [int(args.memory_mib * MIB)] * args.pieces
    plan = partition(graph, args.pieces, method=args.strategy, objective=args.objective,
                     targets=targets, memory_limits=limits, seed=args.seed, imbalance=args.imbalance)
    return graph, plan


def run_partition(args: argparse.Namespace) -> int:
    """Run ``crowdlearn partition``; print the table (or JSON) and write the plot if asked.

    Returns 0, or 2 when memory violations remain (the plan is still printed, then a message
    that names the fixes): like every problem the user can fix.
    """
    if args.plot:        # a bad --plot is refused before the work, not after it
        from crowdlearn.results import check_writable_parent
        if Path(args.plot).is_dir():
            raise CrowdlearnError(f"--plot {args.plot}: is a folder; name the PNG file to write, "
                                  f"e.g. --plot {Path(args.plot) / 'plan.png'}")
        check_writable_parent(args.plot, "--plot")
    graph, plan = plan_for_args(args)
    if args.json:
        out = plan.to_dict()
        out["model"] = graph.description.name
        out["traffic_note"] = ("traffic_bytes_per_sample of a piece counts what it sends plus "
                               "what it receives (both directions, forward and backward)")
        out["assignment"] = vertex_assignment(graph, plan)
        out["graph"] = {"vertices": graph.num_vertices, "edges": graph.num_edges,
                        "neurons": graph.total_neurons, "weights": graph.total_weights,
                        "granularity": graph.granularity, "cost_model": graph.cost_model,
                        "dominator": {"neurons": graph.dominator.neurons,
                                      "weights": graph.dominator.weights,
                                      "memory_bytes": graph.dominator.memory_bytes}}
        print(json.dumps(out, indent=2))
    else:
        print(graph.summary())
        d = graph.dominator
        print(f"dominator: {d.neurons} neurons ({d.input_units} in + {d.output_units} out), "
              f"{d.weights} weights, {d.memory_bytes} bytes")
        print(plan.table())
    if args.plot:
        from slicenet.plot import plot_plan

        written = plot_plan(graph, plan, args.plot)
        print(f"plot: {written}", file=sys.stderr if args.json else sys.stdout)
    if plan.violations:
        print(f"crowdlearn partition: error: {len(plan.violations)} piece(s) exceed their memory "
              "limit (see the violations above); raise --memory-mib (or memory_mib in the fleet "
              "file), use more --pieces, or a finer --granularity", file=sys.stderr)
        return 2
    return 0


def vertex_assignment(graph: CostGraph, plan: SlicePlan) -> list[dict[str, Any]]:
    """One entry per graph vertex: its hidden layer, the units (neurons, or channels of a conv
    layer) it holds (``first`` .. ``first + size - 1``), and the piece it goes to."""
    kinds = graph.layer_kinds
    return [{"vertex": v, "layer": int(graph.layer[v]),
             "unit": "neuron" if kinds[int(graph.layer[v])] == "dense" else "channel",
             "first": int(graph.first[v]), "size": int(graph.size[v]),
             "piece": int(plan.assignment[v])}
            for v in range(graph.num_vertices)]
