"""The active-learning loop: train, score the pool with MC dropout, select, label, repeat.

:class:`ActiveLearningLoop` runs rounds of

1. train a fresh model on the labelled set (a function you give, seeded per round);
2. evaluate it with :class:`~mcdrop.MCDropout` on a test set (accuracy, NLL, ECE) and
   record the round in the history;
3. score the unlabelled pool with the MC engine, a chunk of rows at a time, and select a
   batch with :func:`mcdrop.acquisition.select` (greedy BatchBALD on a BALD-filtered
   candidate set for ``method="batch_bald"``);
4. ask the oracle for the labels of that batch only, and save the state atomically.

The loop is three parts: a validated, frozen :class:`LoopConfig` (saved with the run and
compared on resume), a :class:`LoopState` (labelled indices and labels in a ``.npz`` without
pickles, the history of :class:`Round` entries and the configuration in JSON, written through
:mod:`mcdrop.io`), and :class:`ActiveLearningLoop`, which holds the user's callables and data.
The state is saved after the initial labels and after every round, so an
interrupted run started again with the same arguments resumes where it stopped, with the
same history as an uninterrupted run, and the oracle is never asked again for a label whose answer
was saved. ``labels_paid`` counts every label requested from the oracle, saved before each request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from mcdrop import acquisition as _acq
from mcdrop._progress import check_verbose, progress
from mcdrop._validation import check_choice, check_float, check_int, check_labels, describe, invalid
from mcdrop.io import save_json, save_npz

__all__ = ["ActiveLearningLoop", "CLASSIFICATION_METHODS", "LoopConfig", "LoopState", "Round"]

#: Acquisition methods the loop accepts (it trains classifiers).
CLASSIFICATION_METHODS = _acq.CLASSIFICATION_METHODS

_STATE_FILE = "state.json"
_FORMAT = 1
_BATCH_BALD_OPTIONS = ("num_configurations", "max_memory")


def _take(x, index):
    """Rows ``index`` of an array, or of every array in a dict."""
    if isinstance(x, dict):
        return {key: np.asarray(value)[index] for key, value in x.items()}
    return np.asarray(x)[index]


def _num_rows(x, name: str) -> int:
    if isinstance(x, dict):
        if not x:
            raise invalid(name, "a non-empty array or dict of arrays", x)
        lengths = {key: len(value) for key, value in x.items()}
        if len(set(lengths.values())) != 1:
            raise invalid(name, "arrays with the same number of rows", lengths)
        return next(iter(lengths.values()))
    if not hasattr(x, "__len__") or not hasattr(x, "shape"):
        raise invalid(name, "an array (or dict of arrays) indexable by rows", x, error=TypeError)
    return len(x)


def _round_seed(seed: int, round_index: int) -> int:
    """An independent 31-bit seed per round, derived from (seed, round) only."""
    return int(np.random.SeedSequence([seed, round_index]).generate_state(1)[0] >> 1)


# ------------------------------------------------------------------------------------- history


class Round(NamedTuple):
    """One entry of the loop's history.

    Attributes
    ----------
    round : int
        The round's number, from 0.
    num_labels : int
        Labels the model of this round was trained on.
    seed : int
        The round's seed (model building, MC passes, stochastic selection).
    acquired : tuple of int
        Pool indices labelled after this round (empty for the final evaluation).
    accuracy, nll, ece : float or None
        Test metrics from the MC predictive mean (ECE with 15 equal-width bins); None
        without a test set. A value the JSON state could not hold (NaN) is None after a resume.

    Entries also read like the dicts of earlier versions: ``entry["accuracy"]`` is
    ``entry.accuracy``, and :meth:`to_dict` gives the dict saved in ``state.json``.
    """

    round: int
    num_labels: int
    seed: int
    acquired: tuple[int, ...] = ()
    accuracy: float | None = None
    nll: float | None = None
    ece: float | None = None

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self._fields:
                raise KeyError(key)
            return getattr(self, key)
        return tuple.__getitem__(self, key)

    def to_dict(self) -> dict[str, Any]:
        """The entry as plain JSON types; metrics that are None are left out."""
        entry = {"round": self.round, "num_labels": self.num_labels, "seed": self.seed}
        entry.update({name: getattr(self, name) for name in ("accuracy", "nll", "ece")
                      if getattr(self, name) is not None})
        entry["acquired"] = list(self.acquired)
        return entry

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> Round:
        """The entry :meth:`to_dict` (or an earlier version's loop) saved."""
        return cls(**{**entry, "acquired": tuple(entry.get("acquired", ()))})


# ------------------------------------------------------------------------------- configuration


def _initial_indices(initial, num_pool: int, seed: int) -> tuple[int, ...]:
    """The initial labelled set: the pool indices given, or ``initial`` drawn with ``seed``."""
    if isinstance(initial, (int, np.integer)) and not isinstance(initial, bool):
        count = check_int(initial, "initial", minimum=1, maximum=num_pool - 1)
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2**31 - 1]))
        return tuple(np.sort(rng.choice(num_pool, size=count, replace=False)).tolist())
    indices = np.asarray(initial)
    if indices.ndim != 1 or indices.size == 0 or indices.dtype.kind not in "iu":
        raise invalid("initial", "an integer >= 1 or a non-empty 1-D array of pool indices", initial)
    if np.any(indices < 0) or np.any(indices >= num_pool):
        raise invalid("initial", f"pool indices in [0, {num_pool})", initial)
    if np.unique(indices).size != indices.size:
        raise invalid("initial", "distinct pool indices", initial)
    if indices.size >= num_pool:
        raise invalid("initial", "fewer indices than the pool holds", initial)
    return tuple(indices.astype(np.int64).tolist())


