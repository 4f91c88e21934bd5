"""SliceNet cost graph, traffic model and Keras conversion (spec section 1, "Models in the paper")."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdlearn.errors import CrowdlearnError
from slicenet.graph import (
    BatchNorm,
    Conv2D,
    CostGraph,
    Dense,
    Flatten,
    MaxPool2D,
    ModelDescription,
    layer_from_dict,
    paper_cnn_description,
    paper_mlp_description,
    traffic_per_sample,
)


@pytest.fixture(scope="module")
def mlp() -> CostGraph:
    return paper_mlp_description().graph()


# --------------------------------------------------------------------------- reference figures


def test_paper_mlp_reference_counts(mlp):
    assert mlp.total_neurons == 1494 == 784 + 400 + 200 + 100 + 10
    assert mlp.total_weights == 414_600 == 784 * 400 + 400 * 200 + 200 * 100 + 100 * 10
    assert int(mlp.compute.sum()) == 101_700
    per_layer = np.bincount(mlp.layer, weights=mlp.compute).astype(int).tolist()
    assert per_layer == [400 * 201, 200 * 101, 100 * 11] == [80_400, 20_200, 1_100]
    assert mlp.dominator.neurons == 794
    assert mlp.dominator.weights == 313_600
    assert mlp.num_vertices == 700 and mlp.hidden_neurons == 700
    assert mlp.num_edges == 400 * 200 + 200 * 100
    assert int(mlp.weights_owned.sum()) == 414_600 - 313_600
    assert mlp.layer_sizes == (400, 200, 100) and mlp.output_units == 10


def test_paper_mlp_per_vertex_arrays(mlp):
    assert mlp.compute.dtype == np.int64
    assert mlp.compute[0] == 201 and mlp.compute[400] == 101 and mlp.compute[-1] == 11
    # memory: 4·(owned weights + bias + 4 BN params) + 4·(pre-activation + activation)
    assert mlp.memory_bytes[0] == 4 * (200 + 1 + 4) + 4 * 2
    assert mlp.memory_bytes[-1] == 4 * (10 + 1 + 4) + 4 * 2
    with pytest.raises(ValueError):
        mlp.compute[0] = 5  # read-only


def test_csr_is_symmetric_and_consistent(mlp):
    V = mlp.num_vertices
    assert len(mlp.xadj) == V + 1 and mlp.xadj[-1] == 2 * mlp.num_edges == len(mlp.adjncy)
    src = np.repeat(np.arange(V), np.diff(mlp.xadj))
    fwd = set(zip(src.tolist(), mlp.adjncy.tolist(), strict=True))
    assert all((b, a) in fwd for a, b in itertools.islice(fwd, 2000))
    assert np.all(mlp.eweights == 1)  # paper: 1 per model edge
    assert np.all(mlp.edge_weights[mlp.edge_id] == mlp.eweights)


def test_general_cost_model():
    g = paper_mlp_description().graph(cost_model="general", activation_cost=2)
    assert g.compute[0] == 2 * (784 + 200)
    assert g.compute[400] == 2 * (400 + 100)
    assert g.compute[-1] == 2 * (200 + 10)


def test_block_granularity_keeps_totals(mlp):
    g = paper_mlp_description().graph(granularity="block", block_size=64)
    assert g.num_vertices == 7 + 4 + 2  # ceil(400/64) + ceil(200/64) + ceil(100/64)
    assert int(g.compute.sum()) == int(mlp.compute.sum())
    assert int(g.edge_weights.sum()) == 400 * 200 + 200 * 100
    assert int(g.units.sum()) == 700 and g.size[6] == 400 - 6 * 64
    assert int(g.memory_bytes.sum()) == int(mlp.memory_bytes.sum())


def test_cnn_channel_granularity():
    desc = paper_cnn_description()
    g = desc.graph()
    assert g.layer_kinds == ("conv", "conv", "dense", "dense")
    assert g.num_vertices == 64 + 128 + 128 + 64
    conv2 = g.layer_slice(1)
    assert int(g.out_units[conv2].sum()) == 3200 == 5 * 5 * 128  # flatten size
    assert g.units[0] == 28 * 28 and g.out_units[0] == 14 * 14
    assert g.total_weights == 5 * 5 * 3 * 64 + 5 * 5 * 64 * 128 + 3200 * 128 + 128 * 64 + 64 * 10
    assert g.dominator.input_units == 32 * 32 * 3 and g.dominator.weights == 5 * 5 * 3 * 64
    # conv1 channel → conv2 channel: 5·5 weights, 10·10·25 multiply-adds
    e = np.flatnonzero((g.edge_src == 0) & (g.edge_dst == 64))[0]
    assert g.edge_weights[e] == 25 and g.edge_connections[e] == 2500
    # conv2 channel → dense neuron after flatten: 25 weights
    e = np.flatnonzero((g.edge_src == 64) & (g.edge_dst == 192))[0]
    assert g.edge_weights[e] == 25
    # paper cost: units + outgoing connections
    assert g.compute[0] == 784 + 128 * 2500
    assert g.compute[64] == 100 + 128 * 25


def test_same_padding_and_strides_count_connections():
    layers = [Conv2D(1, 3, padding="same"), Conv2D(1, 3), Flatten(), Dense(1)]
    g = CostGraph.from_layers((5, 5, 1), layers, cost_model="general")
    assert g.units[0] == 25 and g.units[1] == 9
    assert g.edge_connections[0] == 3 * 3 * 3 * 3  # valid 3×3 on 5×5 → 3×3 outputs × 9 taps
    # "same" 3×3 on 5×5: per axis 3·5 − 2 = 13 (output, tap) pairs inside → 169 connections in
    assert g.compute[0] == 169 + 81
    g2 = CostGraph.from_layers((5, 5, 1), [Conv2D(2, 3, strides=2), MaxPool2D(2, padding="same"),
                                           Flatten(), Dense(3), Dense(1)])
    assert g2.units[0] == 4 and g2.out_units[0] == 1


def test_batchnorm_after_flatten_counts_per_feature():
    g = CostGraph.from_layers((4, 4, 1), [Conv2D(2, 3), Flatten(), BatchNorm(), Dense(3), Dense(1)])
    assert g.params[0] == 1 + 4 * 4  # bias + BN over the 2×2 flattened units of the channel


def test_layer_dicts_and_sugar():
    layers = [{"kind": "dense", "units": 4, "activation": "relu", "batchnorm": True},
              {"kind": "dense", "units": 2}]
    g = CostGraph.from_layers((3,), layers)
    assert g.num_vertices == 4 and g.params[0] == 1 + 4
    assert layer_from_dict({"kind": "conv2d", "filters": 3, "kernel": 5}) == [Conv2D(3, (5, 5))]
    with pytest.raises(CrowdlearnError, match="unknown layer kind"):
        layer_from_dict({"kind": "lstm", "units": 3})
    with pytest.raises(CrowdlearnError, match="needs the key 'units'"):
        layer_from_dict({"kind": "dense"})


@pytest.mark.parametrize("shape,layers,match", [
    ((8, 8, 1), [Dense(3)], "Flatten"),
    ((8,), [Conv2D(2, 3), Dense(1)], "height, width"),
    ((8,), [BatchNorm()], "no Dense or Conv2D"),
    ((8, 8), [Dense(1)], "input shape"),
    ((8,), ["dense"], "not a layer description"),
])
def test_bad_descriptions(shape, layers, match):
    with pytest.raises(CrowdlearnError, match=match):
        CostGraph.from_layers(shape, layers)


def test_no_hidden_layer_gives_empty_graph():
    g = CostGraph.from_layers((5,), [Dense(3)])
    assert g.num_vertices == 0 and g.dominator.weights == 15 and g.total_neurons == 8
    assert traffic_per_sample(g, np.zeros(0, int)).floats == 0


def test_to_networkx():
    g = CostGraph.from_layers((2,), [Dense(4), Dense(3), Dense(2), Dense(2)])
    nxg = g.to_networkx()
    assert nxg.number_of_nodes() == 9 and nxg.number_of_edges() == 4 * 3 + 3 * 2
    assert nxg.nodes[0]["compute"] == 1 + 3 and nxg.edges[0, 4]["weights"] == 1
    with pytest.raises(CrowdlearnError, match="max_edges"):
        g.to_networkx(max_edges=3)


# --------------------------------------------------------------------------- traffic


@pytest.fixture(scope="module")
def toy() -> CostGraph:
    """input 2 → hidden 4 → 3 → 2 → output 2."""
    return CostGraph.from_layers((2,), [Dense(4), Dense(3), Dense(2), Dense(2)])


def test_traffic_by_hand(toy):
    # L0 = v0..v3, L1 = v4..v6, L2 = v7, v8
    a = [0, 0, 1, 2, 0, 1, 1, 2, 0]
    t = traffic_per_sample(toy, a, 3)
    # forward: 4 sums into hidden-1; L1 targets each see 2 foreign source pieces (6);
    # v7 (piece 2) sees pieces 0, 1, v8 (piece 0) sees piece 1 (3); 2 pieces × 2 outputs (4)
    assert t.forward_floats == 4 + 6 + 3 + 4 == 17
    assert t.backward_floats == 17 and t.floats == 34 and t.bytes == 136
    assert t.piece_floats.tolist() == [20, 16, 16]
    assert t.dominator_floats == 16
    assert int(t.piece_floats.sum()) + t.dominator_floats == 2 * t.floats
    assert toy.edge_cut(a) == sum(1 for s, d in zip(toy.edge_src, toy.edge_dst, strict=True) if a[s] != a[d])


def _brute_force_floats(g: CostGraph, a: np.ndarray) -> int:
    """Enumerate messages: (sender, receiver, target) triples, forward; backward mirrors them."""
    msgs = set()
    for s, d in zip(g.edge_src.tolist(), g.edge_dst.tolist(), strict=True):
        if a[s] != a[d]:
            msgs.add((a[s], d))
    fw = sum(int(g.units[d]) for _, d in msgs)
    fw += int(g.units[g.layer == 0].sum())
    fw += g.output_units * len({a[v] for v in range(g.num_vertices) if g.layer[v] == g.num_layers - 1})
    return 2 * fw


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4), n=st.integers(1, 4),
       data=st.data())
def test_traffic_matches_brute_force(sizes, n, data):
    g = CostGraph.from_layers((3,), [Dense(s) for s in sizes] + [Dense(2)])
    a = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=g.num_vertices,
                                    max_size=g.num_vertices)))
    t = traffic_per_sample(g, a, n)
    assert t.floats == _brute_force_floats(g, a)
    assert int(t.piece_floats.sum()) + t.dominator_floats == 2 * t.floats


def test_traffic_on_conv_uses_map_sizes():
    g = CostGraph.from_layers((6, 6, 1), [Conv2D(2, 3), Conv2D(2, 3), Flatten(), Dense(1)])
    # layer 0 (4×4 maps) in pieces 0, 1; layer 1 (2×2 maps) both in piece 0
    t = traffic_per_sample(g, [0, 1, 0, 0], 2)
    assert t.forward_floats == 2 * 16 + 2 * 4 + 1  # hidden-1 sums + 2 targets × 1 foreign piece + output
    with pytest.raises(CrowdlearnError, match="values must lie"):
        traffic_per_sample(g, [0, 1, 0, 2], 2)
    with pytest.raises(CrowdlearnError, match="shape"):
        traffic_per_sample(g, [0, 1], 2)


# --------------------------------------------------------------------------- Keras conversion


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


def test_keras_presets_round_trip(keras):
    from slicenet.keras_io import from_keras, paper_cnn, paper_mlp

    desc, build = paper_mlp()
    model = build()
    assert from_keras(model) == desc == paper_mlp_description()
    assert sum(int(np.prod(w.shape)) for w in model.weights if "kernel" in w.path) == 414_600
    cdesc, cbuild = paper_cnn()
    cmodel = cbuild()
    assert from_keras(cmodel) == cdesc
    assert tuple(cmodel.layers[4].output.shape[1:]) == (3200,)


def test_keras_functional_chain_and_errors(keras):
    from slicenet.keras_io import from_keras

    L = keras.layers
    x = keras.Input((6,))
    h = L.Dense(4, activation="relu")(x)
    h = L.Dropout(0.2)(h)
    y = L.Dense(2)(L.BatchNormalization()(h))
    desc = from_keras(keras.Model(x, y))
    assert desc.input_shape == (6,) and len(desc.layers) == 4
    assert CostGraph.from_layers(desc.input_shape, desc.layers).num_vertices == 4

    bad = keras.Sequential([keras.Input((5, 3)), L.Conv1D(2, 2, name="c1d"), L.Flatten(), L.Dense(1)])
    with pytest.raises(CrowdlearnError, match=r"'c1d' of type Conv1D.*supports.*Dense"):
        from_keras(bad)

    x = keras.Input((4,))
    a, b = L.Dense(3)(x), L.Dense(3)(x)
    branched = keras.Model(x, L.Dense(1)(L.Add(name="add")([a, b])))
    with pytest.raises(CrowdlearnError):
        from_keras(branched)


def test_load_keras_file(keras, tmp_path):
    from slicenet.keras_io import load_keras, paper_mlp

    desc, build = paper_mlp()
    path = tmp_path / "mlp.keras"
    build().save(path)
    loaded = load_keras(path)
    assert loaded == desc and loaded.name == "mlp"


def test_import_pulls_in_no_tensorflow_or_matplotlib():
    import subprocess
    import sys

    code = ("import sys, slicenet, crowdlearn.partition_cli, slicenet.partition; "
            "print([m for m in ('tensorflow', 'keras', 'matplotlib', 'simpy', 'asyncio', 'socket') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_description_equality_ignores_name():
    a = ModelDescription((3,), [Dense(2)], name="a")
    assert a == ModelDescription((3,), [{"kind": "dense", "units": 2}], name="b")
