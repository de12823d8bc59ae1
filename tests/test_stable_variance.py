"""Variance over passes is computed stably (issue 9, item 5): checked against numpy's two-pass float64
``var`` at offsets from 1 to 1e10, on hand-worked cases, and for bit-identity under any chunking."""

import numpy as np
import pytest

from mcdrop.accumulators import ClassificationAccumulator, RegressionAccumulator, ShiftedMoments
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction


@pytest.mark.parametrize("offset", [1e0, 1e2, 1e4, 1e6, 1e8, 1e10])
@pytest.mark.parametrize("relative_spread", [1e-7, 1e-4, 1e-1, 1e1])
def test_epistemic_variance_matches_numpy_at_any_offset(offset, relative_spread):
    rng = np.random.default_rng(int(np.log10(offset) * 10 + np.log10(relative_spread) + 100))
    samples = offset + offset * relative_spread * rng.standard_normal((200, 7, 3))
    pred = RegressionPrediction.from_samples(samples)
    expected = np.var(samples, axis=0)  # numpy: two-pass, mean first
    np.testing.assert_allclose(pred.epistemic_variance, expected, rtol=1e-9, atol=0)
    scale = offset * max(1.0, relative_spread)
    np.testing.assert_allclose(pred.mean, np.mean(samples, axis=0), rtol=0, atol=1e-13 * scale)
    np.testing.assert_allclose(pred.standard_error, np.std(samples, axis=0, ddof=1) / np.sqrt(200),
                               rtol=1e-9, atol=0)


def test_two_passes_far_from_zero_keep_their_variance():
    """[1e8 + 0.01, 1e8 - 0.01]: E[x²] - E[x]² gives 0; the variance is 1e-4 (to the rounding of the inputs)."""
    samples = np.array([[[1e8 + 0.01]], [[1e8 - 0.01]]])
    pred = RegressionPrediction.from_samples(samples)
    exact = ((samples[0] - samples[1]) / 2) ** 2  # the two inputs as stored, half their distance, squared
    np.testing.assert_allclose(pred.epistemic_variance, exact, rtol=1e-12)
    np.testing.assert_allclose(pred.epistemic_variance, np.var(samples, axis=0), rtol=1e-12)
    np.testing.assert_allclose(pred.epistemic_variance, 1e-4, rtol=1e-5)  # 1e8 ± 0.01 is stored to ~1.5e-8
    assert pred.std[0, 0] > 0


@pytest.mark.parametrize("value", [0.1, 1.0 / 3.0, 123456.789, 1e10 + 0.5])
def test_identical_passes_have_exactly_zero_variance(value):
    pred = RegressionPrediction.from_samples(np.full((50, 4, 1), value))
    assert np.all(pred.epistemic_variance == 0.0)
    assert np.all(pred.std == 0.0)
    assert np.all(pred.standard_error == 0.0)
    assert np.all(pred.mean == value)


def test_identical_class_probabilities_have_exactly_zero_variance():
    p = np.tile(np.array([0.1, 0.2, 0.7]), (50, 4, 1))
    pred = ClassificationPrediction.from_samples(p)
    assert np.all(pred.variance == 0.0)
    assert np.all(pred.standard_error == 0.0)


def test_classification_variance_matches_numpy():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((40, 9, 4)) * 3
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    pred = ClassificationPrediction.from_samples(p)
    np.testing.assert_allclose(pred.variance, np.var(p, axis=0), rtol=1e-9, atol=1e-18)
    np.testing.assert_allclose(pred.mean, np.mean(p, axis=0), rtol=1e-12)


@pytest.mark.parametrize("chunks", [[1] * 30, [7, 7, 7, 9], [29, 1], [30], [2, 13, 15]])
def test_moments_bit_identical_under_any_chunking(chunks):
    rng = np.random.default_rng(4)
    x = 1e6 + rng.standard_normal((30, 5, 2))
    whole = ShiftedMoments()
    whole.update(x)
    parts = ShiftedMoments()
    start = 0
    for size in chunks:
        parts.update(x[start:start + size])
        start += size
    assert parts.count == whole.count == 30
    np.testing.assert_array_equal(parts.mean(), whole.mean())
    np.testing.assert_array_equal(parts.variance(), whole.variance())


@pytest.mark.parametrize("chunks", [[3, 3, 4], [1] * 10])
def test_accumulators_bit_identical_under_any_chunking(chunks):
    rng = np.random.default_rng(5)
    means = 1e7 + rng.standard_normal((10, 6, 2))
    p = rng.dirichlet(np.ones(3), size=(10, 6))
    reg_whole, cls_whole = RegressionAccumulator(), ClassificationAccumulator()
    reg_whole.update(means)
    cls_whole.update(p)
    reg, cls = RegressionAccumulator(), ClassificationAccumulator()
    start = 0
    for size in chunks:
        reg.update(means[start:start + size])
        cls.update(p[start:start + size])
        start += size
    np.testing.assert_array_equal(reg.result().epistemic_variance, reg_whole.result().epistemic_variance)
    np.testing.assert_array_equal(reg.result().mean, reg_whole.result().mean)
    np.testing.assert_array_equal(cls.result().variance, cls_whole.result().variance)
    np.testing.assert_array_equal(cls.result().mean, cls_whole.result().mean)


def _blocks(x, sizes):
    """Each block of passes as the engine's device reduction gives it: its first pass and sums shifted by it."""
    start = 0
    for size in sizes:
        block = x[start:start + size].astype(np.float64)
        d = block - block[0]
        yield size, block[0], d.sum(axis=0), (d * d).sum(axis=0)
        start += size


@pytest.mark.parametrize("offset", [1e0, 1e4, 1e8, 1e10])
@pytest.mark.parametrize("sizes", [[50], [7] * 7 + [1], [1] * 50, [3, 40, 7]])
def test_merged_blocks_match_numpy_at_any_offset(offset, sizes):
    rng = np.random.default_rng(int(np.log10(offset)) + len(sizes))
    x = offset + offset * 1e-4 * rng.standard_normal((50, 6, 2))
    merged = ShiftedMoments()
    for block in _blocks(x, sizes):
        merged.merge(*block)
    assert merged.count == 50
    np.testing.assert_allclose(merged.variance(), np.var(x, axis=0), rtol=1e-9, atol=0)
    np.testing.assert_allclose(merged.mean(), np.mean(x, axis=0), rtol=0, atol=1e-13 * offset)


def test_merged_blocks_of_two_passes_far_from_zero_keep_their_variance():
    x = np.array([[[1e8 + 0.01]], [[1e8 - 0.01]]])
    merged = ShiftedMoments()
    for block in _blocks(x, [1, 1]):
        merged.merge(*block)
    np.testing.assert_allclose(merged.variance(), ((x[0] - x[1]) / 2) ** 2, rtol=1e-12)


@pytest.mark.parametrize("value", [0.1, 1.0 / 3.0, 1e10 + 0.5])
def test_merged_identical_passes_have_exactly_zero_variance(value):
    merged = ShiftedMoments()
    for block in _blocks(np.full((20, 3), value), [6, 6, 8]):
        merged.merge(*block)
    assert np.all(merged.variance() == 0.0) and np.all(merged.mean() == value)
