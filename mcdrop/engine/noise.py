"""Keyed noise for the stochastic layers, drawn inside the compiled sampler.

Inside a sampling step the batch is flattened pass-major: a tensor of ``n`` rows
under ``Tc`` passes has ``Tc * n`` rows, row ``t * n + i`` being input ``i`` in the
chunk's ``t``-th pass. Each stochastic call site draws its noise from a stateless
random stream keyed by ``(seed, site, absolute pass index)``:

* ``consistent`` masks have no batch dimension — shape ``(Tc, 1, *features)`` —
  so pass ``t`` is one draw of the network shared by every input, and an input's
  samples do not depend on which other inputs share its batch, on chunk sizes or
  on call order;
* ``per_example`` masks add the row: shape ``(Tc, n, *features)``, as Keras' own
  layers draw independent per-element noise. A row's noise is keyed by its
  *absolute* index in the input (``row_offset`` + position in the stream): it is the
  counter-based Philox stream of the key ``(seed, site, pass)`` at the counters of
  that row (see :meth:`PassContext._draw_per_row`), so it does not depend on the
  batch size, the block the row arrives in, or the order of the other rows.

Keying by the absolute pass index means that asking for more passes extends the
same draws: the first 50 of 100 passes equal the 50 passes of a 50-pass run.
"""

from __future__ import annotations

import math

import tensorflow as tf

__all__ = ["PassContext"]


def _features(x):
    """The non-batch shape of ``x``: static where the graph knows it (so the noise draws and
    reshapes are specialised at trace time — markedly faster on CPU), dynamic otherwise."""
    static = x.shape[1:]
    if static.is_fully_defined():
        return tf.constant(static.as_list(), tf.int32)
    return tf.shape(x)[1:]


