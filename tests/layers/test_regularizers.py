"""GroupLasso / L1GroupLasso / conv L2 against float64 NumPy; any Keras backend."""

import contextlib

import keras
import numpy as np
import pytest

from tests.helpers.backend import BACKEND, gradient
from tfhalo.regularizers import GroupLasso, L1GroupLasso, conv_l2


@contextlib.contextmanager
def float64_enabled():
    if BACKEND == "jax":
        import jax

        with jax.enable_x64(True):
            yield
    else:
        yield


def evaluate64(regularizer, w):
    with float64_enabled():
        out = regularizer(keras.ops.convert_to_tensor(np.asarray(w, np.float64)))
        assert "float64" in str(out.dtype)
        return float(keras.ops.convert_to_numpy(out))


def rows_norm_sum(w):
    w = np.asarray(w, np.float64)
    return np.sqrt((w.reshape(-1, w.shape[-1]) ** 2).sum(axis=1)).sum()


def test_group_lasso_matches_numpy_per_input_row():
    w = np.random.default_rng(0).standard_normal((7, 5))
    assert evaluate64(GroupLasso(0.3), w) == pytest.approx(0.3 * rows_norm_sum(w), rel=1e-13)
    # Groups are rows (inputs), not columns (outputs): a transposed kernel differs.
    assert abs(evaluate64(GroupLasso(1.0), w) - evaluate64(GroupLasso(1.0), w.T)) > 1e-3


def test_l1_group_lasso_matches_numpy():
    w = np.random.default_rng(1).standard_normal((6, 4))
    expected = 0.01 * np.abs(w).sum() + 0.01 * rows_norm_sum(w)
    assert evaluate64(L1GroupLasso(0.01), w) == pytest.approx(expected, rel=1e-13)
    expected = 0.01 * np.abs(w).sum() + 0.5 * rows_norm_sum(w)
    assert evaluate64(L1GroupLasso(0.01, group_factor=0.5), w) == pytest.approx(expected, rel=1e-13)


def test_conv_kernel_grouped_by_last_axis_and_l2_has_no_half():
    w = np.random.default_rng(2).standard_normal((3, 3, 3, 2, 4))
    assert evaluate64(GroupLasso(2.0), w) == pytest.approx(2.0 * rows_norm_sum(w.reshape(-1, 4)), rel=1e-13)
    # keras.regularizers.L2 casts its factor through float32: use a dyadic factor.
    assert evaluate64(conv_l2(0.125), w) == pytest.approx(0.125 * (w**2).sum(), rel=1e-13)


def test_float32_close_to_float64():
    w = np.random.default_rng(3).standard_normal((40, 16))
    got = float(keras.ops.convert_to_numpy(L1GroupLasso(0.02)(w.astype("float32"))))
    assert got == pytest.approx(0.02 * (np.abs(w).sum() + rows_norm_sum(w)), rel=1e-5)


def test_zero_rows_have_finite_subgradient():
    w = np.random.default_rng(4).standard_normal((4, 3)).astype("float32")
    w[1] = 0.0
    g = gradient(lambda v: GroupLasso(0.5)(v), w)
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g[1], 0.0)
    expected = 0.5 * w / np.linalg.norm(w, axis=1, keepdims=True).clip(1e-30)
    np.testing.assert_allclose(np.delete(g, 1, axis=0), np.delete(expected, 1, axis=0), rtol=1e-5)
    assert np.all(np.isfinite(gradient(lambda v: L1GroupLasso(0.5)(v), np.zeros((3, 2), "float32"))))


def test_dense_layer_collects_the_penalty():
    layer = keras.layers.Dense(3, kernel_regularizer=L1GroupLasso(0.1))
    layer.build((None, 5))
    kernel = keras.ops.convert_to_numpy(layer.kernel).astype(np.float64)
    expected = 0.1 * (np.abs(kernel).sum() + rows_norm_sum(kernel))
    assert float(keras.ops.convert_to_numpy(layer.losses[0])) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("cls", [GroupLasso, L1GroupLasso])
def test_config_round_trip_and_registration(cls):
    reg = cls(0.25)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(reg))
    assert type(clone) is cls and clone.get_config() == reg.get_config()
    assert keras.saving.get_registered_name(cls) == f"tfhalo>{cls.__name__}"
    assert cls.from_config(reg.get_config()).get_config() == reg.get_config()


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "x", None])
def test_bad_factor_rejected(bad):
    for make in (GroupLasso, L1GroupLasso, conv_l2):
        with pytest.raises(ValueError, match=r"factor.*Received: factor="):
            make(bad)
    with pytest.raises(ValueError, match=r"Received: group_factor="):
        L1GroupLasso(0.1, group_factor=bad if bad is not None else -2.0)
