"""repr of the prediction objects (issue 15): one short line of shapes and provenance, never the arrays."""

from __future__ import annotations

import numpy as np

from mcdrop import store
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction

PROBS = np.random.default_rng(0).dirichlet(np.ones(10), size=(50, 3000))  # T=50, N=3000, C=10


def test_classification_repr_states_shapes_and_provenance():
    pred = ClassificationPrediction.from_samples(PROBS, seed=7, keep_samples=False)
    assert repr(pred) == ("ClassificationPrediction(mean=(3000, 10), num_samples=50, seed=7, mask='consistent', "
                          "outputs='probs', samples=None)")
    kept = ClassificationPrediction.from_samples(PROBS, mask="per_example")
    assert repr(kept) == ("ClassificationPrediction(mean=(3000, 10), num_samples=50, seed=None, "
                          "mask='per_example', outputs='probs', samples=(50, 3000, 10))")
    assert str(kept) == repr(kept)


def test_regression_repr_states_shapes_and_provenance():
    means = np.zeros((20, 1000, 2))
    plain = RegressionPrediction.from_samples(means, seed=1)
    assert repr(plain) == ("RegressionPrediction(mean=(1000, 2), num_samples=20, seed=1, mask='consistent', "
                           "heteroscedastic=False, samples=(20, 1000, 2))")
    gaussian = RegressionPrediction.from_samples(means, np.ones_like(means), keep_samples=False)
    assert repr(gaussian) == ("RegressionPrediction(mean=(1000, 2), num_samples=20, seed=None, "
                              "mask='consistent', heteroscedastic=True, samples=None)")


def test_repr_is_one_short_line_for_a_subset_and_a_stored_prediction(tmp_path):
    pred = ClassificationPrediction.from_samples(PROBS, seed=0)
    writer = store.PredictionWriter(tmp_path / "p")
    writer.append(pred)
    stored = writer.close()  # memory-mapped arrays
    for p in (pred, pred.subset(slice(0, 5)), stored, [pred]):
        text = repr(p)
        assert "\n" not in text and len(text) < 150 and "array" not in text
    assert repr(pred.subset(slice(0, 5))).startswith("ClassificationPrediction(mean=(5, 10),")
    assert repr(stored) == repr(pred)
