"""Issue 10 item 1 and issue 13 item 4: the passes are reduced on the device, only per-row statistics reach
the host, the orchestration runs in parts (planner, retry runner, summariser), and the guarantees hold:
statistics equal an independent numpy computation from the raw passes, and seeded results are
bit-identical for any batching of the input stream."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import special, stats

import mcdrop
from mcdrop.engine._plan import Piece
from mcdrop.engine._runner import RetryRunner
from mcdrop.engine._summarise import PieceSummary, ReducedStep
from mcdrop.engine.sampler import ModelFailedError
from tests.engine.conftest import L, mlp
from tests.engine.test_compiled_sampler import _count_calls

X = np.random.default_rng(0).standard_normal((23, 8)).astype("float32")


def _spy_reductions(monkeypatch):
    """Per reduced call: whether it was fused with the sampler's, and the shapes of what reached the host."""
    calls = []
    original = ReducedStep._reduced

    def spy(self, group, indices, valid):
        fused = self._fused(group, indices) is not None
        out = original(self, group, indices, valid)
        calls.append((fused, [({k: v.shape for k, v in stats.items()}, host) for stats, host, _, _ in out]))
        return out

    monkeypatch.setattr(ReducedStep, "_reduced", spy)
    return calls


def test_only_per_row_statistics_leave_the_device(monkeypatch):
    calls = _spy_reductions(monkeypatch)
    fed = []
    original_feed = PieceSummary.feed
    monkeypatch.setattr(PieceSummary, "feed", lambda self, outputs: (fed.append(outputs), original_feed(self, outputs)))
    mc = mcdrop.MCDropout(mlp(), num_samples=200, seed=0, verbose=0, passes_per_chunk=50)
    pred = mc.predict(X)
    assert len(calls) == 4  # one reduction per pass chunk of the one block
    for fused, per_output in calls:
        assert fused  # a softmax output: the head is known from the graph, so passes and reductions run in one call
        (reduced, host), = per_output
        assert host is None  # no pass reached the host
        assert all(shape[:2] == (1, 23) and np.prod(shape) <= 23 * 3 for shape in reduced.values())
    assert all(samples is None for outputs in fed for _, samples, _ in outputs)
    samples = mc.sample(X).astype(np.float64)
    np.testing.assert_allclose(pred.mean, samples.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(pred.variance, samples.var(axis=0), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(pred.expected_entropy, stats.entropy(samples, axis=2).mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(pred.votes, (samples.argmax(-1)[..., None] == np.arange(3)).sum(0))


def test_regression_variance_from_merged_blocks_is_stable_at_a_large_offset():
    """Outputs near 1e4 with a spread of about 1: E[x²] - E[x]² in float64 would lose ~8 digits; the merged
    shifted sums match numpy's two-pass variance of the same passes."""
    inp = keras.Input((8,))
    h = L.Dropout(0.5)(L.Dense(16, activation="relu")(inp))
    model = keras.Model(inp, L.Dense(2, bias_initializer=keras.initializers.Constant(1e4))(h))
    mc = mcdrop.MCDropout(model, num_samples=40, seed=3, verbose=0, passes_per_chunk=7, batch_size=10)
    pred = mc.predict(X, return_samples=False)
    samples = mc.sample(X).astype(np.float64)
    assert np.all(samples.mean(axis=0) > 9e3) and np.all(samples.std(axis=0) > 1e-2)
    np.testing.assert_allclose(pred.epistemic_variance, samples.var(axis=0), rtol=1e-9)
    np.testing.assert_allclose(pred.mean, samples.mean(axis=0), rtol=1e-13)


def _gaussian(param):
    inp = keras.Input((8,))
    h = L.Dropout(0.3)(L.Dense(16, activation="relu")(inp))
    out = L.Dense(4, activation="softplus" if param == "variance" else None)(h)
    return keras.Model(inp, out)


def test_gaussian_head_sums_match_numpy():
    mc = mcdrop.MCDropout(_gaussian("softplus_std"), num_samples=30, seed=0, verbose=0,
                          heteroscedastic="softplus_std", passes_per_chunk=8)
    raw = mc.sample(X).astype(np.float64)
    pred = mc.predict(X, return_samples=False)
    np.testing.assert_allclose(pred.aleatoric_variance, (np.logaddexp(0, raw[..., 2:]) ** 2).mean(0), rtol=1e-10)
    np.testing.assert_allclose(pred.epistemic_variance, raw[..., :2].var(0), rtol=1e-8, atol=1e-15)


def test_logits_are_softmaxed_per_pass_on_the_device():
    mc = mcdrop.MCDropout(mlp(activation=None), num_samples=25, seed=0, verbose=0, task="classification",
                          outputs="logits", passes_per_chunk=6)
    logits = mc.sample(X).astype(np.float64)
    pred = mc.predict(X)
    p = special.softmax(logits, axis=2)
    np.testing.assert_allclose(pred.mean, p.mean(0), rtol=1e-10)
    np.testing.assert_allclose(pred.expected_entropy, stats.entropy(p, axis=2).mean(0), rtol=1e-10)


@pytest.mark.parametrize("kind", ["classification", "gaussian"])
def test_seeded_results_are_bit_identical_for_any_batching_of_the_stream(kind):
    if kind == "classification":
        make = lambda: mcdrop.MCDropout(mlp(), num_samples=20, seed=4, verbose=0, passes_per_chunk=7,  # noqa: E731
                                        batch_size=8)
    else:
        model = _gaussian("log_variance")
        make = lambda: mcdrop.MCDropout(model, num_samples=20, seed=4, verbose=0, passes_per_chunk=7,  # noqa: E731
                                        batch_size=8, heteroscedastic="log_variance")
    mc = make()
    whole = mc.predict(X, return_samples=False)
    for batch in (1, 5, 13):
        streamed = mc.predict(tf.data.Dataset.from_tensor_slices(X).batch(batch), return_samples=False)
        for name in ("mean", "variance", "epistemic_variance", "aleatoric_variance", "expected_entropy", "votes"):
            if hasattr(whole, name) and isinstance(getattr(whole, name), np.ndarray):
                np.testing.assert_array_equal(getattr(streamed, name), getattr(whole, name), err_msg=name)


def test_a_negative_variance_output_is_refused():
    inp = keras.Input((8,))
    model = keras.Model(inp, L.Dense(2)(L.Dropout(0.3)(inp)))  # linear: the variance half goes negative
    mc = mcdrop.MCDropout(model, num_samples=5, seed=0, verbose=0, heteroscedastic="variance")
    with pytest.raises(ValueError, match=r"argument `heteroscedastic`: expected 'variance' outputs >= 0"):
        mc.predict(X)


def test_a_single_probs_unit_outside_zero_one_is_refused():
    inp = keras.Input((8,))
    model = keras.Model(inp, L.Dense(1)(L.Dropout(0.3)(inp)))
    mc = mcdrop.MCDropout(model, num_samples=5, seed=0, verbose=0, task="classification", outputs="probs")
    with pytest.raises(ValueError, match=r"argument `outputs`: expected 'probs' outputs in \[0, 1\] for a single "
                                         r"sigmoid unit.*outputs='logits'"):
        mc.predict(10 * X)


def test_heads_are_decided_in_the_run_and_reported_after_it(monkeypatch):
    mc = mcdrop.MCDropout(mlp(n_out=2, activation=None), num_samples=4, seed=0, verbose=0)
    seen = []
    real = mc._call

    def call(*args, **kwargs):
        seen.append(mc.heads)
        return real(*args, **kwargs)

    mc._call = call
    assert mc.heads is None
    mc.predict(X)
    assert seen == [None]  # nothing on the engine changed while it ran
    assert [h.task for h in mc.heads] == ["regression"]


def test_a_model_failure_is_a_private_error_reported_as_bad_input():
    class Picky(keras.Model):
        def __init__(self):
            super().__init__()
            self.drop, self.out = L.Dropout(0.5), L.Dense(2)

        def call(self, x, training=False):
            raise ValueError("Invalid value for argument `units`: raised by the user's own model")

    model = Picky()
    mc = mcdrop.MCDropout(model, num_samples=3, seed=0, verbose=0)
    with pytest.raises(ModelFailedError) as info:
        mc.sampler([[X]], None, np.arange(3), np.array([0, 1]), [0])
    assert "raised by the user's own model" in str(info.value.cause)
    # the engine reports it as input the model cannot take (it used to let any "Invalid value" through)
    with pytest.raises(ValueError, match=r"argument `x`: expected input the model can take.*failed on it") as err:
        mc.predict(X)
    assert "raised by the user's own model" in str(err.value.__cause__)


class _FakePieces:
    @staticmethod
    def make(n, size):
        return [Piece([np.arange(s, s + size)], s, min(size, n - s), None) for s in range(0, n, size)]


class _Bar:
    n = 0

    def update(self, k):
        self.n += k


class _Collect:
    def __init__(self):
        self.rows = []

    def feed(self, rows):
        self.rows.append(rows)


def test_retry_runner_halves_pieces_on_out_of_memory_keeps_row_order_and_warns_once():
    calls = []

    def step(group, indices, valid):
        sizes = [piece.size for piece in group]
        calls.append(sizes)
        if sizes[0] > 2:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM")
        return [piece.flat[0][:piece.used].tolist() for piece in group]

    runner = RetryRunner(step, lambda: iter([(np.arange(2), 2)]), replicas=2, progress=_Bar(), num_samples=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = list(runner.run(iter(_FakePieces.make(13, 8)), _Collect))
    assert [w.category for w in caught] == [ResourceWarning]
    assert "retrying with 4 rows" in str(caught[0].message)
    rows = [r for receiver in done for r in receiver.rows[0]]
    assert rows == list(range(13))  # every row once, in order
    assert calls[0] == [8, 8] and calls[1] == [4, 4] and all(max(c) <= 2 for c in calls[2:])
    assert all(len(c) <= 2 for c in calls)


def test_compiled_calls_still_count_one_per_block(monkeypatch):
    calls = _count_calls(monkeypatch)
    mc = mcdrop.MCDropout(mlp(), num_samples=10, seed=0, verbose=0, batch_size=10)
    mc.predict(X)
    mc.predict(X)
    assert calls == [6]  # 3 blocks, twice; the reductions are a separate compiled function
    assert mc._reducer.traces == 1


class LogOfFirstFeature(L.Layer):
    def call(self, x):
        return x + tf.math.log(tf.abs(x[:, :1]))  # -inf exactly where the first feature is 0


def test_a_failed_prediction_to_disk_leaves_no_half_written_store(tmp_path):
    inp = keras.Input((8,))
    model = keras.Model(inp, L.Dense(3, activation="softmax")(L.Dropout(0.5)(LogOfFirstFeature()(inp))))
    x = X.copy()
    x[7, 0] = 0.0  # in the second block of 5 rows: the first block is written before the error
    mc = mcdrop.MCDropout(model, num_samples=4, seed=0, verbose=0, batch_size=5)
    with pytest.raises(ValueError, match=r"Invalid model output: 1 of 5 row\(s\) of `x` gave NaN or infinite"):
        mc.predict(x, out=tmp_path / "store")
    assert not (tmp_path / "store").exists()
    pred = mc.predict(x[:5], out=tmp_path / "store")  # and the folder is free for the next run
    assert pred.mean.shape == (5, 3)


def test_an_integer_output_is_reduced_as_float64():
    class Rounded(L.Layer):
        def call(self, x):
            return tf.cast(tf.round(10 * x), tf.int32)

    inp = keras.Input((8,))
    model = keras.Model(inp, Rounded()(L.Dense(2)(L.Dropout(0.5)(inp))))
    mc = mcdrop.MCDropout(model, num_samples=6, seed=0, verbose=0, task="regression")
    samples = mc.sample(X).astype(np.float64)
    pred = mc.predict(X, return_samples=False)
    np.testing.assert_allclose(pred.mean, samples.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(pred.epistemic_variance, samples.var(axis=0), rtol=1e-9, atol=1e-12)
