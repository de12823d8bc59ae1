"""Split conformal sets and intervals: hand-worked scores, the coverage guarantee over many random
calibration/test draws, agreement with MAPIE, and every error message."""

from __future__ import annotations

import math
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

from mcdrop.conformal import ConformalClassifier, ConformalRegressor, conformal_quantile, min_calibration_size
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction

# ------------------------------------------------------------------------------------------ synthetic data


def classification_data(rng, n, n_classes=6):
    """A mis-calibrated model: its probabilities are softmax(z), the labels are drawn from softmax(0.6 z)
    (the model is over-confident), so the raw probabilities alone would under-cover."""
    z = rng.normal(scale=2.0, size=(n, n_classes))
    probs = special.softmax(z, axis=1)
    truth = special.softmax(0.6 * z, axis=1)
    labels = (truth.cumsum(axis=1) < rng.uniform(size=(n, 1))).sum(axis=1)
    return probs, np.minimum(labels, n_classes - 1)


def regression_data(rng, n, num_samples=10, head=True):
    """Heteroscedastic targets; the pass outputs are biased and their spread only loosely tracks the noise."""
    x = rng.uniform(-2, 2, size=n)
    y = np.sin(x) + (0.1 + 0.5 * np.abs(x)) * rng.normal(size=n)
    passes = np.sin(x) + 0.2 + (0.05 + 0.2 * np.abs(x)) * rng.normal(size=(num_samples, n))
    variances = np.broadcast_to((0.3 + 0.2 * np.abs(x)) ** 2, passes.shape) if head else None
    return RegressionPrediction.from_samples(passes, variances), y


# --------------------------------------------------------------------------------------- hand-worked cases


def test_threshold_is_the_ceil_rank_order_statistic():
    scores = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.05])  # n = 10
    # alpha = 0.2: k = ceil(11 * 0.8) = ceil(8.8) = 9 -> 9th smallest = 0.8
    assert conformal_quantile(scores, 0.2) == pytest.approx(0.8)
    # alpha = 0.5: k = ceil(5.5) = 6 -> 0.5
    assert conformal_quantile(scores, 0.5) == pytest.approx(0.5)
    # alpha = 1/11 exactly representable? no: k = ceil(11 * (1 - 1/11)) must be 10, not 11 from rounding
    assert conformal_quantile(scores, 1 / 11) == pytest.approx(0.9)
    np.testing.assert_allclose(conformal_quantile(np.c_[scores, -scores], 0.2), [0.8, -0.1])


def test_min_calibration_size_matches_the_rank_condition():
    for alpha in (0.01, 0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 0.9):
        need = min_calibration_size(alpha)
        assert math.ceil((need + 1) * (1 - alpha) - 1e-12) <= need
        assert need == 1 or math.ceil(need * (1 - alpha) - 1e-12) > need - 1
    assert (min_calibration_size(0.1), min_calibration_size(0.05), min_calibration_size(0.01)) == (9, 19, 99)


PROBS = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])


def test_lac_aps_raps_scores_by_hand():
    labels = np.array([1, 2])
    lac = ConformalClassifier("lac", alpha=0.5).fit(PROBS, labels)
    np.testing.assert_allclose(lac.scores_, [0.7, 0.7])
    aps = ConformalClassifier("aps", alpha=0.5).fit(PROBS, labels)
    np.testing.assert_allclose(aps.scores_, [0.8, 0.9])  # cumulative mass down to the true class
    raps = ConformalClassifier("raps", alpha=0.5, k_reg=1, lambda_reg=0.1).fit(PROBS, labels)
    np.testing.assert_allclose(raps.scores_, [0.8 + 0.1, 0.9 + 0.1])  # both true classes rank 2
    raps0 = ConformalClassifier("raps", alpha=0.5, k_reg=0, lambda_reg=0.1).fit(PROBS, labels)
    np.testing.assert_allclose(raps0.scores_, [0.8 + 0.2, 0.9 + 0.2])
    # randomised: u * p_y is taken off, with u from the given RandomState
    u = np.random.RandomState(7).uniform(size=2)
    rand = ConformalClassifier("aps", alpha=0.5, randomized=True, random_state=7).fit(PROBS, labels)
    np.testing.assert_allclose(rand.scores_, [0.8 - u[0] * 0.3, 0.9 - u[1] * 0.3])


