"""Keyed noise for the stochastic layers, drawn inside the compiled sampler.

Inside a sampling step the batch is flattened pass-major: a tensor of ``n`` rows
under ``Tc`` passes has ``Tc * n`` rows, row ``t * n + i`` being input ``i`` in the
chunk's ``t``-th pass. Each stochastic call site has its own stream: a Philox key
(and a high counter word) derived from ``(seed, site)``. Noise is read from that
stream at counters fixed by the *absolute* pass index (and row index), never by
where a pass or row sits in a chunk:

* ``consistent`` masks have no batch dimension — shape ``(Tc, 1, *features)`` —
  so pass ``t`` is one draw of the network shared by every input, and an input's
  samples do not depend on which other inputs share its batch, on chunk sizes or
  on call order. Pass ``t`` of a site with ``F`` noise values takes the
  ``k = ceil(F / 4)`` counters ``[t·k, (t+1)·k)``: the passes of a chunk are
  contiguous counters, so a chunk's masks are **one** draw of ``Tc·k`` counters
  (passes ``p0 .. p0+Tc-1``, the padded repeats of the last one gathered from it);
  any other set of pass indices is drawn pass by pass at the same counters, so the
  bits are the same either way;
* ``per_example`` masks add the row: shape ``(Tc, n, *features)``, as Keras' own
  layers draw independent per-element noise. Row ``R`` (its *absolute* index in
  the input: ``row_offset`` + position in the stream) of pass ``t`` takes the
  counters ``[R·k, (R+1)·k)`` with the pass folded into the high counter word, so
  it does not depend on the batch size, the block the row arrives in, or the
  order of the other rows. One draw per pass.

Masks are computed from the raw 32-bit Philox words, never from TensorFlow's float
conversions: a dropout unit is kept when its word is at least ``ceil(rate · 2^32)``
(exact Bernoulli(1 − rate) to 2^-32, and the same mask whatever the layer's dtype,
float16 to float64). The words are the same bits under XLA (``jit_compile=True``),
so dropout, spatial, alpha and recurrent masks are bit-identical with and without
it. Gaussian noise is TensorFlow's float32 normal kernel at the same counters, cast
to the layer's dtype (the kernel computes each value on its own, so a value does not
depend on its place in the output, unlike TensorFlow's vectorised ``log``/``cos``);
XLA draws its normals another way, so under ``jit_compile=True`` Gaussian noise is
another (equally keyed and batch-independent) stream.

Keying by the absolute pass index means that asking for more passes extends the
same draws: the first 50 of 100 passes equal the 50 passes of a 50-pass run.

What the noise costs beyond the deterministic passes: per site and chunk one draw at
the noise shape (``Tc·F`` words for consistent masks, however many rows), the layer's
constants folded into it (the dropout scale ``1/(1 − rate)``, alpha dropout's affine
map), and one broadcast multiply (or multiply-add) over the activations. A noise layer
fed the tiled input of the first stochastic layer broadcasts the untiled rows against
its noise instead of reading the tiled copy (:meth:`PassContext.tile`).
"""

from __future__ import annotations

import math

import tensorflow as tf

from mcdrop.engine import _keras_compat

__all__ = ["PassContext"]

#: ``tf.random.Algorithm.PHILOX``: counter-based, so any counter can be read without the ones before it.
_PHILOX = 1
#: 32-bit words per Philox counter (Philox4x32 gives four), and float32 values per counter.
_WORDS = 4
_WORDS_OP = tf.raw_ops.StatelessRandomUniformFullIntV2
_NORMAL_OP = tf.raw_ops.StatelessRandomNormalV2


def _features(x):
    """The non-batch shape of ``x``: static where the graph knows it (so the noise draws and
    reshapes are specialised at trace time — markedly faster on CPU), dynamic otherwise."""
    static = x.shape[1:]
    if static.is_fully_defined():
        return tf.constant(static.as_list(), tf.int32)
    return tf.shape(x)[1:]


def _static(features):
    """``features`` as a tuple of ints when known at trace time, else None."""
    value = tf.get_static_value(features)
    return None if value is None else tuple(int(d) for d in value)


