"""Behaviour of crowdlearn.data: dataset loading (sklearn sets, Fashion-MNIST) and partitioners."""

from __future__ import annotations

import doctest
import gzip
import importlib
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import crowdlearn.data
from crowdlearn.data import (
    PARTITIONERS,
    Dataset,
    fashion_mnist_available,
    load_dataset,
    partition,
    partition_stats,
)
from crowdlearn.data import datasets as ds_mod
from crowdlearn.errors import CrowdlearnError, DatasetNotFoundError

# crowdlearn.data.partition is shadowed by the re-exported function of the same name
part_mod = importlib.import_module("crowdlearn.data.partition")

HYPO = settings(max_examples=30, deadline=None)


def require_fashion(path: str | os.PathLike | None = None) -> None:
    """Skip when Fashion-MNIST is absent, except under CI (``CI=true``) where absence fails."""
    if fashion_mnist_available(path):
        return
    where = path if path is not None else "any default location"
    reason = f"Fashion-MNIST not found at {where} (apt-get install dataset-fashion-mnist)"
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def test_require_fashion_skips_locally_and_fails_under_ci(tmp_path, monkeypatch):
    absent = tmp_path / "no-fashion"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="dataset-fashion-mnist"):
        require_fashion(absent)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_fashion(absent)


# ------------------------------------------------------------------------------------------
# scikit-learn sets

SKLEARN = {
    # name: (n_total, n_features, num_classes, image_shape, task)
    "digits": (1797, 64, 10, (8, 8, 1), "classification"),
    "breast_cancer": (569, 30, 2, None, "classification"),
    "diabetes": (442, 10, 0, None, "regression"),
}


@pytest.mark.parametrize("name", sorted(SKLEARN))
def test_sklearn_set_shapes_dtypes_and_split(name):
    n, d, classes, image_shape, task = SKLEARN[name]
    ds = load_dataset(name)
    assert isinstance(ds, Dataset)
    assert ds.name == name and ds.task == task
    assert ds.num_classes == classes and ds.image_shape == image_shape
    n_test = int(np.ceil(n * 0.25))
    assert ds.x_train.shape == (n - n_test, d) and ds.x_test.shape == (n_test, d)
    assert ds.num_train == n - n_test and ds.num_features == d
    assert ds.x_train.dtype == ds.x_test.dtype == np.float32
    want_y = np.int64 if task == "classification" else np.float32
    assert ds.y_train.dtype == ds.y_test.dtype == want_y
    assert ds.y_train.shape == (n - n_test,) and ds.y_test.shape == (n_test,)
    for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        assert not a.flags.writeable
        assert np.all(np.isfinite(a))
    if task == "classification":
        assert set(np.unique(ds.y_train)) == set(range(classes))


@pytest.mark.parametrize("name", ["digits", "breast_cancer"])
def test_classification_split_is_stratified(name):
    ds = load_dataset(name, seed=3)
    y_all = np.concatenate([ds.y_train, ds.y_test])
    total = np.bincount(y_all, minlength=ds.num_classes)
    test = np.bincount(ds.y_test, minlength=ds.num_classes)
    expected = total * len(ds.y_test) / len(y_all)
    assert np.all(np.abs(test - expected) <= 1.0)


@pytest.mark.parametrize("name", sorted(SKLEARN))
def test_sklearn_split_is_deterministic_per_seed(name):
    a, b, c = load_dataset(name, seed=7), load_dataset(name, seed=7), load_dataset(name, seed=8)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.y_train, c.y_train) or not np.array_equal(a.x_train, c.x_train)


