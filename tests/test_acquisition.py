"""Acquisition scores and batch selection, checked against hand computations, brute force and
independent implementations (scipy), with properties over random inputs (hypothesis)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from mcdrop import acquisition as acq
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction

CLASSIFICATION_SCORES = ["bald", "max_entropy", "variation_ratio", "mean_std", "margin", "least_confidence"]


def dirichlet_samples(seed, t=6, n=15, c=4, concentration=1.0):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(c, concentration), size=(t, n))


@st.composite
def sample_arrays(draw, max_t=6, max_n=8, max_c=5):
    t = draw(st.integers(1, max_t))
    n = draw(st.integers(1, max_n))
    c = draw(st.integers(2, max_c))
    seed = draw(st.integers(0, 2**31 - 1))
    concentration = draw(st.sampled_from([0.1, 1.0, 10.0]))
    return dirichlet_samples(seed, t, n, c, concentration)


# ------------------------------------------------------------------ hand-computed values


def test_bald_by_hand():
    # point 0: two passes (0.9, 0.1) and (0.1, 0.9); point 1: both passes (0.5, 0.5)
    # point 2: three classes, passes (0.6, 0.3, 0.1) and (0.2, 0.2, 0.6)
    p = np.array([
        [[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.6, 0.3, 0.1]],
        [[0.1, 0.9, 0.0], [0.5, 0.5, 0.0], [0.2, 0.2, 0.6]],
    ])
    h = lambda *q: -sum(x * np.log(x) for x in q if x > 0)  # noqa: E731
    expected = np.array([
        h(0.5, 0.5) - (h(0.9, 0.1) + h(0.1, 0.9)) / 2,
        h(0.5, 0.5) - h(0.5, 0.5),
        h(0.4, 0.25, 0.35) - (h(0.6, 0.3, 0.1) + h(0.2, 0.2, 0.6)) / 2,
    ])
    np.testing.assert_allclose(acq.bald(p), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(expected[0], np.log(2) - (-(0.9 * np.log(0.9) + 0.1 * np.log(0.1))), atol=1e-15)
    np.testing.assert_allclose(acq.max_entropy(p), [h(0.5, 0.5), h(0.5, 0.5), h(0.4, 0.25, 0.35)], atol=1e-12)


def test_other_scores_by_hand():
    p = np.array([
        [[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]],
        [[0.5, 0.1, 0.4], [0.1, 0.8, 0.1]],
        [[0.3, 0.6, 0.1], [0.4, 0.35, 0.25]],
    ])
    # point 0 mean (0.5, 0.3, 0.2), votes 0,0,1 ; point 1 mean (0.3, 0.5, 0.2), votes 0,1,0
    np.testing.assert_allclose(acq.least_confidence(p), [0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(acq.margin(p), [1 - 0.2, 1 - 0.2], atol=1e-12)
    np.testing.assert_allclose(acq.variation_ratio(p), [1 / 3, 1 / 3], atol=1e-12)
    std0 = np.sqrt([np.var([0.7, 0.5, 0.3]), np.var([0.2, 0.1, 0.6]), np.var([0.1, 0.4, 0.1])]).mean()
    assert acq.mean_std(p)[0] == pytest.approx(std0, abs=1e-12)


def test_regression_scores_by_hand():
    means = np.array([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])  # T=3, N=2
    np.testing.assert_allclose(acq.epistemic_variance(means), [2 / 3, 2.0], atol=1e-12)
    variances = np.array([[1.0, 0.5], [1.0, 0.5], [1.0, 0.5]])
    pred = RegressionPrediction.from_samples(means, variances)
    np.testing.assert_allclose(acq.predictive_variance(pred), [2 / 3 + 1.0, 2.0 + 0.5], atol=1e-12)
    np.testing.assert_allclose(acq.epistemic_variance(pred), [2 / 3, 2.0], atol=1e-12)
    two_outputs = np.stack([means, 2 * means], axis=-1)  # (T, N, D=2): summed over D
    np.testing.assert_allclose(acq.epistemic_variance(two_outputs), [2 / 3 * 5, 2.0 * 5], atol=1e-12)


def test_max_entropy_matches_scipy():
    p = dirichlet_samples(3, t=7, n=20, c=5)
    np.testing.assert_allclose(acq.max_entropy(p), stats.entropy(p.mean(axis=0), axis=-1), rtol=1e-12)


# ------------------------------------------------------------------ properties


@pytest.mark.parametrize("name", CLASSIFICATION_SCORES)
def test_samples_and_prediction_agree(name):
    p = dirichlet_samples(1, concentration=0.5)
    pred = ClassificationPrediction.from_samples(p)
    np.testing.assert_allclose(acq.SCORES[name](p), acq.SCORES[name](pred), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", CLASSIFICATION_SCORES)
def test_chunked_scoring_equals_one_chunk(name, monkeypatch):
    p = dirichlet_samples(2, t=5, n=50, c=3).astype(np.float32)
    whole = acq.SCORES[name](p)
    monkeypatch.setattr(acq, "_CHUNK_VALUES", 5 * 3 * 7)  # 7 rows per chunk, 8 chunks
    np.testing.assert_array_equal(acq.SCORES[name](p), whole)
    assert whole.shape == (50,)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(sample_arrays())
def test_information_bounds(p):
    mi, h = acq.bald(p), acq.max_entropy(p)
    c = p.shape[-1]
    assert np.all(mi >= 0)
    assert np.all(mi <= h + 1e-12)
    assert np.all(h <= np.log(c) + 1e-12)
    for name in ("margin", "least_confidence", "variation_ratio"):
        s = acq.SCORES[name](p)
        assert np.all((s >= -1e-12) & (s <= 1 + 1e-12)), name
    assert np.all(acq.least_confidence(p) <= 1 - 1 / c + 1e-12)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(sample_arrays(), st.integers(0, 1000))
def test_invariant_to_pass_order(p, seed):
    perm = np.random.default_rng(seed).permutation(p.shape[0])
    for name in CLASSIFICATION_SCORES:
        np.testing.assert_allclose(acq.SCORES[name](p[perm]), acq.SCORES[name](p), atol=1e-12, err_msg=name)


def test_list_input_equals_array_input():
    p = dirichlet_samples(4, t=3, n=4, c=3)
    for name in CLASSIFICATION_SCORES:
        np.testing.assert_array_equal(acq.SCORES[name](p.tolist()), acq.SCORES[name](p))


def test_random_is_seeded_and_uniform():
    p = dirichlet_samples(0, n=1000)
    a, b = acq.random(p, seed=5), acq.random(p, seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, acq.random(p, seed=6))
    assert stats.kstest(a, "uniform").pvalue > 1e-3


# ------------------------------------------------------------------ bad input


def test_wrong_rank():
    with pytest.raises(ValueError, match=r"`samples`: expected an array of rank 3, received an array of shape \(4, 3\)"):
        acq.bald(np.full((4, 3), 1 / 3))


def test_not_normalised_describes_whole_array(monkeypatch):
    p = dirichlet_samples(0, t=3, n=40, c=3)
    p[1, 33] = [0.5, 0.5, 0.5]
    monkeypatch.setattr(acq, "_CHUNK_VALUES", 9 * 5)  # the bad row sits in a later chunk
    with pytest.raises(ValueError, match=r"rows that sum to one, received an array of shape \(3, 40, 3\)"):
        acq.max_entropy(p)


def test_regression_prediction_to_classification_score():
    pred = RegressionPrediction.from_samples(np.ones((3, 4)))
    with pytest.raises(TypeError, match="Use `predictive_variance`"):
        acq.bald(pred)
    with pytest.raises(TypeError, match="a RegressionPrediction"):
        acq.predictive_variance(ClassificationPrediction.from_samples(dirichlet_samples(0)))


@pytest.mark.parametrize("k", [0, -1, 16])
def test_k_out_of_range(k):
    p = dirichlet_samples(0)  # N = 15
    with pytest.raises(ValueError, match=rf"`k`: expected an integer >= 1 and <= 15, received {k}"):
        acq.select(p, k)
    with pytest.raises(ValueError, match=rf"`k`: expected an integer >= 1 and <= 15, received {k}"):
        acq.batch_bald(p, k)
    with pytest.raises(ValueError, match=rf"`k`: expected an integer >= 1 and <= 15, received {k}"):
        acq.stochastic_batch(np.ones(15), k)


def test_unknown_method_and_mode():
    p = dirichlet_samples(0)
    with pytest.raises(ValueError, match=r"`method`: expected one of 'bald'.*received 'bold'"):
        acq.select(p, 2, method="bold")
    with pytest.raises(ValueError, match=r"`mode`: expected one of 'power', 'softmax', 'softrank', received 'hard'"):
        acq.stochastic_batch(np.ones(15), 2, mode="hard")
    with pytest.raises(ValueError, match=r"`stochastic`: expected None with method='batch_bald'"):
        acq.select(p, 2, method="batch_bald", stochastic="power")
    with pytest.raises(TypeError, match=r"`num_configurations`: expected no such option for method='bald'"):
        acq.select(p, 2, method="bald", num_configurations=10)


def test_power_mode_refuses_negative_scores():
    with pytest.raises(ValueError, match=r"`scores`: expected non-negative scores for mode='power'"):
        acq.stochastic_batch([0.5, -0.1, 0.2], 1, mode="power")


def test_batch_bald_refuses_per_example_masks():
    pred = ClassificationPrediction.from_samples(dirichlet_samples(0), mask="per_example")
    with pytest.raises(ValueError, match=r"consistent masks.*received 'per_example'.*different dropout mask"):
        acq.batch_bald(pred, 2)
    with pytest.raises(ValueError, match=r"consistent masks"):
        acq.select(pred, 2, method="batch_bald")


def test_batch_bald_needs_kept_samples():
    pred = ClassificationPrediction.from_samples(dirichlet_samples(0), keep_samples=False)
    with pytest.raises(ValueError, match=r"return_samples=True"):
        acq.batch_bald(pred, 2)


# ------------------------------------------------------------------ BatchBALD


def brute_force_joint_mi(p, indices):
    """I[y_A; w] by summing over every configuration with itertools (independent of the package)."""
    t, _, c = p.shape
    joint_entropy = 0.0
    for config in itertools.product(range(c), repeat=len(indices)):
        prob = np.mean([np.prod([p[s, i, y] for i, y in zip(indices, config)]) for s in range(t)])
        if prob > 0:
            joint_entropy -= prob * np.log(prob)
    conditional = sum(stats.entropy(p[s, i]) for s in range(t) for i in indices) / t
    return joint_entropy - conditional


def brute_force_greedy(p, k):
    chosen = []
    for _ in range(k):
        gains = {n: brute_force_joint_mi(p, chosen + [n]) for n in range(p.shape[1]) if n not in chosen}
        chosen.append(max(gains, key=gains.get))
    return chosen


@settings(max_examples=40, deadline=None, derandomize=True)
@given(sample_arrays(max_t=8, max_n=30, max_c=6))
def test_batch_bald_k1_is_bald_argmax(p):
    assert acq.batch_bald(p, 1)[0] == np.argmax(acq.bald(p))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_bald_matches_brute_force_greedy(seed):
    p = dirichlet_samples(seed, t=5, n=7, c=3, concentration=0.4)
    chosen = acq.batch_bald(p, 4).tolist()
    assert chosen == brute_force_greedy(p, 4)
    for j in range(1, 5):
        assert acq.joint_mutual_information(p, chosen[:j]) == pytest.approx(
            brute_force_joint_mi(p, chosen[:j]), abs=1e-10)


def test_joint_mi_is_submodular_below_sum_of_bald():
    p = dirichlet_samples(7, t=6, n=5, c=3, concentration=0.3)
    joint = acq.joint_mutual_information(p, [0, 1, 2])
    assert joint <= acq.bald(p)[[0, 1, 2]].sum() + 1e-12
    assert joint >= acq.bald(p)[[0, 1, 2]].max() - 1e-12


def copies_pool(seed=0, t=12, c=4, n_other=30, n_copies=5):
    """A pool whose most informative point appears ``n_copies`` times.

    The copied point has near one-hot passes that disagree (high BALD, nearly all of it
    epistemic: once one copy is labelled, the others add almost nothing). The other points
    have independently drawn disagreeing passes with lower BALD.
    """
    rng = np.random.default_rng(seed)
    star = np.full((t, c), 0.01 / (c - 1))
    star[np.arange(t), np.arange(t) % c] = 0.99
    others = rng.dirichlet(np.full(c, 0.6), size=(t, n_other))
    p = np.concatenate([others, np.repeat(star[:, None, :], n_copies, axis=1)], axis=1)
    perm = rng.permutation(p.shape[1])
    copies = set(np.flatnonzero(perm >= n_other).tolist())
    return p[:, perm], copies


def test_top_k_bald_takes_the_copies_batch_bald_takes_one():
    p, copies = copies_pool()
    k = len(copies)
    assert set(acq.select(p, k, method="bald").tolist()) == copies
    picked = acq.batch_bald(p, k).tolist()
    assert len(set(picked) & copies) == 1
    assert picked[0] in copies  # the BALD argmax comes first
    assert acq.joint_mutual_information(p, picked) > acq.joint_mutual_information(p, sorted(copies)) + 0.5


def test_batch_bald_memory_chunking_does_not_change_the_batch():
    p = dirichlet_samples(11, t=10, n=60, c=4, concentration=0.5)
    roomy = acq.batch_bald(p, 5, max_memory=2**28)
    # M = 64 configurations (4**3: exact for three picks, sampled for the fifth); the memory
    # limit leaves room for the tables and 4 candidates at a time (15 chunks of the pool)
    tight = acq.batch_bald(p, 5, num_configurations=64, seed=0,
                           max_memory=8 * 2 * 64 * 4 * 4 + 8 * 64 * (2 * 10 + 2 * 4))
    np.testing.assert_array_equal(tight, acq.batch_bald(p, 5, num_configurations=64, seed=0))
    np.testing.assert_array_equal(roomy[:4], tight[:4])


def exact_joint_entropy(p, indices):
    table = np.ones((p.shape[0], 1))
    for i in indices:
        table = (table[:, :, None] * p[:, i, None, :]).reshape(p.shape[0], -1)
    return stats.entropy(table.mean(axis=0))


def test_batch_bald_sampled_conditional_entropies_close_to_exact(monkeypatch):
    # C=5, M=300: exact for |A| <= 3 (125 configurations), sampled for the 5th and 6th picks.
    p = dirichlet_samples(5, t=20, n=40, c=5, concentration=0.3)
    seen = []
    real = acq._conditional_entropy

    def spy(weights, posterior, probs, max_memory, workspace=None):
        out = real(weights, posterior, probs, max_memory, workspace)
        seen.append((weights.copy(), out))
        return out

    monkeypatch.setattr(acq, "_conditional_entropy", spy)
    chosen = acq.batch_bald(p, 6, num_configurations=300, seed=0).tolist()
    assert [w.size for w, _ in seen] == [5, 25, 125, 300, 300]
    for step, (weights, estimate) in enumerate(seen, start=1):
        batch = chosen[:step]
        h_batch = exact_joint_entropy(p, batch)
        exact = np.array([exact_joint_entropy(p, batch + [n]) - h_batch for n in range(40)])
        if step <= 3:
            np.testing.assert_allclose(estimate, exact, atol=1e-10)
        else:  # importance-sampled: equal weights, error ~ 1/sqrt(M)
            np.testing.assert_allclose(weights, 1 / 300)
            assert np.max(np.abs(estimate - exact)) < 0.06
            assert np.mean(np.abs(estimate - exact)) < 0.03


def test_batch_bald_sampled_still_avoids_copies():
    # C=4, M=16: exact for two picks, sampled for the remaining three
    p, copies = copies_pool(seed=1)
    for seed in range(3):
        picked = acq.batch_bald(p, 5, num_configurations=16, seed=seed).tolist()
        assert len(set(picked)) == 5
        assert len(set(picked) & copies) == 1
    np.testing.assert_array_equal(acq.batch_bald(p, 5, num_configurations=16, seed=1),
                                  acq.batch_bald(p, 5, num_configurations=16, seed=1))


def test_batch_bald_accepts_a_consistent_prediction():
    p = dirichlet_samples(9, t=6, n=25, c=3)
    pred = ClassificationPrediction.from_samples(p)
    np.testing.assert_array_equal(acq.batch_bald(pred, 4), acq.batch_bald(p, 4))
    np.testing.assert_array_equal(acq.select(pred, 4, method="batch_bald"), acq.batch_bald(p, 4))


def test_batch_bald_whole_pool_is_a_permutation():
    p = dirichlet_samples(3, t=4, n=9, c=2)
    assert sorted(acq.batch_bald(p, 9).tolist()) == list(range(9))


def test_max_memory_too_small():
    with pytest.raises(ValueError, match=r"`max_memory`: expected at least 160 bytes for T=6, C=4, received 100"):
        acq.batch_bald(dirichlet_samples(0), 2, max_memory=100)


# ------------------------------------------------------------------ stochastic batch


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(1, 40), st.data(), st.sampled_from(acq.STOCHASTIC_MODES),
       st.sampled_from([0.0, 0.5, 1.0, 8.0, 1e3]), st.integers(0, 2**32 - 1))
def test_stochastic_batch_never_repeats(n, data, mode, beta, seed):
    k = data.draw(st.integers(1, n))
    scores = np.random.default_rng(seed).random(n)
    scores[: n // 3] = 0.0  # zeros: impossible under power mode, still needed when k is large
    idx = acq.stochastic_batch(scores, k, mode=mode, beta=beta, seed=seed)
    assert idx.shape == (k,) and idx.dtype == np.int64
    assert len(set(idx.tolist())) == k
    assert np.all((idx >= 0) & (idx < n))


@pytest.mark.parametrize("mode", acq.STOCHASTIC_MODES)
def test_stochastic_batch_tends_to_top_k(mode):
    rng = np.random.default_rng(0)
    scores = rng.random(200) + 0.01
    k = 10
    best = set(acq.top_k(scores, k).tolist())

    def overlap(beta):
        return np.mean([len(best & set(acq.stochastic_batch(scores, k, mode=mode, beta=beta, seed=s).tolist()))
                        / k for s in range(40)])

    overlaps = [overlap(beta) for beta in (0.0, 1.0, 4.0, 30.0)]
    assert overlaps[0] < 0.2  # uniform: about k/N = 5% expected
    # each step up in beta raises the overlap (0.05 slack for sampling noise over 40 seeds)
    assert all(b >= a - 0.05 for a, b in zip(overlaps, overlaps[1:])), overlaps
    assert overlaps[-1] > overlaps[0] + 0.3
    very_large = {"power": 1e4, "softmax": 1e5, "softrank": 1e3}[mode]
    for s in range(10):
        assert set(acq.stochastic_batch(scores, k, mode=mode, beta=very_large, seed=s).tolist()) == best


def test_stochastic_batch_samples_the_stated_distribution():
    # k=1: Gumbel-max draws index i with probability softmax(beta * s)_i
    scores = np.array([0.0, 0.5, 1.0, 2.0])
    rng = np.random.default_rng(1)
    draws = np.array([acq.stochastic_batch(scores, 1, mode="softmax", beta=1.0, seed=rng)[0] for _ in range(8000)])
    freq = np.bincount(draws, minlength=4) / draws.size
    target = np.exp(scores) / np.exp(scores).sum()
    np.testing.assert_allclose(freq, target, atol=0.02)
    draws = np.array([acq.stochastic_batch(scores, 1, mode="power", beta=2.0, seed=rng)[0] for _ in range(8000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 8000, scores**2 / (scores**2).sum(), atol=0.02)


@pytest.mark.parametrize("mode, scores, beta", [
    ("softmax", [1e300, 5e299, -1e300, 0.0], 1e10),  # beta * score overflows
    ("power", [10.0, 5.0, 0.0, 1.0], 1e308),         # beta * log(score) overflows
    ("softrank", [3.0, 2.0, 0.0, 1.0], 1e308),
])
def test_huge_beta_is_top_k_without_overflow(mode, scores, beta):
    with np.errstate(all="raise"):
        for s in range(5):
            assert acq.stochastic_batch(scores, 3, mode=mode, beta=beta, seed=s).tolist() == [0, 1, 3]


def test_power_mode_zero_scores_come_last():
    scores = np.array([0.0, 0.3, 0.0, 0.2, 0.0])
    for s in range(20):
        idx = acq.stochastic_batch(scores, 4, mode="power", seed=s)
        assert set(idx[:2].tolist()) == {1, 3}


# ------------------------------------------------------------------ select


@pytest.mark.parametrize("name", CLASSIFICATION_SCORES)
def test_select_top_k_of_each_score(name):
    p = dirichlet_samples(8, t=8, n=30, c=4, concentration=0.5)
    np.testing.assert_array_equal(acq.select(p, 5, method=name), np.argsort(-acq.SCORES[name](p), kind="stable")[:5])


def test_select_stochastic_and_random_are_seeded():
    p = dirichlet_samples(8, t=8, n=30, c=4)
    a = acq.select(p, 5, method="bald", stochastic="power", seed=3)
    np.testing.assert_array_equal(a, acq.stochastic_batch(acq.bald(p), 5, mode="power", seed=3))
    np.testing.assert_array_equal(acq.select(p, 5, method="random", seed=2), acq.select(p, 5, method="random", seed=2))
    assert len(set(acq.select(p, 30, method="random", seed=2).tolist())) == 30


def test_select_regression():
    means = np.random.default_rng(0).normal(size=(10, 20))
    np.testing.assert_array_equal(acq.select(means, 3, method="epistemic_variance"),
                                  np.argsort(-means.var(axis=0))[:3])


# -- progress (issue 15): BatchBALD can run for tens of seconds on a few hundred points -------------


def _progress_probs():
    return np.random.default_rng(0).dirichlet(np.ones(3), size=(6, 30))


@pytest.fixture
def every_redraw(monkeypatch):
    """Draw the bar at every update (a real bar redraws at most every 0.1 s)."""
    from mcdrop import _progress

    monkeypatch.setattr(_progress, "MIN_INTERVAL", 0.0)


def test_batch_bald_progress_when_asked(capsys, every_redraw):
    picked = acq.batch_bald(_progress_probs(), 4, seed=0, verbose=1)
    err = capsys.readouterr().err
    assert "BatchBALD" in err and "point" in err
    assert all(f"{i}/4" in err for i in range(5))
    # the bar changes nothing in the answer
    assert picked.tolist() == acq.batch_bald(_progress_probs(), 4, seed=0, verbose=0).tolist()


def test_batch_bald_progress_through_select(capsys, every_redraw):
    acq.select(_progress_probs(), 3, method="batch_bald", seed=0, verbose=True)
    assert "3/3" in capsys.readouterr().err


def test_batch_bald_silent_when_not_asked_or_not_a_terminal(capsys):
    acq.batch_bald(_progress_probs(), 4, seed=0, verbose=0)
    acq.batch_bald(_progress_probs(), 4, seed=0)  # "auto", and pytest's stderr is not a terminal
    assert capsys.readouterr().err == ""


def test_batch_bald_auto_progress_on_a_terminal(monkeypatch, capsys, every_redraw):
    import sys

    from mcdrop import _progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(_progress, "AUTO_DELAY", 0.0)
    acq.batch_bald(_progress_probs(), 2, seed=0)
    assert "2/2" in capsys.readouterr().err


def test_batch_bald_bad_verbose():
    with pytest.raises(ValueError, match=r"argument `verbose`: expected one of 'auto', 0, 1.*received 'yes'"):
        acq.batch_bald(_progress_probs(), 2, verbose="yes")
