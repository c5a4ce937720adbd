"""What the active Keras backend can compute, for tests that run on TF and JAX."""

import keras
import numpy as np

BACKEND = keras.backend.backend()


def float64_supported() -> bool:
    """JAX computes float64 only with ``jax_enable_x64``; TensorFlow always does."""
    if BACKEND != "jax":
        return True
    import jax

    return bool(jax.config.jax_enable_x64)


# The most precise dtype the backend computes in.
PRECISE = "float64" if float64_supported() else "float32"


def to_numpy(x) -> np.ndarray:
    """A tensor or Keras variable as a float64 NumPy array."""
    if isinstance(x, keras.Variable):
        x = x.value
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64)


def gradient(fn, x, jit: bool = False) -> np.ndarray:
    """``d fn / d x`` of a scalar ``fn`` at the array ``x``, on the active backend.

    ``jit`` compiles ``grad(fn)`` on JAX (its op-by-op first calls are slow);
    TensorFlow evaluates under a ``GradientTape`` either way.
    """
    import pytest

    if BACKEND == "jax":
        import jax

        grad = jax.grad(fn)
        return np.asarray((jax.jit(grad) if jit else grad)(jax.numpy.asarray(x)))
    if BACKEND == "tensorflow":
        import tensorflow as tf

        v = tf.Variable(x)
        with tf.GradientTape() as tape:
            value = fn(v)
        return tape.gradient(value, v).numpy()
    pytest.skip(f"no gradient helper for backend {BACKEND}")