def _check_selection(method, stochastic, beta, acquisition_options) -> tuple[str, str | None, float, dict]:
    """The acquisition arguments, checked together (some exclude others)."""
    method = check_choice(method, "method", CLASSIFICATION_METHODS)
    if stochastic is not None:
        stochastic = check_choice(stochastic, "stochastic", _acq.STOCHASTIC_MODES)
        if method in ("batch_bald", "random"):
            raise invalid("stochastic", f"None with method={method!r}", stochastic)
    beta = check_float(beta, "beta", low=0.0)
    options = dict(acquisition_options or {})
    unknown = sorted(set(options) - set(_BATCH_BALD_OPTIONS))
    if unknown:
        raise invalid("acquisition_options", "keys among 'num_configurations', 'max_memory'", unknown[0])
    if options and method != "batch_bald":
        raise invalid("acquisition_options", "no options unless method='batch_bald'", options)
    return method, stochastic, beta, options


@dataclass(frozen=True)
class LoopConfig:
    """What a run is: the settings saved in ``state.json`` and compared when a run resumes.

    Build it with :meth:`create`, which checks every value; :class:`ActiveLearningLoop` does.
    The fields are the :class:`ActiveLearningLoop` arguments of the same names, with
    ``initial`` as the tuple of initial pool indices and ``num_pool`` the pool's size N.
    """

    num_pool: int
    initial: tuple[int, ...]
    method: str
    stochastic: str | None
    beta: float
    batch_size: int
    budget: int
    num_samples: int
    candidates: int
    acquisition_options: tuple[tuple[str, Any], ...]
    seed: int
    pool_chunk_size: int

    @classmethod
    def create(cls, num_pool: int, *, initial, method="bald", batch_size=10, budget, num_samples=20,
               stochastic=None, beta=1.0, candidates=None, acquisition_options=None, pool_chunk_size=4096,
               seed=0) -> LoopConfig:
        """A configuration with every argument checked (``ValueError``/``TypeError`` naming it)."""
        seed = check_int(seed, "seed", minimum=0)
        method, stochastic, beta, options = _check_selection(method, stochastic, beta, acquisition_options)
        num_samples = check_int(num_samples, "num_samples", minimum=1)
        batch_size = check_int(batch_size, "batch_size", minimum=1, maximum=num_pool)
        pool_chunk_size = check_int(pool_chunk_size, "pool_chunk_size", minimum=1)
        initial = _initial_indices(initial, num_pool, seed)
        budget = check_int(budget, "budget", minimum=1, maximum=num_pool - len(initial))
        candidates = max(20 * batch_size, 500) if candidates is None else candidates
        candidates = check_int(candidates, "candidates", minimum=batch_size)
        return cls(num_pool, initial, method, stochastic, beta, batch_size, budget, num_samples, candidates,
                   tuple(options.items()), seed, pool_chunk_size)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as saved in ``state.json``."""
        return {
            "num_pool": self.num_pool, "initial": list(self.initial), "method": self.method,
            "stochastic": self.stochastic, "beta": self.beta, "batch_size": self.batch_size,
            "budget": self.budget, "num_samples": self.num_samples, "candidates": self.candidates,
            "acquisition_options": dict(self.acquisition_options), "seed": self.seed,
            "pool_chunk_size": self.pool_chunk_size,
        }

    def differences(self, saved: dict[str, Any]) -> list[str]:
        """``"key: saved ..., given ..."`` for every setting in which ``saved`` differs."""
        mine = json.loads(json.dumps(self.to_dict()))
        return [f"{key}: saved {saved.get(key)!r}, given {mine.get(key)!r}"
                for key in sorted(set(saved) | set(mine)) if saved.get(key) != mine.get(key)]


# ----------------------------------------------------------------------------------------- state


def _unreadable(state_dir: Path, detail: str) -> ValueError:
    return invalid("state_dir", "a folder holding a readable saved run", str(state_dir),
                   detail=f"{detail} Remove the folder (or use another state_dir) to start afresh.")


def _read_state_json(state_dir: Path) -> dict[str, Any]:
    """``state.json`` parsed and checked for the entries a state has."""
    path = state_dir / _STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _unreadable(state_dir, f"{path} is not valid JSON ({exc}): it was cut short or edited.") from None
    except OSError as exc:
        raise _unreadable(state_dir, f"{path} cannot be read ({exc.strerror}).") from None
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise invalid("state_dir", f"a state of format {_FORMAT}", str(state_dir),
                      detail=f"{path} is not a state this version wrote.")
    missing = [key for key in ("config", "arrays", "round", "labels_paid", "done", "history") if key not in state]
    if missing:
        raise _unreadable(state_dir, f"{path} has no {', '.join(repr(k) for k in missing)} entry.")
    return state


def _read_arrays(state_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The labelled indices and labels from the ``.npz`` that ``state.json`` names."""
    path = state_dir / name
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return arrays["labeled"].astype(np.int64), arrays["labels"].astype(np.int64)
    except FileNotFoundError:
        raise _unreadable(state_dir, f"{path}, which {state_dir / _STATE_FILE} names, is missing.") from None
    except Exception as exc:  # BadZipFile, KeyError, ValueError, EOFError: a damaged file
        text = str(exc).strip().splitlines()
        raise _unreadable(state_dir, f"{path} is damaged ({text[0] if text else type(exc).__name__}).") from None


