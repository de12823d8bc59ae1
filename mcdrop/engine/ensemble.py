r"""``Ensemble``: deep ensembles and MC-dropout ensembles through the same prediction.

M Keras models that map the same inputs to the same kind of output (their architectures may
differ) are run member by member on each block of rows, and their per-pass outputs are fed, in
member-major order, into the accumulators a single :class:`~mcdrop.MCDropout` uses. The result is
the same :class:`~mcdrop.ClassificationPrediction` / :class:`~mcdrop.RegressionPrediction` over
:math:`S = M \cdot T` samples, so metrics, the report, recalibration, acquisition (BatchBALD
included) and the store take it unchanged; its ``members`` field records the passes of each
member and ``sample_member`` each sample's member.

With ``num_samples=1`` every member runs deterministically (dropout off, exactly
``model.predict``): a deep ensemble (Lakshminarayanan et al., 2017), whose members need no dropout.
With ``num_samples=T`` every member runs T MC-dropout passes: an MC-dropout ensemble. Every member
has the same weight :math:`1/M`, so the predictive distribution is the equal-weight mixture

.. math::

    p(y \mid x) = \frac1M \sum_{m=1}^M \frac1T \sum_{t=1}^T p(y \mid x, \theta_{m,t}),

and for a Gaussian regression head the kept samples and variances give that mixture exactly.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import keras
import numpy as np
from keras import tree

from mcdrop._validation import MAX_SEED, check_int, invalid
from mcdrop.engine import inputs as _inputs
from mcdrop.engine._plan import count_rows
from mcdrop.engine._summarise import Chunks, PieceSummary, ReducedStep, join_rows
from mcdrop.engine.mc_dropout import _DEFAULT_BUDGET, MCDropout

__all__ = ["Ensemble"]

#: Rows run through every member before their statistics are summarised (memory: O(rows · T · C)
#: per block, O(N · C) in all).
BLOCK_ROWS = 4096


def member_seed(seed: int, member: int) -> int:
    """Member ``member``'s seed, derived from the ensemble's: independent streams per member."""
    state = np.random.SeedSequence([seed, member]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) % (2**62))


#: Options a member may set for itself (``member_options``): how its outputs are read.
MEMBER_OPTIONS = ("task", "outputs", "heteroscedastic")


def _member_options(member_options, n: int) -> list[dict]:
    if member_options is None:
        return [{} for _ in range(n)]
    if isinstance(member_options, (dict, str)) or not isinstance(member_options, Sequence):
        raise invalid("member_options", f"a list of {n} dicts, one per model", member_options, error=TypeError)
    if len(member_options) != n:
        raise invalid("member_options", f"a list of {n} dicts, one per model", f"{len(member_options)} entries")
    out = []
    for i, entry in enumerate(member_options):
        if not isinstance(entry, dict):
            raise invalid(f"member_options[{i}]", "a dict", entry, error=TypeError)
        unknown = sorted(set(entry) - set(MEMBER_OPTIONS))
        if unknown:
            raise invalid(f"member_options[{i}]", f"keys among {', '.join(MEMBER_OPTIONS)}", unknown)
        out.append(dict(entry))
    return out


class Ensemble:
    """Predictions of an ensemble of Keras models, as one prediction over all their samples.

    Parameters
    ----------
    models : sequence of keras.Model
        M >= 1 trained models with the same inputs and the same kind of output (task, number of
        classes or output dimensions, Gaussian head or not); architectures may differ. Each is
        read, never modified, and compiled once.
    num_samples : int, default 1
        T, the passes per member. 1: each member runs deterministically (deep ensemble); T > 1:
        T MC-dropout passes per member (every member must then have a stochastic layer).
    seed : int or None
        Member m draws its masks with a seed derived from ``(seed, m)``. With a seed results are
        bit-identical run to run and for any batching of an input stream; without one, each call
        draws a fresh seed (recorded on the prediction).
    task, outputs, heteroscedastic, mask, gaussian_noise, rate, batch_size, passes_per_chunk, memory_budget, run_eagerly, strategy, jit_compile
        As for :class:`~mcdrop.MCDropout`, applied to every member (a per-output value applies per
        output of each member). ``rate`` only with ``num_samples > 1``.
    member_options : sequence of dict, optional
        One dict per member overriding the shared options above for that member, e.g.
        ``[{}, {}, {"outputs": "logits"}]`` when only the last member ends in logits (a declaration must
        agree with each member's own last layer).
    verbose : {"auto", 0, 1}, default "auto"
        A progress bar over the rows.

    Examples
    --------
    >>> deep = Ensemble([model_a, model_b, model_c], seed=0)             # doctest: +SKIP
    >>> pred = deep.predict(x_test)                                      # doctest: +SKIP
    >>> pred.num_samples, pred.members                                   # doctest: +SKIP
    (3, (1, 1, 1))
    """

    def __init__(self, models, num_samples: int = 1, seed: int | None = None, *, task=None, outputs=None,
                 heteroscedastic=None, mask: str = "consistent", gaussian_noise: bool = False, rate=None,
                 batch_size: int | None = None, passes_per_chunk: int | None = None,
                 memory_budget: int = _DEFAULT_BUDGET, run_eagerly: bool = False, verbose="auto", strategy=None,
                 member_options=None, jit_compile=False):
        if isinstance(models, keras.Model) or not isinstance(models, Sequence) or not len(models):
            raise invalid("models", "a non-empty list of keras.Model", models, error=TypeError)
        for i, model in enumerate(models):
            if not isinstance(model, keras.Model):
                raise invalid(f"models[{i}]", "a keras.Model (Keras 3)", model, error=TypeError)
        if len({id(m) for m in models}) != len(models):
            raise invalid("models", "distinct model objects", [getattr(m, "name", "?") for m in models],
                          detail="The same model twice would count one member's opinion twice.")
        self.num_samples = check_int(num_samples, "num_samples", minimum=1)
        if seed is not None:
            seed = check_int(seed, "seed", minimum=0, maximum=MAX_SEED)
        self.seed = seed
        if rate is not None and self.num_samples == 1:
            raise invalid("rate", "None with num_samples=1 (deep-ensemble members run without dropout)", rate)
        options = dict(task=task, outputs=outputs, heteroscedastic=heteroscedastic, mask=mask,
                       gaussian_noise=gaussian_noise, batch_size=batch_size, passes_per_chunk=passes_per_chunk,
                       memory_budget=memory_budget, run_eagerly=run_eagerly, verbose=0, strategy=strategy,
                       jit_compile=jit_compile)
        if self.num_samples == 1:
            options.update(rate=0.0, allow_deterministic=True, gaussian_noise=False)
        else:
            options.update(rate=rate)
        overrides = _member_options(member_options, len(models))
        self.members = []
        for i, model in enumerate(models):
            try:
                self.members.append(MCDropout(model, num_samples=self.num_samples, **{**options, **overrides[i]}))
            except ValueError as err:
                if "stochastic layer" not in str(err):
                    raise
                raise invalid(f"models[{i}]", "a model with at least one stochastic layer for num_samples > 1",
                              model.name, detail="Use num_samples=1 for a deep ensemble of deterministic "
                              "models.") from None
        self.mask = mask
        self.verbose = verbose

    @property
    def models(self) -> list:
        return [member.model for member in self.members]

    def __len__(self) -> int:
        return len(self.members)

    def predict(self, x, *, return_samples: bool | None = None, batch_size: int | None = None, verbose=None,
                out=None, overwrite: bool = False):
        """Run every member over ``x`` and summarise all M·T samples as one prediction.

        Parameters
        ----------
        x : array-like, list/dict of them, tf.data.Dataset or iterable of batches
        return_samples : bool, optional
            Keep the per-sample outputs, (M·T, N, ...) member-major. By default kept for regression
            (the mixture needs them), not for classification (memory O(N·C)).
        batch_size : int, optional
            Rows per compiled call of each member.
        out : str or Path, optional
            Stream the per-row results to this store folder (see :mod:`mcdrop.store`) block by block.
        overwrite : bool, default False

        Returns
        -------
        ClassificationPrediction or RegressionPrediction (a list/dict for multi-output models)
            ``num_samples`` = M·T, ``members`` = (T,) * M.
        """
        if return_samples is not None and not isinstance(return_samples, bool):
            raise invalid("return_samples", "True, False or None", return_samples, error=TypeError)
        first = self.members[0]
        seed = self.seed if self.seed is not None else int(np.random.SeedSequence().entropy % (2**62))
        seeds = [member_seed(seed, m) for m in range(len(self.members))]
        pairs = [(s, np.array([s % (2**62), 0x4D43_44524F50], dtype=np.int64)) for s in seeds]
        provenance = {"mask": self.mask, "seed": seed, "members": (self.num_samples,) * len(self.members)}
        n = None if _inputs.is_streaming(x) else count_rows(x)
        rows = max(BLOCK_ROWS, batch_size or 0)
        with first._sink(x, out, overwrite) as sink, _progress(self.verbose if verbose is None else verbose, n) as bar:
            for block, structure, _, valid in _inputs.iter_blocks(x, first._spec, rows):
                block_x = _repack([a[:valid] for a in block], structure, first._spec)
                sink.append(self._summarise(block_x, pairs, batch_size, return_samples, provenance))
                bar.update(valid)
            return first._pack_outputs(sink.result())

    def _summarise(self, block_x, pairs, batch_size, return_samples, provenance):
        """One block of rows through every member, merged member-major into one accumulator per output."""
        summary, reference = None, None
        for m, (member, pair) in enumerate(zip(self.members, pairs)):
            step = ReducedStep(member, pair[1], keep_samples=return_samples)
            pieces = list(member._run(block_x, batch_size=batch_size, verbose=0, step=step, receiver=Chunks))
            # per piece of rows, per pass chunk, per output: (PassBlock, samples, variances); join the rows
            chunks = [join_rows([piece.chunks[c] for piece in pieces]) for c in range(len(pieces[0].chunks))]
            member._heads = step.heads  # what `heads` reports
            kinds = self._kinds(step.heads, chunks[0])
            if reference is None:
                reference, summary = kinds, PieceSummary(step, return_samples, provenance)
            elif kinds != reference:
                raise invalid(f"models[{m}]", f"outputs of the kind models[0] gives ({_describe(reference)})",
                              member.model.name, detail=f"It gives {_describe(kinds)}. Pass task= (and outputs=), for "
                              "every member or through member_options for one, when a member's last layer "
                              "does not show what it returns.")
            for chunk in chunks:
                summary.feed(chunk)
        return summary.result()

    @staticmethod
    def _kinds(heads, outputs):
        """Per output: (task, Gaussian head?, shape of one row's probabilities or means)."""
        return [(head.task, head.heteroscedastic is not None, tuple(block.first.shape[1:]))
                for head, (block, _, _) in zip(heads, outputs)]

    @property
    def heads(self):
        """Each member's heads (decided on the first prediction when the graph cannot tell)."""
        return [member.heads for member in self.members]

    def __repr__(self) -> str:
        names = ", ".join(repr(m.model.name) for m in self.members)
        return f"Ensemble(models=[{names}], num_samples={self.num_samples}, seed={self.seed}, mask={self.mask!r})"


def _describe(kinds) -> str:
    return "; ".join(f"{task}{' (Gaussian head)' if gauss else ''} of shape {shape}" for task, gauss, shape in kinds)


def _repack(flat, structure, spec):
    if spec is None:
        return tree.pack_sequence_as(structure, flat)
    if spec.keys is not None:
        return dict(zip(spec.keys, flat))
    return flat[0] if len(flat) == 1 else list(flat)


def _progress(verbose, total):
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() and (total is None or total > BLOCK_ROWS) if verbose == "auto" else bool(verbose)
    return tqdm(total=total, disable=not show, desc="ensemble", unit="rows", leave=False)
