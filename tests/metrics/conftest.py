import numpy as np
import pytest


def softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


@pytest.fixture
def classification_data():
    """Moderately overconfident probabilities and labels drawn from a softer model."""
    rng = np.random.default_rng(0)
    n, c = 2000, 5
    logits = rng.normal(size=(n, c)) * 2.0
    labels = np.array([rng.choice(c, p=p) for p in softmax(logits / 1.5)])
    return labels, softmax(logits)
