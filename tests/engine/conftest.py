"""Small models shared by the engine tests."""

import keras
import numpy as np
import pytest

L = keras.layers


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(1234)


def identity_dropout(rate=0.5, features=16, layer=None):
    """x -> Dropout -> x: with x = ones, each sample *is* the (scaled) mask, exactly."""
    inp = keras.Input((features,))
    out = (layer or L.Dropout(rate))(inp)
    return keras.Model(inp, out)


def mlp(n_in=8, n_out=3, activation="softmax", rate=0.5):
    return keras.Sequential([
        keras.Input((n_in,)),
        L.Dense(32, activation="relu"), L.Dropout(rate),
        L.Dense(n_out, activation=activation),
    ])


def linear_after_dropout(n_in=6, n_out=2):
    """Dense -> Dropout -> Dense with nothing nonlinear after the dropout: the MC mean converges to
    the deterministic output (inverted dropout is unbiased)."""
    return keras.Sequential([keras.Input((n_in,)), L.Dense(16), L.Dropout(0.3), L.Dense(n_out)])


@pytest.fixture
def rng():
    return np.random.default_rng(0)
