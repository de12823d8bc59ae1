r"""Acquisition functions for active learning (numpy only).

Every score function maps a prediction, or a samples array shaped ``(T, N, C)`` (passes
first, class probabilities on the last axis), to an array of shape ``(N,)`` in which
**higher means "label this first"**. The regression scores take a
:class:`~mcdrop.predictive.RegressionPrediction` or samples shaped ``(T, N[, D])``.

Scores (classification)
    :func:`max_entropy`, :func:`bald`, :func:`variation_ratio`, :func:`mean_std`,
    :func:`margin`, :func:`least_confidence`, :func:`random`.
Scores (regression)
    :func:`predictive_variance`, :func:`epistemic_variance`.
Batch selection
    :func:`batch_bald` (greedy BatchBALD, Kirsch et al. 2019), :func:`stochastic_batch`
    (power / softmax / softrank acquisition, Kirsch et al. 2023), :func:`top_k`, and the
    single entry point :func:`select`.

Scores computed from a samples array are computed in chunks of rows, so a large pool
costs its own storage plus a few tens of megabytes, never a float64 copy of the whole
array.

References
----------
Houlsby, Huszár, Ghahramani, Lengyel (2011). Bayesian Active Learning for Classification and
Preference Learning. arXiv:1112.5745.
Gal, Islam, Ghahramani (2017). Deep Bayesian Active Learning with Image Data. ICML.
Kirsch, van Amersfoort, Gal (2019). BatchBALD: Efficient and Diverse Batch Acquisition for Deep
Bayesian Active Learning. NeurIPS.
Kirsch, Farquhar, Atighehchian, Jesson, Branchaud-Charron, Gal (2023). Stochastic Batch
Acquisition: A Simple Baseline for Deep Active Learning. TMLR.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from mcdrop import _stats
from mcdrop._progress import check_verbose, progress
from mcdrop._validation import (
    check_array,
    check_choice,
    check_float,
    check_int,
    check_probs,
    check_samples,
    invalid,
)
from mcdrop.predictive import ClassificationPrediction, RegressionPrediction

__all__ = [
    "max_entropy",
    "bald",
    "variation_ratio",
    "mean_std",
    "margin",
    "least_confidence",
    "random",
    "predictive_variance",
    "epistemic_variance",
    "batch_bald",
    "joint_mutual_information",
    "stochastic_batch",
    "top_k",
    "select",
    "SCORES",
    "METHODS",
    "REGRESSION_METHODS",
    "CLASSIFICATION_METHODS",
    "METHODS_BY_TASK",
    "STOCHASTIC_MODES",
]

#: Rows of a samples array processed at once hold about this many float64 values (8 MiB).
_CHUNK_VALUES = 2**20


# ---------------------------------------------------------------------------------------------
# input handling


def _sample_chunks(samples: Any, name: str = "samples") -> Iterator[tuple[int, slice, np.ndarray]]:
    """Validate a (T, N, C) probability array and yield ``(N, row_slice, float64 chunk)``.

    Validation is chunked too; if a chunk fails, the whole array is checked again so the
    error message describes the array the caller passed (that path may copy it).
    """
    array = samples
    if hasattr(array, "numpy") and not isinstance(array, np.ndarray):
        array = array.numpy()
    array = np.asarray(array) if not isinstance(array, np.ndarray) else array
    if array.dtype.kind not in "fiu" or array.ndim != 3 or array.size == 0:
        checked = check_probs(samples, name, ndim=3)  # raises the standard message, or converts
        yield checked.shape[1], slice(0, checked.shape[1]), checked
        return
    t, n, c = array.shape
    rows = max(1, _CHUNK_VALUES // max(1, t * c))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        try:
            chunk = check_probs(array[:, start:stop], name, ndim=3)
        except (ValueError, TypeError):
            check_probs(array, name, ndim=3)  # the message about the whole array
            raise
        yield n, slice(start, stop), chunk


def _classification(x: Any, name: str = "samples") -> ClassificationPrediction | None:
    """Return ``x`` if it is a classification prediction, ``None`` for an array; refuse others."""
    if isinstance(x, ClassificationPrediction):
        return x
    if isinstance(x, RegressionPrediction):
        raise invalid(name, "a ClassificationPrediction or per-pass probabilities of shape (T, N, C)", x,
                      detail="Use `predictive_variance` or `epistemic_variance` for regression.",
                      error=TypeError)
    return None


def _statistic(x: Any, per_prediction: Callable[[ClassificationPrediction], np.ndarray],
               per_chunk: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``per_prediction`` of a prediction, or ``per_chunk`` of a samples array, chunk by chunk of rows.

    ``per_chunk`` computes the one statistic asked for with :mod:`mcdrop._stats`, the functions the
    prediction's own statistics come from (so the two agree bit for bit); nothing else is built."""
    pred = _classification(x)
    if pred is not None:
        return np.asarray(per_prediction(pred), dtype=np.float64)
    out = None
    for n, rows, chunk in _sample_chunks(x):  # each chunk is validated, float64, (T, rows, C)
        value = per_chunk(chunk)
        if out is None:
            out = np.empty((n, *np.shape(value)[1:]))
        out[rows] = value
    return out


