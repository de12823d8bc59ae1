"""How each model output is read: the stated options checked against the graph, and the heads decided
from a prediction's first outputs.

:class:`HeadRules` is built once per engine from what the user stated (``task``, ``outputs``,
``heteroscedastic``) and what the graph shows (each output's final activation). Its :meth:`decide`
is a function of the first outputs of a run: the orchestration calls it and passes the heads down,
so nothing on the engine changes while a prediction runs.
"""

from __future__ import annotations

import warnings

import numpy as np

from mcdrop._validation import check_choice, invalid
from mcdrop.heads import HETEROSCEDASTIC, OUTPUTS, TASKS, Head

__all__ = ["HeadRules", "Outputs", "NeedsValues"]


class HeadRules:
    """The stated head options of an engine, checked; ``decide`` picks every output's :class:`Head`.

    Parameters
    ----------
    has_graph : bool
        Whether the model has a graph that tells how many outputs it has (and their activations).
    activations : list of str or None
        Each output's final activation, read from the graph (None where it cannot be read).
    given : tuple
        ``(task, outputs, heteroscedastic)`` as stated: a value, a sequence or a dict per output.
    output_names : callable
        Returns the outputs' names (for dict options); for a model without a graph, known after its
        first run.
    """

    def __init__(self, *, has_graph: bool, activations, given, output_names):
        self.has_graph = has_graph
        self.activations = list(activations)
        self.given = given
        self._output_names = output_names
        self.checked = self._check(*given)

    def _per_output(self, value, name, n_outputs):
        if isinstance(value, dict):
            names = self._output_names()
            missing = [k for k in names if k not in value]
            unknown = [k for k in value if k not in names]
            if missing or unknown:
                raise invalid(name, f"a value for every model output {names}", value,
                              detail=f"Unknown output name(s): {unknown}." if unknown else None)
            return [value[k] for k in names]
        if isinstance(value, (list, tuple)):
            if len(value) != n_outputs:
                raise invalid(name, f"one value per model output ({n_outputs})", value)
            return list(value)
        return [value] * n_outputs

    def _check(self, task, outputs, heteroscedastic, n=None):
        if n is None and not self.has_graph:
            # no graph: how many outputs (and their names) is known after the first run; check the
            # values now and match them to outputs then (decide)
            for value, name, choices in ((task, "task", TASKS), (outputs, "outputs", OUTPUTS),
                                         (heteroscedastic, "heteroscedastic", HETEROSCEDASTIC)):
                values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) \
                    else [value]
                for v in values:
                    if v is not None:
                        check_choice(v, name, choices)
            return None
        n = len(self.activations) if n is None else n
        tasks = self._per_output(task, "task", n)
        outs = self._per_output(outputs, "outputs", n)
        hets = self._per_output(heteroscedastic, "heteroscedastic", n)
        for t, o, h in zip(tasks, outs, hets):
            _check_one(t, o, h)
        if self.has_graph and len(self.activations) == n:
            names = self._output_names() if n > 1 else []
            for i, (t, o, h, act) in enumerate(zip(tasks, outs, hets, self.activations)):
                _check_declared_head(t, o, h, act, names[i] if len(names) == n else None)
        return tasks, outs, hets

    def decide(self, raw_outputs) -> list[Head]:
        """Each output's head from what was stated, the graph, or (last) the values of the first pass
        chunk ``raw_outputs`` (per output, an array or tensor (T_chunk, n, ...))."""
        if self.checked is None:
            # a model without a graph: its outputs are known now; match the stated values to them
            n = len(raw_outputs)
            tasks, outs, hets = self._check(*self.given, n=n)
            activations = [None] * n
        else:
            (tasks, outs, hets), activations = self.checked, self.activations
        return [_decide_one(raw, task, out, het, act)
                for raw, task, out, het, act in zip(raw_outputs, tasks, outs, hets, activations)]

    def decide_early(self, shapes) -> list[Head] | None:
        """Every output's head when the stated options and the graph settle it before any pass runs;
        None when one needs the first pass chunk's values (a model without a graph, an output whose final
        activation cannot be read, or a shape the graph leaves open). ``shapes``: each output's shape,
        from the graph (None for unknown axes)."""
        if (self.checked is None or len(shapes) != len(self.activations) or None in self.activations
                or any(not shape or shape[-1] is None for shape in shapes)):
            return None
        try:
            return self.decide([Outputs(shape) for shape in shapes])
        except NeedsValues:
            return None


class NeedsValues(LookupError):
    """A head asked for the values of an :class:`Outputs` that has only a shape (and dtype)."""


