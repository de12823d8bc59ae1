"""Scoring a pool on a local Ray cluster: bit-identical to the single-process engine whatever the
number of workers and blocks, in the pool's row order, through a worker's death, and one clear
error for a model file a worker cannot load.

One Ray cluster (2 CPUs, loopback only, no dashboard) serves the whole module; every Ray job starts
its actors afresh (TensorFlow import and model load), so the module keeps its number of jobs small.
"""

import dataclasses
import errno
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray[data] is not installed (pip install \"mcdrop[ray]\")")
pytest.importorskip("ray.data", reason="ray[data] is not installed (pip install \"mcdrop[ray]\")")

import mcdrop  # noqa: E402
from mcdrop import distributed, store  # noqa: E402
from mcdrop.acquisition import top_k  # noqa: E402
from mcdrop.io import load_model  # noqa: E402

T = 12
L = keras.layers


@pytest.fixture(scope="module")
def cluster():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage report leaves the machine
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", ignore_reinit_error=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pool")
    keras.utils.set_random_seed(7)
    classifier = keras.Sequential([
        keras.Input((8,)), L.Dense(32, activation="relu"), L.Dropout(0.5),
        L.Dense(16, activation="relu"), L.Dropout(0.3), L.Dense(4, activation="softmax"),
    ])
    regressor = keras.Sequential([keras.Input((8,)), L.Dense(16, activation="relu"), L.Dropout(0.4), L.Dense(2)])
    classifier.save(folder / "classifier.keras")
    regressor.save(folder / "regressor.keras")
    x = np.random.default_rng(3).standard_normal((700, 8)).astype("float32")
    np.save(folder / "pool.npy", x)
    return folder, x


def reference(path, x, **kwargs):
    options = {k: v for k, v in kwargs.items() if k in ("batch_size", "mask", "heteroscedastic")}
    mc = mcdrop.MCDropout(load_model(path), num_samples=T, seed=0, verbose=0, **options)
    return mc.predict(x, return_samples=kwargs.get("return_samples"))


def assert_same(got, expected):
    wanted = expected.to_dict()
    assert set(wanted) <= set(got)
    for name, value in wanted.items():
        np.testing.assert_array_equal(np.asarray(got[name]), value, err_msg=name)


# --------------------------------------------------------------------------- bit-identity


@pytest.mark.parametrize("workers, blocks_per_task, batch_size", [
    (1, None, None),   # one worker, default groups and the engine's own block plan (balanced 700 rows)
    (2, 1, 64),        # one 64-row block per task: 11 groups, the last one short
    (3, 2, 50),        # three actors on two CPUs, two blocks per task
])
def test_array_pool_is_bit_identical_to_single_process(cluster, files, workers, blocks_per_task, batch_size):
    folder, x = files
    path = folder / "classifier.keras"
    got = distributed.score_pool(path, x, num_samples=T, seed=0, num_workers=workers,
                                 blocks_per_task=blocks_per_task, batch_size=batch_size, num_cpus=0.5)
    assert_same(got, reference(path, x, batch_size=batch_size))
    assert got["mean"].shape == (700, 4) and got["mutual_information"].shape == (700,)


def test_npy_path_regression_per_example_masks_and_store(cluster, files, tmp_path):
    """A .npy path each worker memory-maps; per-example masks need the global row offset (groups
    start at rows 0, 96, 192, ... of the pool); regression keeps its samples; out= writes a store;
    predict_pool returns the prediction object itself."""
    folder, x = files
    path = folder / "regressor.keras"
    got = distributed.predict_pool(path, folder / "pool.npy", num_samples=T, seed=0, num_workers=2,
                                   blocks_per_task=3, batch_size=32, mask="per_example", num_cpus=0.5,
                                   out=tmp_path / "store")
    expected = reference(path, x, batch_size=32, mask="per_example")
    assert isinstance(got, mcdrop.RegressionPrediction)
    for field in ("mean", "epistemic_variance", "aleatoric_variance", "samples"):
        np.testing.assert_array_equal(getattr(got, field), getattr(expected, field), err_msg=field)
    assert got.samples.shape == (T, 700, 2)
    assert (got.mask, got.seed, got.num_samples, got.heteroscedastic) == ("per_example", 0, T, False)
    stored = store.load(tmp_path / "store")
    np.testing.assert_array_equal(stored.samples, expected.samples)
    # a shifted offset would have drawn other masks: the check above could fail
    unshifted = mcdrop.MCDropout(load_model(path), num_samples=T, seed=0, verbose=0, batch_size=32,
                                 mask="per_example").predict(x[96:192])
    assert not np.array_equal(unshifted.mean, expected.mean[96:192])


