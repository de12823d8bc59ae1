"""The active-learning loop: train, score the pool with MC dropout, select, label, repeat.

:class:`ActiveLearningLoop` runs rounds of

1. train a fresh model on the labelled set (a function you give, seeded per round);
2. evaluate it with :class:`~mcdrop.MCDropout` on a test set (accuracy, NLL, ECE) and
   record the round in the history;
3. score the unlabelled pool with the MC engine, a chunk of rows at a time, and select a
   batch with :func:`mcdrop.acquisition.select` (or greedy BatchBALD on a BALD-filtered
   candidate set);
4. ask the oracle for the labels of that batch only, and save the state atomically.

The state (labelled indices and labels in a ``.npz`` without pickles, the history and the
configuration in JSON) is saved after the initial labels and after every round, so an
interrupted run started again with the same arguments resumes where it stopped, with the
same history as an uninterrupted run, and the oracle is never asked again for a label whose answer
was saved. ``labels_paid`` counts every label requested from the oracle, saved before each request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mcdrop import acquisition as _acq
from mcdrop._progress import check_verbose, progress
from mcdrop._validation import (
    check_choice,
    check_float,
    check_int,
    check_labels,
    describe,
    invalid,
)

__all__ = ["ActiveLearningLoop", "CLASSIFICATION_METHODS"]

#: Acquisition methods the loop accepts (it trains classifiers).
CLASSIFICATION_METHODS = (
    "bald", "max_entropy", "variation_ratio", "mean_std", "margin", "least_confidence", "random", "batch_bald",
)

_STATE_FILE = "state.json"
_FORMAT = 1


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


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str) -> None:
    """Write through :func:`mcdrop.io.atomic_write` (temporary file, fsync, os.replace; leftovers
    of a killed earlier write in the folder removed)."""
    from mcdrop.io import atomic_write

    with atomic_write(path, mode) as handle:
        write(handle)


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

    Examples
    --------
    >>> loop = ActiveLearningLoop(train, x_pool, y_pool, initial=20, method="batch_bald",
    ...                           batch_size=10, budget=100, x_test=x_test, y_test=y_test,
    ...                           state_dir="runs/bb")                  # doctest: +SKIP
    >>> history = loop.run()                                            # doctest: +SKIP
    >>> [(h["num_labels"], round(h["accuracy"], 3)) for h in history]  # doctest: +SKIP
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
        self.build_and_train = build_and_train
        self.x_pool = x_pool
        self.num_pool = _num_rows(x_pool, "x_pool")
        self.seed = check_int(seed, "seed", minimum=0)
        self.verbose = check_verbose(verbose)
        self.method = check_choice(method, "method", CLASSIFICATION_METHODS)
        if stochastic is not None:
            stochastic = check_choice(stochastic, "stochastic", _acq.STOCHASTIC_MODES)
            if method in ("batch_bald", "random"):
                raise invalid("stochastic", f"None with method={method!r}", stochastic)
        self.stochastic = stochastic
        self.beta = check_float(beta, "beta", low=0.0)
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)
        self.batch_size = check_int(batch_size, "batch_size", minimum=1, maximum=self.num_pool)
        self.pool_chunk_size = check_int(pool_chunk_size, "pool_chunk_size", minimum=1)
        self.acquisition_options = dict(acquisition_options or {})
        unknown = set(self.acquisition_options) - {"num_configurations", "max_memory"}
        if unknown:
            name = sorted(unknown)[0]
            raise invalid("acquisition_options", "keys among 'num_configurations', 'max_memory'", name)
        if self.acquisition_options and method != "batch_bald":
            raise invalid("acquisition_options", "no options unless method='batch_bald'",
                          self.acquisition_options)
        self.mc_options = dict(mc_options or {})
        for reserved in ("num_samples", "seed", "mask", "model"):
            if reserved in self.mc_options:
                raise invalid("mc_options", f"no {reserved!r} key (the loop sets it)", self.mc_options)

        # the oracle: a function, or every label of the pool
        if callable(oracle):
            self._oracle_fn, self._oracle_labels = oracle, None
        else:
            labels = check_labels(oracle, "oracle")
            if labels.shape[0] != self.num_pool:
                raise invalid("oracle", f"a callable or {self.num_pool} labels (one per pool row)", oracle)
            self._oracle_fn, self._oracle_labels = None, labels

        # the initial labelled set
        if isinstance(initial, (int, np.integer)) and not isinstance(initial, bool):
            count = check_int(initial, "initial", minimum=1, maximum=self.num_pool - 1)
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, 2**31 - 1]))
            initial = np.sort(rng.choice(self.num_pool, size=count, replace=False))
        else:
            initial = np.asarray(initial)
            if initial.ndim != 1 or initial.size == 0 or initial.dtype.kind not in "iu":
                raise invalid("initial", "an integer >= 1 or a non-empty 1-D array of pool indices", initial)
            initial = initial.astype(np.int64)
            if np.any(initial < 0) or np.any(initial >= self.num_pool):
                raise invalid("initial", f"pool indices in [0, {self.num_pool})", initial)
            if np.unique(initial).size != initial.size:
                raise invalid("initial", "distinct pool indices", initial)
            if initial.size >= self.num_pool:
                raise invalid("initial", "fewer indices than the pool holds", initial)
        self.initial = initial
        if initial_labels is not None:
            initial_labels = check_labels(initial_labels, "initial_labels")
            if initial_labels.shape[0] != initial.size:
                raise invalid("initial_labels", f"{initial.size} labels (one per initial index)", initial_labels)
        self._initial_labels = initial_labels
        self.budget = check_int(budget, "budget", minimum=1, maximum=self.num_pool - initial.size)
        if candidates is None:
            candidates = max(20 * self.batch_size, 500)
        self.candidates = check_int(candidates, "candidates", minimum=self.batch_size)

        self.x_test, self.y_test = x_test, None
        if (x_test is None) != (y_test is None):
            raise invalid("y_test", "labels exactly when x_test is given", y_test)
        if x_test is not None:
            self.y_test = check_labels(y_test, "y_test")
            if _num_rows(x_test, "x_test") != self.y_test.shape[0]:
                raise invalid("y_test", f"{_num_rows(x_test, 'x_test')} labels (one per test row)", y_test)

        self.state_dir = None if state_dir is None else Path(state_dir)
        # run state
        self.labeled = np.empty(0, dtype=np.int64)  # pool indices in the order they were labelled
        self.labels = np.empty(0, dtype=np.int64)
        self.history: list[dict] = []
        self.round = 0
        self.labels_paid = 0  # labels requested from the oracle, answered or not (resumed runs included)
        self.done = False
        if self.state_dir is not None and (self.state_dir / _STATE_FILE).exists():
            self._load()

    # -- configuration and state ---------------------------------------------------------------
    def _config(self) -> dict:
        return {
            "num_pool": self.num_pool, "initial": self.initial.tolist(), "method": self.method,
            "stochastic": self.stochastic, "beta": self.beta, "batch_size": self.batch_size,
            "budget": self.budget, "num_samples": self.num_samples, "candidates": self.candidates,
            "acquisition_options": self.acquisition_options, "seed": self.seed,
            "pool_chunk_size": self.pool_chunk_size,
        }

    def _load(self) -> None:
        path = self.state_dir / _STATE_FILE

        def unreadable(detail: str):
            return invalid("state_dir", "a folder holding a readable saved run", str(self.state_dir),
                           detail=f"{detail} Remove the folder (or use another state_dir) to start afresh.")

        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise unreadable(f"{path} is not valid JSON ({exc}): it was cut short or edited.") from None
        except OSError as exc:
            raise unreadable(f"{path} cannot be read ({exc.strerror}).") from None
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise invalid("state_dir", f"a state of format {_FORMAT}", str(self.state_dir),
                          detail=f"{path} is not a state this version wrote.")
        missing = [key for key in ("config", "arrays", "round", "labels_paid", "done", "history")
                   if key not in state]
        if missing:
            raise unreadable(f"{path} has no {', '.join(repr(k) for k in missing)} entry.")
        saved, mine = state["config"], json.loads(json.dumps(self._config()))
        if saved != mine:
            diff = [f"{key}: saved {saved.get(key)!r}, given {mine.get(key)!r}"
                    for key in sorted(set(saved) | set(mine)) if saved.get(key) != mine.get(key)]
            raise invalid("state_dir", "a saved run with the same configuration", str(self.state_dir),
                          detail="It differs in " + "; ".join(diff) + ". Use another state_dir to start afresh.")
        arrays_path = self.state_dir / str(state["arrays"])
        try:
            with np.load(arrays_path, allow_pickle=False) as arrays:
                labeled = arrays["labeled"].astype(np.int64)
                labels = arrays["labels"].astype(np.int64)
        except FileNotFoundError:
            raise unreadable(f"{arrays_path}, which {path} names, is missing.") from None
        except Exception as exc:  # BadZipFile, KeyError, ValueError, EOFError: a damaged file
            text = str(exc).strip().splitlines()
            raise unreadable(f"{arrays_path} is damaged ({text[0] if text else type(exc).__name__}).") from None
        self.labeled, self.labels = labeled, labels
        self.history = state["history"]
        self.round = state["round"]
        self.labels_paid = state["labels_paid"]
        self.done = state["done"]

    def _save(self) -> None:
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        arrays = f"labels-{self.labeled.size:07d}.npz"

        def write_npz(handle):
            np.savez(handle, labeled=self.labeled, labels=self.labels)

        _atomic_write(self.state_dir / arrays, write_npz, "wb")
        state = {
            "format": _FORMAT, "config": self._config(), "arrays": arrays, "round": self.round,
            "labels_paid": self.labels_paid, "done": self.done, "history": self.history,
        }
        # state.json is the commit point: it names the arrays file it goes with
        _atomic_write(self.state_dir / _STATE_FILE,
                      lambda handle: handle.write(json.dumps(state, indent=1)), "w")
        for old in self.state_dir.glob("labels-*.npz"):
            if old.name != arrays:
                old.unlink()

    # -- the oracle -------------------------------------------------------------------------------
    def _ask(self, indices: np.ndarray) -> np.ndarray:
        if np.intersect1d(indices, self.labeled).size:  # an internal invariant, never expected
            raise RuntimeError("mcdrop.active: refusing to ask the oracle again for labelled indices.")
        # A label is paid when it is requested: the count is saved before the oracle is called,
        # so a crash or an interrupt during (or right after) the call still counts it.
        self.labels_paid += indices.size
        self._save()
        if self._oracle_labels is not None:
            answer = self._oracle_labels[indices]
        else:
            answer = self._oracle_fn(indices.copy())
        labels = check_labels(answer, "oracle")
        if labels.shape[0] != indices.size:
            raise invalid("oracle", f"{indices.size} labels (one per queried index)", answer)
        return labels

    def _add(self, indices: np.ndarray, labels: np.ndarray) -> None:
        self.labeled = np.concatenate([self.labeled, indices.astype(np.int64)])
        self.labels = np.concatenate([self.labels, labels])

    # -- one round ------------------------------------------------------------------------------
    @property
    def acquired(self) -> int:
        """Labels acquired beyond the initial set (0 before the initial labels are in)."""
        return max(self.labeled.size - self.initial.size, 0)

    def _train(self, seed: int):
        import keras

        keras.utils.set_random_seed(seed)
        model = self.build_and_train(_take(self.x_pool, self.labeled), self.labels.copy(), seed=seed)
        if not isinstance(model, keras.Model):
            raise invalid("build_and_train", "a function returning a keras.Model", model, error=TypeError)
        return model

    def _engine(self, model, seed: int):
        from mcdrop.engine import MCDropout

        options = {"verbose": 0, **self.mc_options}
        return MCDropout(model, num_samples=self.num_samples, seed=seed, mask="consistent", **options)

    def _evaluate(self, mc) -> dict:
        if self.x_test is None:
            return {}
        from mcdrop import metrics

        pred = mc.predict(self.x_test)
        probs = pred.mean
        return {
            "accuracy": float(metrics.accuracy_score(self.y_test, probs)),
            "nll": float(metrics.negative_log_likelihood(self.y_test, probs)),
            "ece": float(metrics.expected_calibration_error(self.y_test, probs, n_bins=15)),
        }

    def _scores(self, mc, rows: np.ndarray, score) -> np.ndarray:
        """Score pool ``rows`` a chunk at a time; only the (len(rows),) scores are kept."""
        out = np.empty(rows.size)
        with progress(rows.size, verbose=self.verbose, desc="scoring pool", unit="rows") as bar:
            for start in range(0, rows.size, self.pool_chunk_size):
                part = rows[start:start + self.pool_chunk_size]
                out[start:start + part.size] = score(mc.predict(_take(self.x_pool, part)))
                bar.update(part.size)
        return out

    def _select(self, mc, k: int, seed: int) -> np.ndarray:
        unlabeled = np.setdiff1d(np.arange(self.num_pool), self.labeled)
        if self.method == "random":
            return unlabeled[_acq.top_k(np.random.default_rng(seed).random(unlabeled.size), k)]
        if self.method == "batch_bald":
            bald = self._scores(mc, unlabeled, _acq.bald)
            shortlist = unlabeled[_acq.top_k(bald, min(self.candidates, unlabeled.size))]
            pred = mc.predict(_take(self.x_pool, shortlist), return_samples=True)
            picked = _acq.batch_bald(pred, k, seed=seed, verbose=self.verbose, **self.acquisition_options)
            return shortlist[picked]
        scores = self._scores(mc, unlabeled, _acq.SCORES[self.method])
        if self.stochastic is None:
            return unlabeled[_acq.top_k(scores, k)]
        return unlabeled[_acq.stochastic_batch(scores, k, mode=self.stochastic, beta=self.beta, seed=seed)]

    def step(self) -> dict | None:
        """Run one round (train, evaluate, select, label, save); return its history entry, or
        None if the run is already done."""
        if self.done:
            return None
        if self.labeled.size == 0:  # the initial labels, saved before anything else
            given = self._initial_labels is not None
            labels = self._initial_labels if given else self._ask(self.initial)
            self._add(self.initial, labels)
            self._save()
        k = min(self.batch_size, self.budget - self.acquired)
        if k == 0 and self.x_test is None:  # budget spent, nothing to evaluate: no final training
            self.done = True
            self._save()
            return None
        seed = _round_seed(self.seed, self.round)
        model = self._train(seed)
        mc = self._engine(model, seed)
        entry = {"round": self.round, "num_labels": int(self.labeled.size), "seed": seed}
        entry.update(self._evaluate(mc))
        if k > 0:
            chosen = self._select(mc, k, seed)
            labels = self._ask(chosen)
            self._add(chosen, labels)
            entry["acquired"] = chosen.tolist()
        else:
            entry["acquired"] = []
            self.done = True
        self.history.append(entry)
        self.round += 1
        self._save()
        return entry

    def run(self, rounds: int | None = None) -> list[dict]:
        """Run until the budget is spent (or ``rounds`` more rounds); return the history.

        Each history entry holds ``round``, ``num_labels`` (labelled when the model was
        trained), ``seed``, the test metrics (``accuracy``, ``nll``, ``ece``) if a test set was
        given, and ``acquired`` (the pool indices labelled after that round).
        """
        if rounds is not None:
            rounds = check_int(rounds, "rounds", minimum=1)
        left = self.rounds_left
        total = left if rounds is None else min(rounds, left)
        done = 0
        with progress(total, verbose=self.verbose, desc="active learning", unit="round", leave=True) as bar:
            while not self.done and (rounds is None or done < rounds):
                entry = self.step()
                done += 1
                if entry is not None:
                    status = {"labels": entry["num_labels"]}
                    if "accuracy" in entry:
                        status["accuracy"] = f"{entry['accuracy']:.3f}"
                    bar.set_postfix(status, refresh=False)
                    bar.update()
        return self.history

    @property
    def rounds_left(self) -> int:
        """Rounds :meth:`run` still has to run: one per batch of the budget left, plus the final
        evaluation when there is a test set."""
        if self.done:
            return 0
        batches = -(-(self.budget - self.acquired) // self.batch_size)
        return batches + int(self.x_test is not None)

    def __repr__(self) -> str:
        status = "not started" if self.labeled.size == 0 else "done" if self.done else "running"
        return (f"ActiveLearningLoop(method={self.method!r}, pool={describe(self.num_pool)}, "
                f"initial={self.initial.size}, acquired={self.acquired}/{self.budget}, "
                f"batch_size={self.batch_size}, rounds={self.round}, status={status!r})")