def _mean(probs: np.ndarray) -> np.ndarray:
    return _stats.moments(probs)[0]


# ---------------------------------------------------------------------------------------------
# classification scores


def max_entropy(x) -> np.ndarray:
    r"""Predictive entropy (total uncertainty) of each pool point.

    .. math:: H[\bar p] = -\sum_c \bar p_c \log \bar p_c, \qquad \bar p = \frac1T\sum_t p_t

    Parameters
    ----------
    x : ClassificationPrediction or array-like of shape (T, N, C)
        A prediction or per-pass class probabilities.

    Returns
    -------
    ndarray of shape (N,)
        Entropy in nats; higher means label first.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([[[0.5, 0.5], [1.0, 0.0]]])  # one pass, two points
    >>> max_entropy(p).round(4)
    array([0.6931, 0.    ])
    """
    return _statistic(x, lambda pred: pred.entropy, lambda p: _stats.entropy(_mean(p)))


def bald(x) -> np.ndarray:
    r"""BALD: mutual information between the label and the model parameters (Houlsby et al. 2011).

    .. math::

        \mathbb{I}[y; \omega \mid x] = H\Big[\frac1T\sum_t p_t\Big] - \frac1T\sum_t H[p_t]

    the entropy of the mean minus the mean of the per-pass entropies, clipped at 0 against
    rounding (Gal et al. 2017 estimate it with MC dropout passes).

    Parameters
    ----------
    x : ClassificationPrediction or array-like of shape (T, N, C)

    Returns
    -------
    ndarray of shape (N,)
        In nats, within :math:`[0, \log C]`; higher means label first.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([[[0.9, 0.1]], [[0.1, 0.9]]])  # two passes that disagree
    >>> bald(p).round(4)
    array([0.3681])
    """
    return _statistic(x, lambda pred: pred.mutual_information,
                      lambda p: _stats.mutual_information(_mean(p), _stats.expected_entropy(p)))


def variation_ratio(x) -> np.ndarray:
    r"""Variation ratio: the share of passes that disagree with the modal vote.

    .. math:: 1 - \frac{\max_c \#\{t : \arg\max_{c'} p_{t,c'} = c\}}{T}

    Parameters
    ----------
    x : ClassificationPrediction or array-like of shape (T, N, C)

    Returns
    -------
    ndarray of shape (N,)
        In :math:`[0, 1 - 1/C]`; higher means label first.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([[[0.9, 0.1]], [[0.2, 0.8]], [[0.7, 0.3]], [[0.6, 0.4]]])
    >>> variation_ratio(p)
    array([0.25])
    """
    return _statistic(x, lambda pred: pred.variation_ratio,
                      lambda p: _stats.variation_ratio(_stats.vote_counts(p), p.shape[0]))


def mean_std(x) -> np.ndarray:
    r"""Mean standard deviation of the class probabilities over passes (Kampffmeyer et al. 2016,
    as used by Gal et al. 2017).

    .. math:: \frac1C \sum_c \sqrt{\frac1T\sum_t p_{t,c}^2 - \bar p_c^2}

    Parameters
    ----------
    x : ClassificationPrediction or array-like of shape (T, N, C)

    Returns
    -------
    ndarray of shape (N,)
        Higher means label first.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    >>> mean_std(p)
    array([0.5])
    """
    return _statistic(x, lambda pred: pred.std.mean(axis=-1),
                      lambda p: np.sqrt(_stats.moments(p)[1]).mean(axis=-1))


def _mean_probs(x) -> np.ndarray:
    return _statistic(x, lambda pred: pred.mean, _mean)