def test_ray_dataset_rows_come_back_in_pool_order_with_batchbald_candidates(cluster, files):
    """A Dataset split into 7 uneven blocks is regrouped by row index; the result is in the
    Dataset's row order, and the candidates' per-pass probabilities equal the engine's samples."""
    folder, x = files
    path = folder / "classifier.keras"
    dataset = ray.data.from_numpy(x).repartition(7)
    got = distributed.score_pool(path, dataset, num_samples=T, seed=0, num_workers=2, blocks_per_task=2,
                                 batch_size=40, candidates=25, num_cpus=0.5)
    expected = reference(path, x, batch_size=40, return_samples=True)
    assert_same(got, dataclasses.replace(expected, samples=None))
    assert "samples" not in got
    want = top_k(expected.mutual_information, 25)
    np.testing.assert_array_equal(got["candidates"], want)
    np.testing.assert_array_equal(got["candidate_samples"], expected.samples[:, want])
    picked = mcdrop.acquisition.batch_bald(got["candidate_samples"], 3, seed=0)
    assert set(got["candidates"][picked]) <= set(want)


# --------------------------------------------------------------------------- faults


def test_worker_killed_mid_job_every_row_exactly_once(cluster, files, tmp_path, monkeypatch):
    folder, x = files
    path = folder / "classifier.keras"
    marker = tmp_path / "died-on-group-2"

    def die_once(group, marker=str(marker)):
        if group == 2 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the actor's process dies in the middle of the job

    monkeypatch.setitem(distributed._TEST_HOOKS, "on_group", die_once)  # sent to the workers
    got = distributed.score_pool(path, x, num_samples=T, seed=0, num_workers=2, blocks_per_task=1,
                                 batch_size=100, num_cpus=0.5)
    assert marker.exists()  # the worker did die
    assert_same(got, reference(path, x, batch_size=100))


def test_model_a_worker_cannot_load_is_one_clear_error_and_no_output(cluster, files, tmp_path, monkeypatch):
    """The driver can read the file but the workers cannot (here: the driver's loader is swapped)."""
    folder, x = files
    real = load_model
    monkeypatch.setattr(mcdrop.io, "load_model", lambda p, **kw: real(folder / "classifier.keras", **kw))
    missing = tmp_path / "only-on-the-driver.keras"
    with pytest.raises(ValueError, match=r"argument `model_path`.*only-on-the-driver\.keras.*A worker failed"):
        distributed.score_pool(missing, x, num_samples=T, num_workers=1, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_unreadable_model_file_fails_on_the_driver_before_any_ray_work(cluster, files, tmp_path):
    folder, x = files
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"argument `model_path`.*broken\.keras"):
        distributed.score_pool(bad, x, num_samples=T, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_result_without_every_row_exactly_once_is_refused():
    plan = {"num_samples": 2, "mask": "consistent", "seed": 0}
    pred = mcdrop.ClassificationPrediction.from_samples(np.full((2, 3, 2), 0.5), seed=0)
    columns = distributed._columns_of([pred], np.array([0, 1, 1]))
    with pytest.raises(RuntimeError, match=r"3 row results for 3 rows \(1 missing, 1 repeated"):
        distributed._assemble(dict(columns), 3, np.arange(3), plan)
    columns["_mcdrop_row"] = np.array([2, 0, 1])
    (got,) = distributed._assemble(dict(columns), 3, np.arange(3), plan)
    assert len(got) == 3


# --------------------------------------------------------------------------- inputs and errors


def test_npz_and_csv_paths_are_read_with_mcdrop_io(files, tmp_path):
    _, x = files
    np.savez(tmp_path / "pool.npz", x=x)
    kind, array, n, _ = distributed._resolve_data(tmp_path / "pool.npz", ray, None, None)
    assert (kind, n) == ("array", 700)
    np.testing.assert_array_equal(array, x)
    np.savetxt(tmp_path / "pool.csv", x[:5], delimiter=",")
    kind, array, n, _ = distributed._resolve_data(tmp_path / "pool.csv", ray, None, None)
    assert (kind, n) == ("array", 5)
    np.testing.assert_allclose(array, x[:5], rtol=1e-6)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"argument `data`.*objects\.npy.*no pickle"):
        distributed._resolve_data(tmp_path / "objects.npy", ray, None, None)