def test_feature_scaling():
    digits = load_dataset("digits")
    assert digits.x_train.min() == 0.0 and digits.x_train.max() == 1.0
    for name in ("breast_cancer", "diabetes"):
        # default: the constants come from the public (test) part, never the participants' rows
        ds = load_dataset(name)
        np.testing.assert_allclose(ds.x_test.mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(ds.x_test.std(axis=0), 1.0, atol=1e-4)
        assert np.all(np.abs(ds.x_train.mean(axis=0)) < 0.5)
        # ... so the training rows' scaled values do not depend on the other training rows:
        # the old (train-statistics) scaling maps back to the same raw rows by a different map
        tr = load_dataset(name, standardise="train")
        np.testing.assert_allclose(tr.x_train.mean(axis=0), 0.0, atol=1e-5)
        assert not np.allclose(ds.x_train, tr.x_train)
    diabetes = load_dataset("diabetes")
    assert abs(float(diabetes.y_test.mean())) < 1e-5
    assert abs(float(diabetes.y_test.std()) - 1.0) < 1e-4
    with pytest.raises(CrowdlearnError, match="standardise"):
        load_dataset("diabetes", standardise="all")


def test_public_standardisation_ignores_a_changed_training_row():
    """Replace one training row: with public constants every other row's features are unchanged
    (the preprocessing is outside no participant's guarantee); with train statistics they move."""
    from crowdlearn.data.datasets import _standardise
    rng = np.random.default_rng(0)
    train, test = rng.normal(5, 3, (50, 4)), rng.normal(5, 3, (20, 4))
    other = train.copy()
    other[0] = 1e3
    for source, same in (("public", True), ("train", False)):
        a, _ = _standardise(train, test, source)
        b, _ = _standardise(other, test, source)
        assert np.allclose(a[1:], b[1:]) is same


def test_names_are_normalised_and_unknown_names_list_the_valid_ones():
    assert load_dataset("Digits").name == "digits"
    assert load_dataset("breast-cancer").name == "breast_cancer"
    with pytest.raises(CrowdlearnError) as exc:
        load_dataset("mnist")
    msg = str(exc.value)
    for valid in ("digits", "breast_cancer", "diabetes", "fashion_mnist"):
        assert valid in msg


def test_path_is_rejected_for_sklearn_sets(tmp_path):
    with pytest.raises(CrowdlearnError, match="fashion_mnist"):
        load_dataset("digits", path=tmp_path)


def test_dataset_rejects_inconsistent_arrays():
    x = np.zeros((4, 3), np.float32)
    y = np.zeros(4, np.int64)
    with pytest.raises(ValueError):
        Dataset("t", x, y[:3], x, y, 2, None, "classification")
    with pytest.raises(ValueError):
        Dataset("t", x.astype(np.float64), y, x, y, 2, None, "classification")
    with pytest.raises(ValueError):
        Dataset("t", x, y, x, y, 0, None, "classification")
    with pytest.raises(ValueError):
        Dataset("t", x, y.astype(np.float32), x, y.astype(np.float32), 0, (2, 2, 1), "regression")
    ok = Dataset("t", x, y, x, y, 2, None, "classification")
    assert ok.num_features == 3 and ok.num_train == 4 and "t" in repr(ok)


# ------------------------------------------------------------------------------------------
# Fashion-MNIST from the real files


def test_fashion_mnist_from_debian_path():
    require_fashion(ds_mod.DEBIAN_FASHION_MNIST_DIR)
    ds = load_dataset("fashion_mnist", path=ds_mod.DEBIAN_FASHION_MNIST_DIR)
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.image_shape == (28, 28, 1) and ds.num_classes == 10 and ds.task == "classification"
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert ds.x_test.min() >= 0.0 and ds.x_test.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(ds.y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
    for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        assert not a.flags.writeable
    # cached in-process: a second call (by alias) returns the very same object
    assert load_dataset("fashion-mnist", path=ds_mod.DEBIAN_FASHION_MNIST_DIR) is ds


def test_fashion_mnist_default_lookup_finds_debian(monkeypatch):
    require_fashion(ds_mod.DEBIAN_FASHION_MNIST_DIR)
    monkeypatch.delenv(ds_mod.FASHION_MNIST_ENV, raising=False)
    assert fashion_mnist_available()
    ds = load_dataset("fashion_mnist")
    assert ds is load_dataset("fashion_mnist", path=ds_mod.DEBIAN_FASHION_MNIST_DIR)


# ------------------------------------------------------------------------------------------
# Fashion-MNIST from synthetic files


def _idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + arr.tobytes()


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    data = _idx_bytes(arr)
    if gz:
        with gzip.open(f"{path}.gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def _synthetic(seed: int = 0):
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    x_train[0, 0, 0], x_train[0, 0, 1] = 0, 255
    y_train = np.arange(12, dtype=np.uint8) % 10
    x_test = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    y_test = np.array([9, 0, 3, 3, 1], dtype=np.uint8)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _write_idx_dir(directory: Path, arrays: dict, gz: bool | list[bool]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    gzs = gz if isinstance(gz, list) else [gz] * 4
    for (key, stem), z in zip(ds_mod.FASHION_MNIST_FILES.items(), gzs, strict=True):
        _write_idx(directory / stem, arrays[key], z)
    return directory


def _assert_matches(ds: Dataset, arrays: dict) -> None:
    assert ds.name == "fashion_mnist" and ds.image_shape == (28, 28, 1) and ds.num_classes == 10
    for split in ("train", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        raw = arrays[f"x_{split}"]
        assert x.dtype == np.float32 and x.shape == (raw.shape[0], 784)
        np.testing.assert_allclose(x, raw.reshape(raw.shape[0], -1) / 255.0, rtol=0, atol=1e-7)
        assert y.dtype == np.int64
        np.testing.assert_array_equal(y, arrays[f"y_{split}"])
        assert not x.flags.writeable and not y.flags.writeable
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0


@pytest.mark.parametrize(
    "gz", [True, False, [True, False, False, True]], ids=["gz", "plain", "mixed"]
)
def test_fashion_from_idx_directory(tmp_path, gz):
    arrays = _synthetic()
    d = _write_idx_dir(tmp_path / "fm", arrays, gz)
    assert fashion_mnist_available(d)
    _assert_matches(load_dataset("fashion_mnist", path=d), arrays)


def test_fashion_from_npz(tmp_path):
    arrays = _synthetic(1)
    f = tmp_path / "fashion.npz"
    np.savez(f, **arrays)
    _assert_matches(load_dataset("fashion-mnist", path=str(f)), arrays)


def test_fashion_from_env_var(tmp_path, monkeypatch):
    arrays = _synthetic(2)
    d = _write_idx_dir(tmp_path / "env", arrays, True)
    monkeypatch.setenv(ds_mod.FASHION_MNIST_ENV, str(d))
    _assert_matches(load_dataset("fashion_mnist"), arrays)


def test_invalid_env_var_is_reported_not_skipped(tmp_path, monkeypatch):
    bad = tmp_path / "nowhere"
    monkeypatch.setenv(ds_mod.FASHION_MNIST_ENV, str(bad))
    with pytest.raises(DatasetNotFoundError) as exc:
        load_dataset("fashion_mnist")
    assert ds_mod.FASHION_MNIST_ENV in str(exc.value) and str(bad) in str(exc.value)
    assert not fashion_mnist_available()


def _hide_default_locations(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv(ds_mod.FASHION_MNIST_ENV, raising=False)
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setattr(ds_mod, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_fashion_from_keras_cache(tmp_path, monkeypatch):
    home = _hide_default_locations(tmp_path, monkeypatch)
    arrays = _synthetic(3)
    _write_idx_dir(home / ".keras" / "datasets" / "fashion-mnist", arrays, True)
    _assert_matches(load_dataset("fashion_mnist"), arrays)


def test_fashion_absent_everywhere_lists_places_and_fix(tmp_path, monkeypatch):
    home = _hide_default_locations(tmp_path, monkeypatch)
    assert not fashion_mnist_available()
    with pytest.raises(DatasetNotFoundError) as exc:
        load_dataset("fashion_mnist")
    msg = str(exc.value)
    assert str(tmp_path / "no-debian") in msg
    assert str(home / ".keras" / "datasets" / "fashion-mnist") in msg
    assert ds_mod.FASHION_MNIST_ENV in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "data.path" in msg and ".npz" in msg


def test_missing_path_names_the_path(tmp_path):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(DatasetNotFoundError) as exc:
        load_dataset("fashion_mnist", path=missing)
    msg = str(exc.value)
    assert str(missing) in msg and "train-images-idx3-ubyte" in msg and ".npz" in msg
    assert not fashion_mnist_available(missing)


def test_incomplete_directory_names_missing_files(tmp_path):
    d = _write_idx_dir(tmp_path / "fm", _synthetic(), True)
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_dataset("fashion_mnist", path=d)


def test_npz_missing_key_and_non_npz_file(tmp_path):
    arrays = _synthetic()
    f = tmp_path / "partial.npz"
    np.savez(f, x_train=arrays["x_train"], y_train=arrays["y_train"])
    with pytest.raises(DatasetNotFoundError, match="x_test"):
        load_dataset("fashion_mnist", path=f)
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(DatasetNotFoundError, match="npz"):
        load_dataset("fashion_mnist", path=txt)


def _corrupt(tmp_path: Path, stem: str, payload: bytes, *, gz: bool) -> Path:
    d = _write_idx_dir(tmp_path / "fm", _synthetic(), gz)
    target = d / (f"{stem}.gz" if gz else stem)
    if gz:
        with gzip.open(target, "wb") as fh:
            fh.write(payload)
    else:
        target.write_bytes(payload)
    return target


@pytest.mark.parametrize(
    ("payload", "gz", "match"),
    [
        (b"\x12\x34\x56\x78" + bytes(100), False, "magic"),
        (_idx_bytes(np.zeros((12, 28, 28)))[:-10], True, "truncated"),
        (_idx_bytes(np.zeros((12, 28, 28))) + b"extra", False, "truncated or corrupt"),
        (_idx_bytes(np.zeros((12, 784))), False, "dimension"),
        (b"", True, "magic"),
    ],
    ids=["bad-magic", "truncated", "trailing-bytes", "wrong-ndim", "empty"],
)
def test_corrupt_idx_gives_clear_error(tmp_path, payload, gz, match):
    target = _corrupt(tmp_path, "train-images-idx3-ubyte", payload, gz=gz)
    with pytest.raises(CrowdlearnError, match=match) as exc:
        load_dataset("fashion_mnist", path=target.parent)
    assert str(target) in str(exc.value)


def test_broken_gzip_stream_gives_clear_error(tmp_path):
    d = _write_idx_dir(tmp_path / "fm", _synthetic(), True)
    target = d / "train-labels-idx1-ubyte.gz"
    target.write_bytes(b"\x1f\x8b\x08\x00garbage-not-deflate")
    with pytest.raises(CrowdlearnError, match="cannot read IDX file") as exc:
        load_dataset("fashion_mnist", path=d)
    assert str(target) in str(exc.value)


def test_labels_out_of_range_and_count_mismatch(tmp_path):
    arrays = _synthetic()
    arrays["y_test"] = np.array([1, 2, 3, 4, 10], dtype=np.uint8)
    d = _write_idx_dir(tmp_path / "a", arrays, False)
    with pytest.raises(CrowdlearnError, match=r"\[0, 10\)"):
        load_dataset("fashion_mnist", path=d)
    arrays = _synthetic()
    arrays["y_train"] = arrays["y_train"][:-1]
    d = _write_idx_dir(tmp_path / "b", arrays, False)
    with pytest.raises(CrowdlearnError, match="12 images"):
        load_dataset("fashion_mnist", path=d)


def test_cache_is_invalidated_when_files_change(tmp_path):
    d = _write_idx_dir(tmp_path / "fm", _synthetic(0), False)
    first = load_dataset("fashion_mnist", path=d)
    assert load_dataset("fashion_mnist", path=d) is first
    arrays = _synthetic(5)
    _write_idx_dir(d, arrays, False)
    for f in d.iterdir():
        os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    second = load_dataset("fashion_mnist", path=d)
    assert second is not first
    _assert_matches(second, arrays)


# ------------------------------------------------------------------------------------------
# partitioners


def _labels_case(draw, *, max_n=300, max_classes=12):
    n = draw(st.integers(1, max_n))
    classes = draw(st.integers(1, max_classes))
    seed = draw(st.integers(0, 2**32 - 1))
    labels = np.random.default_rng(seed).integers(0, classes, size=n)
    k = draw(st.integers(1, n))
    return labels, k, np.random.default_rng(seed + 1)


@st.composite
def method_cases(draw):
    labels, k, rng = _labels_case(draw)
    n = labels.size
    method = draw(st.sampled_from(sorted(PARTITIONERS)))
    params: dict = {}
    if method == "dirichlet":
        params["alpha"] = draw(st.sampled_from([0.001, 0.05, 0.5, 1.0, 10.0, 1000.0]))
        params["min_size"] = draw(st.integers(0, n // k))
    elif method == "quantity":
        params["sigma"] = draw(st.floats(0.0, 3.0))
        params["min_size"] = draw(st.integers(0, n // k))
    elif method == "shards":
        params["shards_per_device"] = draw(st.integers(1, max(1, n // k)))
    return labels, k, rng, method, params


def _assert_exact_cover(parts, n, k):
    assert len(parts) == k
    for p in parts:
        assert isinstance(p, np.ndarray) and p.dtype == np.int64 and p.ndim == 1
        assert np.all(np.diff(p) > 0), "indices must be sorted and unique within a device"
    joined = np.concatenate(parts)
    assert joined.size == n, "every index exactly once (no overlap, nothing dropped)"
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))


@HYPO
@given(method_cases())
def test_every_method_is_an_exact_disjoint_cover(case):
    labels, k, rng, method, params = case
    parts = partition(labels, k, method=method, rng=rng, **params)
    _assert_exact_cover(parts, labels.size, k)
    sizes = np.array([len(p) for p in parts])
    if "min_size" in params:
        assert sizes.min() >= params["min_size"]
    if method == "iid":
        assert sizes.max() - sizes.min() <= 1
    if method == "shards":
        s = params["shards_per_device"]
        num_shards = k * s
        assert np.all(sizes >= s * (labels.size // num_shards))
        assert np.all(sizes <= s * -(-labels.size // num_shards))


@HYPO
@given(method_cases())
def test_same_seed_same_partition(case):
    labels, k, _, method, params = case
    a = partition(labels, k, method=method, rng=np.random.default_rng(11), **params)
    b = partition(labels, k, method=method, rng=np.random.default_rng(11), **params)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@HYPO
@given(
    classes=st.integers(2, 10),
    per_class=st.integers(1, 40),
    k=st.integers(1, 15),
    s=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_shards_limit_labels_per_device(classes, per_class, k, s, seed):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(classes), per_class + rng.integers(0, 3, classes)))
    n = labels.size
    if k * s > n:
        with pytest.raises(CrowdlearnError, match="shards|devices"):
            partition(labels, k, method="shards", shards_per_device=s, rng=rng)
        return
    parts = partition(labels, k, method="shards", shards_per_device=s, rng=rng)
    _assert_exact_cover(parts, n, k)
    shard_len = -(-n // (k * s))
    if np.bincount(labels).min() >= shard_len:  # then no shard can straddle three classes
        for p in parts:
            assert np.unique(labels[p]).size <= 2 * s


def _mean_label_entropy(parts, labels, num_classes):
    counts = partition_stats(parts, labels, num_classes).astype(float)
    p = counts / counts.sum(axis=1, keepdims=True)
    logp = np.log(np.where(p > 0, p, 1.0))
    return float(np.mean(-(p * logp).sum(axis=1)))


@settings(max_examples=20, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1))
def test_dirichlet_small_alpha_is_more_skewed(seed):
    labels = np.repeat(np.arange(10), 100)
    rng = np.random.default_rng(seed)
    skewed = partition(labels, 10, method="dirichlet", alpha=0.05, rng=rng)
    flat = partition(labels, 10, method="dirichlet", alpha=100.0, rng=rng)
    h_skewed = _mean_label_entropy(skewed, labels, 10)
    h_flat = _mean_label_entropy(flat, labels, 10)
    assert h_flat > 0.95 * np.log(10), "large alpha should be close to uniform labels per device"
    assert h_skewed < h_flat - 1.0, (h_skewed, h_flat)


def test_dirichlet_tiny_alpha_many_devices_still_meets_min_size():
    labels = np.repeat(np.arange(10), 50)
    parts = partition(
        labels, 50, method="dirichlet", alpha=0.001, min_size=3, rng=np.random.default_rng(0)
    )
    _assert_exact_cover(parts, labels.size, 50)
    assert min(len(p) for p in parts) >= 3
    # the repair moves few samples: most devices still hold a single class
    stats = partition_stats(parts, labels, 10)
    assert np.median((stats > 0).sum(axis=1)) <= 2


def test_quantity_sizes_are_skewed_and_contents_iid():
    rng = np.random.default_rng(4)
    flat = [len(p) for p in partition(10_000, 20, method="quantity", sigma=0.0, rng=rng)]
    assert max(flat) - min(flat) <= 1
    skewed = [len(p) for p in partition(10_000, 20, method="quantity", sigma=2.0, rng=rng)]
    assert max(skewed) > 5 * np.median(skewed)


@pytest.mark.parametrize("method", ["iid", "quantity"])
def test_regression_targets_work_with_iid_and_quantity(method):
    y = load_dataset("diabetes").y_train
    parts = partition(y, 7, method=method, rng=np.random.default_rng(0))
    _assert_exact_cover(parts, y.size, 7)


@pytest.mark.parametrize(("method", "params"), [("dirichlet", {"alpha": 1.0}), ("shards", {})])
def test_class_methods_reject_regression_targets(method, params):
    y = load_dataset("diabetes").y_train
    with pytest.raises(CrowdlearnError, match="regression") as exc:
        partition(y, 7, method=method, rng=np.random.default_rng(0), **params)
    assert "iid" in str(exc.value) and "quantity" in str(exc.value)


@pytest.mark.parametrize(
    ("method", "params"),
    [("iid", {}), ("dirichlet", {"alpha": 1.0}), ("shards", {}), ("quantity", {})],
)
def test_more_devices_than_samples_is_an_error(method, params):
    with pytest.raises(CrowdlearnError, match="11 devices"):
        partition(np.arange(10) % 2, 11, method=method, rng=np.random.default_rng(0), **params)


def test_bad_method_and_params_are_reported():
    labels = np.arange(20) % 4
    rng = np.random.default_rng(0)
    with pytest.raises(CrowdlearnError) as exc:
        partition(labels, 2, method="pathological", rng=rng)
    assert all(m in str(exc.value) for m in ("iid", "dirichlet", "shards", "quantity"))
    with pytest.raises(CrowdlearnError) as exc:
        partition(labels, 2, method="dirichlet", alpha=1.0, beta=2, rng=rng)
    assert "beta" in str(exc.value) and "alpha" in str(exc.value) and "min_size" in str(exc.value)
    with pytest.raises(CrowdlearnError, match="none"):
        partition(labels, 2, method="iid", alpha=1.0, rng=rng)
    with pytest.raises(CrowdlearnError, match="alpha"):
        partition(labels, 2, method="dirichlet", rng=rng)
    for alpha in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(CrowdlearnError, match="alpha"):
            partition(labels, 2, method="dirichlet", alpha=alpha, rng=rng)
    with pytest.raises(CrowdlearnError, match="min_size"):
        partition(labels, 5, method="dirichlet", alpha=1.0, min_size=5, rng=rng)
    with pytest.raises(CrowdlearnError, match="min_size"):
        partition(labels, 5, method="quantity", min_size=5, rng=rng)
    with pytest.raises(CrowdlearnError, match="sigma"):
        partition(labels, 2, method="quantity", sigma=-1.0, rng=rng)
    with pytest.raises(CrowdlearnError, match="shards_per_device"):
        partition(labels, 2, method="shards", shards_per_device=0, rng=rng)
    with pytest.raises(CrowdlearnError, match="num_devices"):
        partition(labels, 0, rng=rng)
    with pytest.raises(TypeError, match="Generator"):
        partition(labels, 2, rng=np.random.RandomState(0))


def test_global_rng_is_never_touched():
    np.random.seed(1234)
    before = np.random.get_state()[1].copy()
    labels = np.arange(200) % 5
    for method, params in [
        ("iid", {}),
        ("dirichlet", {"alpha": 0.01}),
        ("shards", {}),
        ("quantity", {}),
    ]:
        partition(labels, 30, method=method, rng=np.random.default_rng(0), **params)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_partition_stats_counts_per_device():
    labels = np.array([0, 1, 2, 2, 1, 0, 0])
    parts = [np.array([0, 1, 2]), np.array([3, 4]), np.array([5, 6])]
    stats = partition_stats(parts, labels, 4)
    assert stats.dtype == np.int64
    np.testing.assert_array_equal(stats, [[1, 1, 1, 0], [0, 1, 1, 0], [2, 0, 0, 0]])
    with pytest.raises(CrowdlearnError):
        partition_stats(parts, labels, 2)
    digits = load_dataset("digits")
    parts = partition(digits.y_train, 9, method="shards", rng=np.random.default_rng(0))
    stats = partition_stats(parts, digits.y_train, 10)
    np.testing.assert_array_equal(stats.sum(axis=0), np.bincount(digits.y_train, minlength=10))


# ------------------------------------------------------------------------------------------
# package surface and documentation


def test_public_api():
    assert set(crowdlearn.data.__all__) == {
        "Dataset",
        "load_dataset",
        "fashion_mnist_available",
        "cifar10_problem",
        "partition",
        "PARTITIONERS",
        "partition_stats",
    }
    assert set(PARTITIONERS) == {"iid", "dirichlet", "shards", "quantity"}


@pytest.mark.parametrize("module", [ds_mod, part_mod], ids=["datasets", "partition"])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