def _philox(op, key, low, high, count):
    """``count`` values of the Philox stream ``key`` from the 128-bit counter ``(high, low)``: value
    ``i`` comes from counter ``low + i // 4``. ``op`` is ``tf.raw_ops.StatelessRandomUniformFullIntV2``
    (raw uint32 words) or ``...NormalV2`` (float32 normals: the kernel's Box–Muller on each counter's
    four words, computed per element, so a value does not depend on where it sits in the output)."""
    dtype = tf.uint32 if op is _WORDS_OP else tf.float32
    return op(shape=tf.reshape(count, [1]), key=key, counter=tf.stack([low, high]),
              alg=tf.constant(_PHILOX, tf.int32), dtype=dtype)


def _unit(words):
    """Words → uniform floats in [0, 1), float32, from their top 24 bits (exact in float32)."""
    top = tf.bitwise.right_shift(words, tf.constant(8, tf.uint32))
    return tf.cast(top, tf.float32) * (2.0 ** -24)


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
        self._tiled = []  # (tiled, rows) pairs made by tile()

    # -- streams ---------------------------------------------------------------------------------
    def _next_site(self) -> int:
        site = self._site
        self._site += 1
        return site

    def _stream(self):
        """The next call site's Philox key and high counter word, both from ``(seed, site)``."""
        site_key = _keras_compat.fold_in(self.seed, self._next_site())
        key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(seed=site_key)
        return key, counter[1]

    def _draw(self, features, op=_WORDS_OP):
        """The next site's noise, ``(Tc, m, width)`` values of ``op`` (see :func:`_philox`), m = 1
        (consistent) or n (per-example), ``width = 4·ceil(F / 4) >= F`` for ``F = prod(features)``
        values per row; :meth:`_shaped` keeps the first F."""
        key, high = self._stream()
        static = _static(features)
        size = math.prod(static) if static is not None else tf.reduce_prod(features)
        groups = -(-size // _WORDS)  # counters per row of noise
        width = groups * _WORDS
        groups = tf.cast(groups, tf.uint64)
        dtype = tf.uint32 if op is _WORDS_OP else tf.float32
        if self.mask == "per_example":
            low = tf.cast(self.row_offset, tf.uint64) * groups
            count = self.rows * width

            def one_pass(t):  # the pass goes in the high word: rows of a pass are contiguous counters
                return _philox(op, key, low, tf.bitwise.bitwise_xor(high, tf.cast(t, tf.uint64)), count)

            words = tf.map_fn(one_pass, self.passes, fn_output_signature=dtype, parallel_iterations=16)
            return tf.reshape(words, tf.stack([self.num_passes, self.rows, width]))

        first = self.passes[0]
        offsets = self.passes - first

        def span():  # passes first .. first+Tc-1 in one draw, then each pass's row picked out
            words = _philox(op, key, tf.cast(first, tf.uint64) * groups, high, self.num_passes * width)
            return tf.gather(tf.reshape(words, tf.stack([self.num_passes, width])), offsets)

        def each():  # any other indices: the same counters, pass by pass
            return tf.map_fn(lambda t: _philox(op, key, tf.cast(t, tf.uint64) * groups, high, width),
                             self.passes, fn_output_signature=dtype, parallel_iterations=16)

        within = tf.reduce_all((offsets >= 0) & (offsets < self.num_passes))
        words = tf.cond(within, span, each)
        return tf.reshape(words, tf.stack([self.num_passes, 1, width]))

    def _shaped(self, values, features):
        """(Tc, m, width) → (Tc, m, *features), dropping each row's padding."""
        static = _static(features)
        size = math.prod(static) if static is not None else tf.reduce_prod(features)
        if static is None or values.shape[-1] != size:
            values = values[..., :size]
        return tf.reshape(values, tf.concat([tf.shape(values)[:2], features], axis=0))

    def _bernoulli(self, features, rate: float):
        """Boolean (Tc, m, *features): True (keep) with probability ``1 - rate``, exactly to 2^-32."""
        words = self._shaped(self._draw(features), features)
        threshold = math.ceil(rate * 2.0**32)
        if threshold <= 0:
            return tf.ones_like(words, tf.bool)
        if threshold >= 2**32:
            return tf.zeros_like(words, tf.bool)
        return words >= tf.constant(threshold, tf.uint32)

    def uniform(self, features, dtype):
        """Uniform noise in [0, 1), shape (Tc, m, *features): 24 random bits per value."""
        return tf.cast(_unit(self._shaped(self._draw(features), features)), dtype)

    def normal(self, features, dtype):
        """Standard normal noise, shape (Tc, m, *features): drawn in float32, then cast."""
        return tf.cast(self._shaped(self._draw(features, _NORMAL_OP), features), dtype)

    def per_row(self, fn, inputs):
        """Run ``fn(row, key)`` on each of the ``Tc * n`` rows of ``inputs`` (a tensor or a nest of them,
        pass-major) and stack the results: the opted-in custom layers' path. One site per call; the key
        of row ``t * n + i`` is (seed, site, absolute pass index), and with per-example masks also the
        row's index in the whole input (``row_offset + i``), so it does not depend on the batching."""
        site_key = _keras_compat.fold_in(self.seed, self._next_site())
        flat = tf.nest.flatten(inputs)
        index = tf.range(tf.shape(flat[0])[0])
        pass_of = tf.gather(self.passes, index // self.rows)
        row_of = self.row_offset + tf.cast(index % self.rows, tf.int64)

        def one(args):
            row, t, i = args
            key = _keras_compat.fold_in(site_key, tf.cast(t, tf.int64))
            if self.mask == "per_example":
                key = _keras_compat.fold_in(key, i)
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
        """A deterministic (n, ...) tensor broadcast over the passes: (Tc * n, ...), pass-major.

        While traced, the context remembers which tensor it tiled: a noise layer fed the tiled tensor (the first
        stochastic layer after a deterministic trunk) broadcasts the untiled rows against its noise
        instead (see :meth:`_passes_of`), so the copy is not read back, and is never made when
        nothing else uses it."""
        multiples = tf.concat([[self.num_passes], tf.ones([tf.rank(x) - 1], tf.int32)], axis=0)
        tiled = tf.tile(x, multiples)
        if not tf.executing_eagerly():  # symbolic tensors: remembering them holds no memory
            self._tiled.append((tiled, x))
        return tiled

    def _passes_of(self, x):
        """``x`` (Tc * n, ...) as (Tc, n, ...) — or as (1, n, ...) when it is one of :meth:`tile`'s
        outputs, to be broadcast against the (Tc, m, ...) noise: the same values, without reading
        the tiled copy."""
        for tiled, rows in self._tiled:
            if tiled is x:
                return rows[None]
        return self.unflatten(x)

    # -- the noise of each layer family ----------------------------------------------------------
    # Each family builds its noise at the noise shape — (Tc, 1, *features) for consistent masks, so no
    # larger than one network per pass — with the layer's constants folded in, and touches the
    # activations once or twice by broadcasting: one multiply (dropout, Gaussian dropout), one add
    # (Gaussian noise), one multiply-add (alpha dropout).
    def _keep_scaled(self, features, rate: float, kept, dropped, dtype):
        """(Tc, m, *features) of ``dtype``: ``kept`` where the unit is kept (probability 1 - rate),
        ``dropped`` elsewhere."""
        keep = self._bernoulli(features, rate)
        return tf.where(keep, tf.constant(kept, dtype), tf.constant(dropped, dtype))

    def dropout(self, x, rate: float, noise_features=None):
        """Inverted dropout: keep with probability ``1 - rate``, scale kept units by ``1/(1-rate)``.

        ``noise_features`` is the non-batch noise shape (1 where the mask is shared along an
        axis, as for spatial dropout); the input's own shape when None. The mask carries the
        scale, so the activations are multiplied once.
        """
        features = _features(x) if noise_features is None else noise_features
        keep = self._keep_scaled(features, rate, 1.0 / (1.0 - rate), 0.0, x.dtype)
        return self.flatten(self._passes_of(x) * keep)

    def dropout_matmul(self, x, rate: float, kernel, bias, activation, *, untiled: bool = False):
        """``activation(dropout(x) @ kernel + bias)``: a dropout and the ``Dense`` layer that alone reads it,
        with the mask folded into the kernel.

        ``x`` is (Tc * n, F), pass-major, or with ``untiled=True`` the (n, F) rows every pass shares (a
        dropout right after the deterministic trunk). The mask is the draw :meth:`dropout` makes at this
        site (the same bits). With consistent masks pass t multiplies by ``diag(keep_t)``, and
        ``x diag(keep_t) W = x (diag(keep_t) W)``: each pass gets its own (F, C) kernel and one batched
        product over the n rows, so the (Tc, n, F) masked activations are never built (nor the tiled copy
        of untiled rows). The kernels hold Tc·F·C values against the activations' Tc·n·F, so they are
        used when a call has at least C rows; with fewer the activations are masked as :meth:`dropout`
        does. Either way the same products up to the rounding of the scale 1/(1 − rate).
        """
        keep = self._keep_scaled(_features(x), rate, 1.0 / (1.0 - rate), 0.0, x.dtype)  # (Tc, 1, F)
        kernel = tf.convert_to_tensor(kernel)
        rows = x[None] if untiled else self.unflatten(x)  # (1 or Tc, n, F)

        def folded():  # (Tc, F, 1) * (F, C): each pass's kernel, then (1|Tc, n, F) @ (Tc, F, C)
            return self.flatten(tf.linalg.matmul(rows, tf.transpose(keep, [0, 2, 1]) * kernel))

        def masked():
            return tf.linalg.matmul(self.flatten(rows * keep), kernel)

        y = tf.cond(self.rows >= int(kernel.shape[-1]), folded, masked)
        if bias is not None:
            y = y + tf.convert_to_tensor(bias)
        return y if activation is None else activation(y)

    def gaussian_dropout(self, x, rate: float):
        """Multiplicative noise :math:`\\mathcal N(1, rate / (1 - rate))`."""
        stddev = math.sqrt(rate / (1.0 - rate))
        noise = 1.0 + stddev * self.normal(_features(x), tf.float32)  # the factor in float32, cast once
        return self.flatten(self._passes_of(x) * tf.cast(noise, x.dtype))

    def alpha_dropout(self, x, rate: float, noise_features=None):
        """Alpha dropout (Klambauer et al. 2017): dropped units set to the SELU saturation value,
        then an affine map restoring mean and variance.

        .. math::
            y = a\\,(x\\,m + \\alpha'(1 - m)) + b = x\\,(a m) + (a \\alpha' (1 - m) + b),

        with :math:`m` the keep mask, :math:`\\alpha' = -\\lambda\\alpha`,
        :math:`a = ((1 - p)(1 + p\\,\\alpha'^2))^{-1/2}` and :math:`b = -a \\alpha' p`: both factors
        are built at the noise shape, and the activations see one multiply and one add.
        """
        alpha = 1.6732632423543772848170429916717
        scale = 1.0507009873554804934193349852946
        alpha_p = -alpha * scale
        features = _features(x) if noise_features is None else noise_features
        a = ((1.0 - rate) * (1.0 + rate * alpha_p**2)) ** -0.5
        b = -a * alpha_p * rate
        keep = self._bernoulli(features, rate)
        zero = tf.constant(0.0, x.dtype)
        factor = tf.where(keep, tf.constant(a, x.dtype), zero)
        shift = tf.where(keep, tf.constant(b, x.dtype), tf.constant(a * alpha_p + b, x.dtype))
        return self.flatten(self._passes_of(x) * factor + shift)

    def gaussian_noise(self, x, stddev: float):
        """Additive noise :math:`\\mathcal N(0, stddev^2)` (only when the user opts in)."""
        noise = stddev * self.normal(_features(x), tf.float32)
        return self.flatten(self._passes_of(x) + tf.cast(noise, x.dtype))

    def rnn_mask(self, step_input, rate: float, count: int | None):
        """A recurrent-dropout mask for a step input of shape (Tc * n, units), fixed over time
        steps (Gal & Ghahramani 2016); ``count`` independent masks when the cell asks for one per gate.

        The cell multiplies its flat (Tc * n, units) step inputs by the mask, so the scaled
        (Tc, 1, units) draw is broadcast to the rows once per RNN call (not once per time step)."""

        def one():
            features = _features(step_input)
            keep = self._keep_scaled(features, rate, 1.0 / (1.0 - rate), 0.0, step_input.dtype)
            full = tf.broadcast_to(keep, tf.concat([[self.num_passes, self.rows], features], 0))
            return self.flatten(full)

        if count is None:
            return one()
        return [one() for _ in range(count)]
