"""Behaviours 4, 6, 7, 8: compiled and batched, no retracing, compute-once, memory, progress."""

import tracemalloc

import keras
import numpy as np
import pytest
import tensorflow as tf

import mcdrop
from mcdrop.engine.sampler import CompiledSampler, plan_chunks
from tests.engine.conftest import L, mlp


class RowCounter(L.Layer):
    """Identity that counts the rows it processes (runs inside the compiled graph)."""

    def build(self, input_shape):
        self.rows = self.add_weight(shape=(), initializer="zeros", trainable=False, dtype="int64")

    def call(self, x):
        self.rows.assign_add(tf.cast(tf.shape(x)[0], tf.int64))
        return x


def _counting_model():
    trunk_counter, head_counter = RowCounter(), RowCounter()
    model = keras.Sequential([
        keras.Input((6, 6, 1)), L.Conv2D(4, 3), L.BatchNormalization(), trunk_counter, L.Flatten(),
        L.Dropout(0.5), head_counter, L.Dense(3, activation="softmax"),
    ])
    return model, trunk_counter, head_counter


def test_layers_no_noise_reaches_run_once_per_input():
    model, trunk, head = _counting_model()
    x = np.random.default_rng(0).standard_normal((40, 6, 6, 1)).astype("float32")
    mcdrop.MCDropout(model, num_samples=25, seed=0, verbose=0, batch_size=40).predict(x)
    assert int(trunk.rows.numpy()) == 40          # the convolutional trunk: once per input
    assert int(head.rows.numpy()) == 40 * 25      # the head: once per input and pass


def test_subclassed_models_run_whole_but_still_batched(monkeypatch):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.counter, self.drop, self.out = RowCounter(), L.Dropout(0.5), L.Dense(2)

        def call(self, x, training=False):
            return self.out(self.drop(self.counter(x), training=training))

    net = Net()
    x = np.zeros((10, 3), "float32")
    net(x)
    net.counter.rows.assign(0)
    calls = _count_calls(monkeypatch)
    mcdrop.MCDropout(net, num_samples=7, seed=0, verbose=0, batch_size=10).predict(x)
    assert int(net.counter.rows.numpy()) == 70 and calls == [1]


def _count_calls(monkeypatch):
    calls = [0]
    original = CompiledSampler.__call__

    def counting(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CompiledSampler, "__call__", counting)
    return calls


def test_all_passes_in_one_compiled_call_per_block(monkeypatch):
    calls = _count_calls(monkeypatch)
    mc = mcdrop.MCDropout(mlp(), num_samples=50, seed=0, verbose=0, batch_size=64)
    mc.predict(np.zeros((100, 8), "float32"))
    assert calls == [2]  # two blocks of rows, each with all 50 passes: no Python loop over passes
    mc2 = mcdrop.MCDropout(mlp(), num_samples=50, seed=0, verbose=0, batch_size=64, passes_per_chunk=20)
    calls[0] = 0
    mc2.predict(np.zeros((100, 8), "float32"))
    assert calls == [6]  # 2 blocks x ceil(50 / 20) pass chunks


def test_no_retracing_when_only_the_batch_size_changes():
    mc = mcdrop.MCDropout(mlp(), num_samples=5, seed=0, verbose=0)
    for n in (3, 17, 64, 200, 5):
        mc.predict(np.zeros((n, 8), "float32"))
    for batch_size in (4, 9):
        mc.predict(np.zeros((20, 8), "float32"), batch_size=batch_size)
    assert mc.sampler.traces == 1
    mc.predict(np.zeros((3, 8), "float64"))  # converted to the model's dtype at the boundary: same trace
    assert mc.sampler.traces == 1


def test_run_eagerly_gives_the_compiled_results():
    x = np.random.default_rng(0).standard_normal((12, 8)).astype("float32")
    compiled = mcdrop.MCDropout(mlp(), num_samples=6, seed=1, verbose=0)
    eager = mcdrop.MCDropout(compiled.model, num_samples=6, seed=1, verbose=0, run_eagerly=True)
    np.testing.assert_allclose(eager.sample(x), compiled.sample(x), rtol=1e-6, atol=1e-7)
    assert eager.sampler.traces == 1  # the eager step ran once (one block), untraced
    assert not hasattr(eager.sampler.function([x], x, None), "get_concrete_function")
    assert hasattr(compiled.sampler.function([x], x, None), "get_concrete_function")


