"""Issue 10 ("at the floor"): the passes and their reductions in one compiled call when the heads are known
from the graph, and the cheaper reductions. Every number is checked against numpy on the raw passes
(``engine.sample``) or against the separate (unfused) call, never against the code's earlier output."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import special, stats

import mcdrop
from mcdrop.engine._reduce import PassReducer
from mcdrop.engine._summarise import ReducedStep
from mcdrop.heads import Head
from tests.engine.conftest import L, mlp

X = np.random.default_rng(5).standard_normal((23, 8)).astype("float32")
NAMES = ("mean", "variance", "epistemic_variance", "aleatoric_variance", "expected_entropy", "votes")


class Identity(L.Layer):
    """A last layer that does not say what it returns: the head is decided from the first chunk's values."""

    def call(self, x):
        return x


def _unfused(monkeypatch):
    monkeypatch.setattr(ReducedStep, "_fused", lambda self, group, indices: None)


def _fused_calls(monkeypatch):
    seen = []
    original = ReducedStep._fused

    def spy(self, group, indices):
        plan = original(self, group, indices)
        seen.append(plan is not None)
        return plan

    monkeypatch.setattr(ReducedStep, "_fused", spy)
    return seen


def _models():
    gaussian_in = keras.Input((8,))
    gaussian = keras.Model(gaussian_in, L.Dense(4)(L.Dropout(0.3)(L.Dense(16, activation="relu")(gaussian_in))))
    return {
        "softmax": (mlp(), {}),
        "logits": (mlp(activation=None), {"task": "classification", "outputs": "logits"}),
        "sigmoid": (mlp(n_out=1, activation="sigmoid"), {}),
        "regression": (mlp(n_out=2, activation=None), {}),
        "gaussian": (gaussian, {"heteroscedastic": "log_variance"}),
    }


@pytest.mark.parametrize("kind", list(_models()))
@pytest.mark.parametrize("jit", [False, True])
def test_fused_and_separate_calls_give_the_same_statistics(monkeypatch, kind, jit):
    model, options = _models()[kind]
    make = lambda: mcdrop.MCDropout(model, num_samples=9, seed=2, verbose=0, passes_per_chunk=4,  # noqa: E731
                                    batch_size=10, jit_compile=jit, **options)
    seen = _fused_calls(monkeypatch)
    fused = make().predict(X, return_samples=False)
    assert seen and all(seen)  # every call fused: the graph settles the head
    monkeypatch.undo()
    _unfused(monkeypatch)
    separate = make().predict(X, return_samples=False)
    for name in NAMES:
        if isinstance(getattr(fused, name, None), np.ndarray):
            np.testing.assert_allclose(getattr(fused, name), getattr(separate, name), rtol=1e-12, atol=1e-15,
                                       err_msg=name)


def test_fused_statistics_match_numpy_on_the_raw_passes(monkeypatch):
    seen = _fused_calls(monkeypatch)
    mc = mcdrop.MCDropout(mlp(activation=None), num_samples=30, seed=0, verbose=0, task="classification",
                          outputs="logits", passes_per_chunk=7, batch_size=9)
    pred = mc.predict(X)
    assert all(seen)
    p = special.softmax(mc.sample(X).astype(np.float64), axis=2)
    np.testing.assert_allclose(pred.mean, p.mean(0), rtol=1e-10)
    np.testing.assert_allclose(pred.variance, p.var(0), rtol=1e-8, atol=1e-15)
    np.testing.assert_allclose(pred.expected_entropy, stats.entropy(p, axis=2).mean(0), rtol=1e-10)
    np.testing.assert_array_equal(pred.votes, (p.argmax(-1)[..., None] == np.arange(3)).sum(0))


def test_kept_samples_come_out_of_the_fused_call(monkeypatch):
    seen = _fused_calls(monkeypatch)
    mc = mcdrop.MCDropout(mlp(), num_samples=6, seed=1, verbose=0, batch_size=10)
    pred = mc.predict(X, return_samples=True)
    assert all(seen)
    np.testing.assert_array_equal(pred.samples, mc.sample(X))


