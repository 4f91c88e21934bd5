"""A Crowdlearning follower of a CNN: the first convolution's channel maps it receives are a linear
system in the dominator's images (:func:`conv_sums_operator`), its output errors give the labels;
read from a real run's sealed boundary payloads."""
import numpy as np
import pytest

from crowdlearn.privacy.attacks.views import (
    conv_sums_operator,
    labels_from_output_errors,
    reconstruct_from_weighted_sums,
    watch_followers,
)


@pytest.mark.parametrize("shape,kernel,strides,padding", [
    ((12, 12, 1), (5, 5, 1, 6), (1, 1), "valid"),
    ((9, 7, 3), (4, 3, 3, 5), (2, 2), "same"),
    ((8, 8, 2), (3, 3, 2, 4), (1, 1), "same"),
    ((10, 9, 1), (3, 2, 1, 3), (2, 3), "valid"),
])
def test_the_operator_is_the_convolution(shape, kernel, strides, padding):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x, k = rng.normal(size=(3, *shape)), rng.normal(size=kernel)
    ch = np.arange(0, kernel[-1], 2)
    z = tf.nn.conv2d(x, k, strides, padding.upper()).numpy()[..., ch]
    a = conv_sums_operator(k, shape, strides=strides, padding=padding, channels=ch)
    np.testing.assert_allclose(x.reshape(3, -1) @ a, z.reshape(3, -1), atol=1e-10)


def test_enough_channel_maps_with_the_filters_give_the_image_exactly():
    rng = np.random.default_rng(1)
    x, k = rng.uniform(size=(2, 12, 12, 1)), rng.normal(size=(5, 5, 1, 4))
    a = conv_sums_operator(k, (12, 12, 1), channels=[1, 2, 3])      # 3·8·8 = 192 ≥ 144
    xh = reconstruct_from_weighted_sums(x.reshape(2, -1) @ a, a)
    np.testing.assert_allclose(xh, x.reshape(2, -1), atol=1e-8)


def _digits_cnn(path):
    import keras

    L = keras.layers
    keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(6, 3, padding="same"),
                      L.Activation("relu"), L.MaxPooling2D(2), L.Conv2D(8, 3, activation="relu"),
                      L.Flatten(), L.Dense(16, activation="relu"), L.Dense(10)]).save(path)
    return path


def test_a_cnn_followers_payload_is_the_dominators_channel_maps_and_output_errors(tmp_path):
    """Groups of 4 on digits: the follower holding first-convolution channels opens the
    dominator's sealed payload; its maps are the dominator's first mini-batch convolved with
    the pass's start filters (what the previous dominator handed over), from which the images
    come back exactly; the output errors give every label."""
    from crowdlearn.experiment import Simulation
    from tests.conftest import small_config

    cfg = small_config(**{"protocol": "crowdlearning", "rounds": 1, "fleet.devices": 8,
                          "slicenet.group_size": 4, "slicenet.lr": 0.1, "slicenet.batch_size": 16,
                          "slicenet.model": _digits_cnn(str(tmp_path / "cnn.keras"))})
    sim = Simulation(cfg)
    handles, views = watch_followers(sim, batch_size=16)
    lay = sim.ctx.extra["layout"]
    sim.run()
    doms = [h for h in handles if type(h.job).__name__ == "SlicePassJob" and h.job.key[0] == 0
            and h.job.batches is not None]
    assert doms
    checked = labels_checked = 0
    for dom in doms:
        attempt = dom.job.key[1]
        for v in views.values():
            if (attempt, dom.job.node) not in v.payloads:
                continue
            got = v.sums_from(dom.job.node, attempt)
            start = dom.job.promise.value().start
            k0 = lay.first_stage.kernel
            rows = np.asarray(dom.job.batches)[0]
            rows = rows[rows >= 0]
            x = np.asarray(sim.dataset.x_train, np.float64)[rows]
            if len(got["units"]):
                a = conv_sums_operator(start[k0], (8, 8, 1), padding="same",
                                       channels=got["units"])
                z0 = got["z"][0]
                assert z0.shape == (len(rows), 8, 8, len(got["units"]))
                np.testing.assert_allclose(z0.reshape(len(rows), -1), x @ a, atol=1e-4)
                xh = reconstruct_from_weighted_sums(z0.reshape(len(rows), -1), a)
                np.testing.assert_allclose(xh, x, atol=1e-3)
                checked += 1
            if got["errors"]:
                labels = np.asarray(sim.dataset.y_train)[rows]
                assert np.array_equal(labels_from_output_errors(got["errors"][0]), labels)
                labels_checked += 1
    assert checked and labels_checked


