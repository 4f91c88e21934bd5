"""Unreliable participants (crowdlearn.data.quality)."""
import numpy as np
import pytest

from crowdlearn.data.quality import KINDS, assignment, corrupt, cross_check, from_config, stream


def fleet(n=600, d=5, devices=6, classes=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, size=(n, d)).astype(np.float32)
    y = rng.integers(0, classes, n).astype(np.int64) if classes else \
        rng.normal(size=n).astype(np.float32)
    parts = np.array_split(rng.permutation(n), devices)
    return x, y, [np.sort(p).astype(np.int64) for p in parts]


@pytest.mark.parametrize("rate", [1.0, 0.3, 0.0])
@pytest.mark.parametrize("classes", [2, 5, 0])
def test_label_flip_changes_exactly_the_configured_share(rate, classes):
    x, y, parts = fleet(classes=classes)
    c = corrupt(x, y, parts, {1: "label_flip", 4: "label_flip"}, rng=np.random.default_rng(1),
                num_classes=classes, flip_rate=rate)
    for d in (1, 4):
        n = parts[d].size
        old, new = y[parts[d]], c.y[c.parts[d]]
        assert np.array_equal(c.x[c.parts[d]], x[parts[d]])          # features untouched
        if classes:
            assert np.sum(old != new) == round(rate * n) == c.changed[d]
            assert set(np.unique(new)) <= set(range(classes))
        else:
            flipped = ~np.isclose(old, new)
            assert np.sum(flipped) == round(rate * n)
            assert np.allclose(new[flipped], -old[flipped])
    for d in (0, 2, 3, 5):                                            # clean devices: same rows
        assert np.array_equal(c.parts[d], parts[d])


def test_corrupted_rows_are_appended_once_and_originals_kept():
    x, y, parts = fleet()
    c = corrupt(x, y, parts, {0: "feature_noise", 3: "random", 5: "label_flip"},
                rng=np.random.default_rng(2), num_classes=2)
    assert c.base_rows == x.shape[0]
    assert c.x.shape[0] == x.shape[0] + sum(parts[d].size for d in (0, 3, 5))
    assert np.array_equal(c.x[:x.shape[0]], x) and np.array_equal(c.y[:x.shape[0]], y)
    new = np.concatenate([c.parts[d] for d in (0, 3, 5)])
    assert np.array_equal(np.sort(new), np.arange(x.shape[0], c.x.shape[0]))
    assert c.x.dtype == x.dtype and c.y.dtype == y.dtype and c.unreliable == [0, 3, 5]


def test_feature_noise_and_random_data_have_the_configured_distributions():
    x, y, parts = fleet(n=6000, classes=3)
    c = corrupt(x, y, parts, {0: "feature_noise", 1: "random"}, rng=np.random.default_rng(3),
                num_classes=3, feature_sigma=0.5)
    diff = c.x[c.parts[0]] - x[parts[0]]
    assert diff.std() == pytest.approx(0.5, rel=0.05) and abs(diff.mean()) < 0.03
    assert np.array_equal(c.y[c.parts[0]], y[parts[0]])
    rnd = c.x[c.parts[1]]
    assert np.allclose(rnd.mean(0), x.mean(0), atol=0.2) and np.allclose(rnd.std(0), x.std(0),
                                                                          rtol=0.1)
    counts = np.bincount(c.y[c.parts[1]], minlength=3)
    assert counts.min() > 250                              # labels uniform over 3 classes


def test_underrepresented_keeps_a_share_of_the_chosen_classes():
    x, y, parts = fleet(n=1200, classes=4)
    c = corrupt(x, y, parts, {2: "underrepresented"}, rng=np.random.default_rng(4),
                num_classes=4, keep_fraction=0.1, classes=(1, 3))
    before, after = np.bincount(y[parts[2]], minlength=4), np.bincount(c.y[c.parts[2]],
                                                                        minlength=4)
    for k in (1, 3):
        assert after[k] == np.ceil(0.1 * before[k])
    assert after[0] == before[0] and after[2] == before[2]
    assert c.x.shape == x.shape                              # indices only, no new rows
    assert set(c.parts[2].tolist()) <= set(parts[2].tolist())
    with pytest.raises(ValueError, match="classification"):
        corrupt(*fleet(classes=0), {0: "underrepresented"}, rng=np.random.default_rng(0))