def margin(x) -> np.ndarray:
    r"""One minus the margin between the two most probable classes of the mean prediction.

    .. math:: 1 - (\bar p_{(1)} - \bar p_{(2)})

    A small margin (a close call) scores high.

    Parameters
    ----------
    x : ClassificationPrediction or array-like of shape (T, N, C)

    Returns
    -------
    ndarray of shape (N,)
        In :math:`[0, 1]`; higher means label first.

    Examples
    --------
    >>> import numpy as np
    >>> margin(np.array([[[0.5, 0.3, 0.2], [0.9, 0.05, 0.05]]])).round(2)
    array([0.8 , 0.15])
    """
    mean = _mean_probs(x)
    top2 = np.partition(mean, mean.shape[-1] - 2, axis=-1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def least_confidence(x) -> np.ndarray:
    r"""One minus the highest mean class probability.

    .. math:: 1 - \max_c \bar p_c

    Parameters
    ----------
    x : ClassificationPrediction or array-like of shape (T, N, C)

    Returns
    -------
    ndarray of shape (N,)
        In :math:`[0, 1 - 1/C]`; higher means label first.

    Examples
    --------
    >>> import numpy as np
    >>> least_confidence(np.array([[[0.7, 0.3]], [[0.5, 0.5]]]))
    array([0.4])
    """
    return 1.0 - _mean_probs(x).max(axis=-1)


def random(x, *, seed=None) -> np.ndarray:
    """Uniform random scores in [0, 1): top-k of them is a uniform sample without replacement.

    Parameters
    ----------
    x : ClassificationPrediction, RegressionPrediction, or array-like of shape (T, N, ...)
        Only its number of rows N is used.
    seed : int, numpy Generator or None

    Returns
    -------
    ndarray of shape (N,)

    Examples
    --------
    >>> import numpy as np
    >>> random(np.full((2, 3, 2), 0.5), seed=0).shape
    (3,)
    """
    if isinstance(x, (ClassificationPrediction, RegressionPrediction)):
        n = len(x)
    else:
        shape = getattr(x, "shape", None)
        if shape is None:
            shape = np.shape(x)
        if len(shape) < 2:
            raise invalid("samples", "an array of rank 2 or more, shaped (T, N, ...)", x)
        n = int(shape[1])
    return np.random.default_rng(seed).random(n)


# ---------------------------------------------------------------------------------------------
# regression scores


def _regression_variance(x, per_prediction: Callable[[RegressionPrediction], np.ndarray]) -> np.ndarray:
    """(N,): ``per_prediction`` of a regression prediction, summed over outputs; for per-pass means
    (T, N[, D]), their variance over passes from :mod:`mcdrop._stats` (the prediction's own
    statistic), summed over outputs. Plain means carry no variance head, so their aleatoric part is zero
    and the total variance is the epistemic one."""
    if isinstance(x, RegressionPrediction):
        return np.asarray(per_prediction(x), dtype=np.float64).sum(axis=-1)
    if isinstance(x, ClassificationPrediction):
        raise invalid("samples", "a RegressionPrediction or per-pass outputs of shape (T, N[, D])", x,
                      error=TypeError)
    samples = check_samples(x, "samples", ndim=(2, 3))
    if samples.ndim == 2:
        samples = samples[..., None]
    return _stats.moments(samples)[1].sum(axis=-1)


def predictive_variance(x) -> np.ndarray:
    r"""Total predictive variance, summed over output dimensions.

    .. math:: \sum_d \Big(\mathrm{Var}_t[\mu_{t,d}] + \frac1T\sum_t \sigma^2_{t,d}\Big)

    (epistemic + aleatoric; the aleatoric part is zero unless the model has a Gaussian head).

    Parameters
    ----------
    x : RegressionPrediction or array-like of shape (T, N) or (T, N, D)
        A prediction, or per-pass predicted means (which carry no aleatoric part).

    Returns
    -------
    ndarray of shape (N,)
        Higher means label first.

    Examples
    --------
    >>> import numpy as np
    >>> predictive_variance(np.array([[1.0, 0.0], [3.0, 0.0]]))
    array([1., 0.])
    """
    return _regression_variance(x, lambda pred: pred.variance)


def epistemic_variance(x) -> np.ndarray:
    r"""Epistemic variance: the variance over passes of the predicted means, summed over outputs.

    .. math:: \sum_d \mathrm{Var}_t[\mu_{t,d}]

    Parameters
    ----------
    x : RegressionPrediction or array-like of shape (T, N) or (T, N, D)

    Returns
    -------
    ndarray of shape (N,)
        Higher means label first.

    Examples
    --------
    >>> import numpy as np
    >>> epistemic_variance(np.array([[1.0], [3.0]]))
    array([1.])
    """
    return _regression_variance(x, lambda pred: pred.epistemic_variance)


#: Score functions by name (what :func:`select` accepts besides "batch_bald").
SCORES: dict[str, Callable[..., np.ndarray]] = {
    "bald": bald,
    "max_entropy": max_entropy,
    "variation_ratio": variation_ratio,
    "mean_std": mean_std,
    "margin": margin,
    "least_confidence": least_confidence,
    "random": random,
    "predictive_variance": predictive_variance,
    "epistemic_variance": epistemic_variance,
}
METHODS = (*SCORES, "batch_bald")
#: The methods that score regression outputs; every other method scores class probabilities.
REGRESSION_METHODS = ("predictive_variance", "epistemic_variance")
#: The methods that score class probabilities (what :class:`mcdrop.active.ActiveLearningLoop` accepts).
CLASSIFICATION_METHODS = tuple(m for m in METHODS if m not in REGRESSION_METHODS)
#: The methods that take each task's predictions, keyed by the prediction types' ``task`` ("random" takes
#: either).
METHODS_BY_TASK = {ClassificationPrediction.task: CLASSIFICATION_METHODS,
                   RegressionPrediction.task: (*REGRESSION_METHODS, "random")}
STOCHASTIC_MODES = ("power", "softmax", "softrank")


# ---------------------------------------------------------------------------------------------
# batch selection


def _check_k(k, n: int) -> int:
    return check_int(k, "k", minimum=1, maximum=n)


def _check_scores(scores) -> np.ndarray:
    return check_array(scores, "scores", ndim=1)


def top_k(scores, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, highest first; ties go to the lower index.

    Parameters
    ----------
    scores : array-like of shape (N,)
    k : int
        In ``[1, N]``.

    Returns
    -------
    ndarray of shape (k,) and dtype int64

    Examples
    --------
    >>> top_k([0.1, 0.9, 0.5, 0.9], 2)
    array([1, 3])
    """
    scores = _check_scores(scores)
    k = _check_k(k, scores.shape[0])
    return np.argsort(-scores, kind="stable")[:k].astype(np.int64)


def stochastic_batch(scores, k: int, *, mode: str = "power", beta: float = 1.0, seed=None) -> np.ndarray:
    r"""Stochastic batch acquisition (Kirsch et al. 2023): sample ``k`` distinct points with
    probabilities that grow with their scores, instead of taking the top-k.

    The single-point scores are turned into a sampling distribution,

    .. math::

        \text{power:}\ \ \pi_i \propto s_i^{\beta}, \qquad
        \text{softmax:}\ \ \pi_i \propto e^{\beta s_i}, \qquad
        \text{softrank:}\ \ \pi_i \propto r_i^{-\beta},

    with :math:`r_i` the rank of point i (1 for the highest score), and ``k`` points are drawn
    from it without replacement by the Gumbel-top-k trick: the k largest
    :math:`\beta\text{-}\log \pi_i + g_i` with :math:`g_i \sim \mathrm{Gumbel}(0, 1)` i.i.d.
    (Kool et al. 2019). ``beta = 0`` is uniform sampling; as ``beta`` grows the draw tends to
    the top-k. Power mode needs non-negative scores (BALD, entropy...); points scoring 0 come
    after every positive one, in random order. Points whose weight underflows to 0 (huge
    ``beta``) come last in score order.

    Parameters
    ----------
    scores : array-like of shape (N,)
        Finite scores, higher = label first.
    k : int
        Number of points, in ``[1, N]``.
    mode : {"power", "softmax", "softrank"}
    beta : float >= 0
        Inverse temperature (1 in the paper).
    seed : int, numpy Generator or None

    Returns
    -------
    ndarray of shape (k,) and dtype int64
        Distinct indices in the order drawn.

    Examples
    --------
    >>> idx = stochastic_batch([0.1, 2.0, 0.3, 1.5], 2, mode="softmax", beta=50.0, seed=0)
    >>> sorted(idx.tolist())
    [1, 3]
    """
    scores = _check_scores(scores)
    n = scores.shape[0]
    k = _check_k(k, n)
    mode = check_choice(mode, "mode", STOCHASTIC_MODES)
    beta = check_float(beta, "beta", low=0.0)
    if mode == "power":
        if np.any(scores < 0):
            raise invalid("scores", "non-negative scores for mode='power'", scores,
                          detail=f"The smallest is {scores.min():.6g}; use mode='softmax' or 'softrank'.")
    # log-weights shifted so the largest is 0: a large beta can only underflow to -inf, never
    # overflow to +inf (the shift does not change the distribution)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        if mode == "power":
            if beta == 0 or scores.max() == 0:
                log_weight = np.zeros(n)
            else:
                log_weight = beta * (np.log(scores) - np.log(scores.max()))
        elif mode == "softmax":
            log_weight = beta * (scores - scores.max())
        else:
            ranks = np.empty(n)
            ranks[np.argsort(-scores, kind="stable")] = np.arange(1, n + 1)
            log_weight = -beta * np.log(ranks)
    gumbel = np.random.default_rng(seed).gumbel(size=n)
    key = log_weight + gumbel
    possible = np.isfinite(key)
    # descending by key; points whose weight is 0 (or underflowed to 0) come last, by score and
    # then at random: the limit of the draw as their weights shrink
    order = np.lexsort((-gumbel, -scores, -np.where(possible, key, 0.0), ~possible))
    return order[:k].astype(np.int64)


def _bald_samples(x, name: str = "samples") -> tuple[np.ndarray, Any]:
    """Samples (T, N, C) for BatchBALD, refusing predictions whose passes are not one network each."""
    if isinstance(x, ClassificationPrediction):
        if x.mask != "consistent":
            raise invalid(
                name, "a prediction made with consistent masks (mask='consistent')", x.mask,
                detail=("BatchBALD needs the joint distribution of the labels of several inputs, which "
                        "exists only when pass t is one draw of the network for every input. With "
                        "per-example masks, pass t applies a different dropout mask to each input, so "
                        "the passes of different inputs are independent and their joint entropy is "
                        "meaningless. Predict with MCDropout(..., mask='consistent') (the default)."),
            )
        if x.samples is None:
            raise invalid(name, "a prediction that kept its samples", x,
                          detail="Predict with `return_samples=True`: BatchBALD needs the per-pass "
                                 "probabilities, not only their summaries.")
        return check_samples(x.samples, name, probs=True), x
    _classification(x, name)
    return check_samples(x, name, probs=True), None


def _conditional_entropy(weights: np.ndarray, posterior: np.ndarray, probs: np.ndarray,
                         max_memory: int, workspace: dict | None = None) -> np.ndarray:
    r""":math:`\sum_m w_m H[\sum_t R_{t,m}\, p_{t,n,\cdot}]` for every candidate n.

    ``posterior`` R (T, M) holds, per configuration m of the batch's labels, the posterior
    weights of the passes given that configuration (columns sum to 1); ``probs`` is (T, n, C)
    and sets the working precision (float32 is used for sampled configurations, whose
    Monte Carlo error is orders of magnitude above float32 rounding). Candidates are
    processed in chunks so the two (M, chunk, C) work buffers stay within ``max_memory``;
    the buffers are kept in ``workspace`` and reused across greedy steps (allocating fresh
    pages each step costs more than the arithmetic).
    """
    t, n, c = probs.shape
    m = posterior.shape[1]
    chunk = max(1, min(n, int(max_memory // (m * c * 8 * 2))))
    workspace = {} if workspace is None else workspace
    key = (m, chunk * c, probs.dtype.str)
    if workspace.get("key") != key:
        workspace.clear()  # release the old buffers before allocating new ones
        workspace.update(key=key, product=np.empty(m * chunk * c, probs.dtype),
                         logs=np.empty(m * chunk * c, probs.dtype))
    out = np.empty(n)
    rt = np.ascontiguousarray(posterior.T, dtype=probs.dtype)  # (M, T)
    w = weights.astype(probs.dtype)
    tiny = np.finfo(probs.dtype).tiny
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        width = (stop - start) * c
        block = probs[:, start:stop, :].reshape(t, -1)  # (T, chunk*C)
        # contiguous (M, width) views of the flat buffers (BLAS needs a contiguous output)
        predictive = workspace["product"][: m * width].reshape(m, width)
        logs = workspace["logs"][: m * width].reshape(m, width)
        np.matmul(rt, block, out=predictive)  # (M, chunk*C): p(y_n | configuration m)
        np.maximum(predictive, tiny, out=logs)
        np.log(logs, out=logs)
        logs *= predictive  # p log p, 0 where p = 0
        # sum over m first (one matrix-vector product), then over the C classes of each candidate
        weighted = w @ logs  # (chunk*C,)
        out[start:stop] = -weighted.reshape(stop - start, c).sum(axis=-1, dtype=np.float64)
    return out


def _condition(weights: np.ndarray, posterior: np.ndarray, p_new: np.ndarray, exact: bool, budget: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
    r"""BatchBALD's configurations conditioned on one more label, :math:`R_{t,(m,y)} \propto R_{t,m}\,
    p_t(y \mid x_\text{pick})`: enumerated exactly while the :math:`M \cdot C` extensions fit in ``budget``,
    else ``budget`` configurations drawn from the exact joint (on the switch) or extended by ancestral
    sampling. Returns the new weights (M',), posterior (T, M') and whether they are still exact.

    ``weights`` (M,), ``posterior`` (T, M) over passes per configuration, ``p_new`` (T, C) the picked
    point's per-pass probabilities."""
    t, c = p_new.shape
    predictive = posterior.T @ p_new  # (M, C): p(y_pick | configuration m)
    if exact and weights.size * c <= budget:
        joint = (weights[:, None] * predictive).ravel()
        keep = joint > 0
        extended = (posterior[:, :, None] * p_new[:, None, :]).reshape(t, -1)[:, keep]
        return joint[keep] / joint[keep].sum(), extended / predictive.ravel()[keep], True
    if exact:  # switch to sampling: draw M configurations from the exact joint
        joint = (weights[:, None] * predictive).ravel()
        draws = rng.choice(joint.size, size=budget, p=joint / joint.sum())
        parent, label = np.divmod(draws, c)
    else:  # ancestral sampling: extend each configuration by one label
        cdf = np.cumsum(predictive, axis=1)
        u = rng.random(predictive.shape[0]) * cdf[:, -1]
        # the class whose cdf interval [cdf_{y-1}, cdf_y) holds u: never a zero-probability one
        label = np.minimum((cdf <= u[:, None]).sum(axis=1), c - 1)
        parent = np.arange(predictive.shape[0])
    posterior = posterior[:, parent] * p_new[:, label]
    posterior /= posterior.sum(axis=0, keepdims=True)
    return np.full(budget, 1.0 / budget), posterior, False


def batch_bald(samples, k: int, *, num_configurations: int = 4096, max_memory: int = 2**28,
               seed=None, verbose="auto") -> np.ndarray:
    r"""Greedy BatchBALD (Kirsch, van Amersfoort & Gal, 2019): ``k`` points whose labels are
    jointly most informative about the model.

    BatchBALD scores a batch :math:`A` by the joint mutual information

    .. math::

        a(A) = \mathbb{I}[y_A; \omega] = H[y_A] - \sum_{i \in A} \mathbb{E}_\omega H[y_i \mid \omega],
        \qquad p(y_A) = \frac1T \sum_t \prod_{i\in A} p_t(y_i \mid x_i),

    and builds the batch greedily (a :math:`1 - 1/e` approximation, the function being
    submodular): step j adds the point n maximising

    .. math::

        H[y_n \mid y_A] - \mathbb{E}_\omega H[y_n\mid\omega], \qquad
        H[y_n \mid y_A] = \sum_{m} w_m\, H\Big[\sum_t R_{t,m}\, p_t(\cdot \mid x_n)\Big],

    where m runs over configurations of the labels of :math:`A`, :math:`R_{t,m} \propto
    \prod_{i\in A} p_t(y_{m,i} \mid x_i)` is the posterior over passes given configuration m
    (normalised over t), and :math:`w_m = p(y_m)` while all :math:`C^{|A|}` configurations are
    enumerated (exact). Once their number would exceed ``num_configurations`` (or the memory
    limit), ``num_configurations`` configurations are sampled from :math:`p(y_A)` and
    :math:`w_m = 1/M` — the importance-sampled estimator of the paper (sampling from the
    joint itself). Sampled configurations are extended one label at a time by ancestral
    sampling, :math:`y_{m,n} \sim \sum_t R_{t,m}\, p_t(\cdot\mid x_n)`, so each step costs
    O(M·T·N·C). Working in conditional entropies with normalised R keeps every quantity in
    [0, 1]: no underflow however large the batch.

    The passes must be draws of one network across inputs (consistent masks): a prediction
    made with ``mask="per_example"`` is refused.

    Parameters
    ----------
    samples : ClassificationPrediction or array-like of shape (T, N, C)
        A prediction made with ``return_samples=True`` and consistent masks, or per-pass
        probabilities.
    k : int
        Batch size, in ``[1, N]``.
    num_configurations : int, default 4096
        M, the number of label configurations of the batch kept: exact enumeration while
        :math:`C^{|A|}` configurations fit, sampling M beyond. Time per step grows linearly in M.
    max_memory : int, default 2**28 (256 MiB)
        Bytes allowed for the working arrays besides the float64 copy of ``samples``: the
        (T, M) posterior table and the (M, chunk, C) block of candidate predictives, counted
        as float64 and twice over for temporaries. Candidates are processed in chunks sized
        from it, and M is lowered to :math:`\lfloor \text{max\_memory} / (8 (2T + 2C)) \rfloor`
        if it does not fit. Peak extra memory is therefore about ``max_memory`` plus a float64
        copy of ``samples`` and, once configurations are sampled, a float32 one (12·T·N·C bytes).
    seed : int, numpy Generator or None
        Seeds the configuration sampling (unused while exact).
    verbose : {"auto", 0, 1}, default "auto"
        A progress bar on stderr, one step per point chosen: 1 always, 0 never, "auto" when
        stderr is a terminal, as for :class:`~mcdrop.MCDropout`; an "auto" bar draws only once the
        selection has run for a second.

    Returns
    -------
    ndarray of shape (k,) and dtype int64
        Distinct indices in selection order. The first is the BALD argmax.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> probs = rng.dirichlet(np.ones(3), size=(8, 20))  # T=8 passes, N=20 points, C=3
    >>> idx = batch_bald(probs, 3, seed=0)
    >>> int(idx[0]) == int(np.argmax(bald(probs)))
    True
    """
    probs, _ = _bald_samples(samples)
    t, n, c = probs.shape
    k = _check_k(k, n)
    num_configurations = check_int(num_configurations, "num_configurations", minimum=1)
    max_memory = check_int(max_memory, "max_memory", minimum=1)
    verbose = check_verbose(verbose)
    fit = max_memory // (8 * (2 * t + 2 * c))
    if fit < 1:
        raise invalid("max_memory", f"at least {8 * (2 * t + 2 * c)} bytes for T={t}, C={c}", max_memory)
    budget = min(num_configurations, fit)
    rng = np.random.default_rng(seed)

    # E_w H[y_n | w] per candidate, and the BALD scores for the first pick
    expected = _stats.expected_entropy(probs)  # (N,)
    gain = _stats.mutual_information(_stats.moments(probs)[0], expected)
    available = np.ones(n, dtype=bool)
    chosen: list[int] = []

    weights = np.ones(1)  # w_m
    posterior = np.full((t, 1), 1.0 / t)  # R_{t,m}
    exact = True
    probs32 = None
    workspace: dict = {}
    bar = progress(k, verbose=verbose, desc="BatchBALD", unit="point")  # closed below, or when collected
    for step in range(k):
        if step > 0:
            if not exact and probs32 is None:
                probs32 = probs.astype(np.float32)
            working = probs if exact else probs32
            gain = _conditional_entropy(weights, posterior, working, max_memory, workspace) - expected
        gain = np.where(available, gain, -np.inf)
        pick = int(np.argmax(gain))
        chosen.append(pick)
        available[pick] = False
        bar.update()
        if step == k - 1:
            break
        weights, posterior, exact = _condition(weights, posterior, probs[:, pick, :], exact, budget, rng)
    bar.close()
    return np.asarray(chosen, dtype=np.int64)


def joint_mutual_information(samples, indices) -> float:
    r"""Exact joint mutual information :math:`\mathbb{I}[y_A;\omega]` of a small set of points.

    .. math:: H[y_A] - \sum_{i\in A}\frac1T\sum_t H[p_t(\cdot\mid x_i)], \qquad
              p(y_A) = \frac1T\sum_t\prod_{i\in A} p_t(y_i\mid x_i)

    Enumerates all :math:`C^{|A|}` configurations: for checking and small batches only.

    Parameters
    ----------
    samples : ClassificationPrediction or array-like of shape (T, N, C)
    indices : array-like of int, shape (|A|,)

    Returns
    -------
    float
        In nats.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    >>> round(joint_mutual_information(p, [0, 1]), 4)  # two copies: log 2, not 2 log 2
    0.6931
    """
    probs, _ = _bald_samples(samples)
    idx = check_array(indices, "indices", ndim=1, dtype=np.int64)
    t, n, c = probs.shape
    if np.any(idx < 0) or np.any(idx >= n):
        raise invalid("indices", f"indices in [0, {n})", idx)
    if c ** idx.size * t > 2**26:
        raise invalid("indices", f"at most {int(np.log(2**26 / t) / np.log(c))} points for T={t}, C={c}",
                      idx, detail="The exact joint enumerates C**len(indices) configurations.")
    table = np.ones((t, 1))
    for i in idx:
        table = (table[:, :, None] * probs[:, i, None, :]).reshape(t, -1)
    joint_entropy = float(_stats.entropy(table.mean(axis=0)))
    conditional = float(_stats.entropy(probs[:, idx, :]).mean(axis=0).sum())
    return joint_entropy - conditional


# ---------------------------------------------------------------------------------------------
# one entry point


def select(prediction, k: int, *, method: str = "bald", stochastic: str | None = None,
           beta: float = 1.0, seed=None, candidates: int | None = None, rows=None,
           chunk_size: int = 4096, verbose="auto", **options) -> np.ndarray:
    """Choose ``k`` distinct points to label.

    Parameters
    ----------
    prediction : ClassificationPrediction, RegressionPrediction, samples array, or callable
        ``(T, N, C)`` probabilities for classification methods, ``(T, N[, D])`` outputs for
        the regression ones. Or a callable ``(pool_rows, return_samples) -> prediction``
        that predicts the given rows of a pool on demand (for example with
        :meth:`MCDropout.predict <mcdrop.MCDropout.predict>`): the points ``rows`` are then
        scored ``chunk_size`` at a time, only one score per point is kept, and for
        "batch_bald" the samples are asked for the shortlist alone.
    k : int
        Number of points, in ``[1, N]``.
    method : str, default "bald"
        A score in :data:`SCORES` ("bald", "max_entropy", "variation_ratio", "mean_std",
        "margin", "least_confidence", "random", "predictive_variance",
        "epistemic_variance"), or "batch_bald".
    stochastic : {None, "power", "softmax", "softrank"}
        None takes the top-k scores; a mode samples with :func:`stochastic_batch`
        (PowerBALD is ``method="bald", stochastic="power"``). Not with "batch_bald".
    beta : float
        Inverse temperature for ``stochastic``.
    seed : int, numpy Generator or None
        For "random", the stochastic modes and BatchBALD's sampled configurations.
    candidates : int, optional
        "batch_bald" only: score every point with BALD first and run greedy BatchBALD on the
        ``candidates`` highest (capped at N), the only points whose samples are needed.
        None runs BatchBALD on every point.
    rows : array-like of int, shape (N,)
        With a callable ``prediction`` (and only then): the pool rows to choose among.
    chunk_size : int, default 4096
        With a callable ``prediction``: rows scored per call.
    verbose : {"auto", 0, 1}, default "auto"
        Progress bars on stderr for the scoring of a callable's rows and BatchBALD's steps.
    **options
        Passed to :func:`batch_bald` (``num_configurations``, ``max_memory``).

    Returns
    -------
    ndarray of shape (k,) and dtype int64
        Distinct indices, in selection order: positions in ``prediction``, or elements of
        ``rows`` for a callable.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([[[0.9, 0.1], [0.5, 0.5], [1.0, 0.0]], [[0.1, 0.9], [0.5, 0.5], [1.0, 0.0]]])
    >>> select(p, 1, method="bald").tolist(), select(p, 1, method="max_entropy").tolist()
    ([0], [0])
    >>> select(lambda r, return_samples: p[:, r], 1, rows=[2, 0], method="bald").tolist()
    [0]
    """
    method = check_choice(method, "method", METHODS)
    if stochastic is not None:
        stochastic = check_choice(stochastic, "stochastic", STOCHASTIC_MODES)
    if method == "batch_bald" and stochastic is not None:
        raise invalid("stochastic", "None with method='batch_bald'", stochastic)
    if method != "batch_bald":
        if candidates is not None:
            options = {"candidates": candidates, **options}
        if options:
            name = next(iter(options))
            raise invalid(name, f"no such option for method={method!r}", options[name], error=TypeError)
    pool = _Pool(prediction, rows, chunk_size, check_verbose(verbose))
    if method == "batch_bald":
        return pool.batch_bald(k, candidates, seed=seed, **options)
    if method == "random":
        scores = np.random.default_rng(seed).random(pool.size) if pool.lazy else random(prediction, seed=seed)
    else:
        scores = pool.scores(SCORES[method])
    if stochastic is None:
        return pool.label(top_k(scores, k))
    return pool.label(stochastic_batch(scores, k, mode=stochastic, beta=beta, seed=seed))


class _Pool:
    """The points :func:`select` chooses among: a prediction in memory, or pool rows predicted on
    demand by a callable (scored a chunk at a time)."""

    def __init__(self, prediction, rows, chunk_size: int, verbose):
        self.lazy = callable(prediction) and not isinstance(
            prediction, (ClassificationPrediction, RegressionPrediction, np.ndarray))
        self.prediction, self.verbose = prediction, verbose
        if not self.lazy:
            if rows is not None:
                raise invalid("rows", "None unless `prediction` is a callable", rows, error=TypeError)
            return
        if rows is None:
            raise invalid("rows", "the pool rows to choose among with a callable `prediction`", rows,
                          error=TypeError)
        self.rows = np.asarray(rows)
        if self.rows.ndim != 1 or self.rows.size == 0 or self.rows.dtype.kind not in "iu":
            raise invalid("rows", "a non-empty 1-D array of integer pool rows", rows)
        self.rows = self.rows.astype(np.int64)
        self.size = self.rows.size
        self.chunk_size = check_int(chunk_size, "chunk_size", minimum=1)

    def label(self, picked: np.ndarray) -> np.ndarray:
        """``picked`` positions as the caller's indices (pool rows for a callable)."""
        return self.rows[picked] if self.lazy else picked

    def scores(self, score: Callable[[Any], np.ndarray]) -> np.ndarray:
        """One score per point; a callable's rows are predicted ``chunk_size`` at a time."""
        if not self.lazy:
            return score(self.prediction)
        out = np.empty(self.size)
        with progress(self.size, verbose=self.verbose, desc="scoring pool", unit="rows") as bar:
            for start in range(0, self.size, self.chunk_size):
                part = self.rows[start:start + self.chunk_size]
                out[start:start + part.size] = score(self.prediction(part, False))
                bar.update(part.size)
        return out

    def batch_bald(self, k: int, candidates: int | None, **options) -> np.ndarray:
        """Greedy BatchBALD, on the ``candidates`` highest-BALD points when given."""
        options["verbose"] = self.verbose
        if candidates is None and not self.lazy:
            return batch_bald(self.prediction, k, **options)
        samples = None if self.lazy else _bald_samples(self.prediction, "prediction")[0]
        if candidates is None:
            shortlist = np.arange(self.size)
        else:
            candidates = check_int(candidates, "candidates", minimum=k)
            bald_scores = self.scores(bald) if self.lazy else bald(samples)
            shortlist = top_k(bald_scores, min(candidates, bald_scores.shape[0]))
        chosen = self.prediction(self.rows[shortlist], True) if self.lazy else samples[:, shortlist]
        return self.label(shortlist[batch_bald(chosen, k, **options)])