@dataclass
class LoopState:
    """How far a run got: what changes from round to round, saved after each change.

    Attributes
    ----------
    labeled : ndarray of shape (L,), int64
        Pool indices in the order they were labelled.
    labels : ndarray of shape (L,), int64
        Their labels.
    history : list of Round
    round : int
        Rounds finished.
    labels_paid : int
        Labels requested from the oracle, answered or not (resumed sessions included).
    done : bool

    On disk (format 1, unchanged since the loop's first release): ``labels-<L>.npz`` with
    ``labeled`` and ``labels``, and ``state.json`` with the format, the configuration, the
    name of that ``.npz``, ``round``, ``labels_paid``, ``done`` and the history. ``state.json``
    is written last and is the commit point.
    """

    labeled: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    labels: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    history: list[Round] = field(default_factory=list)
    round: int = 0
    labels_paid: int = 0
    done: bool = False

    def add(self, indices: np.ndarray, labels: np.ndarray) -> None:
        """Append labelled pool ``indices`` and their ``labels``."""
        self.labeled = np.concatenate([self.labeled, np.asarray(indices, dtype=np.int64)])
        self.labels = np.concatenate([self.labels, np.asarray(labels, dtype=np.int64)])

    def save(self, state_dir: Path, config: LoopConfig) -> None:
        """Write the state atomically through :mod:`mcdrop.io`, arrays first, then ``state.json``."""
        state_dir.mkdir(parents=True, exist_ok=True)
        arrays = f"labels-{self.labeled.size:07d}.npz"
        save_npz(state_dir / arrays, {"labeled": self.labeled, "labels": self.labels}, compressed=False)
        save_json(state_dir / _STATE_FILE, {
            "format": _FORMAT, "config": config.to_dict(), "arrays": arrays, "round": self.round,
            "labels_paid": self.labels_paid, "done": self.done,
            "history": [entry.to_dict() for entry in self.history],
        })
        for old in state_dir.glob("labels-*.npz"):
            if old.name != arrays:
                old.unlink()

    @classmethod
    def load(cls, state_dir: Path, config: LoopConfig) -> LoopState:
        """The state saved in ``state_dir``, refused (``ValueError`` naming the file) if it is
        damaged or was saved with another configuration."""
        state = _read_state_json(state_dir)
        diff = config.differences(state["config"])
        if diff:
            raise invalid("state_dir", "a saved run with the same configuration", str(state_dir),
                          detail="It differs in " + "; ".join(diff) + ". Use another state_dir to start afresh.")
        labeled, labels = _read_arrays(state_dir, str(state["arrays"]))
        try:
            history = [Round.from_dict(entry) for entry in state["history"]]
        except TypeError:
            raise _unreadable(state_dir, f"{state_dir / _STATE_FILE} has a history entry that is not a round "
                                         "(round, num_labels, seed, acquired and the test metrics).") from None
        return cls(labeled, labels, history, state["round"], state["labels_paid"], state["done"])


