"""Memory and progress at huge T (issue 9, item 6; issue 15's progress bar): no O(T) structure, each pass
chunk's outputs handed on as they leave the device, and a progress bar from the start. The figure for
T = 5,000,000 is in benchmarks/memory.py."""

import sys
import tracemalloc
import types
import weakref

import numpy as np
import tensorflow as tf

import mcdrop
from tests.engine.conftest import mlp

ONE_ROW = np.zeros((1, 8), "float32")


def test_pass_chunks_are_generated_lazily():
    mc = mcdrop.MCDropout(mlp(), num_samples=10**12, seed=0, verbose=0)
    tracemalloc.start()
    chunks = mc._pass_chunks(1000)
    first = [next(chunks) for _ in range(3)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert isinstance(chunks, types.GeneratorType)
    assert peak < 100_000  # three chunks of 1000 indices; a list for T = 1e12 would not fit in memory at all
    np.testing.assert_array_equal(first[2][0], np.arange(2000, 3000))
    assert first[2][1] == 1000


def test_last_pass_chunk_is_padded_with_its_last_pass():
    mc = mcdrop.MCDropout(mlp(), num_samples=10, seed=0, verbose=0)
    chunks = list(mc._pass_chunks(4))
    assert [valid for _, valid in chunks] == [4, 4, 2]
    np.testing.assert_array_equal(chunks[2][0], [8, 9, 9, 9])
    np.testing.assert_array_equal(np.concatenate([idx[:k] for idx, k in chunks]), np.arange(10))


def _spy_on_calls(mc):
    """Wrap the compiled calls; record how many earlier calls' outputs are still alive at each call."""
    alive, refs = [], []
    real = mc._call

    def call(*args, **kwargs):
        alive.append(sum(r() is not None for r in refs))
        out = real(*args, **kwargs)
        refs.extend(weakref.ref(o) for o in tf.nest.flatten(out) if o is not None)  # tensors, or fused reductions
        return out

    mc._call = call
    return alive


def test_a_blocks_pass_outputs_are_not_held_together():
    mc = mcdrop.MCDropout(mlp(), num_samples=400, seed=0, verbose=0, passes_per_chunk=20)
    alive = _spy_on_calls(mc)
    pred = mc.predict(ONE_ROW)
    assert len(alive) == 20
    assert max(alive) <= 1  # at most the chunk just fed (before: all 19 earlier chunks of the block)
    assert pred.num_samples == 400 and pred.samples is None


def test_chunked_predict_equals_the_unchunked_one():
    x = np.random.default_rng(0).standard_normal((7, 8)).astype("float32")
    model = mlp()
    whole = mcdrop.MCDropout(model, num_samples=30, seed=2, verbose=0).predict(x, return_samples=True)
    parts = mcdrop.MCDropout(model, num_samples=30, seed=2, verbose=0, passes_per_chunk=7,
                             batch_size=3).predict(x, return_samples=True)
    np.testing.assert_allclose(parts.samples, whole.samples, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(parts.mean, whole.samples.astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(parts.votes, (whole.samples.argmax(-1)[..., None] == np.arange(3)).sum(0))


def test_progress_bar_is_shown_before_the_first_pass_and_stays_at_100_percent(capsys, monkeypatch):
    mc = mcdrop.MCDropout(mlp(), num_samples=60, seed=0, passes_per_chunk=20)  # verbose="auto"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: one row, but three calls
    seen = []
    real = mc._call

    def call(*args, **kwargs):
        seen.append(capsys.readouterr().err)
        return real(*args, **kwargs)

    mc._call = call
    mc.predict(ONE_ROW)
    final = capsys.readouterr().err
    assert "MC dropout, rows" in seen[0]  # on screen before any pass ran
    assert "rows/s" in final or "s/rows" in final  # the unit is the label's
    assert "100%" in final and "1/1" in final and final.endswith("\n")  # left on screen, complete