class Outputs:
    """A block of raw outputs as heads and error messages see it: its shape and dtype, with values read only
    if asked for (``np.asarray``) through ``values``, so a call that needs none copies none. Without
    ``values`` (an output as the graph declares it) asking raises :class:`NeedsValues`."""

    def __init__(self, shape, dtype=None, values=None):
        self.shape, self._values = tuple(shape), values
        self.dtype = None if dtype is None else np.dtype(dtype)
        self.ndim = len(self.shape)

    def __array__(self, dtype=None, copy=None):
        if self._values is None:
            raise NeedsValues(self.shape)
        return np.asarray(self._values(), dtype=dtype)


def _check_one(task, outputs, heteroscedastic) -> None:
    if task is not None:
        check_choice(task, "task", TASKS)
    if outputs is not None:
        check_choice(outputs, "outputs", OUTPUTS)
    if heteroscedastic is not None:
        check_choice(heteroscedastic, "heteroscedastic", HETEROSCEDASTIC)
        if task == "classification":
            raise invalid("heteroscedastic", "None for task='classification'", heteroscedastic)
    if outputs is not None and task == "regression":
        raise invalid("outputs", "None for task='regression' (it describes class scores)", outputs)


def _decide_one(raw, task, out, het, act) -> Head:
    values = None  # read from the device only when the graph cannot tell

    def looks_like_probs():
        nonlocal values
        if values is None:
            values = _looks_like_probs(np.asarray(raw))
        return values

    if act is None and looks_like_probs():
        _warn_probability_values(out, het)
    if task is None:
        if het is not None or out is None and act not in (None, "softmax", "sigmoid"):
            task = "regression"
        elif act in ("softmax", "sigmoid") or out is not None:
            task = "classification"
        else:
            task = "classification" if looks_like_probs() else "regression"
    if task == "classification" and out is None:
        if act in ("softmax", "sigmoid"):
            out = "probs"
        elif act is None:
            out = "probs" if looks_like_probs() else "logits"
        else:
            out = "logits"
    if task == "classification" and act == "sigmoid" and raw.shape[-1] > 1 and out == "probs":
        raise invalid("task", "'regression' (or a softmax head) for a multi-unit sigmoid output: "
                      "independent multi-label probabilities are not a single class distribution", task)
    return Head(task, out if task == "classification" else None, het)


def _check_declared_head(task, outputs, heteroscedastic, activation, name) -> None:
    """Refuse a declaration the output's final activation contradicts.

    These are errors, not warnings: each makes every number wrong (a softmax output read as a mean half
    and a variance half, probabilities softmaxed a second time, a regressor's value read as a logit), and
    the activation says so before any pass runs.
    """
    where = f"Output {name!r} has a {activation} activation." if name else None
    if activation in ("softmax", "sigmoid"):
        if heteroscedastic is not None:
            raise invalid("heteroscedastic", f"None for an output with a {activation} activation (its values are "
                          "class probabilities, not a mean half and a variance half)", heteroscedastic, detail=where)
        if outputs == "logits":
            raise invalid("outputs", f"'probs' (or None) for an output with a {activation} activation (its values "
                          "are already probabilities; reading them as logits applies a second softmax)", outputs,
                          detail=where)
    elif activation is not None and task == "classification" and outputs is None:
        raise invalid("task", f"'regression' for an output with a {activation} activation, or outputs='logits' "
                      "stated with it if the output holds class scores", task,
                      detail=where or "A linear output is what a regressor has; mcdrop does not guess that it "
                      "holds logits.")


def _warn_probability_values(outputs, heteroscedastic) -> None:
    """Where no activation can be read (a subclassed model), warn when a declaration meets values that are
    rows of probabilities: possible by chance, so a warning, but most likely a misread head."""
    if outputs == "logits":
        warnings.warn("outputs='logits' was stated, but every pass gave rows of probabilities (in [0, 1], summing "
                      "to one): reading them as logits applies a second softmax and flattens the confidence. "
                      "State outputs='probs' if the model ends in a softmax.", UserWarning, stacklevel=7)
    if heteroscedastic is not None:
        warnings.warn(f"heteroscedastic={heteroscedastic!r} was stated, but every pass gave rows of probabilities "
                      "(in [0, 1], summing to one), as a classifier does, not a mean half and a variance half.",
                      UserWarning, stacklevel=7)


def _looks_like_probs(raw: np.ndarray) -> bool:
    raw = np.asarray(raw)
    if raw.ndim < 3 or raw.shape[-1] < 2 or not np.all(np.isfinite(raw)):
        return False
    return bool(np.all(raw >= -1e-6) and np.all(raw <= 1 + 1e-6)
                and np.allclose(raw.sum(axis=-1), 1.0, atol=1e-4))
