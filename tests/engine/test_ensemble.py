"""mcdrop.Ensemble: deep ensembles and MC-dropout ensembles through the same prediction."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

import mcdrop
from mcdrop import Ensemble, MCDropout
from mcdrop.engine import ensemble as ensemble_module
from mcdrop.engine.ensemble import member_seed

L = keras.layers


def _classifier(width, seed, n_out=4, rate=0.3):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((6,)), L.Dense(width, activation="relu")]
    if rate:
        layers.append(L.Dropout(rate))
    return keras.Sequential([*layers, L.Dense(n_out, activation="softmax")])


@pytest.fixture(scope="module")
def members():
    # different architectures, one of them with two hidden layers and logits out
    keras.utils.set_random_seed(9)
    logits = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="tanh"), L.Dropout(0.2),
                               L.Dense(8, activation="relu"), L.Dense(4)])
    return [_classifier(16, 0), _classifier(32, 1), logits]


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).normal(size=(37, 6)).astype("float32")


#: the last member ends in logits: declared for it alone
LOGITS_LAST = {"member_options": [{}, {}, {"outputs": "logits"}]}


def _softmax(z):
    z = z.astype(np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_deep_ensemble_mean_is_the_average_of_the_members_own_outputs(members, x):
    pred = Ensemble(members, seed=0, **LOGITS_LAST).predict(x, return_samples=True)
    own = [members[0].predict(x, verbose=0), members[1].predict(x, verbose=0),
           _softmax(members[2].predict(x, verbose=0))]
    for m, probs in enumerate(own):
        np.testing.assert_allclose(pred.samples[m], probs, rtol=0, atol=1e-7)
    np.testing.assert_allclose(pred.mean, np.mean([p.astype(np.float64) for p in own], axis=0), rtol=0, atol=1e-7)
    assert pred.num_samples == 3 and pred.members == (1, 1, 1)
    np.testing.assert_array_equal(pred.sample_member, [0, 1, 2])
    # the spread over members is the epistemic part: BALD from the three members' outputs by hand
    p = np.stack(own)
    h = lambda q: -np.sum(q * np.log(q), axis=-1)  # noqa: E731
    np.testing.assert_allclose(pred.mutual_information, h(p.mean(0)) - h(p).mean(0), atol=1e-6)


def test_mc_dropout_ensemble_is_member_major_and_each_member_is_its_own_mc_run(members, x):
    pred = Ensemble(members, num_samples=6, seed=11, **LOGITS_LAST).predict(x, return_samples=True)
    assert pred.num_samples == 18 and pred.members == (6, 6, 6)
    np.testing.assert_array_equal(pred.sample_member, np.repeat([0, 1, 2], 6))
    means = []
    for m, model in enumerate(members):
        alone = MCDropout(model, num_samples=6, seed=member_seed(11, m),
                          **LOGITS_LAST["member_options"][m]).predict(x, return_samples=True)
        np.testing.assert_array_equal(pred.samples[6 * m:6 * (m + 1)], alone.samples)
        means.append(alone.mean)
    np.testing.assert_allclose(pred.mean, np.mean(means, axis=0), rtol=0, atol=1e-12)


def test_seeds_compile_once_and_members_untouched(members, x):
    before = [[w.copy() for w in m.get_weights()] for m in members]
    ens = Ensemble(members, num_samples=4, seed=3, **LOGITS_LAST)
    a = ens.predict(x, return_samples=True)
    b = ens.predict(x[:20], return_samples=True)
    np.testing.assert_array_equal(a.samples[:, :20], b.samples)
    assert [m.sampler.traces for m in ens.members] == [1, 1, 1]
    c = Ensemble(members, num_samples=4, seed=4, **LOGITS_LAST).predict(x, return_samples=True)
    assert not np.array_equal(a.samples, c.samples)
    unseeded = Ensemble(members, num_samples=4, **LOGITS_LAST).predict(x)
    assert isinstance(unseeded.seed, int)
    for model, weights in zip(members, before):
        for w0, w1 in zip(weights, model.get_weights()):
            np.testing.assert_array_equal(w0, w1)
    assert members[0].layers[1].rate == 0.3


def test_blocks_streams_and_store_agree(members, x, tmp_path, monkeypatch):
    ens = Ensemble(members, num_samples=3, seed=5, **LOGITS_LAST)
    whole = ens.predict(x, return_samples=True)
    monkeypatch.setattr(ensemble_module, "BLOCK_ROWS", 8)  # five blocks, O(8 rows) at a time
    blocked = ens.predict(x, return_samples=True)
    np.testing.assert_allclose(blocked.mean, whole.mean, atol=1e-6)
    streamed = ens.predict(tf.data.Dataset.from_tensor_slices(x).batch(5), return_samples=True)
    np.testing.assert_array_equal(streamed.samples, blocked.samples)  # any batching of the stream: same bits
    stored = ens.predict(x, out=tmp_path / "store")
    assert stored.members == (3, 3, 3)
    again = mcdrop.store.load(tmp_path / "store")
    assert again.members == (3, 3, 3) and again.num_samples == 9
    np.testing.assert_array_equal(np.asarray(again.mean), np.asarray(stored.mean))


def test_members_survive_subset_concatenate_and_to_dict(members, x):
    pred = Ensemble(members, num_samples=2, seed=0, **LOGITS_LAST).predict(x, return_samples=True)
    assert pred.subset([0, 3]).members == (2, 2, 2)
    joined = mcdrop.predictive.concatenate([pred.subset(slice(0, 5)), pred.subset(slice(5, None))])
    assert joined.members == (2, 2, 2)
    np.testing.assert_array_equal(pred.to_dict()["sample_member"], [0, 0, 1, 1, 2, 2])
    single = MCDropout(members[0], num_samples=6, seed=0).predict(x)
    assert single.members is None and "sample_member" not in single.to_dict()
    with pytest.raises(ValueError, match="argument `predictions`"):
        mcdrop.predictive.concatenate([pred.subset([0]), single.subset([1])])


def test_downstream_consumers_take_it(members, x):
    pred = Ensemble(members, num_samples=4, seed=0, **LOGITS_LAST).predict(x, return_samples=True)
    y = np.arange(len(x)) % 4
    picked = mcdrop.acquisition.select(pred, 3, method="batch_bald", seed=0)
    assert len(set(np.asarray(picked).tolist())) == 3
    metrics = next(iter(mcdrop.evaluate(pred, y).to_dict()["metrics"].values()))
    assert metrics["nll"] == pytest.approx(-np.mean(np.log(pred.mean[np.arange(len(y)), y])))
    assert mcdrop.metrics.negative_log_likelihood(y, pred) == pytest.approx(
        -np.mean(np.log(pred.mean[np.arange(len(y)), y])))


def _gaussian(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((3,)), L.Dense(8, activation="tanh"), L.Dense(2)])


def test_regression_mixture_over_members_is_exact():
    models = [_gaussian(s) for s in range(4)]
    x = np.random.default_rng(1).normal(size=(9, 3)).astype("float32")
    pred = Ensemble(models, seed=0, heteroscedastic="log_variance").predict(x)
    raw = np.stack([m.predict(x, verbose=0).astype(np.float64) for m in models])  # (M, N, 2)
    mu, var = raw[..., :1], np.exp(raw[..., 1:])
    np.testing.assert_allclose(pred.mean, mu.mean(0), atol=1e-6)
    np.testing.assert_allclose(pred.variance, (var + mu ** 2).mean(0) - mu.mean(0) ** 2, rtol=1e-5)
    for q in (0.1, 0.5, 0.9):  # the mixture quantile, checked with scipy's normal CDF
        z = pred.quantile(q)
        np.testing.assert_allclose(stats.norm.cdf(z, mu, np.sqrt(var)).mean(0), q, atol=1e-6)


@pytest.mark.parametrize("build, error, match", [
    (lambda m: Ensemble(m[0]), TypeError, r"argument `models`: expected a non-empty list of keras.Model"),
    (lambda m: Ensemble([]), TypeError, r"argument `models`: expected a non-empty list"),
    (lambda m: Ensemble([m[0], "m"]), TypeError, r"argument `models\[1\]`: expected a keras.Model"),
    (lambda m: Ensemble([m[0], m[0]]), ValueError, r"argument `models`: expected distinct model objects"),
    (lambda m: Ensemble(m, num_samples=0), ValueError, r"argument `num_samples`: expected an integer >= 1"),
    (lambda m: Ensemble(m, member_options=[{}]), ValueError, r"argument `member_options`: expected a list of 3 dicts"),
    (lambda m: Ensemble(m, member_options=[{}, {}, {"rate": 0.1}]), ValueError,
     r"argument `member_options\[2\]`: expected keys among task, outputs, heteroscedastic"),
    (lambda m: Ensemble(m, rate=0.2), ValueError, r"argument `rate`: expected None with num_samples=1"),
    (lambda m: Ensemble([m[0], _classifier(8, 2, rate=0)], num_samples=5), ValueError,
     r"argument `models\[1\]`: expected a model with at least one stochastic layer for num_samples > 1"),
])
def test_errors(members, build, error, match):
    with pytest.raises(error, match=match):
        build(members)


def test_members_of_another_kind_are_refused(members, x):
    with pytest.raises(ValueError, match=r"argument `models\[1\]`: expected outputs of the kind models\[0\] gives "
                                         r"\(classification of shape \(4,\)\).*classification of shape \(3,\)"):
        Ensemble([members[0], _classifier(8, 3, n_out=3)], seed=0).predict(x)
    # a linear last layer reads as regression unless the task is stated
    with pytest.raises(ValueError, match=r"argument `models\[2\]`.*It gives regression of shape \(4,\)\. "
                                         r"Pass task="):
        Ensemble(members, seed=0).predict(x)
