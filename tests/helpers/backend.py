"""What the active Keras backend can compute, for tests that run on TF and JAX."""

import functools

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


@functools.lru_cache(maxsize=None)
def _jax_substrate_imports(python: str, env: tuple) -> bool:
    """Whether TFP's JAX substrate imports in a fresh ``python``; asked once per session."""
    import subprocess

    probe = subprocess.run([python, "-c", "import tensorflow_probability.substrates.jax.mcmc"], env=dict(env),
                           capture_output=True, timeout=300)
    return probe.returncode == 0


def run_under_jax_without_tensorflow(script: str, timeout: float = 600.0) -> dict:
    """Run ``script`` in a fresh Python under ``KERAS_BACKEND=jax``; return the JSON of its last line.

    The script must print, as its last line, a JSON object with ``"tf_modules"``:
    the TensorFlow modules it found in ``sys.modules``, which must be none.  Runs
    in the JAX test session only (the TensorFlow session has TensorFlow loaded
    already), and skips where TFP's JAX substrate does not import (it needs the
    pinned tfp-nightly).
    """
    import importlib.util
    import json
    import os
    import subprocess
    import sys

    import pytest

    if BACKEND != "jax":
        pytest.skip("checked in the JAX test session")
    if importlib.util.find_spec("jax") is None:
        pytest.skip("JAX is not installed")
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    if not _jax_substrate_imports(sys.executable, tuple(sorted(env.items()))):
        pytest.skip("TFP's JAX substrate does not import here (it needs the pinned tfp-nightly)")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["tf_modules"] == [], f"TensorFlow modules loaded under JAX: {result['tf_modules']}"
    return result
