"""CIFAR-10 from a user's path: the python-pickle batches (directory or .tar.gz), never downloaded;
bad paths are config errors; the paper's CNN runs on its 32×32×3 images in a Crowdlearning fleet.

Every test writes a tiny synthetic set in the official format (pickled dicts with ``b"data"``,
uint8 N × 3072 rows of 1024 red, 1024 green, 1024 blue pixels, and ``b"labels"``).
"""
import pickle
import tarfile

import numpy as np
import pytest

from crowdlearn.config import from_dict
from crowdlearn.data.datasets import CIFAR10_FILES, cifar10_problem, load_dataset
from crowdlearn.errors import ConfigError, CrowdlearnError, DatasetNotFoundError


def write_cifar(root, per_batch=12, test=10, seed=0):
    """A ``cifar-10-batches-py`` directory under ``root``; returns it and the raw arrays."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir()
    raw = {}
    for name in CIFAR10_FILES:
        n = test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        raw[name] = (data, labels)
        with open(d / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels,
                         b"filenames": [b"x.png"] * n}, f)
    return d, raw


def test_directory_loads_channels_last_scaled_with_the_official_split(tmp_path):
    d, raw = write_cifar(tmp_path)
    ds = load_dataset("cifar10", path=d)
    assert ds.name == "cifar10" and ds.image_shape == (32, 32, 3) and ds.num_classes == 10
    assert ds.x_train.shape == (5 * 12, 3072) and ds.x_test.shape == (10, 3072)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    # sample 13 is data_batch_2's second row; pixel (row 4, col 7) of each channel
    data, labels = raw["data_batch_2"]
    img = ds.x_train[13].reshape(32, 32, 3)
    for c in range(3):
        assert img[4, 7, c] == np.float32(data[1, c * 1024 + 4 * 32 + 7]) / np.float32(255)
    assert ds.y_train[13] == labels[1]
    assert ds.y_test.tolist() == raw["test_batch"][1]
    assert load_dataset("cifar-10".replace("-", ""), path=d) is ds      # cached per source


def test_the_tar_gz_of_the_directory_gives_the_same_arrays(tmp_path):
    d, _ = write_cifar(tmp_path)
    arc = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(arc, "w:gz") as tar:
        tar.add(d, arcname="cifar-10-batches-py")
    a, b = load_dataset("cifar10", path=d), load_dataset("cifar10", path=arc)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)


def test_missing_path_or_batch_is_a_config_error_naming_the_path_and_the_layout(tmp_path):
    d, _ = write_cifar(tmp_path)
    (d / "data_batch_3").unlink()
    with pytest.raises(ConfigError) as e:
        from_dict({"data": {"dataset": "cifar10", "path": str(d)}})
    msg = str(e.value)
    assert str(d) in msg and "data_batch_3" in msg and "test_batch" in msg and "b'labels'" in msg
    with pytest.raises(ConfigError, match="never downloads"):
        from_dict({"data": {"dataset": "cifar10"}})
    assert "does not exist" in cifar10_problem(tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", path=d)


def test_the_cli_exits_with_status_2_before_running(tmp_path, capsys):
    from crowdlearn import cli

    code = cli.main(["run", "--set", "data.dataset='cifar10'", "--set",
                     f"data.path='{tmp_path / 'absent'}'", "--out", str(tmp_path / "out")])
    assert code == 2 and "absent" in capsys.readouterr().err


def test_a_pickle_naming_code_is_refused(tmp_path):
    d, _ = write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(CrowdlearnError, match="refusing to load builtins.print"):
        load_dataset("cifar10", path=d)


def test_wrong_array_shapes_are_named(tmp_path):
    d, _ = write_cifar(tmp_path)
    with open(d / "data_batch_1", "wb") as f:
        pickle.dump({b"data": np.zeros((3, 784), np.uint8), b"labels": [0, 1, 2]}, f)
    with pytest.raises(CrowdlearnError, match=r"data_batch_1.*\(N, 3072\)"):
        load_dataset("cifar10", path=d)


def test_paper_cnn_crowdlearning_runs_on_a_cifar_format_set(tmp_path):
    """The paper's CNN on 32×32×3 (flatten 5·5·128 = 3,200), 4 devices in one group of 4 (3
    pieces): one epoch completes, boundary traffic flows, the accuracy is a probability."""
    from crowdlearn.experiment import Simulation

    d, _ = write_cifar(tmp_path, per_batch=16, test=16)
    cfg = from_dict({"protocol": "crowdlearning", "rounds": 1, "seed": 3,
                     "data": {"dataset": "cifar10", "path": str(d)},
                     "fleet": {"devices": 4, "cells": 1},
                     "slicenet": {"model": "paper-cnn", "group_size": 4, "batch_size": 8}})
    sim = Simulation(cfg)
    res = sim.run()
    desc = sim.ctx.extra["desc"]
    assert tuple(desc.input_shape) == (32, 32, 3)
    assert res.summary["completed"] and len(res.metrics) == 1
    assert 0.0 <= res.metrics[0]["accuracy"] <= 1.0
    assert res.summary["bytes_by_kind"]["boundary"] > 0