def test_sets_by_hand():
    # n = 3 rows with LAC scores 0.2, 0.4, 0.6; alpha = 0.25: k = ceil(4 * 0.75) = 3 -> q = 0.6
    cal = np.array([[0.8, 0.2], [0.6, 0.4], [0.4, 0.6]])
    cp = ConformalClassifier("lac", alpha=0.25).fit(cal, [0, 0, 0])
    assert cp.threshold_ == pytest.approx(0.6)
    sets = cp.predict_sets(np.array([[0.9, 0.1], [0.5, 0.5], [0.3, 0.7], [0.39, 0.61]]))
    # keep class c when 1 - p_c <= 0.6, i.e. p_c >= 0.4
    np.testing.assert_array_equal(sets, [[True, False], [True, True], [False, True], [False, True]])
    # APS on the same rows: scores 0.8 (label 0, top), 1.0 (label 0 ranks 2nd: 0.4+0.6), 0.6
    aps = ConformalClassifier("aps", alpha=0.25).fit(cal, [0, 1, 1])
    np.testing.assert_allclose(np.sort(aps.scores_), [0.6, 0.8, 1.0])
    assert aps.threshold_ == pytest.approx(1.0)
    assert aps.predict_sets(np.array([[0.7, 0.3]])).all()


def test_class_conditional_thresholds_by_hand():
    rng = np.random.default_rng(1)
    probs, labels = classification_data(rng, 400, n_classes=3)
    cp = ConformalClassifier("lac", alpha=0.1, class_conditional=True).fit(probs, labels)
    for c in range(3):
        s = np.sort(1 - probs[labels == c, c])
        k = math.ceil((len(s) + 1) * 0.9)
        assert cp.threshold_[c] == pytest.approx(s[k - 1])
    sets = cp.predict_sets(probs)
    np.testing.assert_array_equal(sets, (1 - probs) <= cp.threshold_[None, :])


def test_regression_intervals_by_hand():
    pred, y = regression_data(np.random.default_rng(2), 120)
    cr = ConformalRegressor("normalized", alpha=0.1).fit(pred, y)
    s = np.sort(np.abs(y - pred.mean[:, 0]) / pred.std[:, 0])
    q = s[math.ceil(121 * 0.9) - 1]
    assert cr.threshold_[0] == pytest.approx(q)
    lo, hi = cr.predict_interval(pred)
    np.testing.assert_allclose(lo, pred.mean - q * pred.std)
    np.testing.assert_allclose(hi, pred.mean + q * pred.std)
    epi = ConformalRegressor("normalized", alpha=0.1, spread="epistemic").fit(pred, y)
    np.testing.assert_allclose(epi.scores_[:, 0], np.abs(y - pred.mean[:, 0]) / np.sqrt(pred.epistemic_variance[:, 0]))
    cqr = ConformalRegressor("cqr", alpha=0.1).fit(pred, y)
    lo_q, hi_q = pred.quantile(0.05), pred.quantile(0.95)
    s = np.sort(np.maximum(lo_q[:, 0] - y, y - hi_q[:, 0]))
    q = s[math.ceil(121 * 0.9) - 1]
    lo, hi = cqr.predict_interval(pred)
    np.testing.assert_allclose(lo, lo_q - q)
    np.testing.assert_allclose(hi, hi_q + q)
    # a per-call alpha recomputes the mixture quantiles at that level
    lo2, _ = cqr.predict_interval(pred, alpha=0.2)
    s2 = np.sort(np.maximum(pred.quantile(0.1)[:, 0] - y, y - pred.quantile(0.9)[:, 0]))
    np.testing.assert_allclose(lo2[:, 0], pred.quantile(0.1)[:, 0] - s2[math.ceil(121 * 0.8) - 1])