# ------------------------------------------------------------------------------------ the loop


class ActiveLearningLoop:
    """Pool-based active learning with MC dropout uncertainty.

    Parameters
    ----------
    build_and_train : callable ``(x, y, *, seed) -> keras.Model``
        Builds a fresh model and trains it on the labelled rows ``x`` (rows of ``x_pool``)
        and integer labels ``y``; returns the trained model, whose output is class
        probabilities or logits and which has dropout. Called once per round with a
        per-round ``seed``; the loop also calls ``keras.utils.set_random_seed(seed)`` just
        before, so a function that builds with default initialisers is reproducible.
    x_pool : array of shape (N, ...) or dict of such arrays
        The pool; selected rows are referred to by their index in it.
    oracle : callable ``(indices) -> labels`` or array-like of shape (N,)
        Returns the integer labels of the pool indices it is given (one per index, in
        order). It is only ever called with indices not labelled before. An array stands
        for an oracle that knows every label (simulation).
    initial : int or array-like of int
        The initial labelled set: pool indices, or a number of indices drawn uniformly at
        random with the loop's seed.
    initial_labels : array-like of int, optional
        Labels of ``initial`` if already known; otherwise the oracle is asked for them.
    method : str, default "bald"
        One of :data:`CLASSIFICATION_METHODS`.
    batch_size : int, default 10
        Points labelled per round, in ``[1, N]``.
    budget : int
        Labels the loop may acquire beyond the initial set, in ``[1, N - len(initial)]``.
        The last round takes what is left. After the budget is spent the model is trained
        and evaluated once more if there is a test set, so the history then has one entry
        per label count.
    x_test, y_test : optional
        Test rows and labels for the metrics recorded each round (accuracy, NLL, ECE with
        15 equal-width bins, from the MC predictive mean).
    num_samples : int, default 20
        MC dropout passes T for scoring and evaluation.
    stochastic : {None, "power", "softmax", "softrank"}
        Sample the batch from the scores (Kirsch et al. 2023) instead of taking the top-k.
    beta : float, default 1.0
        Inverse temperature for ``stochastic``.
    candidates : int, optional
        BatchBALD only: the pool is first scored with BALD (streaming), then greedy
        BatchBALD runs on the ``candidates`` highest-BALD points, whose per-pass samples
        are the only ones kept (T x candidates x C floats). Default ``max(20 * batch_size,
        500)``, capped at the pool.
    acquisition_options : dict, optional
        Passed to :func:`mcdrop.acquisition.batch_bald` (``num_configurations``, ``max_memory``).
    pool_chunk_size : int, default 4096
        Pool rows scored per engine call; memory for scoring is O(pool_chunk_size x T x C)
        plus one float per pool point.
    mc_options : dict, optional
        Extra arguments for :class:`~mcdrop.MCDropout` (e.g. ``batch_size``). The mask is
        always consistent (BatchBALD needs it) and the seed is the round's.
    state_dir : path, optional
        Where the state is saved after every round; an existing state there is resumed
        (its configuration must match). Without it nothing is saved.
    seed : int, default 0
        Seeds the initial draw, model building, MC passes and stochastic selection, each
        round from ``(seed, round)`` alone.
    verbose : {"auto", 0, 1}, default "auto"
        Progress bars on stderr: the rounds of :meth:`run` (with the label count and test
        accuracy), the scoring of the pool and BatchBALD's selection. 1 always, 0 never,
        "auto" when stderr is a terminal, as for :class:`~mcdrop.MCDropout`; an "auto" bar
        draws only once its step has run for a second. Not part of the saved configuration.

    Attributes
    ----------
    config : LoopConfig
        The checked settings; its fields also read as attributes of the loop (``loop.method``,
        ``loop.budget``, ...), ``loop.initial`` as an int64 array.
    state : LoopState
        The run's progress; its fields also read as attributes (``loop.labeled``,
        ``loop.labels``, ``loop.history``, ``loop.round``, ``loop.labels_paid``, ``loop.done``).

    Examples
    --------
    >>> loop = ActiveLearningLoop(train, x_pool, y_pool, initial=20, method="batch_bald",
    ...                           batch_size=10, budget=100, x_test=x_test, y_test=y_test,
    ...                           state_dir="runs/bb")                  # doctest: +SKIP
    >>> history = loop.run()                                            # doctest: +SKIP
    >>> [(h.num_labels, round(h.accuracy, 3)) for h in history]         # doctest: +SKIP
    """

    def __init__(self, build_and_train: Callable, x_pool, oracle, *, initial, initial_labels=None,
                 method: str = "bald", batch_size: int = 10, budget: int, x_test=None, y_test=None,
                 num_samples: int = 20, stochastic: str | None = None, beta: float = 1.0,
                 candidates: int | None = None, acquisition_options: dict | None = None,
                 pool_chunk_size: int = 4096, mc_options: dict | None = None, state_dir=None, seed: int = 0,
                 verbose="auto"):
        if not callable(build_and_train):
            raise invalid("build_and_train", "a callable (x, y, *, seed) -> keras.Model", build_and_train,
                          error=TypeError)
        self.build_and_train, self.x_pool = build_and_train, x_pool
        self.verbose = check_verbose(verbose)
        self.config = LoopConfig.create(
            _num_rows(x_pool, "x_pool"), initial=initial, method=method, batch_size=batch_size, budget=budget,
            num_samples=num_samples, stochastic=stochastic, beta=beta, candidates=candidates,
            acquisition_options=acquisition_options, pool_chunk_size=pool_chunk_size, seed=seed)
        self.mc_options = dict(mc_options or {})
        for reserved in ("num_samples", "seed", "mask", "model"):
            if reserved in self.mc_options:
                raise invalid("mc_options", f"no {reserved!r} key (the loop sets it)", self.mc_options)
        self._oracle = self._check_oracle(oracle)
        self._initial_labels = None
        if initial_labels is not None:
            self._initial_labels = check_labels(initial_labels, "initial_labels")
            if self._initial_labels.shape[0] != len(self.config.initial):
                raise invalid("initial_labels", f"{len(self.config.initial)} labels (one per initial index)",
                              initial_labels)
        self.x_test, self.y_test = x_test, self._check_test(x_test, y_test)
        self.state_dir = None if state_dir is None else Path(state_dir)
        self.state = LoopState()
        if self.state_dir is not None and (self.state_dir / _STATE_FILE).exists():
            self.state = LoopState.load(self.state_dir, self.config)

    def _check_oracle(self, oracle) -> Callable[[np.ndarray], Any]:
        """The oracle as a function of pool indices (an array of every label becomes a lookup)."""
        if callable(oracle):
            return oracle
        labels = check_labels(oracle, "oracle")
        if labels.shape[0] != self.config.num_pool:
            raise invalid("oracle", f"a callable or {self.config.num_pool} labels (one per pool row)", oracle)
        return labels.__getitem__

    @staticmethod
    def _check_test(x_test, y_test) -> np.ndarray | None:
        if (x_test is None) != (y_test is None):
            raise invalid("y_test", "labels exactly when x_test is given", y_test)
        if x_test is None:
            return None
        labels = check_labels(y_test, "y_test")
        if _num_rows(x_test, "x_test") != labels.shape[0]:
            raise invalid("y_test", f"{_num_rows(x_test, 'x_test')} labels (one per test row)", y_test)
        return labels

    def __getattr__(self, name: str):
        # only called for names not found otherwise: the configuration's and the state's fields
        for part in ("config", "state"):
            holder = self.__dict__.get(part)
            if holder is not None and name in holder.__dataclass_fields__:
                return getattr(holder, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def initial(self) -> np.ndarray:
        """The initial pool indices, shape (len(initial),), int64."""
        return np.asarray(self.config.initial, dtype=np.int64)

    @property
    def acquired(self) -> int:
        """Labels acquired beyond the initial set (0 before the initial labels are in)."""
        return max(self.state.labeled.size - len(self.config.initial), 0)

    @property
    def rounds_left(self) -> int:
        """Rounds :meth:`run` still has to run: one per batch of the budget left, plus the final
        evaluation when there is a test set."""
        if self.state.done:
            return 0
        batches = -(-(self.config.budget - self.acquired) // self.config.batch_size)
        return batches + int(self.x_test is not None)

    # -- the four steps of a round ------------------------------------------------------------------
    def _save(self) -> None:
        if self.state_dir is not None:
            self.state.save(self.state_dir, self.config)

    def _ask(self, indices: np.ndarray) -> np.ndarray:
        """The oracle's labels for ``indices``, counted as paid (and saved) before it is asked."""
        if np.intersect1d(indices, self.state.labeled).size:  # an internal invariant, never expected
            raise RuntimeError("mcdrop.active: refusing to ask the oracle again for labelled indices.")
        # a crash or an interrupt during (or right after) the call still counts the labels
        self.state.labels_paid += indices.size
        self._save()
        answer = self._oracle(indices.copy())
        labels = check_labels(answer, "oracle")
        if labels.shape[0] != indices.size:
            raise invalid("oracle", f"{indices.size} labels (one per queried index)", answer)
        return labels

    def _train(self, seed: int):
        """Step 1: a fresh model trained on the labelled rows, wrapped in the MC engine."""
        import keras

        from mcdrop.engine import MCDropout

        keras.utils.set_random_seed(seed)
        model = self.build_and_train(_take(self.x_pool, self.state.labeled), self.state.labels.copy(), seed=seed)
        if not isinstance(model, keras.Model):
            raise invalid("build_and_train", "a function returning a keras.Model", model, error=TypeError)
        options = {"verbose": 0, **self.mc_options}
        return MCDropout(model, num_samples=self.config.num_samples, seed=seed, mask="consistent", **options)

    def _evaluate(self, mc) -> dict[str, float]:
        """Step 2: accuracy, NLL and ECE (15 bins) of the MC predictive mean on the test set."""
        if self.x_test is None:
            return {}
        from mcdrop import metrics

        probs = mc.predict(self.x_test).mean
        return {
            "accuracy": float(metrics.accuracy_score(self.y_test, probs)),
            "nll": float(metrics.negative_log_likelihood(self.y_test, probs)),
            "ece": float(metrics.expected_calibration_error(self.y_test, probs, n_bins=15)),
        }

    def _select(self, mc, k: int, seed: int) -> np.ndarray:
        """Step 3: ``k`` unlabelled pool indices chosen by :func:`mcdrop.acquisition.select`,
        the pool scored a chunk of rows at a time (none when ``k`` is 0)."""
        config = self.config
        if k == 0:
            return np.empty(0, dtype=np.int64)
        unlabeled = np.setdiff1d(np.arange(config.num_pool), self.state.labeled)

        def predict(rows, return_samples):
            return mc.predict(_take(self.x_pool, rows), return_samples=return_samples)

        batch_bald = config.method == "batch_bald"
        return _acq.select(predict, k, rows=unlabeled, method=config.method, stochastic=config.stochastic,
                           beta=config.beta, seed=seed, candidates=config.candidates if batch_bald else None,
                           chunk_size=config.pool_chunk_size, verbose=self.verbose,
                           **dict(config.acquisition_options))

    def _label(self, indices: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Step 4: the labels of ``indices`` (the oracle's unless given) added to the labelled set."""
        if indices.size:
            self.state.add(indices, self._ask(indices) if labels is None else labels)

    def _record(self, entry: Round | None) -> Round | None:
        """The round's entry appended to the history (the run is done after a round without a
        batch), and the state saved."""
        if entry is not None:
            self.state.history.append(entry)
            self.state.round += 1
        self.state.done = entry is None or not entry.acquired
        self._save()
        return entry

    def step(self) -> Round | None:
        """Run one round and save the state; return its history entry, or None if the run is
        already done (or the budget is spent and there is no test set to evaluate on).

        1. train a fresh model on the labelled set, seeded from ``(seed, round)``;
        2. evaluate it on the test set, if any;
        3. select a batch of unlabelled pool points (none once the budget is spent: the run ends);
        4. ask the oracle for their labels, record the round and save.

        The initial labels are asked for (and saved) before the first round.
        """
        if self.state.done:
            return None
        if self.state.labeled.size == 0:
            self._label(self.initial, self._initial_labels)
            self._save()
        k = min(self.config.batch_size, self.config.budget - self.acquired)
        if k == 0 and self.x_test is None:  # budget spent, nothing to evaluate: no final training
            return self._record(None)
        seed, num_labels = _round_seed(self.config.seed, self.state.round), int(self.state.labeled.size)
        mc = self._train(seed)                                          # 1
        metrics = self._evaluate(mc)                                    # 2
        chosen = self._select(mc, k, seed)                              # 3
        self._label(chosen)                                             # 4
        return self._record(Round(self.state.round, num_labels, seed, tuple(chosen.tolist()), **metrics))

    def run(self, rounds: int | None = None) -> list[Round]:
        """Run until the budget is spent (or ``rounds`` more rounds); return the history.

        Each history entry is a :class:`Round`: ``round``, ``num_labels`` (labelled when the
        model was trained), ``seed``, ``acquired`` (the pool indices labelled after that round),
        and the test metrics (``accuracy``, ``nll``, ``ece``; None without a test set).
        """
        if rounds is not None:
            rounds = check_int(rounds, "rounds", minimum=1)
        total = self.rounds_left if rounds is None else min(rounds, self.rounds_left)
        done = 0
        with progress(total, verbose=self.verbose, desc="active learning", unit="round", leave=True) as bar:
            while not self.state.done and (rounds is None or done < rounds):
                entry = self.step()
                done += 1
                if entry is not None:
                    status = {"labels": entry.num_labels}
                    if entry.accuracy is not None:
                        status["accuracy"] = f"{entry.accuracy:.3f}"
                    bar.set_postfix(status, refresh=False)
                    bar.update()
        return self.state.history

    def __repr__(self) -> str:
        state = self.state
        status = "not started" if state.labeled.size == 0 else "done" if state.done else "running"
        return (f"ActiveLearningLoop(method={self.config.method!r}, pool={describe(self.config.num_pool)}, "
                f"initial={len(self.config.initial)}, acquired={self.acquired}/{self.config.budget}, "
                f"batch_size={self.config.batch_size}, rounds={state.round}, status={status!r})")
