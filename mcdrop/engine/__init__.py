"""The engine: the only package that imports TensorFlow.

``view``      which layers are stochastic, and how their noise is substituted while tracing
``noise``     keyed noise (consistent or per-example masks) drawn inside the compiled step
``graph``     running a model with what no noise reaches computed once per input
``sampler``   the compiled, cached sampling step and the memory-budget chunk plan
``inputs``    input checks and row chunking
``mc_dropout`` the public :class:`MCDropout`
``_keras_compat`` every private Keras/TF name the engine relies on, behind named accessors, self-checked
"""

from mcdrop.engine._keras_compat import KerasCompatibilityError
from mcdrop.engine.mc_dropout import MCDropout

__all__ = ["MCDropout", "KerasCompatibilityError"]
