"""Temperature fits that the validation data cannot identify (issue 9, item 11): bounded, regularised, and
warned about — never a silent temperature of 0.0002."""

import warnings

import numpy as np
import pytest
from scipy import special

from mcdrop import metrics
from mcdrop.calibration import CalibrationWarning, TemperatureScaling


def softmax(z):
    return np.exp(special.log_softmax(z, axis=-1))


def confident_passes(rng, n, t=20, c=5, scale=4.0):
    """Per-pass probabilities (T, N, C) whose average puts most mass on class 0, every pass voting for it
    most of the time: an error-free validation set, where sharpening each pass only ever lowers the NLL."""
    logits = rng.normal(size=(t, n, c)) * 1.0
    logits[..., 0] += scale
    return softmax(logits)


def test_one_row_is_bounded_and_warned():
    rng = np.random.default_rng(0)
    passes = confident_passes(rng, 1)
    with pytest.warns(CalibrationWarning, match=r"1 validation row.*0 misclassified"):
        ts = TemperatureScaling().fit(passes, [0])
    lo, hi = TemperatureScaling.DEFAULT_BOUNDS
    assert lo <= ts.temperature_ <= hi
    # the log-normal prior keeps it near 1: unpenalised, the NLL falls all the way to the bound
    assert ts.temperature_ > 0.2


def test_error_free_set_warns_and_stays_moderate():
    rng = np.random.default_rng(1)
    passes = confident_passes(rng, 200)
    y = np.zeros(200, dtype=int)
    assert np.all(passes.mean(0).argmax(1) == y)
    with pytest.warns(CalibrationWarning, match=r"200 validation rows.*0 misclassified"):
        ts = TemperatureScaling().fit(passes, y)
    assert ts.temperature_ >= TemperatureScaling.DEFAULT_BOUNDS[0]
    assert ts.n_errors_ == 0


def test_optimum_on_bound_warns():
    # labels drawn at temperature 400 on logits of scale 1000: the optimum is far above the default bound
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(5000, 5)) * 1000.0
    y = (rng.random((5000, 1)) > softmax(logits / 400).cumsum(1)).sum(1).clip(0, 4)
    with pytest.warns(CalibrationWarning, match=r"upper bound 20"):
        ts = TemperatureScaling().fit(logits, y)
    assert ts.temperature_ == pytest.approx(20.0)
    # wider bounds, given explicitly, find it (within 5%) and do not warn
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        wide = TemperatureScaling(bounds=(1e-4, 1e4)).fit(logits, y)
    assert abs(wide.temperature_ / 400 - 1) < 0.05


def test_identifiable_fit_does_not_warn():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3000, 4)) * 3.0
    y = (rng.random((3000, 1)) > softmax(logits / 2).cumsum(1)).sum(1).clip(0, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        ts = TemperatureScaling().fit(logits, y)
    assert abs(ts.temperature_ / 2 - 1) < 0.05


def test_prior_is_the_stated_map_estimate():
    """The fitted temperature minimises NLL + (log tau)^2 / (2 prior_scale^2 N), checked by brute force."""
    rng = np.random.default_rng(3)
    passes = confident_passes(rng, 30, t=6, c=3, scale=2.0)
    y = rng.integers(0, 3, size=30)
    y[:24] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        ts = TemperatureScaling(prior_scale=0.5, min_errors=0).fit(passes, y)
    taus = np.exp(np.linspace(np.log(0.05), np.log(20), 20001))
    logp = np.log(passes)
    objective = []
    for tau in taus:
        p = softmax(logp / tau).mean(0)[np.arange(30), y]
        objective.append(-np.mean(np.log(p)) + np.log(tau) ** 2 / (2 * 0.5 ** 2 * 30))
    assert ts.temperature_ == pytest.approx(taus[int(np.argmin(objective))], rel=2e-3)


def test_error_free_set_unregularised_runs_away():
    """What the prior and the bounds prevent: the plain maximum-likelihood temperature of an error-free
    set runs to the edge of a wide search interval (the 0.045 and 0.00018 of issue 9)."""
    rng = np.random.default_rng(1)
    passes = confident_passes(rng, 200)
    y = np.zeros(200, dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        free = TemperatureScaling(bounds=(1e-4, 1e4), prior_scale=None, min_errors=0).fit(passes, y)
        default = TemperatureScaling().fit(passes, y)
    assert free.temperature_ < 0.1
    assert default.temperature_ > 0.2
    # the regularised fit still lowers the penalised objective it states, and never raises the NLL
    assert default.nll_after_ <= default.nll_before_


def test_too_few_errors_fit_no_temperature():
    """Fewer than min_errors misclassified rows: the temperature stays exactly 1 (a fit there sharpened the
    demo's passes to 0.69 and raised its held-out NLL), with a warning saying so; min_errors=0 fits."""
    rng = np.random.default_rng(1)
    passes = confident_passes(rng, 200)
    y = np.zeros(200, dtype=int)
    y[:5] = 1  # 5 errors
    with pytest.warns(CalibrationWarning, match=r"5 misclassified: fewer than min_errors=20.*no temperature was "
                                                r"fitted: it stays 1"):
        ts = TemperatureScaling().fit(passes, y)
    assert ts.temperature_ == 1.0 and ts.n_errors_ == 5
    np.testing.assert_allclose(ts.transform(passes), passes.mean(0), rtol=1e-12, atol=0)  # the identity
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        forced = TemperatureScaling(min_errors=0).fit(passes, y)
    assert forced.temperature_ < 1.0  # what the guard holds back: sharpening passes a set mostly gets right


@pytest.mark.parametrize("kwargs, match", [
    ({"bounds": (0.0, 10.0)}, r"`bounds`: expected two temperatures 0 < low < 1 < high"),
    ({"bounds": (2.0, 10.0)}, r"`bounds`: expected two temperatures 0 < low < 1 < high"),
    ({"bounds": (0.5,)}, r"`bounds`: expected two temperatures"),
    ({"prior_scale": 0.0}, r"`prior_scale`: expected a number in \(0"),
    ({"min_errors": -1}, r"`min_errors`: expected an integer >= 0"),
])
def test_errors_in_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TemperatureScaling(**kwargs)
