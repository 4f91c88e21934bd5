"""crowdlearn.files.replace_text: whole or not at all, no temporary file left, and the writers
that use it (the sweep's files, the calibration caches)."""

from __future__ import annotations

import os

import pytest

from crowdlearn.files import replace_text


def test_a_failed_write_keeps_the_old_text_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    p = tmp_path / "table.csv"
    replace_text(p, "old\n")

    def torn(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", torn)
    with pytest.raises(OSError, match="No space left"):
        replace_text(p, "new\n")
    monkeypatch.undo()
    assert p.read_text() == "old\n"
    assert [f.name for f in tmp_path.iterdir()] == ["table.csv"]


def test_the_new_file_gets_the_umask_not_a_private_mode(tmp_path):
    old = os.umask(0o022)
    try:
        replace_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_a_calibration_cache_is_written_through_it_with_nothing_left_beside(tmp_path, monkeypatch):
    import crowdlearn.crypto.costs as cc

    monkeypatch.setenv("CROWDLEARN_CACHE", str(tmp_path))
    monkeypatch.delenv("CROWDLEARN_RECALIBRATE", raising=False)
    monkeypatch.setattr(cc, "machine_load",
                        lambda: {"load_average_1min": 0.1, "cpus": 2, "loaded": False})
    values = cc.cached_calibration("probe", lambda: {"x": 2.5})
    path = cc.cache_path("probe")
    assert path.exists() and values["x"] == 2.5
    assert [f.name for f in path.parent.iterdir()] == [path.name]
