"""Dropout rates at inference: overriding the trained rates for sampling only.

``MCDropout(model, rate=...)`` resolves its ``rate`` argument here into a table keyed by layer
identity, which the stochastic view hands to the noise functions while a step is traced. The
model's own ``rate`` attributes are never written.

What an override means, per layer family (Keras' own training-time behaviour, at another rate):

* ``Dropout`` and ``SpatialDropout*`` — inverted dropout: a unit is kept with probability
  :math:`1 - r` and scaled by :math:`1 / (1 - r)`, so the *expected* input of the next layer is
  unchanged. The network was trained with the scale of the trained rate :math:`p`; at inference
  without dropout Keras uses no scale at all. A rate :math:`r \\ne p` therefore keeps each unit's
  expectation but changes its variance, :math:`x^2 r / (1 - r)`, and through any nonlinearity
  after it the predictive mean moves too: sampling at another rate is a different model, which
  is exactly what :func:`mcdrop.tune_rate` measures on held-out data.
* ``GaussianDropout`` — multiplicative noise :math:`\\mathcal N(1, r / (1 - r))`: the mean factor
  stays 1, the noise variance follows the new rate.
* ``AlphaDropout`` — dropped units go to the SELU saturation value and the affine correction
  :math:`a, b` is recomputed for the new rate, so self-normalising activations keep zero mean and
  unit variance at any rate (the trained weights saw the trained rate's noise only).
* RNN cells — the rate replaces the input ``dropout`` and the ``recurrent_dropout`` the cell was
  trained with, each that was > 0 (a Keras cell applies no mask of a kind trained at 0, so an
  override cannot switch one on).
* Attention — ``MultiHeadAttention``'s dropout is an inner ``Dropout`` layer: a float covers it,
  and a mapping reaches it by that inner layer's name or by the class ``keras.layers.Dropout``.
* ``GaussianNoise`` (when opted in) has a standard deviation, not a rate, and is left as trained.

A rate of 0 turns a layer off: it runs in inference mode (the identity), exactly as in
``model.predict``.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import keras

from mcdrop._validation import check_float, invalid

__all__ = ["resolve_rates"]

_FAMILIES = (keras.layers.Dropout, keras.layers.GaussianDropout, keras.layers.AlphaDropout)


def _check_rate(value, name: str) -> float:
    return check_float(value, name, low=0.0, high=1.0, high_inclusive=False)


def _rnn_cells(layer) -> list:
    from mcdrop.engine._keras_compat import is_dropout_rnn_cell

    cell = getattr(layer, "cell", None)
    if cell is None:
        return []
    return [c for c in getattr(cell, "cells", [cell]) if is_dropout_rnn_cell(c)]


def _cell_rates(cell, rate: float) -> tuple[float, float]:
    trained = (float(getattr(cell, "dropout", 0.0)), float(getattr(cell, "recurrent_dropout", 0.0)))
    return tuple(rate if t > 0 else 0.0 for t in trained)


def resolve_rates(model, rate) -> dict[int, float | tuple[float, float]]:
    """The sampling rate of every dropout-family layer and RNN cell ``rate`` reaches.

    Parameters
    ----------
    model : keras.Model
    rate : float, mapping or None
        A float in [0, 1) for every stochastic layer (those with a trained rate > 0), or a mapping
        from a layer name or a layer class (``keras.layers.Dropout``, ...) to a rate. A name wins
        over a class; a name may also be an RNN layer or cell. None: the trained rates.

    Returns
    -------
    dict
        ``id(layer) -> rate`` for dropout-family layers, ``id(cell) -> (dropout, recurrent_dropout)``
        for RNN cells. Layers not in it keep their trained rates.
    """
    from mcdrop.engine.view import _all_layers

    if rate is None:
        return {}
    layers = _all_layers(model)
    droppers = [layer for layer in layers if isinstance(layer, _FAMILIES)]
    rnns = [(layer, cells) for layer in layers
            if (cells := [c for c in _rnn_cells(layer) if max(_cell_rates(c, 1.0)) > 0])]
    table: dict[int, float | tuple[float, float]] = {}
    if isinstance(rate, numbers.Real) and not isinstance(rate, bool):
        value = _check_rate(rate, "rate")
        for layer in droppers:
            if float(layer.rate) > 0:
                table[id(layer)] = value
        for _, cells in rnns:
            for cell in cells:
                table[id(cell)] = _cell_rates(cell, value)
        return table
    if not isinstance(rate, Mapping):
        raise invalid("rate", "a float in [0, 1), a mapping from layer name or class to rate, or None",
                      rate, error=TypeError)
    by_class = {}
    for key, value in rate.items():
        if isinstance(key, type):
            by_class[key] = _check_rate(value, f"rate[{key.__name__}]")
        elif not isinstance(key, str):
            raise invalid("rate", "a mapping keyed by layer names (str) or layer classes", rate, error=TypeError)
    for cls, value in by_class.items():
        hits = [layer for layer in droppers if isinstance(layer, cls)]
        hits += [cell for layer, cells in rnns if isinstance(layer, cls) for cell in cells]
        if not hits:
            raise invalid("rate", f"layer classes the model has dropout in ({cls.__name__} matches none of "
                          "its dropout-family or RNN layers)", rate)
        for layer in hits:
            if isinstance(layer, _FAMILIES):
                if float(layer.rate) > 0:
                    table[id(layer)] = value
            else:
                table[id(layer)] = _cell_rates(layer, value)
    names = {layer.name: [layer] for layer in droppers}
    for layer, cells in rnns:
        names[layer.name] = cells
        for cell in cells:
            names.setdefault(cell.name, [cell])
    for key, value in rate.items():
        if isinstance(key, type):
            continue
        value = _check_rate(value, f"rate[{key!r}]")
        if key not in names:
            others = [layer for layer in layers if layer.name == key]
            what = (f"{key!r} is a {type(others[0]).__name__}, which has no dropout rate" if others
                    else f"the model has no layer named {key!r}")
            raise invalid("rate", "names of the model's dropout-family or RNN layers "
                          f"({', '.join(sorted(names)) or 'none'})", rate, detail=f"{what[0].upper()}{what[1:]}.")
        for layer in names[key]:
            table[id(layer)] = value if isinstance(layer, _FAMILIES) else _cell_rates(layer, value)
    return table
