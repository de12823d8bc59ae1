"""``acquisition.select`` on a pool predicted on demand (a callable with ``rows``, scored a chunk at a
time) and BatchBALD's BALD shortlist (``candidates``), checked against numpy recomputations and a
brute-force joint mutual information."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mcdrop import acquisition as acq
from tests._recompute import entropy


def bald_by_hand(p):
    """I[y; w] = H[mean_t p_t] - mean_t H[p_t], for p of shape (T, N, C)."""
    return entropy(p.mean(axis=0)) - entropy(p).mean(axis=0)


def joint_mi_by_hand(p, a, b):
    """I[y_a, y_b; w] by enumerating the C^2 label pairs."""
    joint = np.einsum("ti,tj->tij", p[:, a], p[:, b]).mean(axis=0).ravel()
    return entropy(joint) - entropy(p[:, a]).mean() - entropy(p[:, b]).mean()


P = np.random.default_rng(4).dirichlet(np.full(3, 0.4), size=(7, 50))  # (T, N, C): a pool of 50
ROWS = np.array([3, 47, 10, 11, 0, 25, 31, 8, 9, 40, 41, 2, 17, 30, 33, 44, 5])


class Pool:
    """Predicts pool rows on demand and records every call."""

    def __init__(self, p):
        self.p, self.calls = p, []

    def __call__(self, rows, return_samples):
        self.calls.append((np.asarray(rows).tolist(), return_samples))
        return self.p[:, rows]


@pytest.mark.parametrize("chunk_size", [1, 4, 17, 1000])
def test_a_callable_pool_is_scored_a_chunk_at_a_time_with_the_same_choice(chunk_size):
    pool = Pool(P)
    picked = acq.select(pool, 5, method="bald", rows=ROWS, chunk_size=chunk_size)
    expected = ROWS[np.argsort(-bald_by_hand(P[:, ROWS]), kind="stable")[:5]]
    np.testing.assert_array_equal(picked, expected)
    assert [rows for rows, _ in pool.calls] == [ROWS[i:i + chunk_size].tolist()
                                                for i in range(0, ROWS.size, chunk_size)]
    assert not any(samples for _, samples in pool.calls)  # summaries are enough to score


def test_a_callable_pool_random_and_stochastic():
    pool = Pool(P)
    picked = acq.select(pool, 4, method="random", rows=ROWS, seed=9)
    np.testing.assert_array_equal(picked, ROWS[np.argsort(-np.random.default_rng(9).random(ROWS.size),
                                                          kind="stable")[:4]])
    assert pool.calls == []  # random needs no prediction
    power = acq.select(Pool(P), 4, method="bald", stochastic="power", rows=ROWS, chunk_size=5, seed=2)
    in_memory = acq.stochastic_batch(bald_by_hand(P[:, ROWS]), 4, mode="power", seed=2)
    np.testing.assert_array_equal(power, ROWS[in_memory])


def test_batch_bald_runs_on_the_bald_shortlist_only():
    pool = Pool(P)
    picked = acq.select(pool, 2, method="batch_bald", rows=ROWS, candidates=6, chunk_size=4)
    shortlist = ROWS[np.argsort(-bald_by_hand(P[:, ROWS]), kind="stable")[:6]]
    # samples are asked for once, for the shortlist alone
    assert [(rows, s) for rows, s in pool.calls if s] == [(shortlist.tolist(), True)]
    # greedy BatchBALD: the BALD argmax, then the shortlisted point with the largest joint MI with it
    first = shortlist[0]
    second = max((r for r in shortlist if r != first), key=lambda r: joint_mi_by_hand(P, first, r))
    assert picked.tolist() == [first, second]


def test_batch_bald_shortlist_on_samples_in_memory():
    picked = acq.select(P, 2, method="batch_bald", candidates=5)
    shortlist = np.argsort(-bald_by_hand(P), kind="stable")[:5]
    pairs = {(a, b): joint_mi_by_hand(P, a, b) for a, b in itertools.permutations(shortlist, 2)}
    assert picked[0] == shortlist[0]
    assert picked[1] == max((b for a, b in pairs if a == shortlist[0]), key=lambda b: pairs[shortlist[0], b])
    # a shortlist as long as the pool is plain BatchBALD
    np.testing.assert_array_equal(acq.select(P, 3, method="batch_bald", candidates=500),
                                  acq.batch_bald(P, 3))


@pytest.mark.parametrize("call, error, match", [
    (lambda: acq.select(P, 2, rows=ROWS), TypeError, r"`rows`: expected None unless `prediction` is a callable"),
    (lambda: acq.select(Pool(P), 2), TypeError, r"`rows`: expected the pool rows to choose among"),
    (lambda: acq.select(Pool(P), 2, rows=[[1, 2]]), ValueError,
     r"`rows`: expected a non-empty 1-D array of integer pool rows"),
    (lambda: acq.select(Pool(P), 2, rows=ROWS, chunk_size=0), ValueError,
     r"`chunk_size`: expected an integer >= 1, received 0"),
    (lambda: acq.select(P, 2, method="bald", candidates=5), TypeError,
     r"`candidates`: expected no such option for method='bald', received 5"),
    (lambda: acq.select(P, 3, method="batch_bald", candidates=2), ValueError,
     r"`candidates`: expected an integer >= 3, received 2"),
])
def test_bad_pool_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_classification_methods_are_the_probability_scores():
    assert acq.CLASSIFICATION_METHODS == ("bald", "max_entropy", "variation_ratio", "mean_std", "margin",
                                          "least_confidence", "random", "batch_bald")
    assert set(acq.CLASSIFICATION_METHODS) | set(acq.REGRESSION_METHODS) == set(acq.METHODS)
