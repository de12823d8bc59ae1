"""Streaming predictions to disk: equal to in-memory results, memory independent of the pool, and a
full disk leaves what was written readable."""

import errno
import json
import tracemalloc

import numpy as np
import pytest

import mcdrop
from mcdrop import store
from tests.engine.conftest import mlp

X = np.random.default_rng(0).standard_normal((300, 8)).astype("float32")


def test_store_round_trips_classification_with_samples(tmp_path):
    mc = mcdrop.MCDropout(mlp(), num_samples=7, seed=0, verbose=0, batch_size=64)
    in_memory = mc.predict(X, return_samples=True)
    on_disk = mc.predict(X, return_samples=True, out=tmp_path / "preds")
    assert isinstance(on_disk.mean, np.memmap) or isinstance(on_disk.mean.base, np.memmap)
    for name in ("mean", "variance", "expected_entropy", "votes", "samples"):
        np.testing.assert_array_equal(getattr(on_disk, name), getattr(in_memory, name))
    np.testing.assert_array_equal(on_disk.mutual_information, in_memory.mutual_information)
    assert (on_disk.num_samples, on_disk.seed, on_disk.mask) == (7, 0, "consistent")
    np.testing.assert_array_equal(store.load(tmp_path / "preds").mean, in_memory.mean)
    # every file is a plain .npy numpy reads without us
    assert np.load(tmp_path / "preds" / "mean.npy").shape == (300, 3)


def test_store_round_trips_heteroscedastic_regression(tmp_path):
    model = mlp(n_out=2, activation=None)
    mc = mcdrop.MCDropout(model, num_samples=5, seed=1, verbose=0, heteroscedastic="log_variance", batch_size=50)
    ref = mc.predict(X)
    got = mc.predict(X, out=tmp_path / "reg")
    assert got.heteroscedastic and got.sample_variances.shape == (5, 300, 1)
    np.testing.assert_array_equal(got.samples, ref.samples)
    np.testing.assert_array_equal(got.interval(0.9)[0], ref.interval(0.9)[0])


def test_existing_store_is_not_overwritten_unless_asked(tmp_path):
    mc = mcdrop.MCDropout(mlp(), num_samples=2, seed=0, verbose=0)
    mc.predict(X[:10], out=tmp_path / "p")
    with pytest.raises(FileExistsError, match=r"argument `out`: expected a new or empty folder"):
        mc.predict(X[:10], out=tmp_path / "p")
    assert mc.predict(X[:20], out=tmp_path / "p", overwrite=True).mean.shape == (20, 3)


def test_streaming_to_disk_keeps_memory_independent_of_pool_size(tmp_path):
    mc = mcdrop.MCDropout(mlp(n_out=10), num_samples=5, seed=0, verbose=0, batch_size=100)

    def pool(n):  # a generator: the engine never sees the whole pool
        rng = np.random.default_rng(0)
        for _ in range(n // 500):
            yield rng.standard_normal((500, 8)).astype("float32")

    mc.predict(pool(1000), out=tmp_path / "warm")

    def peak(n, out):
        tracemalloc.start()
        mc.predict(pool(n), out=out)
        peak_bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak_bytes

    in_memory = peak(40_000, None)  # holds per-row arrays: >= 40,000 x 10 x 8 bytes x 3
    small, large = peak(2_000, tmp_path / "small"), peak(40_000, tmp_path / "large")
    assert in_memory > 40_000 * 10 * 8 * 3
    assert large < 0.1 * in_memory  # no per-row array held in memory
    assert large < 3 * small        # 20x the rows: only small garbage awaiting collection grows
    assert store.load(tmp_path / "large").mean.shape == (40_000, 10)


def test_full_disk_raises_clearly_and_leaves_written_rows_readable(tmp_path, monkeypatch):
    mc = mcdrop.MCDropout(mlp(), num_samples=4, seed=0, verbose=0, batch_size=50)
    ref = mc.predict(X)
    original = mcdrop.io.NpyAppender.append
    calls = {"n": 0}

    def append(self, block):
        calls["n"] += 1
        if calls["n"] > 2 * 4:  # four files per classification block; fail in the third block
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, block)

    monkeypatch.setattr(mcdrop.io.NpyAppender, "append", append)
    with pytest.raises(store.StoreFullError, match=r"disk is full .* the 100 row\(s\) written before stay readable"):
        mc.predict(X, out=tmp_path / "full")
    partial = store.load(tmp_path / "full")
    assert json.loads((tmp_path / "full" / "meta.json").read_text())["rows"] == 100
    np.testing.assert_array_equal(partial.mean, ref.mean[:100])
    np.testing.assert_array_equal(np.load(tmp_path / "full" / "votes.npy"), ref.votes[:100])


def test_load_refuses_a_folder_that_is_not_a_store(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"argument `path`: expected a prediction store folder"):
        store.load(tmp_path)


# --------------------------------------------------------------------------- jobs written in place


def _pred(rows, start=0, classes=3, passes=4):
    samples = np.random.default_rng(start).dirichlet(np.ones(classes), size=(passes, rows))
    return mcdrop.ClassificationPrediction.from_samples(samples, keep_samples=True, seed=0)


