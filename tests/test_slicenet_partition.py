"""SliceNet partitioners, plans, plot and the ``partition`` command (spec section 1)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdlearn.errors import CrowdlearnError
from crowdlearn.partition_cli import add_partition_parser, run_partition
from slicenet.graph import (
    CostGraph,
    Dense,
    paper_cnn_description,
    paper_mlp_description,
    traffic_per_sample,
)
from slicenet.partition import STRATEGIES, partition
from slicenet.partition._common import TrafficState, split_contiguous
from slicenet.plan import SlicePlan

NS = (5, 10, 15, 20)


@pytest.fixture(scope="module")
def mlp() -> CostGraph:
    return paper_mlp_description().graph()


@pytest.fixture(scope="module")
def metis_plans(mlp):
    return {(obj, n): partition(mlp, n, objective=obj) for obj in ("cut", "volume") for n in NS}


@pytest.fixture(scope="module")
def random_plans(mlp):
    return {n: partition(mlp, n, method="random") for n in NS}


def _valid(plan: SlicePlan, g: CostGraph, n: int) -> None:
    a = plan.assignment
    assert a.shape == (g.num_vertices,) and a.min() == 0 and a.max() == n - 1
    assert set(np.unique(a).tolist()) == set(range(n))  # covers every vertex, no empty piece
    assert sum(plan.compute) == int(g.compute.sum())
    assert sum(plan.neurons) == g.hidden_neurons
    assert sum(plan.weights) == int(g.weights_owned.sum())
    assert plan.traffic_bytes_per_sample == traffic_per_sample(g, a, n).bytes


@pytest.mark.parametrize("objective", ["cut", "volume"])
@pytest.mark.parametrize("n", NS)
def test_metis_balance_meets_paper_figure(mlp, metis_plans, objective, n):
    plan = metis_plans[objective, n]
    _valid(plan, mlp, n)
    assert plan.balance <= 1.03 + 1e-9
    assert plan.balance == pytest.approx(max(plan.compute) / (101_700 / n))
    assert plan.method == "metis" and plan.objective == objective and plan.n == n


@pytest.mark.parametrize("n", NS)
def test_metis_traffic_below_random(metis_plans, random_plans, n):
    rnd = random_plans[n].traffic_bytes_per_sample
    assert metis_plans["volume", n].traffic_bytes_per_sample < 0.85 * rnd
    assert metis_plans["cut", n].traffic_bytes_per_sample <= rnd


@pytest.mark.parametrize("method", ["layerwise", "random", "contiguous"])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 20])
def test_other_strategies_give_valid_plans(mlp, method, n):
    plan = partition(mlp, n, method=method)
    _valid(plan, mlp, n)
    assert plan.objective is None
    if method == "layerwise":
        # each piece holds whole layers (n ≤ 3) or part of exactly one layer (n > 3)
        for p in range(n):
            layers = np.unique(mlp.layer[plan.assignment == p])
            if n > 3:
                assert len(layers) == 1
            else:
                for layer in layers:
                    assert np.all(plan.assignment[mlp.layer_slice(int(layer))] == p)
    if method in ("random", "contiguous"):
        assert plan.balance < 1.03


def test_layerwise_whole_layers_is_optimal_grouping(mlp):
    plan = partition(mlp, 2, method="layerwise")
    assert plan.compute == (80_400, 21_300)


def test_all_vertices_one_piece_each(mlp):
    g = CostGraph.from_layers((3,), [Dense(4), Dense(3), Dense(1)])
    for method in STRATEGIES:
        plan = partition(g, g.num_vertices, method=method)
        assert sorted(plan.assignment.tolist()) == list(range(g.num_vertices))


@pytest.mark.parametrize("objective", ["cut", "volume"])
def test_heterogeneous_targets(mlp, objective):
    speeds = [1, 2, 3, 4, 5]
    plan = partition(mlp, 5, objective=objective, targets=speeds)
    share = np.array(plan.compute) / mlp.compute.sum()
    np.testing.assert_allclose(share, np.array(speeds) / 15, rtol=0.05)
    assert plan.balance <= 1.03 + 1e-9
    assert plan.targets == pytest.approx(tuple(s / 15 for s in speeds))


def test_memory_repair_fixes_overfull_piece(mlp):
    base = partition(mlp, 5)
    limits = [int(1.2 * max(base.memory_bytes))] * 5
    limits[0] = int(0.8 * base.memory_bytes[0])
    plan = partition(mlp, 5, memory_limits=limits)
    assert plan.violations == ()
    assert all(m <= lim for m, lim in zip(plan.memory_bytes, limits, strict=True))
    _valid(plan, mlp, 5)
    assert plan.memory_limits == tuple(limits)


def test_memory_violation_reported_when_impossible(mlp):
    plan = partition(mlp, 5, memory_limits=10_000)
    assert len(plan.violations) == 5
    assert "limit is 10000 bytes" in plan.violations[0] and "raise the memory limits" in plan.violations[0]
    assert "violation:" in plan.table()


def test_same_seed_same_plan(mlp):
    a = partition(mlp, 7, objective="volume", seed=3)
    b = partition(mlp, 7, objective="volume", seed=3)
    assert np.array_equal(a.assignment, b.assignment)


def test_cnn_partition(mlp):
    g = paper_cnn_description().graph()
    plan = partition(g, 5, objective="volume")
    _valid(plan, g, 5)
    assert plan.balance <= 1.03 + 1e-9


@pytest.mark.parametrize("kwargs,match", [
    ({"n": 0}, "integer ≥ 1"),
    ({"n": 701}, "at most 700 pieces"),
    ({"n": 3, "method": "kernighan"}, "unknown partition method.*metis"),
    ({"n": 3, "objective": "latency"}, "unknown objective"),
    ({"n": 3, "targets": [1, 2]}, "3 positive numbers"),
    ({"n": 3, "targets": [1, 0, 2]}, "positive"),
    ({"n": 3, "memory_limits": [1, 2]}, "memory_limits"),
])
def test_partition_errors(mlp, kwargs, match):
    n = kwargs.pop("n")
    with pytest.raises(CrowdlearnError, match=match):
        partition(mlp, n, **kwargs)


def test_no_hidden_layer_error():
    g = CostGraph.from_layers((5,), [Dense(3)])
    with pytest.raises(CrowdlearnError, match="no hidden layer"):
        partition(g, 1)


def test_block_granularity_hint():
    g = paper_mlp_description().graph(granularity="block", block_size=100)
    with pytest.raises(CrowdlearnError, match="smaller block_size"):
        partition(g, 8)


# --------------------------------------------------------------------------- internals


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3), n=st.integers(2, 4), data=st.data())
def test_traffic_state_delta_is_exact(sizes, n, data):
    g = CostGraph.from_layers((3,), [Dense(s) for s in sizes] + [Dense(2)])
    V = g.num_vertices
    a = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=V, max_size=V)))
    v = data.draw(st.integers(0, V - 1))
    s = TrafficState(g, a, n)
    d = s.delta(v)
    before = traffic_per_sample(g, a, n).floats
    for b in range(n):
        moved = a.copy()
        moved[v] = b
        assert d[b] == traffic_per_sample(g, moved, n).floats - before
    b = data.draw(st.integers(0, n - 1))
    s.move(v, b)
    a[v] = b
    fresh = TrafficState(g, a, n)
    assert np.array_equal(s.cnt, fresh.cnt) and np.array_equal(s.load, fresh.load)


def test_split_contiguous_nonempty():
    lab = split_contiguous(np.array([100, 1, 1, 1]), np.full(4, 0.25))
    assert lab.tolist() == [0, 1, 2, 3]
    lab = split_contiguous(np.ones(10), np.array([0.2, 0.3, 0.5]))
    assert np.bincount(lab).tolist() == [2, 3, 5]


# --------------------------------------------------------------------------- plan, plot, CLI


def test_plan_to_dict_and_table(metis_plans):
    plan = metis_plans["cut", 5]
    d = plan.to_dict()
    assert {"pieces", "balance", "traffic_bytes_per_sample", "method", "n"} <= set(d)
    assert len(d["pieces"]) == 5
    for p in d["pieces"]:
        assert {"compute", "memory_bytes", "neurons", "weights", "traffic_bytes_per_sample"} <= set(p)
    json.dumps(d)
    lines = plan.table().splitlines()
    assert lines[0].startswith("piece") and len(lines) == 1 + 5 + 1
    with pytest.raises(AttributeError):
        plan.n = 3  # frozen


def test_plot_writes_png(mlp, metis_plans, tmp_path):
    from slicenet.plot import plot_plan

    out = plot_plan(mlp, metis_plans["volume", 10], tmp_path / "sub" / "p.png")
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_partition_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["partition", *argv])


def test_cli_json(capsys):
    args = _args("--model", "paper-mlp", "--pieces", "5", "--strategy", "metis", "--json")
    assert args.func is run_partition
    assert run_partition(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"pieces", "balance", "traffic_bytes_per_sample", "method", "n"} <= set(out)
    assert out["n"] == 5 and out["method"] == "metis" and len(out["pieces"]) == 5
    assert out["graph"]["neurons"] == 1494 and out["graph"]["dominator"]["weights"] == 313_600


def test_cli_table_fleet_and_plot(tmp_path, capsys):
    fleet = tmp_path / "fleet.toml"
    fleet.write_text("[fleet]\nspeeds = [1, 1, 2]\n")
    png = tmp_path / "plan.png"
    assert run_partition(_args("--pieces", "3", "--fleet", str(fleet), "--objective", "volume",
                               "--plot", str(png))) == 0
    out = capsys.readouterr().out
    assert "dominator: 794 neurons" in out and "balance" in out and png.exists()


@pytest.mark.parametrize("argv,match", [
    (["--model", "nope"], "unknown model"),
    (["--model", "missing.keras"], "no model file"),
    (["--pieces", "3", "--fleet", "FLEET"], "speeds must be a list of 3"),
    (["--pieces", "3", "--fleet", "MISSING"], "not found"),
])
def test_cli_errors(tmp_path, argv, match):
    fleet = tmp_path / "fleet.toml"
    fleet.write_text("[fleet]\nspeeds = [1, 2]\n")
    argv = [str(fleet) if a == "FLEET" else str(tmp_path / "x.toml") if a == "MISSING" else a
            for a in argv]
    with pytest.raises(CrowdlearnError, match=match):
        run_partition(_args(*argv))


def test_cli_memory_violation_exit_status(capsys):
    """A memory violation is a problem the user can fix: exit 2 (documented), plan printed, fix named."""
    assert run_partition(_args("--pieces", "2", "--memory-mib", "0.01")) == 2
    out, err = capsys.readouterr()
    assert "violation" in out and "raise --memory-mib" in err


def test_metis_volume_never_loses_to_the_contiguous_plan():
    """Issue: at n = 18 METIS (volume) sent more than the contiguous plan it could start from.

    The volume objective now also refines the contiguous plan and keeps the one with less exact
    traffic; it may only lose to a contiguous plan that is less balanced than its own."""
    from slicenet.graph import paper_mlp_description
    g = paper_mlp_description().graph()
    for n in range(2, 41):
        pm = partition(g, n, method="metis", objective="volume", seed=0)
        pc = partition(g, n, method="contiguous", seed=0)
        assert pm.traffic_bytes_per_sample <= pc.traffic_bytes_per_sample \
            or pm.balance < pc.balance, (n, pm.traffic_bytes_per_sample,
                                         pc.traffic_bytes_per_sample, pm.balance, pc.balance)
    assert partition(g, 18, method="metis", objective="volume", seed=0).traffic_bytes_per_sample \
        <= partition(g, 18, method="contiguous", seed=0).traffic_bytes_per_sample


def test_contiguous_ranges_respect_the_compute_cap_when_they_can():
    from slicenet.graph import paper_mlp_description
    g = paper_mlp_description().graph()
    for n in (5, 10, 18, 20):
        plan = partition(g, n, method="contiguous", seed=0)
        assert plan.balance <= 1.03 + 1e-9, (n, plan.balance)


def test_cli_corrupt_keras_file_is_named_as_such(tmp_path):
    bad = tmp_path / "model.keras"
    bad.write_text("not a zip")
    with pytest.raises(CrowdlearnError, match="exists but is not a Keras model") as exc:
        run_partition(_args("--model", str(bad)))
    assert "not found" not in str(exc.value).lower()


def test_cli_block_size_without_block_granularity_warns(capsys):
    assert run_partition(_args("--pieces", "2", "--block-size", "50")) == 0
    assert "--block-size 50 only applies with --granularity block" in capsys.readouterr().err
    assert run_partition(_args("--pieces", "2", "--granularity", "block", "--block-size", "50")) == 0
    assert "warning" not in capsys.readouterr().err


def test_cli_json_assigns_every_vertex_to_a_piece(capsys):
    assert run_partition(_args("--model", "paper-mlp", "--pieces", "4", "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    a = out["assignment"]
    assert len(a) == out["graph"]["vertices"] == 700
    assert [e["vertex"] for e in a] == list(range(700)) and {e["unit"] for e in a} == {"neuron"}
    for k, piece in enumerate(out["pieces"]):     # the assignment agrees with the piece table
        mine = [e for e in a if e["piece"] == k]
        assert len(mine) == piece["vertices"] and sum(e["size"] for e in mine) == piece["neurons"]
    assert "both directions" in out["traffic_note"]