def test_a_head_that_needs_values_runs_separately_first_then_fused(monkeypatch):
    inp = keras.Input((8,))
    model = keras.Model(inp, Identity()(L.Dense(3, activation="softmax")(L.Dropout(0.5)(L.Dense(16)(inp)))))
    seen = _fused_calls(monkeypatch)
    mc = mcdrop.MCDropout(model, num_samples=9, seed=4, verbose=0, passes_per_chunk=4, batch_size=8)
    whole = mc.predict(X)
    assert seen[0] is False and all(seen[1:]) and len(seen) == 9  # 3 blocks x 3 pass chunks
    assert mc.heads == [Head("classification", "probs")]
    samples = mc.sample(X).astype(np.float64)
    np.testing.assert_allclose(whole.mean, samples.mean(0), rtol=1e-12)
    np.testing.assert_allclose(whole.expected_entropy, special.entr(samples).sum(2).mean(0), rtol=1e-10)
    for batch in (1, 5, 13):  # the first call separate, the others fused: still the same bits per row
        streamed = mc.predict(tf.data.Dataset.from_tensor_slices(X).batch(batch))
        for name in ("mean", "variance", "expected_entropy", "votes"):
            np.testing.assert_array_equal(getattr(streamed, name), getattr(whole, name), err_msg=name)


def test_fused_steps_trace_once_per_signature_and_head_set():
    mc = mcdrop.MCDropout(mlp(), num_samples=5, seed=0, verbose=0)
    for n in (3, 17, 64):
        mc.predict(np.zeros((n, 8), "float32"))
    assert mc.sampler.traces == 1 and mc._reducer.traces == 1
    mc.predict(np.zeros((4, 8), "float32"), return_samples=True)  # another step: the raw passes come out too
    assert mc.sampler.traces == 2 and mc._reducer.traces == 1  # the reduction is the one traced before


@pytest.mark.parametrize("fused", [True, False])
def test_nonfinite_rows_are_reported_with_the_same_text(monkeypatch, fused):
    class LogOfFirstFeature(L.Layer):
        def call(self, x):
            return x + tf.math.log(tf.abs(x[:, :1]))  # -inf exactly where the first feature is 0

    if not fused:
        _unfused(monkeypatch)
    inp = keras.Input((8,))
    for head in (L.Dense(3, activation="softmax"), L.Dense(2)):
        model = keras.Model(inp, head(L.Dropout(0.5)(LogOfFirstFeature()(inp))))
        x = X.copy()
        x[[2, 6], 0] = 0.0
        mc = mcdrop.MCDropout(model, num_samples=4, seed=0, verbose=0, batch_size=10)
        with pytest.raises(ValueError, match=r"^Invalid model output: 2 of 10 row\(s\) of `x` gave NaN or infinite "
                                             r"values in at least one pass\. Check the input values"):
            mc.predict(x)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nonfinite_and_varies_match_numpy_for_every_head(jit, dtype):
    rng = np.random.default_rng(3)
    raw = rng.standard_normal((1, 6, 9, 4)).astype(dtype)
    raw[0, :, 0] = raw[0, 0, 0]  # row 0: every pass the same
    raw[0, 3, 1, 2] = np.inf       # a later pass
    raw[0, 0, 2, 0] = -np.inf      # the first pass
    raw[0, 5, 3, 1] = np.nan
    raw[0, :, 4] = raw[0, 0, 4]
    raw[0, 4, 4, 3] = np.nextafter(raw[0, 4, 4, 3], np.inf)  # one unit in the last place, in one pass
    raw[0, :, 5] = 3e38 * np.sign(raw[0, :, 5])  # huge but finite
    probs = special.softmax(raw.astype(np.float64), axis=-1).astype(dtype)
    probs[np.isnan(probs)] = np.nan
    probs[0, 3, 1, 2], probs[0, 0, 2, 0], probs[0, 5, 3, 1] = np.inf, -np.inf, np.nan
    cases = [(Head("classification", "logits"), raw), (Head("classification", "probs"), probs),
             (Head("regression", None), raw), (Head("regression", None, "log_variance"), raw)]
    for head, values in cases:
        stats_ = PassReducer(jit_compile=jit)(head, tf.constant(values), 6)
        np.testing.assert_array_equal(stats_["nonfinite"][0], ~np.isfinite(values[0]).all(axis=(0, 2)), err_msg=str(head))
        finite = np.isfinite(values[0]).all(axis=(0, 2))
        varies = (values[0] != values[0, :1]).any(axis=(0, 2))
        np.testing.assert_array_equal(stats_["varies"][0][finite], varies[finite], err_msg=str(head))
    assert not PassReducer()(Head("regression", None), tf.constant(np.full((1, 3, 2, 2), 1e200)), 3)["nonfinite"].any()


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("options", [{}, {"task": "classification", "outputs": "logits"}])
def test_identical_passes_give_exactly_zero_variance_and_mutual_information(jit, options):
    inp = keras.Input((8,))
    activation = None if options else "softmax"
    model = keras.Model(inp, L.Dense(10, activation=activation)(L.Dense(32, activation="relu")(inp)))
    x = 3 * np.random.default_rng(0).standard_normal((500, 8)).astype("float32")
    for t in (7, 33, 50):
        pred = mcdrop.MCDropout(model, num_samples=t, seed=0, verbose=0, allow_deterministic=True, jit_compile=jit,
                                passes_per_chunk=20, **options).predict(x)
        assert np.all(pred.variance == 0)
        assert np.all(pred.mutual_information == 0)  # before: a few units of rounding in about half the rows
        np.testing.assert_allclose(pred.expected_entropy, pred.entropy, rtol=1e-13, atol=1e-15)


