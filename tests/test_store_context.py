"""``PredictionWriter`` as a context manager (issue 13 item 4): on success it closes; on an error nothing
half-written stays and the error propagates; a full disk keeps the rows written before, as its message says."""

import errno

import numpy as np
import pytest

from mcdrop import io, store
from mcdrop.predictive import ClassificationPrediction


def _pred(n, seed=0):
    p = np.random.default_rng(seed).dirichlet(np.ones(3), size=(4, n))
    return ClassificationPrediction.from_samples(p)


def test_success_closes_and_the_store_reads_back(tmp_path):
    with store.PredictionWriter(tmp_path / "s") as writer:
        writer.append(_pred(5))
        writer.append(_pred(3, seed=1))
    assert all(appender.file.closed for appender in writer._files.values())
    assert store.load(tmp_path / "s").mean.shape == (8, 3)


def test_an_error_removes_what_was_written_and_propagates(tmp_path):
    with pytest.raises(RuntimeError, match="stop"):
        with store.PredictionWriter(tmp_path / "s") as writer:
            writer.append(_pred(5))
            raise RuntimeError("stop")
    assert not (tmp_path / "s").exists()


def test_an_error_leaves_other_files_of_the_folder_alone(tmp_path):
    (tmp_path / "s").mkdir()
    with pytest.raises(KeyError):
        with store.PredictionWriter(tmp_path / "s", overwrite=True) as writer:
            (tmp_path / "s" / "notes.txt").write_text("mine")
            writer.append(_pred(5))
            raise KeyError("stop")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["notes.txt"]


def test_a_full_disk_keeps_the_rows_written_before(tmp_path, monkeypatch):
    original = io.NpyAppender.append
    full = {"now": False}

    def append(self, block):
        if full["now"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, block)

    monkeypatch.setattr(io.NpyAppender, "append", append)
    with pytest.raises(store.StoreFullError, match=r"the 5 row\(s\) written before stay readable"):
        with store.PredictionWriter(tmp_path / "s") as writer:
            writer.append(_pred(5))
            full["now"] = True
            writer.append(_pred(3))
    assert store.load(tmp_path / "s").mean.shape == (5, 3)