class PassContext:
    """What a sampling step knows while it is traced: the passes, the rows, the seed.

    Parameters
    ----------
    passes : int32 tensor of shape (Tc,)
        Absolute indices of the passes in this chunk.
    rows : int32 scalar tensor
        ``n``, the number of input rows in this chunk.
    seed : int64 tensor of shape (2,)
        The base key of the stream.
    row_offset : int64 scalar tensor
        Index of the chunk's first row in the whole input (per-example masks only).
    mask : {"consistent", "per_example"}
    """

    def __init__(self, passes, rows, seed, row_offset, mask: str):
        self.passes = passes
        self.num_passes = tf.shape(passes)[0]
        self.rows = rows
        self.seed = seed
        self.row_offset = row_offset
        self.mask = mask
        self._site = 0

    # -- streams ---------------------------------------------------------------------------------
    def _next_site(self) -> int:
        site = self._site
        self._site += 1
        return site

    def _draw(self, sampler, features, dtype, *, per_row=None):
        """Draw ``(Tc, m, *features)`` noise, one stateless stream per pass of this site: m = 1 for
        consistent masks (``sampler(shape, key, dtype)``), m = n for per-example masks (``per_row``,
        a counter-based raw op: ``tf.raw_ops.StatelessRandomUniformV2`` or ``...NormalV2``)."""
        site_key = tf.random.experimental.stateless_fold_in(self.seed, self._next_site())
        if self.mask == "per_example":
            if per_row is None:
                raise NotImplementedError("per-example noise needs a counter-based draw (`per_row`)")
            return self._draw_per_row(per_row, site_key, features, dtype)
        shape = tf.concat([[1], features], axis=0)

        def one_pass(t):
            return sampler(shape, tf.random.experimental.stateless_fold_in(site_key, tf.cast(t, tf.int64)), dtype)

        return tf.map_fn(one_pass, self.passes, fn_output_signature=dtype, parallel_iterations=16)

    def _draw_per_row(self, op, site_key, features, dtype):
        """``(Tc, n, *features)`` noise in which the row of absolute index R is the same whatever block it is in.

        Philox is counter-based: TensorFlow's kernels give output element i from counter ``c0 + i // g``
        (g = 4 values per counter, 2 for float64). Each row is given ``k = ceil(F / g)`` counters (F
        values, padded to ``k·g``), and a block starting at row ``row_offset`` starts at counter
        ``row_offset · k``: row R's noise is the stream at counters ``[R·k, (R+1)·k)`` of the key
        ``(seed, site, pass)``. The tests check this bit for bit across batch sizes and row orders.
        """
        size = tf.reduce_prod(features)
        per_counter = 2 if tf.as_dtype(dtype) == tf.float64 else 4
        groups = (size + per_counter - 1) // per_counter
        width = groups * per_counter
        start = tf.cast(self.row_offset * tf.cast(groups, tf.int64), tf.uint64)

        def one_pass(t):
            pass_key = tf.random.experimental.stateless_fold_in(site_key, tf.cast(t, tf.int64))
            key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(seed=pass_key)
            counter = tf.stack([start, counter[1]])
            flat = op(shape=tf.reshape(self.rows * width, [1]), key=key, counter=counter,
                      alg=tf.constant(1, tf.int32), dtype=dtype)  # 1: Philox
            rows = tf.reshape(flat, tf.stack([self.rows, width]))[:, :size]
            return tf.reshape(rows, tf.concat([[self.rows], features], axis=0))

        return tf.map_fn(one_pass, self.passes, fn_output_signature=dtype, parallel_iterations=16)

    def uniform(self, features, dtype):
        return self._draw(lambda s, k, d: tf.random.stateless_uniform(s, seed=k, dtype=d), features, dtype,
                          per_row=tf.raw_ops.StatelessRandomUniformV2)

    def normal(self, features, dtype):
        return self._draw(lambda s, k, d: tf.random.stateless_normal(s, seed=k, dtype=d), features, dtype,
                          per_row=tf.raw_ops.StatelessRandomNormalV2)

    def per_row(self, fn, inputs):
        """Run ``fn(row, key)`` on each of the ``Tc * n`` rows of ``inputs`` (a tensor or a nest of them,
        pass-major) and stack the results: the opted-in custom layers' path. One site per call; the key
        of row ``t * n + i`` is (seed, site, absolute pass index), and with per-example masks also the
        row's index in the whole input (``row_offset + i``), so it does not depend on the batching."""
        site_key = tf.random.experimental.stateless_fold_in(self.seed, self._next_site())
        flat = tf.nest.flatten(inputs)
        index = tf.range(tf.shape(flat[0])[0])
        pass_of = tf.gather(self.passes, index // self.rows)
        row_of = self.row_offset + tf.cast(index % self.rows, tf.int64)

        def one(args):
            row, t, i = args
            key = tf.random.experimental.stateless_fold_in(site_key, tf.cast(t, tf.int64))
            if self.mask == "per_example":
                key = tf.random.experimental.stateless_fold_in(key, i)
            return fn(tf.nest.pack_sequence_as(inputs, row), key)

        return tf.map_fn(one, (flat, pass_of, row_of), fn_output_signature=flat[0].dtype,
                         parallel_iterations=32)

    # -- layout ----------------------------------------------------------------------------------
    def unflatten(self, x):
        """(Tc * n, ...) → (Tc, n, ...)."""
        return tf.reshape(x, tf.concat([[self.num_passes, self.rows], _features(x)], axis=0))

    def flatten(self, x):
        """(Tc, n, ...) → (Tc * n, ...)."""
        static = x.shape[2:]
        rest = tf.constant(static.as_list(), tf.int32) if static.is_fully_defined() else tf.shape(x)[2:]
        return tf.reshape(x, tf.concat([[-1], rest], axis=0))

    def tile(self, x):
        """A deterministic (n, ...) tensor broadcast over the passes: (Tc * n, ...), pass-major."""
        multiples = tf.concat([[self.num_passes], tf.ones([tf.rank(x) - 1], tf.int32)], axis=0)
        return tf.tile(x, multiples)

    # -- the noise of each layer family ----------------------------------------------------------
    def dropout(self, x, rate: float, noise_features=None):
        """Inverted dropout: keep with probability ``1 - rate``, scale kept units by ``1/(1-rate)``.

        ``noise_features`` is the non-batch noise shape (1 where the mask is shared along an
        axis, as for spatial dropout); the input's own shape when None.
        """
        features = _features(x) if noise_features is None else noise_features
        scale = tf.cast(1.0 / (1.0 - rate), x.dtype)
        keep = tf.cast(self.uniform(features, x.dtype) >= rate, x.dtype) * scale  # scale the small mask
        return self.flatten(self.unflatten(x) * keep)

    def gaussian_dropout(self, x, rate: float):
        """Multiplicative noise :math:`\\mathcal N(1, rate / (1 - rate))`."""
        stddev = math.sqrt(rate / (1.0 - rate))
        noise = 1.0 + tf.cast(stddev, x.dtype) * self.normal(_features(x), x.dtype)
        return self.flatten(self.unflatten(x) * noise)

    def alpha_dropout(self, x, rate: float, noise_features=None):
        """Alpha dropout (Klambauer et al. 2017): dropped units set to the SELU saturation value,
        then an affine map restoring mean and variance."""
        alpha = 1.6732632423543772848170429916717
        scale = 1.0507009873554804934193349852946
        alpha_p = -alpha * scale
        features = _features(x) if noise_features is None else noise_features
        keep = tf.cast(self.uniform(features, x.dtype) >= rate, x.dtype)
        a = ((1.0 - rate) * (1.0 + rate * alpha_p**2)) ** -0.5
        b = -a * alpha_p * rate
        xs = self.unflatten(x)
        out = tf.cast(a, x.dtype) * (xs * keep + tf.cast(alpha_p, x.dtype) * (1.0 - keep)) + tf.cast(b, x.dtype)
        return self.flatten(out)

    def gaussian_noise(self, x, stddev: float):
        """Additive noise :math:`\\mathcal N(0, stddev^2)` (only when the user opts in)."""
        noise = tf.cast(stddev, x.dtype) * self.normal(_features(x), x.dtype)
        return self.flatten(self.unflatten(x) + noise)

    def rnn_mask(self, step_input, rate: float, count: int | None):
        """A recurrent-dropout mask for a step input of shape (Tc * n, units), fixed over time
        steps (Gal & Ghahramani 2016); ``count`` independent masks when the cell asks for one per gate."""

        def one():
            features = _features(step_input)
            keep = tf.cast(self.uniform(features, step_input.dtype) >= rate, step_input.dtype)
            keep = keep * tf.cast(1.0 / (1.0 - rate), step_input.dtype)
            full = tf.broadcast_to(keep, tf.concat([[self.num_passes, self.rows], features], 0))
            return self.flatten(full)

        if count is None:
            return one()
        return [one() for _ in range(count)]
