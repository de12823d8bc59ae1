"""MCDropoutMetrics: MC dropout metrics in Keras training logs (issue 15).

Checked against independent computations: a fresh MCDropout engine and mcdrop.evaluate on the weights
each epoch ended with, and NLL / RMSE by hand in numpy. Tiny models, few epochs, T small."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import mcdrop  # noqa: E402
from mcdrop.callbacks import MCDropoutMetrics  # noqa: E402

T = 8


def make_data(seed=0, n=240, d=6, c=3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=1.5, size=(c, d))
    y = rng.integers(0, c, size=n)
    x = (centers[y] + rng.normal(size=(n, d))).astype("float32")
    return x[:160], y[:160], x[160:], y[160:]


X, Y, X_VAL, Y_VAL = make_data()


def classifier(seed=0, dropout=True, batchnorm=False):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((X.shape[1],)), keras.layers.Dense(16, activation="relu")]
    if batchnorm:
        layers.append(keras.layers.BatchNormalization())
    if dropout:
        layers.append(keras.layers.Dropout(0.3))
    model = keras.Sequential([*layers, keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy")
    return model


def regressor(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((X.shape[1],)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    return model


def reference(model, x, y, seed=0, **options):
    """The metrics of a fresh engine on the model's current weights, through mcdrop.evaluate."""
    pred = mcdrop.MCDropout(model, T, seed, verbose=0, **options).predict(x)
    return pred, mcdrop.evaluate(pred, y).metrics["model"]


class Snapshots(keras.callbacks.Callback):
    """Placed after MCDropoutMetrics: the weights and the logs each epoch ended with."""

    def __init__(self):
        super().__init__()
        self.weights, self.logs, self.batches = [], [], 0

    def on_train_batch_begin(self, batch, logs=None):
        self.batches += 1

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())
        self.logs.append(dict(logs))


@pytest.fixture(scope="module")
def trained():
    model = classifier()
    callback = MCDropoutMetrics((X_VAL, Y_VAL), num_samples=T, seed=0)
    snapshots = Snapshots()
    history = model.fit(X, Y, epochs=3, batch_size=32, verbose=0, callbacks=[callback, snapshots])
    return model, callback, snapshots, history


def test_logged_values_equal_evaluate_on_each_epochs_weights(trained):
    model, callback, snapshots, history = trained
    for name in ("val_mc_nll", "val_mc_ece", "val_mc_brier", "val_mc_aurc"):
        assert len(history.history[name]) == 3
    final = model.get_weights()
    try:
        for epoch, weights in enumerate(snapshots.weights):
            model.set_weights(weights)
            pred, expected = reference(model, X_VAL, Y_VAL)
            for metric in ("nll", "ece", "brier", "aurc"):
                np.testing.assert_allclose(history.history[f"val_mc_{metric}"][epoch], expected[metric],
                                           rtol=1e-6)
            # NLL by hand from the MC predictive mean
            by_hand = -np.mean(np.log(pred.mean[np.arange(len(Y_VAL)), Y_VAL]))
            np.testing.assert_allclose(history.history["val_mc_nll"][epoch], by_hand, rtol=1e-6)
    finally:
        model.set_weights(final)
    # the weights changed between epochs, and so did the metric: it is not one cached number
    assert len(set(history.history["val_mc_nll"])) == 3


def test_one_compiled_engine_picks_up_new_weights(trained):
    model, callback, _, _ = trained
    engine = callback.engine
    assert engine is not None and engine.model is model
    traces = engine.sampler.traces
    assert traces == 1  # three epochs, one trace
    before = callback.evaluate()
    final = model.get_weights()
    try:
        model.set_weights([w * 0.5 for w in final])
        after = callback.evaluate()
        _, expected = reference(model, X_VAL, Y_VAL)
    finally:
        model.set_weights(final)
    assert callback.engine is engine and engine.sampler.traces == traces  # no retrace
    assert abs(after["val_mc_nll"] - before["val_mc_nll"]) > 1e-3
    np.testing.assert_allclose(after["val_mc_nll"], expected["nll"], rtol=1e-6)
    # back on the trained weights, the same seed gives the same value again
    assert callback.evaluate()["val_mc_nll"] == before["val_mc_nll"]