# ------------------------------------------------------------------------ the guarantee, by simulation

N_CAL, N_TEST, N_SPLITS, ALPHA = 49, 100, 400, 0.1
Z = 4.0  # one-sided tail 3e-5 per bound


def _check_coverage(coverages, n_cal, alpha, *, check_spread=True):
    r"""Mean coverage over independent splits against the exact finite-sample expectation.

    With continuous scores the coverage given the calibration set is Beta(k, n + 1 - k), k =
    ceil((n+1)(1-alpha)), so E = k / (n+1) in [1 - alpha, 1 - alpha + 1/(n+1)); each split's test
    coverage adds binomial noise E[c(1-c)]/m. The slack is Z standard errors of the mean of the splits.
    """
    k = math.ceil((n_cal + 1) * (1 - alpha))
    expected = k / (n_cal + 1)
    var_c = k * (n_cal + 1 - k) / ((n_cal + 1) ** 2 * (n_cal + 2))
    var_split = var_c + (expected - var_c - expected ** 2) / N_TEST
    slack = Z * math.sqrt(var_split / len(coverages))
    mean = float(np.mean(coverages))
    assert 1 - alpha - slack <= mean <= 1 - alpha + 1 / (n_cal + 1) + slack, (mean, slack)
    assert abs(mean - expected) <= slack, (mean, expected, slack)  # sharper: the exact expectation
    # the observed spread agrees with the theory (a sanity check of the slack itself)
    if check_spread:
        assert 0.7 < np.var(coverages) / var_split < 1.3


CLASSIFIERS = {
    "lac": dict(method="lac"),
    "aps": dict(method="aps"),
    "aps-randomized": dict(method="aps", randomized=True),
    "raps": dict(method="raps", k_reg=1, lambda_reg=0.05),
    "raps-randomized": dict(method="raps", k_reg=2, lambda_reg=0.1, randomized=True),
}


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_coverage_guarantee_classification(name):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    coverages = []
    for _ in range(N_SPLITS):
        probs, labels = classification_data(rng, N_CAL + N_TEST)
        cp = ConformalClassifier(alpha=ALPHA, random_state=rng.integers(2**31), **CLASSIFIERS[name])
        sets = cp.fit(probs[:N_CAL], labels[:N_CAL]).predict_sets(probs[N_CAL:])
        coverages.append(sets[np.arange(N_TEST), labels[N_CAL:]].mean())
    _check_coverage(coverages, N_CAL, ALPHA)


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_coverage_guarantee_class_conditional(method):
    """Mondrian: n_c calibration rows of every class (drawn from P(x | y = c)), coverage >= 1 - alpha
    within each class; checked on the pooled test rows against k_c / (n_c + 1)."""
    rng = np.random.default_rng(11 if method == "lac" else 12)
    n_per_class, n_classes = 19, 4
    coverages, by_class = [], [[] for _ in range(n_classes)]
    for _ in range(N_SPLITS):
        probs, labels = classification_data(rng, 600, n_classes=n_classes)
        cal = np.concatenate([np.nonzero(labels == c)[0][:n_per_class] for c in range(n_classes)])
        if len(cal) < n_per_class * n_classes:
            continue
        rest = np.setdiff1d(np.arange(600), cal)[:N_TEST]
        cp = ConformalClassifier(method, alpha=ALPHA, class_conditional=True).fit(probs[cal], labels[cal])
        hit = cp.predict_sets(probs[rest])[np.arange(len(rest)), labels[rest]]
        coverages.append(hit.mean())
        for c in range(n_classes):
            by_class[c].extend(hit[labels[rest] == c])
    # pooling four independent class thresholds shrinks the spread: the one-threshold slack is an upper bound
    _check_coverage(coverages, n_per_class, ALPHA, check_spread=False)
    k = math.ceil(20 * 0.9)
    for c in range(n_classes):  # every class, each at its own expectation (binomial slack)
        hits = np.asarray(by_class[c])
        assert abs(hits.mean() - k / 20) < 0.02, (c, hits.mean())


