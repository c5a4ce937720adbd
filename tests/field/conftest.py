"""The field-level tests compute in float64 on every backend."""

import pytest

from tests.helpers.backend import BACKEND


@pytest.fixture(autouse=True, scope="module")
def float64():
    """JAX computes float64 only with x64 switched on (for the whole module, so that
    module-scoped fixtures are built in float64 too); TensorFlow always does."""
    if BACKEND == "jax":
        import jax

        with jax.enable_x64(True):
            yield
    else:
        yield