def _peak_numpy_bytes(fn):
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_memory_does_not_grow_with_the_number_of_passes():
    model = mlp(n_out=10)
    x = np.zeros((2000, 8), "float32")
    small = mcdrop.MCDropout(model, num_samples=10, seed=0, verbose=0, passes_per_chunk=10, batch_size=500)
    large = mcdrop.MCDropout(model, num_samples=200, seed=0, verbose=0, passes_per_chunk=10, batch_size=500)
    small.predict(x), large.predict(x)  # trace first
    peak_small = _peak_numpy_bytes(lambda: small.predict(x))
    peak_large = _peak_numpy_bytes(lambda: large.predict(x))
    samples_bytes = 200 * 2000 * 10 * 8  # what holding every pass of T=200 would cost, in float64
    # 20x the passes: a chunk's worth of temporaries more at most, never the passes themselves
    assert peak_large < 2 * peak_small
    assert peak_large < samples_bytes / 8
    with_samples = _peak_numpy_bytes(lambda: large.predict(x, return_samples=True))
    assert with_samples > 200 * 2000 * 10 * 4  # keeping samples costs T*N*C floats, as it should


def test_plan_chunks_respects_budget_and_overrides():
    rows, passes = plan_chunks(1000, 50, widest=256, memory_budget=512 * 2**20, row_passes=8192)
    assert passes == 50 and rows * 50 <= 8192 and rows * 8 >= 1000
    assert rows * -(-1000 // rows) - 1000 < -(-1000 // rows)  # balanced blocks: padding < one row per block
    rows, passes = plan_chunks(None, 200, widest=100_000, memory_budget=64 * 2**20)
    assert passes < 200 and rows * passes * 100_000 * 12 <= 64 * 2**20
    assert plan_chunks(10, 50, 256, 2**30, batch_size=3, passes_per_chunk=7) == (3, 7)
    assert plan_chunks(10, 5, 256, 2**30, passes_per_chunk=70) == (10, 5)
    # a fixed amount of work per call: the rows shrink as T grows, so memory does not grow with T
    for t in (10, 200, 1000):
        rows, passes = plan_chunks(None, t, 256, 2**30, row_passes=8192)
        assert passes == t and 0.9 * 8192 < rows * passes <= 8192
    assert plan_chunks(None, 5000, 256, 2**30, row_passes=8192) == (8, 1024)


def test_progress_bar_and_silence(capsys):
    mc = mcdrop.MCDropout(mlp(), num_samples=5, seed=0, batch_size=8)
    mc.predict(np.zeros((40, 8), "float32"), verbose=1)
    assert "MC dropout, rows" in capsys.readouterr().err
    mc.predict(np.zeros((40, 8), "float32"), verbose=0)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_out_of_memory_back_off_halves_the_block_and_loses_nothing(monkeypatch):
    mc = mcdrop.MCDropout(mlp(), num_samples=4, seed=0, verbose=0, batch_size=16)
    x = np.random.default_rng(0).standard_normal((40, 8)).astype("float32")
    expected = mcdrop.MCDropout(mc.model, num_samples=4, seed=0, verbose=0, batch_size=4).sample(x)
    original = CompiledSampler.__call__
    seen = []

    def limited(self, flats, *args, **kwargs):
        rows = int(flats[0][0].shape[0])
        seen.append(rows)
        if rows > 4:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return original(self, flats, *args, **kwargs)

    monkeypatch.setattr(CompiledSampler, "__call__", limited)
    with pytest.warns(ResourceWarning, match="ran out of memory; retrying with 8 rows"):
        s = mc.sample(x)
    np.testing.assert_array_equal(s, expected)  # every row once, same noise
    assert seen[:3] == [16, 8, 4]