REGRESSORS = {
    "normalized-total": (dict(method="normalized"), True),
    "normalized-epistemic": (dict(method="normalized", spread="epistemic"), True),
    "normalized-no-head": (dict(method="normalized"), False),
    "cqr-no-head": (dict(method="cqr"), False),
    "cqr-gaussian-head": (dict(method="cqr"), True),
}


@pytest.mark.parametrize("name", list(REGRESSORS))
def test_coverage_guarantee_regression(name):
    options, head = REGRESSORS[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    coverages = []
    for _ in range(N_SPLITS // 4 if head and options["method"] == "cqr" else N_SPLITS):
        pred, y = regression_data(rng, N_CAL + N_TEST, head=head)
        cal, test = pred.subset(slice(0, N_CAL)), pred.subset(slice(N_CAL, None))
        lo, hi = ConformalRegressor(alpha=ALPHA, **options).fit(cal, y[:N_CAL]).predict_interval(test)
        coverages.append(np.mean((lo[:, 0] <= y[N_CAL:]) & (y[N_CAL:] <= hi[:, 0])))
    _check_coverage(coverages, N_CAL, ALPHA)


def test_raw_mc_intervals_and_sets_under_cover_on_this_data():
    """The simulation is not trivially satisfied: uncalibrated MC quantities miss the target."""
    rng = np.random.default_rng(3)
    pred, y = regression_data(rng, 4000)
    lo, hi = pred.interval(0.9)
    assert np.mean((lo[:, 0] <= y) & (y <= hi[:, 0])) < 0.87
    probs, labels = classification_data(rng, 4000)
    order = np.argsort(-probs, axis=1)
    top = np.take_along_axis(probs, order, axis=1).cumsum(axis=1)
    k = (top < 0.9).sum(axis=1)  # the smallest top set with mass >= 0.9
    covered = [labels[i] in order[i, : k[i] + 1] for i in range(len(labels))]
    assert np.mean(covered) < 0.87


# ------------------------------------------------------------------------------------ agreement with MAPIE


def _lookup_classifier(probs):
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Lookup(ClassifierMixin, BaseEstimator):
        """A prefit 'model' whose features are row indices into fixed probabilities (the same scores)."""

        classes_ = np.arange(probs.shape[1])
        fitted_ = True

        def fit(self, x, y):
            return self

        def predict_proba(self, x):
            return probs[np.asarray(x)[:, 0].astype(int)]

        def predict(self, x):
            return self.predict_proba(x).argmax(axis=1)

    return Lookup()


@pytest.mark.parametrize("method", ["lac", "aps-randomized"])
@pytest.mark.parametrize("alpha", [0.1, 0.05])
def test_sets_equal_mapie(method, alpha):
    """MAPIE's split LAC, and its split APS with ``include_last_label="randomized"``: MAPIE's APS always
    randomises the calibration scores (cumulative mass minus u p_y), so the sets it shares a definition
    with are our ``randomized=True``; the same RandomState gives the same draws."""
    pytest.importorskip("mapie")
    from mapie.classification import SplitConformalClassifier

    rng = np.random.default_rng(5)
    n, m = 300, 400
    probs, labels = classification_data(rng, n + m)
    x = np.arange(n + m)[:, None]
    score, params, ours = {
        "lac": ("lac", {}, dict(method="lac")),
        "aps-randomized": ("aps", {"include_last_label": "randomized"}, dict(method="aps", randomized=True)),
    }[method]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = SplitConformalClassifier(_lookup_classifier(probs), confidence_level=1 - alpha,
                                             conformity_score=score, prefit=True,
                                             random_state=np.random.RandomState(9))
        reference.conformalize(x[:n], labels[:n])
        _, expected = reference.predict_set(x[n:], conformity_score_params=params)
    cp = ConformalClassifier(alpha=alpha, random_state=np.random.RandomState(9), **ours).fit(probs[:n], labels[:n])
    np.testing.assert_allclose(np.sort(cp.scores_), np.sort(np.ravel(reference.conformity_scores)))
    sets = cp.predict_sets(probs[n:])
    np.testing.assert_array_equal(sets, expected[:, :, 0])
    assert 1.5 < sets.sum(axis=1).mean() < probs.shape[1]  # non-trivial sets


def test_intervals_equal_mapie_std_normalised():
    """MAPIE's split method with its StdConformityScore (|y - mu| / sigma, sigma floored at 1e-8). MAPIE
    takes the upper bound at the ceil((n+1)(1-alpha))-th smallest score and the lower at the
    ceil((n+1) alpha)-th largest; the two agree with ours (one rank for both) when (n+1) alpha is an
    integer, so n = 199 at alpha = 0.1 and 0.25. Otherwise MAPIE's lower bound is one order statistic
    narrower than the guarantee's rank; and MAPIE forms the lower level as (1 - 2(1 - alpha)) + (1 - alpha)
    in floating point, which at alpha = 0.05 rounds up past 10 / 200 and moves it by one rank again."""
    pytest.importorskip("mapie")
    from mapie.conformity_scores import StdConformityScore
    from mapie.regression import SplitConformalRegressor
    from sklearn.base import BaseEstimator, RegressorMixin

    rng = np.random.default_rng(6)
    n, m = 199, 300
    pred, y = regression_data(rng, n + m)
    mu, sd = pred.mean[:, 0], pred.std[:, 0]

    class Lookup(RegressorMixin, BaseEstimator):
        fitted_ = True

        def fit(self, x, y):
            return self

        def predict(self, x, return_std=False):
            i = np.asarray(x)[:, 0].astype(int)
            return (mu[i], sd[i]) if return_std else mu[i]

    x = np.arange(n + m)[:, None]
    for alpha in (0.1, 0.25):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = SplitConformalRegressor(Lookup(), confidence_level=1 - alpha,
                                                conformity_score=StdConformityScore(), prefit=True)
            reference.conformalize(x[:n], y[:n])
            _, bounds = reference.predict_interval(x[n:])
        lo, hi = ConformalRegressor(alpha=alpha).fit(pred.subset(slice(0, n)), y[:n]).predict_interval(
            pred.subset(slice(n, None)))
        np.testing.assert_allclose(lo[:, 0], bounds[:, 0, 0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(hi[:, 0], bounds[:, 1, 0], rtol=1e-12, atol=1e-12)


def test_cqr_intervals_equal_mapie_symmetric_correction():
    """MAPIE's ConformalizedQuantileRegressor, prefit on the same lower/upper/median quantiles of the predictive
    mixture, with ``symmetric_correction=True`` (one threshold for both ends, as ours). Its default corrects
    each end separately at alpha / 2, a different (also valid) convention."""
    pytest.importorskip("mapie")
    from mapie.regression import ConformalizedQuantileRegressor
    from sklearn.base import BaseEstimator, RegressorMixin

    rng = np.random.default_rng(7)
    n, m = 150, 200
    pred, y = regression_data(rng, n + m, head=False)

    def lookup(values):
        class Lookup(RegressorMixin, BaseEstimator):
            fitted_ = True

            def fit(self, x, y):
                return self

            def predict(self, x):
                return values[np.asarray(x)[:, 0].astype(int)]

        return Lookup()

    x = np.arange(n + m)[:, None]
    for alpha in (0.1, 0.05):
        quantiles = [pred.quantile(q)[:, 0] for q in (alpha / 2, 1 - alpha / 2, 0.5)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = ConformalizedQuantileRegressor([lookup(q) for q in quantiles], confidence_level=1 - alpha,
                                                       prefit=True)
            reference.conformalize(x[:n], y[:n])
            _, bounds = reference.predict_interval(x[n:], symmetric_correction=True)
        lo, hi = ConformalRegressor("cqr", alpha=alpha).fit(pred.subset(slice(0, n)), y[:n]).predict_interval(
            pred.subset(slice(n, None)))
        np.testing.assert_allclose(lo[:, 0], bounds[:, 0, 0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(hi[:, 0], bounds[:, 1, 0], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------ behaviour


def test_prediction_objects_samples_and_arrays_agree():
    rng = np.random.default_rng(8)
    samples = rng.dirichlet(np.ones(4), size=(5, 200))  # (T, N, C)
    labels = rng.integers(0, 4, size=200)
    pred = ClassificationPrediction.from_samples(samples)
    before = pred.mean.copy()
    for method in ("lac", "aps", "raps"):
        a = ConformalClassifier(method).fit(pred.subset(slice(0, 100)), labels[:100]).predict_sets(
            pred.subset(slice(100, None)))
        b = ConformalClassifier(method).fit(samples[:, :100], labels[:100]).predict_sets(samples[:, 100:])
        c = ConformalClassifier(method).fit(pred.mean[:100], list(labels[:100])).predict_sets(pred.mean[100:])
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(pred.mean, before)  # the user's prediction is untouched
    passes = rng.normal(size=(6, 80))
    r1 = ConformalRegressor().fit(passes[:, :40], np.zeros(40)).predict_interval(passes[:, 40:])
    r2 = ConformalRegressor().fit(RegressionPrediction.from_samples(passes[:, :40]), np.zeros((40, 1))).predict_interval(
        RegressionPrediction.from_samples(passes[:, 40:]))
    np.testing.assert_allclose(r1, r2)


def test_alpha_per_call_equals_alpha_per_object_and_sets_nest():
    rng = np.random.default_rng(9)
    probs, labels = classification_data(rng, 500)
    for method in ("lac", "aps", "raps"):
        fitted = ConformalClassifier(method, alpha=0.1).fit(probs[:300], labels[:300])
        narrow = ConformalClassifier(method, alpha=0.2).fit(probs[:300], labels[:300]).predict_sets(probs[300:])
        np.testing.assert_array_equal(fitted.predict_sets(probs[300:], alpha=0.2), narrow)
        wide = fitted.predict_sets(probs[300:], alpha=0.05)
        assert np.all(wide >= fitted.predict_sets(probs[300:]))  # smaller alpha, larger sets
        assert np.all(narrow <= fitted.predict_sets(probs[300:]))
        assert fitted.alpha == 0.1  # a per-call alpha does not change the object


def test_multi_output_regression_has_one_threshold_per_output():
    rng = np.random.default_rng(10)
    passes = rng.normal(size=(8, 100, 2)) * np.array([1.0, 10.0])
    y = rng.normal(size=(100, 2)) * np.array([1.0, 10.0])
    cr = ConformalRegressor("cqr", alpha=0.2).fit(passes[:, :60], y[:60])
    assert cr.threshold_.shape == (2,) and cr.n_outputs_ == 2
    lo, hi = cr.predict_interval(passes[:, 60:])
    assert lo.shape == hi.shape == (40, 2)


def test_zero_std_warns_and_is_floored():
    passes = np.zeros((4, 30))
    passes[:, 0] = [0.0, 1.0, 2.0, 3.0]
    with pytest.warns(UserWarning, match=r"29 row\(s\) have a predictive standard deviation below 1e-08"):
        cr = ConformalRegressor(alpha=0.1).fit(passes, np.zeros(30))
    assert np.all(np.isfinite(cr.scores_))


# --------------------------------------------------------------------------------------------------- errors

CAL = special.softmax(np.random.default_rng(0).normal(size=(30, 3)), axis=1)
CAL_Y = np.arange(30) % 3


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_alpha_outside_the_open_unit_interval(alpha):
    with pytest.raises(ValueError, match=r"Invalid value for argument `alpha`: expected a number in \(0.0, 1.0\)"):
        ConformalClassifier(alpha=alpha).fit(CAL, CAL_Y)
    cp = ConformalClassifier().fit(CAL, CAL_Y)
    with pytest.raises(ValueError, match=r"argument `alpha`"):
        cp.predict_sets(CAL, alpha=alpha)
    with pytest.raises(ValueError, match=r"argument `alpha`"):
        ConformalRegressor(alpha=alpha).fit(np.ones((3, 30)), np.ones(30))


def test_alpha_of_the_wrong_type():
    with pytest.raises(TypeError, match=r"argument `alpha`: expected a real number, received '0.1'"):
        ConformalClassifier(alpha="0.1").fit(CAL, CAL_Y)


def test_too_few_calibration_rows_says_how_many_are_needed():
    with pytest.raises(ValueError, match=r"argument `y_cal`: expected at least 19 calibration rows for "
                                         r"alpha=0.05, received 18\."):
        ConformalClassifier(alpha=0.05).fit(CAL[:18], CAL_Y[:18])
    cp = ConformalClassifier(alpha=0.1).fit(CAL[:18], CAL_Y[:18])  # enough for 0.1 ...
    with pytest.raises(ValueError, match=r"at least 99 calibration rows for alpha=0.01, received 18"):
        cp.predict_sets(CAL, alpha=0.01)  # ... not for a per-call 0.01
    with pytest.raises(ValueError, match=r"at least 9 calibration rows for alpha=0.1, received 5"):
        ConformalRegressor(alpha=0.1).fit(np.random.default_rng(0).normal(size=(3, 5)), np.zeros(5))


def test_class_conditional_too_few_rows_in_a_class():
    y = CAL_Y.copy()
    y[y == 2] = 1
    y[:3] = 2  # class 2 has 3 rows
    with pytest.raises(ValueError, match=r"at least 9 calibration rows in every class for alpha=0.1 with "
                                         r"class_conditional=True, received 3\. Too few in class 2: 3\."):
        ConformalClassifier(alpha=0.1, class_conditional=True).fit(CAL, y)


def test_labels_out_of_range():
    with pytest.raises(ValueError, match=r"argument `y_cal`: expected labels >= 0 and < 3"):
        ConformalClassifier().fit(CAL, np.r_[CAL_Y[:-1], 3])
    with pytest.raises(ValueError, match=r"argument `y_cal`: expected labels >= 0 and < 3"):
        ConformalClassifier().fit(CAL, np.r_[CAL_Y[:-1], -1])
    with pytest.raises(ValueError, match=r"argument `y_cal`: expected integer class labels"):
        ConformalClassifier().fit(CAL, CAL_Y + 0.5)


def test_shapes():
    with pytest.raises(ValueError, match=r"`calibration_prediction` has 30, `y_cal` has 29"):
        ConformalClassifier().fit(CAL, CAL_Y[:29])
    with pytest.raises(ValueError, match=r"argument `calibration_prediction`: expected an array of rank 2 or 3"):
        ConformalClassifier().fit(CAL[0], CAL_Y[:1])
    with pytest.raises(ValueError, match=r"argument `calibration_prediction`: expected rows that sum to one"):
        ConformalClassifier().fit(CAL * 0.5, CAL_Y)
    cp = ConformalClassifier().fit(CAL, CAL_Y)
    with pytest.raises(ValueError, match=r"argument `prediction`: expected probabilities over the 3 calibrated"):
        cp.predict_sets(np.full((4, 4), 0.25))
    with pytest.raises(ValueError, match=r"`calibration_prediction` has 30, `y_cal` has 20"):
        ConformalRegressor().fit(np.ones((3, 30)), np.ones(20))
    with pytest.raises(ValueError, match=r"argument `y_cal`: expected targets of shape \(30, 1\)"):
        ConformalRegressor().fit(np.ones((3, 30)), np.ones((30, 2)))
    cr = ConformalRegressor().fit(np.random.default_rng(0).normal(size=(3, 30)), np.ones(30))
    with pytest.raises(ValueError, match=r"argument `prediction`: expected predictions with 1 output\(s\)"):
        cr.predict_interval(np.ones((3, 5, 2)))


def test_wrong_task_and_options():
    reg = RegressionPrediction.from_samples(np.ones((3, 30)))
    with pytest.raises(TypeError, match=r"argument `calibration_prediction`: expected a classification prediction"):
        ConformalClassifier().fit(reg, CAL_Y)
    with pytest.raises(TypeError, match=r"argument `calibration_prediction`: expected a regression prediction"):
        ConformalRegressor().fit(ClassificationPrediction.from_samples(CAL[None]), np.ones(30))
    with pytest.raises(ValueError, match=r"argument `method`: expected one of 'lac', 'aps', 'raps', received 'thr'"):
        ConformalClassifier("thr").fit(CAL, CAL_Y)
    with pytest.raises(ValueError, match=r"argument `method`: expected one of 'normalized', 'cqr'"):
        ConformalRegressor("absolute").fit(np.ones((3, 30)), np.ones(30))
    with pytest.raises(ValueError, match=r"argument `spread`: expected one of 'total', 'epistemic'"):
        ConformalRegressor(spread="aleatoric").fit(np.ones((3, 30)), np.ones(30))
    with pytest.raises(ValueError, match=r"argument `randomized`: expected False for method 'lac'"):
        ConformalClassifier("lac", randomized=True).fit(CAL, CAL_Y)
    with pytest.raises(ValueError, match=r"argument `k_reg`: expected an integer >= 0"):
        ConformalClassifier("raps", k_reg=-1).fit(CAL, CAL_Y)
    with pytest.raises(ValueError, match=r"argument `lambda_reg`: expected a number in \[0.0, inf\]"):
        ConformalClassifier("raps", lambda_reg=-0.1).fit(CAL, CAL_Y)
    with pytest.raises(TypeError, match=r"argument `random_state`: expected None, an int or a numpy RandomState"):
        ConformalClassifier("aps", randomized=True, random_state="seed").fit(CAL, CAL_Y)


def test_not_fitted():
    with pytest.raises(RuntimeError, match=r"ConformalClassifier is not fitted yet"):
        ConformalClassifier().predict_sets(CAL)
    with pytest.raises(RuntimeError, match=r"ConformalRegressor is not fitted yet"):
        ConformalRegressor().predict_interval(np.ones((3, 4)))


def test_regression_means_are_not_mistaken_for_passes():
    cr = ConformalRegressor().fit(np.random.default_rng(0).normal(size=(4, 30)), np.zeros(30))
    with pytest.raises(ValueError, match=r"argument `prediction`: expected per-pass outputs of shape \(T, N\) or "
                                         r"\(T, N, D\), or a RegressionPrediction, received an array of shape \(30, 1\)"
                                         r".*looks like means"):
        cr.predict_interval(np.zeros((30, 1)))
    with pytest.warns(UserWarning, match="standard deviation below"):  # four identical passes: std 0
        lo, hi = cr.predict_interval(np.zeros((4, 1, 1)))  # one row, spelled out
    assert lo.shape == (1, 1)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), method=st.sampled_from(["lac", "aps", "raps"]),
       alpha=st.sampled_from([0.05, 0.1, 0.2, 0.5]))
def test_invariant_to_row_order_and_equivariant_to_class_order(seed, method, alpha):
    """Permuting the calibration rows changes nothing; renaming the classes renames the sets."""
    rng = np.random.default_rng(seed)
    probs, labels = classification_data(rng, 160, n_classes=5)
    cal, test = slice(0, 100), slice(100, None)
    sets = ConformalClassifier(method, alpha=alpha).fit(probs[cal], labels[cal]).predict_sets(probs[test])
    rows = rng.permutation(100)
    shuffled = ConformalClassifier(method, alpha=alpha).fit(probs[cal][rows], labels[cal][rows])
    np.testing.assert_array_equal(shuffled.predict_sets(probs[test]), sets)
    classes = rng.permutation(5)  # new class j is old class classes[j]
    inverse = np.argsort(classes)
    renamed = ConformalClassifier(method, alpha=alpha).fit(probs[cal][:, classes], inverse[labels[cal]])
    np.testing.assert_array_equal(renamed.predict_sets(probs[test][:, classes]), sets[:, classes])