def test_argument_errors_name_the_argument_and_value(cluster, files, tmp_path):
    folder, x = files
    path = folder / "classifier.keras"
    with pytest.raises(ValueError, match=r"argument `num_workers`: expected an integer >= 1, received 0"):
        distributed.score_pool(path, x, num_workers=0)
    with pytest.raises(TypeError, match=r"argument `data`: expected a ray.data.Dataset.*received 3"):
        distributed.score_pool(path, 3)
    with pytest.raises(TypeError, match=r"argument `engine_options`.*received 'dropout'"):
        distributed.score_pool(path, x, dropout=0.1)
    with pytest.raises(ValueError, match=r"argument `data`: expected an array of shape \(None, 8\)"):
        distributed.score_pool(path, np.zeros((4, 3), "float32"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(FileExistsError, match=r"argument `out`"):
        distributed.score_pool(path, x, out=tmp_path / "taken")
    two = ray.data.from_items([{"a": 1.0, "b": 2.0}])
    with pytest.raises(ValueError, match=r"argument `columns`.*\['a', 'b'\]"):
        distributed.score_pool(path, two)
    with pytest.raises(ValueError, match=r"argument `columns`: expected column names among \['a', 'b'\], received 'c'"):
        distributed.score_pool(path, two, columns=["a", "c"])


def test_more_workers_than_the_cluster_holds_is_said_before_ray_waits():
    assert distributed._short_of_resources({"CPU": 2.0}, 2, 1, 0) is None
    assert distributed._short_of_resources({"CPU": 2.0}, 3, 0.5, 0) is None
    message = distributed._short_of_resources({"CPU": 2.0}, 3, 1, 0)
    assert message.startswith("mcdrop: 3 Ray workers x 1 CPU need 3 CPUs but the cluster has 2;")
    message = distributed._short_of_resources({"CPU": 8.0}, 2, 1, 1)
    assert "need 2 GPUs but the cluster has 0" in message


def test_top_k_over_the_whole_pool():
    stats = {"mutual_information": np.array([0.1, 0.9, 0.5, 0.9]), "mean": np.zeros((4, 2))}
    np.testing.assert_array_equal(distributed.top_k(stats, 3), [1, 3, 2])
    np.testing.assert_array_equal(distributed.top_k({"entropy": np.array([2.0, 1.0])}, 1, by="entropy"), [0])
    with pytest.raises(ValueError, match=r"argument `by`: expected a per-row score among \['mean', "):
        distributed.top_k(stats, 1, by="bald")
    with pytest.raises(ValueError, match=r"argument `by`: expected a score with one value per row"):
        distributed.top_k(stats, 1, by="mean")


def test_module_imports_without_ray_and_says_how_to_install_it():
    code = ("import sys; sys.modules['ray'] = None\n"
            "import mcdrop.distributed as d\n"
            "print('tensorflow' in sys.modules)\n"
            "try:\n    d.score_pool('m.keras', [[0.0]])\n"
            "except ImportError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr
    imported_tf, message = done.stdout.strip().split("\n", 1)
    assert imported_tf == "False"
    assert 'pip install "mcdrop[ray]"' in message


def test_cli_predict_on_ray_equals_the_single_process_command(cluster, files, tmp_path):
    from mcdrop import cli

    folder, x = files
    args = [str(folder / "classifier.keras"), str(folder / "pool.npy"), "-T", str(T), "--seed", "0", "-q"]
    assert cli.main(["predict", *args, "--out", str(tmp_path / "local.npz")]) == 0
    assert cli.main(["predict", *args, "--ray", "local", "--out", str(tmp_path / "ray.npz")]) == 0
    local, remote = np.load(tmp_path / "local.npz"), np.load(tmp_path / "ray.npz")
    for name in ("mean", "variance", "entropy", "mutual_information"):
        np.testing.assert_array_equal(remote[name], local[name])


# --------------------------------------------------------------------------- streaming jobs (stream_pool)


STREAM = dict(num_samples=T, seed=0, num_workers=1, blocks_per_task=1, batch_size=100, num_cpus=0.5)
SCORES = ("bald", "max_entropy", "variation_ratio", "margin", "least_confidence", "mean_std")


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """A model with two named inputs (a vector and a 3x2 matrix) and two named outputs (a classifier
    and a heteroscedastic regression head), its pool as arrays and as three Parquet files of
    fixed-size-list columns with uneven row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("multi")
    keras.utils.set_random_seed(11)
    a, b = keras.Input((8,), name="a"), keras.Input((3, 2), name="b")
    h = L.Dropout(0.4)(L.Dense(16, activation="relu")(L.Concatenate()([a, L.Flatten()(b)])))
    model = keras.Model({"a": a, "b": b}, {"cls": L.Dense(3, activation="softmax", name="cls")(h),
                                           "reg": L.Dense(2, name="reg")(L.Dropout(0.2)(h))})
    model.save(folder / "multi.keras")
    rng = np.random.default_rng(5)
    xa, xb = rng.standard_normal((500, 8)).astype("float32"), rng.standard_normal((500, 3, 2)).astype("float32")
    (folder / "pool").mkdir()
    for i, (lo, hi) in enumerate([(0, 170), (170, 370), (370, 500)]):
        col_a = pa.FixedSizeListArray.from_arrays(pa.array(xa[lo:hi].ravel()), 8)
        col_b = pa.FixedSizeListArray.from_arrays(
            pa.FixedSizeListArray.from_arrays(pa.array(xb[lo:hi].ravel()), 2), 3)
        table = pa.table({"id": np.arange(lo, hi), "a": col_a, "b": col_b})
        pq.write_table(table, folder / "pool" / f"part-{i}.parquet", row_group_size=45)
    options = dict(task={"cls": "classification", "reg": "regression"},
                   heteroscedastic={"cls": None, "reg": "log_variance"})
    return folder, {"a": xa, "b": xb}, options


def assert_same_prediction(got, expected):
    for name, value in expected.to_dict().items():
        np.testing.assert_array_equal(np.asarray(getattr(got, name)), value, err_msg=name)


def test_stream_writes_every_group_once_through_a_worker_death(cluster, files, tmp_path, monkeypatch):
    """Two workers write 7 groups in place; one dies after writing group 2's rows but before
    recording it (Ray retries the group, which rewrites the same bytes). The store, the Parquet
    rows and every global selection equal the single-process engine's."""
    import pandas as pd

    from mcdrop import acquisition

    folder, x = files
    path = folder / "classifier.keras"
    marker = tmp_path / "died"

    def die_once(group, marker=str(marker)):
        if group == 2 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)

    out = tmp_path / "job"
    monkeypatch.setitem(distributed._TEST_HOOKS, "on_write", die_once)
    job = distributed.stream_pool(path, folder / "pool.npy", out, select={s: 30 for s in SCORES},
                                  candidates=25, parquet=True, **dict(STREAM, num_workers=2))
    assert marker.exists()
    expected = reference(path, x, batch_size=100, return_samples=True)
    assert (job.groups_run, job.groups_skipped, job.num_rows) == (7, 0, 700)
    assert_same_prediction(job.load(), dataclasses.replace(expected, samples=None))
    assert isinstance(store.load(out).mean, np.memmap) or isinstance(store.load(out).mean.base, np.memmap)
    for name in SCORES:
        scores = acquisition.SCORES[name](expected)
        np.testing.assert_array_equal(job.top[name], acquisition.top_k(scores, 30), err_msg=name)
        np.testing.assert_array_equal(job.top_scores[name], scores[job.top[name]], err_msg=name)
    np.testing.assert_array_equal(job.candidates, acquisition.top_k(expected.mutual_information, 25))
    np.testing.assert_array_equal(job.candidate_samples, expected.samples[:, job.candidates])
    spans = sorted(store.done_groups(out).values())
    assert spans == [(g * 100, min(g * 100 + 100, 700)) for g in range(7)]  # every row exactly once
    rows = pd.read_parquet(out / "rows")
    assert sorted(rows["row"]) == list(range(700)) and len(rows) == 700
    rows = rows.sort_values("row")
    np.testing.assert_array_equal(np.stack(rows["mean"].to_numpy()), expected.mean)
    np.testing.assert_array_equal(rows["mutual_information"].to_numpy(), expected.mutual_information)


def test_parquet_multi_input_multi_output_three_workers(cluster, multi, tmp_path):
    """Parquet files with fixed-size-list columns named by columns=, read row group by row group
    across file boundaries, into a two-input two-output model on three workers."""
    import pandas as pd

    from mcdrop import acquisition

    folder, x, options = multi
    path = folder / "multi.keras"
    job = distributed.stream_pool(path, folder / "pool", tmp_path / "job", columns={"a": "a", "b": "b"},
                                  select={"bald": 10}, output="cls", parquet=True,
                                  **dict(STREAM, num_workers=3, batch_size=32), **options)
    engine = mcdrop.MCDropout(load_model(path), num_samples=T, seed=0, verbose=0, batch_size=32, **options)
    expected = engine.predict(x)
    got = job.load()
    assert sorted(got) == ["cls", "reg"] and got["reg"].heteroscedastic
    for name in ("cls", "reg"):
        assert_same_prediction(got[name], expected[name])
    np.testing.assert_array_equal(job.top["bald"], acquisition.top_k(expected["cls"].mutual_information, 10))
    rows = pd.read_parquet(tmp_path / "job" / "rows").sort_values("row")
    np.testing.assert_array_equal(np.stack(rows["reg.aleatoric_variance"].to_numpy()),
                                  expected["reg"].aleatoric_variance)


def test_ray_dataset_columns_stream_into_a_job_and_resume_a_finished_one(cluster, multi, tmp_path):
    """Two Dataset columns feed the two-input model; the rows, regrouped by a shuffle, are written
    in place by two workers. A resume of the finished job runs nothing and selects the same."""
    from mcdrop import acquisition

    folder, x, options = multi
    path = folder / "multi.keras"
    items = [{"left": x["a"][i], "right": x["b"][i], "label": i} for i in range(len(x["a"]))]
    dataset = ray.data.from_items(items).repartition(5)
    settings = dict(columns=["left", "right"], select={"margin": 7}, output="cls",
                    **dict(STREAM, num_workers=2, batch_size=64, blocks_per_task=2), **options)
    job = distributed.stream_pool(path, dataset, tmp_path / "job", **settings)
    engine = mcdrop.MCDropout(load_model(path), num_samples=T, seed=0, verbose=0, batch_size=64, **options)
    expected = engine.predict(x)
    got = job.load()
    for name in ("cls", "reg"):
        assert_same_prediction(got[name], expected[name])
    np.testing.assert_array_equal(job.top["margin"], acquisition.top_k(acquisition.margin(expected["cls"]), 7))
    again = distributed.stream_pool(path, dataset, tmp_path / "job", resume=True, **settings)
    assert (again.groups_run, again.groups_skipped) == (0, 4)
    np.testing.assert_array_equal(again.top["margin"], job.top["margin"])


def test_cli_names_parquet_columns_in_its_own_words(cluster, multi, tmp_path, capsys):
    from mcdrop import cli

    folder, _, _ = multi
    args = [str(folder / "multi.keras"), str(folder / "pool"), "-T", "2", "-q", "--ray", "local"]
    assert cli.main(["predict", *args, "--out", str(tmp_path / "job"), "--columns", "a", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("mcdrop predict: error: Invalid value for argument `--columns`: expected column names among "
                   "['id', 'a', 'b'], received 'nope'.")
    assert cli.main(["predict", *args, "--out", str(tmp_path / "job")]) == 2
    assert "argument `--columns`: expected the input column(s) among ['id', 'a', 'b']" in capsys.readouterr().err
    assert not (tmp_path / "job").exists()


def test_multi_input_arrays_multi_output_in_memory(cluster, multi):
    """The in-memory path: a list of input arrays, a dict of predictions back."""
    folder, x, options = multi
    path = folder / "multi.keras"
    got = distributed.predict_pool(path, [x["a"], x["b"]], **dict(STREAM, num_workers=2, blocks_per_task=2,
                                                                   batch_size=40), **options)
    engine = mcdrop.MCDropout(load_model(path), num_samples=T, seed=0, verbose=0, batch_size=40, **options)
    expected = engine.predict(x)
    assert sorted(got) == ["cls", "reg"]
    for name in ("cls", "reg"):
        assert_same_prediction(got[name], expected[name])


def test_full_disk_keeps_written_groups_readable_then_the_job_resumes(cluster, files, tmp_path, monkeypatch):
    folder, x = files
    model = tmp_path / "model.keras"
    model.write_bytes((folder / "classifier.keras").read_bytes())
    out = tmp_path / "job"

    def full(group):
        if group == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setitem(distributed._TEST_HOOKS, "on_write", full)
    with pytest.raises(store.StoreFullError, match=r"disk is full.*job.*load_written"):
        distributed.stream_pool(model, x, out, select={"bald": 5}, **STREAM)
    monkeypatch.undo()
    expected = reference(model, x, batch_size=100)
    done = store.done_groups(out)
    assert 2 not in done and len(done) >= 1
    rows, written = store.load_written(out)
    np.testing.assert_array_equal(rows, np.concatenate([np.arange(a, b) for a, b in sorted(done.values())]))
    assert_same_prediction(written, expected.subset(rows))
    with pytest.raises(ValueError, match=r"argument `path`: expected a finished prediction store.*stopped with "
                                         rf"{len(rows)} of 700 rows written"):
        store.load(out)
    with pytest.raises(ValueError, match=r"argument `resume`.*different num_samples \(job: 12, now: 11\)"):
        distributed.stream_pool(model, x, out, select={"bald": 5}, resume=True, **dict(STREAM, num_samples=11))
    with pytest.raises(ValueError, match=r"different select \(job: \{'bald': 5\}, now: \{'bald': 6\}\)"):
        distributed.stream_pool(model, x, out, select={"bald": 6}, resume=True, **STREAM)
    with pytest.raises(FileExistsError, match=r"argument `out`: expected a new or empty folder"):
        distributed.stream_pool(model, x, out, select={"bald": 5}, **STREAM)
    job = distributed.stream_pool(model, x, out, select={"bald": 5}, resume=True, **dict(STREAM, seed=None))
    assert (job.groups_skipped, job.groups_run) == (len(done), 7 - len(done))
    assert_same_prediction(job.load(), expected)
    np.testing.assert_array_equal(job.top["bald"], top_k(expected.mutual_information, 5))
    model.write_bytes((folder / "regressor.keras").read_bytes())
    with pytest.raises(ValueError, match=r"argument `resume`.*different model_sha256"):
        distributed.stream_pool(model, x, out, resume=True, **STREAM)


def test_driver_killed_mid_job_then_resumed_every_row_once(cluster, files, tmp_path):
    """A driver in another process is killed (SIGKILL) by its own worker after group 3's rows were
    written; a new driver resumes the job folder and finishes it, bit-identical."""
    folder, x = files
    path, out = folder / "classifier.keras", tmp_path / "job"
    script = textwrap.dedent(f"""
        import os, signal, time, ray
        from mcdrop import distributed
        ray.init(address={ray.get_runtime_context().gcs_address!r}, log_to_driver=False)

        def kill_driver(group, driver=os.getpid()):
            if group == 3:
                os.kill(driver, signal.SIGKILL)
                time.sleep(120)  # Ray ends this job's workers when its driver dies

        distributed._TEST_HOOKS["on_write"] = kill_driver
        distributed.stream_pool({str(path)!r}, {str(folder / 'pool.npy')!r}, {str(out)!r}, select={{"bald": 20}},
                                **{STREAM!r})
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=root), cwd=root)
    assert done.returncode == -9, done.stderr[-2000:]
    assert json.loads((out / "job.json").read_text())["complete"] is False
    before = store.done_groups(out)
    assert 3 not in before and 1 <= len(before) < 7  # the driver died mid-job
    job = distributed.stream_pool(path, folder / "pool.npy", out, select={"bald": 20}, resume=True, **STREAM)
    assert job.groups_skipped == len(before) and job.groups_run == 7 - len(before)
    assert sorted(store.done_groups(out).values()) == [(g * 100, min(g * 100 + 100, 700)) for g in range(7)]
    expected = reference(path, x, batch_size=100)
    assert_same_prediction(job.load(), expected)
    np.testing.assert_array_equal(job.top["bald"], top_k(expected.mutual_information, 20))


def test_unreadable_parquet_source_is_one_clear_error(cluster, files, tmp_path):
    folder, _ = files
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "part-0.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=r"argument `data`: expected a readable Parquet file or folder.*pool"):
        distributed.stream_pool(folder / "classifier.keras", tmp_path / "pool", tmp_path / "out", **STREAM)
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"argument `data`.*No Parquet file found"):
        distributed.stream_pool(folder / "classifier.keras", tmp_path / "empty", tmp_path / "out", **STREAM)


def test_stream_argument_errors(cluster, files, tmp_path):
    folder, x = files
    path = folder / "classifier.keras"
    with pytest.raises(ValueError, match=r"argument `select`: expected scores among \['bald'.*received 'bold'"):
        distributed.stream_pool(path, x, select={"bold": 3})
    with pytest.raises(ValueError, match=r"argument `select\['bald'\]`: expected an integer >= 1, received 0"):
        distributed.stream_pool(path, x, select={"bald": 0})
    with pytest.raises(ValueError, match=r"argument `out`: expected a job folder, or select="):
        distributed.stream_pool(path, x)
    with pytest.raises(ValueError, match=r"argument `out`: expected a job folder \(resume and parquet"):
        distributed.stream_pool(path, x, select={"bald": 3}, resume=True)
    with pytest.raises(ValueError, match=r"argument `select`: expected scores for a classification model, "
                                         r"received 'predictive_variance'"):
        distributed.stream_pool(path, x, select={"predictive_variance": 3}, **STREAM)
    with pytest.raises(ValueError, match=r"argument `select\['bald'\]`: expected an integer <= 700"):
        distributed.stream_pool(path, x, select={"bald": 701}, **STREAM)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"overwrite=True replaces only those"):
        distributed.stream_pool(path, x, tmp_path / "other", overwrite=True, **STREAM)
    assert (tmp_path / "other" / "notes.txt").exists()


def test_merged_top_k_equals_top_k_over_the_whole_pool():
    """Per-group top-k merged in any group order equals acquisition.top_k over all rows, ties
    going to the lower row."""
    scores = np.round(np.random.default_rng(0).random(1000), 2)  # many ties
    groups = [np.arange(s, min(s + 64, 1000)) for s in range(0, 1000, 64)]
    for order in (groups, groups[::-1], [groups[i] for i in np.random.default_rng(1).permutation(len(groups))]):
        merged = distributed._Merged({"bald": 40}, 3)
        for rows in order:
            local = top_k(scores[rows], min(40, len(rows)))
            samples = np.broadcast_to(rows[local][None, :, None], (2, len(local), 1))
            merged.add({"top.bald.rows": rows[local], "top.bald.scores": scores[rows][local],
                        "candidates.rows": rows[local][:3], "candidates.scores": scores[rows][local][:3],
                        "candidates.samples": samples[:, :3]})
        np.testing.assert_array_equal(merged.best["bald"]["rows"], top_k(scores, 40))
        np.testing.assert_array_equal(merged.best["candidates"]["rows"], top_k(scores, 3))
        np.testing.assert_array_equal(merged.best["candidates"]["samples"][:, :, 0],
                                      np.tile(top_k(scores, 3), (2, 1)))  # samples follow their rows
    assert len(np.unique(scores[top_k(scores, 40)])) < 40  # the case has ties to break


def test_arrow_columns_become_arrays():
    import pyarrow as pa

    values = np.arange(24, dtype="float32").reshape(4, 3, 2)
    nested = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 2), 3)
    np.testing.assert_array_equal(distributed._arrow_numpy(nested.slice(1, 2), "b"), values[1:3])
    np.testing.assert_array_equal(distributed._arrow_numpy(pa.chunked_array([[1, 2], [3]]), "n"), [1, 2, 3])
    with pytest.raises(ValueError, match=r"argument `columns`: expected column 'n' without missing values"):
        distributed._arrow_numpy(pa.array([1.0, None]), "n")
    with pytest.raises(TypeError, match=r"argument `columns`: expected column 's' of numbers"):
        distributed._arrow_numpy(pa.array(["x"]), "s")
    column = distributed._arrow_column(values)
    np.testing.assert_array_equal(distributed._arrow_numpy(column, "b"), values)
    # Ray's tensor columns (what Dataset.write_parquet writes for ndarray columns), chunked
    tensors = pytest.importorskip("ray.data._internal.tensor_extensions.arrow")
    ray_column = tensors.ArrowTensorArray.from_numpy(values)
    chunked = pa.chunked_array([ray_column.slice(0, 1), ray_column.slice(1, 3)])
    np.testing.assert_array_equal(distributed._arrow_numpy(chunked, "t"), values)


def test_cli_predict_streams_to_a_folder_resumes_and_select_ray_selects_globally(cluster, files, tmp_path, capsys):
    from mcdrop import acquisition, cli

    folder, x = files
    path = folder / "classifier.keras"
    args = [str(path), str(folder / "pool.npy"), "-T", str(T), "--seed", "0", "--batch-size", "100", "-q"]
    out = tmp_path / "results"
    assert cli.main(["predict", *args, "--ray", "local", "--out", str(out)]) == 0
    expected = reference(path, x, batch_size=100)
    assert_same_prediction(store.load(out), expected)
    assert cli.main(["predict", *args, "--ray", "local", "--out", str(out), "--resume", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert (summary["groups_run"], summary["rows"]) == (0, 700)
    assert cli.main(["predict", *args, "--ray", "local", "--out", str(out), "-T", "5"]) == 2
    assert "argument `--out`: expected a new or empty folder (pass another --out" in capsys.readouterr().err
    assert cli.main(["predict", *args, "--ray", "local", "--out", str(out), "--resume", "-T", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mcdrop predict: error: Invalid value for argument `--resume`: expected the options")
    assert "different num_samples (job: 12, now: 5)" in err and len(err.splitlines()) == 1
    assert cli.main(["select", *args, "-k", "9", "--ray", "local", "--method", "margin", "--json"]) == 0
    picked = json.loads(capsys.readouterr().out)["indices"]
    assert picked == acquisition.top_k(acquisition.margin(expected), 9).tolist()
    assert cli.main(["select", *args, "-k", "9", "--ray", "local", "--stochastic", "power"]) == 2
    assert "argument `--stochastic`: expected no value with --ray" in capsys.readouterr().err
    assert cli.main(["predict", *args, "--resume", "--out", str(tmp_path / "p.npz")]) == 2
    assert "argument `--resume`: expected --ray and an --out folder" in capsys.readouterr().err