def _cnn_module():
    from tests.test_experiment_docs import _module

    return _module("privacy_attacks_cnn")


def _synthetic_seed(rng, keys):
    cells = {k: {"psnr": float(rng.uniform(10, 100)), "ssim": float(rng.uniform(0, 1)),
                 "clf": float(rng.uniform(0, 1)), "images": 64, "exact": int(rng.integers(0, 64))}
             for k in keys}
    return {"cells": cells, "labels_ok": 60, "labels_n": 64, "channels_per_follower": [15, 17],
            "clf_ceiling": 0.81, "accuracy": float(rng.uniform(0.3, 0.5)), "completed": True,
            "wall_s": 3.0, "cpu_s": 100.0 + float(rng.uniform(0, 10)),
            "first_conv": "5x5, 64 filters, maps 24x24"}


def _t_cell(values, digits):
    """mean ± t(0.975, n−1)·s/√n, computed here without the project's helpers."""
    from scipy import stats

    x = np.asarray(values, float)
    h = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return f"{x.mean():.{digits}f} ± {h:.{digits}f}"


def test_the_cnn_doc_renders_each_cell_as_the_mean_and_t_interval_over_the_seeds():
    mod = _cnn_module()
    rng = np.random.default_rng(3)
    keys = [k for k, *_ in mod.ROWS]
    per = {str(s): _synthetic_seed(rng, keys) for s in (0, 1, 2)}
    doc = mod.render({"command": "`x`", "elapsed_s": 600.0, "when": "2026-11-30",
                      "samples": 64, "per_seed": per})
    for key, who, method, which in mod.ROWS:
        vals = [per[s]["cells"][key] for s in per]
        want = (f"| {who} | {method} | {which} | {3 * 64} | "
                f"{_t_cell([v['psnr'] for v in vals], 1)} | {sum(v['exact'] for v in vals)} | "
                f"{_t_cell([v['ssim'] for v in vals], 3)} | "
                f"{_t_cell([v['clf'] for v in vals], 3)} |")
        assert want in doc
    assert "180/192 labels exact" in doc
    assert "model seeds 0–2 (3 seeds)" in doc and "**3 seeds, not the 10" in doc
    assert "Environment: Python" in doc
    # the paired comparison is the t-test of the per-seed differences
    from scipy import stats
    a = [per[s]["cells"]["end|min_norm|all"]["psnr"] for s in per]
    b = [per[s]["cells"]["prior|mean|all"]["psnr"] for s in per]
    d = np.subtract(a, b)
    h = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert f"{d.mean():+.1f} [{d.mean() - h:+.1f}, {d.mean() + h:+.1f}]" in doc


def test_cnn_per_seed_files_merge_and_refuse_a_seed_twice():
    mod = _cnn_module()
    rng = np.random.default_rng(0)
    keys = [k for k, *_ in mod.ROWS]

    def part(*seeds, samples=64):
        return {"command": "`c`", "elapsed_s": 1.0, "when": "2026-11-30", "samples": samples,
                "per_seed": {str(s): _synthetic_seed(rng, keys) for s in seeds}}

    got = mod.combine([part(0, 1), part(2)])
    assert sorted(got["per_seed"]) == ["0", "1", "2"] and got["elapsed_s"] == 2.0
    with pytest.raises(SystemExit, match="seed 1 is in two"):
        mod.combine([part(0, 1), part(1)])
    with pytest.raises(SystemExit, match="different --samples"):
        mod.combine([part(0), part(1, samples=256)])


def test_cnn_doc_sets_each_comparison_over_the_earlier_seeds_beside_all_seeds():
    """Seeds added to a page: the comparisons over its earlier seeds (from the same per-seed
    values) beside all seeds; no such section when no seed was added."""
    mod = _cnn_module()
    rng = np.random.default_rng(5)
    keys = [k for k, *_ in mod.ROWS]
    per = {str(s): _synthetic_seed(rng, keys) for s in range(6)}
    data = {"command": "`x`", "elapsed_s": 1.0, "when": "2026-11-30", "samples": 64,
            "per_seed": per}
    assert mod.earlier_seeds({"per_seed": {s: per[s] for s in "012"}}, per) == [0, 1, 2]
    doc = mod.render({**data, "earlier_seeds": [0, 1, 2]})
    label, a, b, nd = mod.CLAIMS[2]
    old = mod._compare({s: per[s] for s in "012"}, a, b, nd)
    new = mod._compare(per, a, b, nd)
    assert f"| {label} | {old['text']} | {new['text']} |" in doc
    assert "seeds 0–2 (3)" in doc and "verdict (3 → 6 seeds)" in doc
    assert "### With more seeds" not in mod.render(data)