def test_rows_written_in_place_in_any_order_read_back_exactly(tmp_path):
    parts = [_pred(5, 0), _pred(5, 1), _pred(2, 2)]
    whole = mcdrop.predictive.concatenate(parts)
    store.create(tmp_path, parts[0], 12)
    assert json.loads((tmp_path / "meta.json").read_text())["complete"] is False
    (tmp_path / "job.json").write_text("{}")
    for group, start in ((2, 10), (0, 0), (1, 5)):  # the order tasks finish in
        store.write_rows(tmp_path, parts[group], start)
        store.mark_done(tmp_path, group, start, start + len(parts[group]), {"top": np.arange(2) + start})
    assert store.done_groups(tmp_path) == {0: (0, 5), 1: (5, 10), 2: (10, 12)}
    np.testing.assert_array_equal(store.read_done(tmp_path, 2)["top"], [10, 11])
    store.finish(tmp_path)
    got = store.load(tmp_path)
    for name in ("mean", "variance", "expected_entropy", "votes", "samples"):
        np.testing.assert_array_equal(getattr(got, name), getattr(whole, name), err_msg=name)
    assert np.load(tmp_path / "samples.npy").shape == (12, 4, 3)  # plain .npy files, rows first


def test_unfinished_job_is_refused_and_its_written_rows_are_readable(tmp_path):
    parts = [_pred(5, 0), _pred(5, 1)]
    store.create(tmp_path, parts[0], 10)
    (tmp_path / "job.json").write_text("{}")
    store.write_rows(tmp_path, parts[1], 5)
    store.mark_done(tmp_path, 1, 5, 10)
    store.write_rows(tmp_path, parts[0], 0)  # written, but its task died before recording it
    with pytest.raises(ValueError, match=r"argument `path`: expected a finished prediction store.*stopped with "
                                         r"5 of 10 rows written.*load_written"):
        store.load(tmp_path)
    rows, written = store.load_written(tmp_path)
    np.testing.assert_array_equal(rows, np.arange(5, 10))
    np.testing.assert_array_equal(written.mean, parts[1].mean)


def test_full_disk_while_writing_rows_in_place_is_a_store_full_error(tmp_path, monkeypatch):
    store.create(tmp_path, _pred(5), 10)

    def full(fd):  # a full disk shows when the written pages are flushed
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mcdrop.io.os, "fsync", full)
    with pytest.raises(store.StoreFullError, match=r"disk is full.*load_written"):
        store.write_rows(tmp_path, _pred(5), 0)
    with pytest.raises(store.StoreFullError, match=r"disk is full"):
        store.mark_done(tmp_path, 0, 0, 5)
    monkeypatch.undo()
    assert store.done_groups(tmp_path) == {}  # nothing recorded: the group runs again on resume
    assert not [p for p in (tmp_path / "done").iterdir()]  # nor a temporary file left behind


def test_overwrite_replaces_only_a_store(tmp_path):
    """One check for the writer and the Ray job: a folder of other files is never written into."""
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"argument `out`: expected a new or empty folder"):
        store.PredictionWriter(tmp_path)
    with pytest.raises(FileExistsError, match=r"argument `out`: expected a folder holding a prediction store "
                                              r"\(overwrite=True replaces only those\)"):
        store.PredictionWriter(tmp_path, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    writer = store.PredictionWriter(tmp_path / "s")
    writer.append(_pred(3))
    writer.close()
    store.PredictionWriter(tmp_path / "s", overwrite=True)  # a store is replaced when asked


def test_a_block_of_another_prediction_is_refused():
    """Every block's metadata must match the first's: a store holds one prediction."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        writer = store.PredictionWriter(folder)
        writer.append(_pred(3))
        with pytest.raises(ValueError, match=r"argument `prediction`: expected a classification prediction with "
                                             r"the arrays .* and the metadata of the blocks before.*'seed': 0"):
            writer.append(mcdrop.ClassificationPrediction.from_samples(
                np.full((4, 2, 3), 1 / 3), keep_samples=True, seed=5))
        writer.append(_pred(2, start=3))
        assert len(writer.close()) == 5


def test_load_reads_the_rows_meta_json_records(tmp_path, monkeypatch):
    """Rows appended after the last record (a process killed before its next sync) are not read: meta.json
    records rows only once they are on the disk, and load reads exactly those."""
    monkeypatch.setattr(store.PredictionWriter, "SYNC_SECONDS", float("inf"))
    parts = [_pred(4, 0), _pred(3, 1), _pred(5, 2)]
    writer = store.PredictionWriter(tmp_path / "s")
    for part in parts:
        writer.append(part)
    assert json.loads((tmp_path / "s" / "meta.json").read_text())["rows"] == 4  # recorded at the first block
    assert np.load(tmp_path / "s" / "mean.npy").shape == (12, 3)  # every file is a valid .npy of all rows
    early = store.load(tmp_path / "s", mmap=False)  # what a reader sees if the writer dies now
    np.testing.assert_array_equal(early.mean, parts[0].mean)
    np.testing.assert_array_equal(early.samples, parts[0].samples)
    whole = writer.close()
    np.testing.assert_array_equal(whole.mean, mcdrop.predictive.concatenate(parts).mean)
    assert json.loads((tmp_path / "s" / "meta.json").read_text())["rows"] == 12