def test_an_output_shape_the_head_refuses_is_reported_from_the_separate_call():
    inp = keras.Input((8,))
    model = keras.Model(inp, L.Dense(3)(L.Dropout(0.3)(inp)))  # 3 units: no mean half and variance half
    mc = mcdrop.MCDropout(model, num_samples=4, seed=0, verbose=0, heteroscedastic="log_variance")
    with pytest.raises(ValueError, match=r"argument `heteroscedastic`: expected a model output with a mean half "
                                         r"and a variance half.*received an array of shape \(4, 23, 3\) and dtype "
                                         r"float32"):
        mc.predict(X)


def test_a_strategy_is_never_fused():
    mc = mcdrop.MCDropout(mlp(), num_samples=4, seed=0, verbose=0, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"))
    with pytest.raises(ValueError, match=r"argument `then`: expected None under a distribution strategy"):
        mc.sampler([[X]], None, np.arange(4), np.array([0, 1]), [0], then=object(), valid=4)
    single = mcdrop.MCDropout(mc.model, num_samples=4, seed=0, verbose=0).predict(X)
    np.testing.assert_array_equal(mc.predict(X).mean, single.mean)


@pytest.mark.parametrize("jit", [False, True])
def test_logit_entropies_come_from_the_log_probabilities(jit):
    """-sum p (z - logsumexp z) per pass; a class whose probability underflows to 0 adds 0, not NaN."""
    z = np.random.default_rng(4).standard_normal((1, 5, 6, 4)) * 4
    z[0, :, 0, 1] = -1000.0  # exp underflows: p = 0 exactly
    z[0, :, 1] = [0.0, 0.0, 0.0, 0.0]  # uniform: log 4 per pass
    z = z.astype("float32")
    out = PassReducer(jit_compile=jit)(Head("classification", "logits"), tf.constant(z), 5)
    log_p = special.log_softmax(z.astype(np.float64), axis=-1)
    expected = -(np.exp(log_p) * log_p).sum(axis=(1, 3))
    np.testing.assert_allclose(out["sum_entropy"], expected, rtol=1e-13)
    assert out["sum_entropy"][0, 1] == pytest.approx(5 * np.log(4), rel=1e-15)
    np.testing.assert_allclose(out["first"], np.exp(log_p[:, 0]), rtol=1e-13, atol=1e-300)
