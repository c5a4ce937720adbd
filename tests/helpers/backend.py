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
