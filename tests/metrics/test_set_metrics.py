"""Coverage and size of prediction sets, checked by hand and against a row-by-row recount."""

from __future__ import annotations

import numpy as np
import pytest

from mcdrop import metrics

SETS = np.array([[True, False, False], [True, False, True], [False, False, True], [False, False, False],
                 [True, True, True]])
Y = np.array([0, 1, 2, 2, 1])


def test_hand_worked():
    assert metrics.set_coverage(Y, SETS) == pytest.approx(3 / 5)
    assert metrics.mean_set_size(SETS) == pytest.approx((1 + 2 + 1 + 0 + 3) / 5)
    r = metrics.size_stratified_coverage(Y, SETS)
    assert r.size.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(r.coverage, [0.0, 1.0, 0.0, 1.0])
    assert r.count.tolist() == [1, 2, 1, 1]
    c = metrics.class_conditional_coverage(Y, SETS)
    np.testing.assert_allclose(c.coverage, [1.0, 0.5, 0.5])
    assert c.count.tolist() == [1, 2, 2]


def test_against_a_row_by_row_recount():
    rng = np.random.default_rng(0)
    sets = rng.uniform(size=(500, 7)) < 0.3
    y = rng.integers(0, 6, size=500)  # class 6 never occurs
    hits = [bool(sets[i, y[i]]) for i in range(500)]
    sizes = [int(sum(sets[i])) for i in range(500)]
    assert metrics.set_coverage(y, sets) == pytest.approx(np.mean(hits))
    assert metrics.mean_set_size(sets.astype(int)) == pytest.approx(np.mean(sizes))
    r = metrics.size_stratified_coverage(list(y), sets.tolist())
    for k, cov, n in zip(r.size, r.coverage, r.count):
        rows = [i for i in range(500) if sizes[i] == k]
        assert n == len(rows) and cov == pytest.approx(np.mean([hits[i] for i in rows]))
    assert r.count.sum() == 500
    c = metrics.class_conditional_coverage(y, sets)
    for k in range(6):
        assert c.coverage[k] == pytest.approx(np.mean([hits[i] for i in range(500) if y[i] == k]))
    assert np.isnan(c.coverage[6]) and c.count[6] == 0
    # the marginal coverage is the count-weighted mean of either stratification
    assert np.sum(r.coverage * r.count) / 500 == pytest.approx(np.mean(hits))
    assert np.nansum(c.coverage * c.count) / 500 == pytest.approx(np.mean(hits))


def test_errors():
    with pytest.raises(ValueError, match=r"argument `sets`: expected a boolean mask of shape \(N, C\)"):
        metrics.set_coverage(Y, SETS * 0.5)
    with pytest.raises(ValueError, match=r"argument `sets`: expected an array of rank 2"):
        metrics.mean_set_size(SETS[0])
    with pytest.raises(ValueError, match=r"argument `y_true`: expected labels >= 0 and < 3"):
        metrics.size_stratified_coverage(np.r_[Y[:-1], 3], SETS)
    with pytest.raises(ValueError, match=r"`y_true` has 4, `sets` has 5"):
        metrics.class_conditional_coverage(Y[:4], SETS)