def test_assignment_by_fraction_or_mapping_and_reproducible():
    a = assignment(20, fraction=0.3, rng=np.random.default_rng(5))
    assert len(a) == 6 and set(a.values()) == {"label_flip"}
    assert a == assignment(20, fraction=0.3, rng=np.random.default_rng(5))
    b = assignment(20, fraction=0.1, kind="random", devices={"7": "feature_noise"},
                   rng=np.random.default_rng(5))
    assert b[7] == "feature_noise" and sum(v == "random" for v in b.values()) >= 1
    with pytest.raises(ValueError):
        assignment(5, devices={"9": "label_flip"}, rng=np.random.default_rng(0))
    with pytest.raises(ValueError):
        assignment(5, kind="bogus", rng=np.random.default_rng(0))


def test_from_config_is_seeded_by_the_quality_stream():
    x, y, parts = fleet(devices=10)
    sec = {"fraction": 0.3, "kind": "label_flip", "devices": {}, "flip_rate": 1.0,
           "feature_sigma": 1.0, "keep_fraction": 0.1, "classes": []}
    a = from_config(sec, x, y, parts, num_classes=2, seed=3)
    b = from_config(sec, x, y, parts, num_classes=2, seed=3)
    assert a.unreliable == b.unreliable and np.array_equal(a.y, b.y) and len(a.unreliable) == 3
    assert from_config(sec, x, y, parts, num_classes=2, seed=4).unreliable != a.unreliable or \
        not np.array_equal(from_config(sec, x, y, parts, num_classes=2, seed=4).y, a.y)
    child = np.random.SeedSequence(3).spawn(7)[6]
    assert stream(3).integers(1 << 30) == np.random.default_rng(child).integers(1 << 30)
    assert cross_check({**sec, "kind": "underrepresented"}, task="regression")
    assert cross_check({**sec, "devices": {"x": "label_flip"}})
    assert cross_check(sec, task="classification") == []
    assert set(KINDS) == {"label_flip", "feature_noise", "random", "underrepresented"}


def test_config_section():
    from crowdlearn.data.quality import CONFIG_SECTION
    assert set(CONFIG_SECTION) == {"fraction", "kind", "devices", "flip_rate", "feature_sigma",
                                   "keep_fraction", "classes"}
    assert CONFIG_SECTION["kind"].choices == KINDS


def test_class_zero_can_be_under_represented_and_classes_outside_the_dataset_are_refused():
    from crowdlearn.config import ConfigError
    from crowdlearn.config import from_dict as resolve
    from crowdlearn.errors import CrowdlearnError
    cfg = resolve({"protocol": "fm", "data": {"dataset": "breast_cancer"},
                   "model": {"arch": "linear"},
                   "quality": {"kind": "underrepresented", "fraction": 0.5, "classes": [0]}})
    assert list(cfg.quality.classes) == [0]                    # once refused as "must be > 0"
    with pytest.raises(ConfigError, match=r"quality\.classes\[0\]: must be >= 0; got -1"):
        resolve({"protocol": "fm", "model": {"arch": "linear"}, "quality": {"classes": [-1]}})
    with pytest.raises(ConfigError, match=r"model\.hidden\[1\]: must be >= 1; got 0"):
        resolve({"model": {"hidden": [8, 0]}})
    x, y, parts = fleet(n=1200, classes=4)
    c = corrupt(x, y, parts, {2: "underrepresented"}, rng=np.random.default_rng(4),
                num_classes=4, keep_fraction=0.1, classes=(0,))
    before, after = (np.bincount(v, minlength=4) for v in (y[parts[2]], c.y[c.parts[2]]))
    assert after[0] == np.ceil(0.1 * before[0]) < before[0]
    with pytest.raises(CrowdlearnError, match=r"quality\.classes: \[4\] not among the dataset's "
                                              r"classes 0\.\.3"):
        corrupt(x, y, parts, {2: "underrepresented"}, rng=np.random.default_rng(4),
                num_classes=4, classes=(4,))
