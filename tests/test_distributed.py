"""Scoring a pool on a local Ray cluster: bit-identical to the single-process engine whatever the
number of workers and blocks, in the pool's row order, through a worker's death, and one clear
error for a model file a worker cannot load.

One Ray cluster (2 CPUs, loopback only, no dashboard) serves the whole module; every Ray job starts
its actors afresh (TensorFlow import and model load), so the module keeps its number of jobs small.
"""

import dataclasses
import errno
import os
import subprocess
import sys

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


def test_worker_killed_mid_job_every_row_exactly_once(cluster, files, tmp_path):
    folder, x = files
    path = folder / "classifier.keras"
    marker = tmp_path / "died-on-group-2"

    def die_once(group, marker=str(marker)):
        if group == 2 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the actor's process dies in the middle of the job

    got = distributed.score_pool(path, x, num_samples=T, seed=0, num_workers=2, blocks_per_task=1,
                                 batch_size=100, num_cpus=0.5, _on_group=die_once)
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
    columns = {"_mcdrop_row": np.array([0, 1, 1]), "_mcdrop_head": np.zeros(3, np.int8),
               "mean": np.full((3, 2), 0.5), "variance": np.zeros((3, 2)),
               "expected_entropy": np.zeros(3), "votes": np.ones((3, 2))}
    with pytest.raises(RuntimeError, match=r"3 row results for 3 rows \(1 missing, 1 repeated"):
        distributed._assemble(dict(columns), 3, np.arange(3), plan)
    columns["_mcdrop_row"] = np.array([2, 0, 1])
    pred = distributed._assemble(dict(columns), 3, np.arange(3), plan)
    assert len(pred) == 3


def test_full_disk_while_writing_leaves_the_old_store_readable(tmp_path, monkeypatch):
    old = mcdrop.ClassificationPrediction.from_samples(np.full((2, 3, 2), 0.5))
    distributed._write(tmp_path / "out", old, {})
    new = mcdrop.ClassificationPrediction.from_samples(np.full((2, 5, 2), 0.5))

    def full(self, block):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store._Appender, "append", full)
    with pytest.raises(store.StoreFullError, match=r"disk is full.*out; nothing was written"):
        distributed._write(tmp_path / "out", new, {"candidates": np.arange(2)})
    assert len(store.load(tmp_path / "out")) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left behind


# --------------------------------------------------------------------------- inputs and errors


def test_npz_and_csv_paths_are_read_with_mcdrop_io(files, tmp_path):
    _, x = files
    np.savez(tmp_path / "pool.npz", x=x)
    kind, array, n = distributed._resolve_data(tmp_path / "pool.npz", ray, None, None)
    assert (kind, n) == ("array", 700)
    np.testing.assert_array_equal(array, x)
    np.savetxt(tmp_path / "pool.csv", x[:5], delimiter=",")
    kind, array, n = distributed._resolve_data(tmp_path / "pool.csv", ray, None, None)
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
    with pytest.raises(ValueError, match=r"argument `column`.*\['a', 'b'\]"):
        distributed.score_pool(path, two)


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