def test_training_is_untouched():
    def train(callbacks):
        model = classifier(seed=5, batchnorm=True)  # its moving statistics are weights too
        model.fit(X, Y, epochs=3, batch_size=32, verbose=0, shuffle=True, callbacks=callbacks)
        return model.get_weights(), int(model.optimizer.iterations.numpy())

    plain = train([])
    with_metrics = train([MCDropoutMetrics((X_VAL, Y_VAL), num_samples=T)])
    assert plain[1] == with_metrics[1]
    # dropout draws during epochs 2 and 3 would differ if the evaluations used training's random state
    for a, b in zip(plain[0], with_metrics[0]):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_and_checkpoint_see_the_metric(tmp_path):
    model = classifier()
    # an improvement must beat the best NLL by 10 nats: none does, so training stops after epoch 2
    stop = keras.callbacks.EarlyStopping(monitor="val_mc_nll", mode="min", patience=1, min_delta=10.0)
    path = tmp_path / "best.keras"
    checkpoint = keras.callbacks.ModelCheckpoint(path, monitor="val_mc_nll", mode="min", save_best_only=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(X, Y, epochs=10, batch_size=32, verbose=0,
                            callbacks=[MCDropoutMetrics((X_VAL, Y_VAL), num_samples=T), stop, checkpoint])
    assert not [w for w in caught if "val_mc_nll" in str(w.message)]  # never "not available"
    assert len(history.history["val_mc_nll"]) == 2 and stop.stopped_epoch == 1
    assert path.exists()


def test_every_evaluates_on_its_epochs_and_the_last_only():
    model = classifier()
    snapshots = Snapshots()
    model.fit(X, Y, epochs=5, batch_size=32, verbose=0,
              callbacks=[MCDropoutMetrics((X_VAL, Y_VAL), num_samples=T, every=2, metrics=["nll"]), snapshots])
    assert ["val_mc_nll" in logs for logs in snapshots.logs] == [False, True, False, True, True]
    assert all(set(logs) & {"val_mc_ece", "val_mc_brier", "val_mc_aurc"} == set() for logs in snapshots.logs)


def test_regression_logs_regression_metrics():
    model = regressor()
    y_val = X_VAL[:, 0] - X_VAL[:, 1]
    callback = MCDropoutMetrics((X_VAL, y_val), num_samples=T, seed=2)
    history = model.fit(X, X[:, 0] - X[:, 1], epochs=2, batch_size=32, verbose=0, callbacks=[callback])
    assert {"val_mc_gaussian_nll", "val_mc_crps", "val_mc_rmse"} <= set(history.history)
    assert "val_mc_nll" not in history.history and "val_mc_ece" not in history.history
    pred, expected = reference(model, X_VAL, y_val, seed=2)
    for metric in ("gaussian_nll", "crps", "rmse"):
        np.testing.assert_allclose(history.history[f"val_mc_{metric}"][-1], expected[metric], rtol=1e-6)
    by_hand = np.sqrt(np.mean((pred.mean[:, 0] - y_val) ** 2))
    np.testing.assert_allclose(history.history["val_mc_rmse"][-1], by_hand, rtol=1e-6)


def test_regression_refuses_classification_metrics():
    model = regressor()
    callback = MCDropoutMetrics((X_VAL, X_VAL[:, 0]), num_samples=T, metrics=("nll",))
    callback.set_model(model)
    with pytest.raises(ValueError, match=r"argument `metrics`: expected regression metrics among 'gaussian_nll'"
                                         r".*\(use 'gaussian_nll' or 'mixture_nll'\).*received 'nll'"):
        callback.evaluate()


def test_metric_that_cannot_be_computed_is_nan_with_a_warning():
    model = regressor()
    callback = MCDropoutMetrics((X_VAL, X_VAL[:, 0]), num_samples=T, metrics=("mixture_nll", "rmse"))
    callback.set_model(model)
    with pytest.warns(UserWarning, match="mixture_nll cannot be computed.*logging val_mc_mixture_nll as NaN"):
        values = callback.evaluate()
    assert np.isnan(values["val_mc_mixture_nll"]) and np.isfinite(values["val_mc_rmse"])


def test_model_without_dropout_fails_before_training():
    model = classifier(dropout=False)
    snapshots = Snapshots()
    with pytest.raises(ValueError, match=r"argument `model`: expected a model with at least one stochastic layer"):
        model.fit(X, Y, epochs=1, verbose=0, callbacks=[MCDropoutMetrics((X_VAL, Y_VAL)), snapshots])
    assert snapshots.batches == 0


def test_multi_output_model_is_refused():
    inputs = keras.Input((X.shape[1],))
    hidden = keras.layers.Dropout(0.3)(keras.layers.Dense(8, activation="relu")(inputs))
    model = keras.Model(inputs, [keras.layers.Dense(3, activation="softmax")(hidden),
                                 keras.layers.Dense(2, activation="softmax")(hidden)])
    callback = MCDropoutMetrics((X_VAL, Y_VAL), num_samples=2)
    callback.set_model(model)
    with pytest.raises(ValueError, match=r"argument `validation_data`: expected data for a model with a single "
                                         r"output.*The model has 2 outputs"):
        callback.evaluate()


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((X_VAL,), {}, TypeError, r"argument `validation_data`: expected a tuple \(x, y\), received an array"),
    (((X_VAL, Y_VAL, Y_VAL),), {}, TypeError, r"argument `validation_data`: expected a tuple \(x, y\)"),
    (((X_VAL, Y_VAL[:-1]),), {}, ValueError, r"argument `validation_data`: expected y with one row per row of "
                                              r"x \(80\), received an array of shape \(79,\)"),
    (((5, Y_VAL),), {}, TypeError, r"argument `validation_data`: expected x as an array"),
    (((X_VAL, Y_VAL),), {"num_samples": 0}, ValueError, r"argument `num_samples`: expected an integer >= 1"),
    (((X_VAL, Y_VAL),), {"every": 0}, ValueError, r"argument `every`: expected an integer >= 1, received 0"),
    (((X_VAL, Y_VAL),), {"seed": -1}, ValueError, r"argument `seed`: expected an integer >= 0"),
    (((X_VAL, Y_VAL),), {"metrics": "nll"}, TypeError, r"argument `metrics`: expected a non-empty sequence"),
    (((X_VAL, Y_VAL),), {"metrics": ()}, TypeError, r"argument `metrics`: expected a non-empty sequence"),
    (((X_VAL, Y_VAL),), {"metrics": ["nll", "nlll"]}, ValueError,
     r"argument `metrics`: expected one of 'nll', .*received 'nlll'"),
    (((X_VAL, Y_VAL),), {"level": 1.0}, ValueError, r"argument `level`: expected a number in \(0.0, 1.0\)"),
    (((X_VAL, Y_VAL),), {"n_bins": 0}, ValueError, r"argument `n_bins`: expected an integer >= 1"),
    (((X_VAL, Y_VAL),), {"prefix": 3}, TypeError, r"argument `prefix`: expected a string, received 3"),
    (((X_VAL, Y_VAL),), {"verbose": 1}, TypeError,
     r"argument `verbose`: expected an option of MCDropout \(allow_deterministic, .*\), received 1\. "
     r"The callback sets model, num_samples, seed and verbose itself"),
    (((X_VAL, Y_VAL),), {"bacth_size": 8}, TypeError, r"argument `bacth_size`: expected an option of MCDropout"),
])
def test_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        MCDropoutMetrics(*args, **kwargs)


def test_options_reach_the_engine_and_repr():
    model = classifier()
    callback = MCDropoutMetrics((X_VAL, Y_VAL), num_samples=T, metrics=["accuracy", "nll"], prefix="mc_",
                                mask="per_example", batch_size=16)
    callback.set_model(model)
    values = callback.evaluate()
    assert list(values) == ["mc_accuracy", "mc_nll"]
    assert callback.engine.mask == "per_example" and callback.engine.batch_size == 16
    _, expected = reference(model, X_VAL, Y_VAL, mask="per_example", batch_size=16)
    np.testing.assert_allclose(values["mc_nll"], expected["nll"], rtol=1e-6)
    assert repr(callback) == ("MCDropoutMetrics(rows=80, num_samples=8, metrics=('accuracy', 'nll'), every=1, "
                              "seed=0, prefix='mc_')")


def test_a_dataset_of_batches_gives_the_values_of_its_arrays():
    tf = pytest.importorskip("tensorflow")
    model = classifier()
    from_arrays = MCDropoutMetrics((X_VAL, Y_VAL), num_samples=T)
    from_dataset = MCDropoutMetrics(tf.data.Dataset.from_tensor_slices((X_VAL, Y_VAL)).batch(7), num_samples=T)
    from_arrays.set_model(model)
    from_dataset.set_model(model)
    np.testing.assert_array_equal(from_dataset.x, X_VAL)
    assert from_dataset.evaluate() == from_arrays.evaluate()


@pytest.mark.parametrize("make, match", [
    (lambda tf: tf.data.Dataset.from_tensor_slices((X_VAL, Y_VAL)),
     r"expected a dataset of \(x, y\) batches.*Its elements are single rows: call \.batch\(\) on it"),
    (lambda tf: tf.data.Dataset.from_tensor_slices((X_VAL, Y_VAL)).batch(8).repeat(),
     r"expected a finite dataset.*It repeats forever"),
    (lambda tf: tf.data.Dataset.from_tensor_slices((X_VAL, Y_VAL, Y_VAL)).batch(8),
     r"expected a dataset of \(x, y\) batches.*3 part\(s\); sample weights are not supported"),
    (lambda tf: tf.data.Dataset.from_tensor_slices((X_VAL, Y_VAL)).batch(8).take(0),
     r"expected a dataset with at least one batch"),
])
def test_bad_datasets(make, match):
    tf = pytest.importorskip("tensorflow")
    with pytest.raises(ValueError, match=r"argument `validation_data`: " + match):
        MCDropoutMetrics(make(tf))


def test_top_level_name():
    assert mcdrop.MCDropoutMetrics is MCDropoutMetrics and "callbacks" in dir(mcdrop)


def test_metric_lists_are_rows_of_the_report_for_each_task():
    """The callback logs rows of mcdrop.evaluate's table, per task (keyed by the prediction types' names)."""
    from mcdrop import callbacks, report
    from mcdrop.heads import TASKS
    from mcdrop.predictive import RegressionPrediction

    assert set(callbacks.DEFAULT_METRICS) == set(callbacks._TASK_METRICS) == set(TASKS)
    rows = {"classification": report.evaluate(np.array([[0.9, 0.1], [0.2, 0.8]]), [0, 1]).metric_names,
            "regression": report.evaluate(RegressionPrediction.from_samples(np.array([[1.0, 2.0], [2.0, 3.0]])),
                                          [1.5, 2.5]).metric_names}
    for task in TASKS:
        assert set(callbacks._TASK_METRICS[task]) <= set(rows[task]), task
        assert set(callbacks.DEFAULT_METRICS[task]) <= set(callbacks._TASK_METRICS[task]), task
