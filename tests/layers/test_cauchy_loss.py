"""Cauchy selection loss and CauchyScale: references, C1 boundary, stability, gamma training.

Runs under every Keras backend (TensorFlow, JAX).
"""

import keras
import numpy as np
import pytest
from scipy import optimize, stats

from tfhalo.layers import CauchyScale
from tfhalo.losses import CauchySelectionLoss, cauchy_selection_loss
from tfhalo.models import HaloModel

BACKEND = keras.backend.backend()


# Keras' type promotion (keras.backend.result_type) maps float64 to float32
# under JAX, so trigonometric ops cannot run in float64 there: float64
# references run where the backend keeps it, float32 versions run everywhere.
HAS_FLOAT64 = BACKEND != "jax"
PRECISE = "float64" if HAS_FLOAT64 else "float32"
needs_float64 = pytest.mark.skipif(not HAS_FLOAT64, reason="Keras computes trig ops in float32 under JAX")


def value_and_grad(fn, x):
    """(fn(x), d sum(fn(x)) / dx) as NumPy arrays, on the active backend."""
    if BACKEND == "jax":
        import jax

        value, grad = jax.value_and_grad(lambda v: keras.ops.sum(fn(v)))(x)
        return np.asarray(fn(x)), np.asarray(grad)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
            total = tf.reduce_sum(value)
        return value.numpy(), tape.gradient(total, x).numpy()
    pytest.skip(f"no gradient helper for backend {BACKEND}")


def reference_inside(y, d, gamma):
    """Paper's inside branch, float64 NumPy."""
    r = (d - y) / gamma
    return np.log(gamma) + np.log(1 + r**2) + np.log(np.arctan((1 - y) / gamma) - np.arctan((-1 - y) / gamma))


def loss_precise(y, d, gamma, k=100.0):
    """Loss in float64 where the backend supports it (float32 otherwise)."""
    out = cauchy_selection_loss(np.asarray(d, PRECISE), np.asarray(y, PRECISE), gamma, k)
    return np.asarray(keras.ops.convert_to_numpy(out), np.float64)


@needs_float64
@pytest.mark.parametrize("gamma", [0.01, 0.2, 1.0, 3.0])
def test_inside_matches_numpy_reference_float64(gamma):
    rng = np.random.default_rng(1)
    y = rng.uniform(-1, 1, 200)
    y[:4] = [-1.0, 1.0, 0.0, -0.999]
    d = rng.uniform(-1, 1, 200)
    got = loss_precise(y, d, gamma)
    np.testing.assert_allclose(got, reference_inside(y, d, gamma), rtol=1e-12, atol=1e-12)


def test_inside_is_truncated_cauchy_negative_log_likelihood():
    # Independent of the formula: -ln of scipy's Cauchy pdf renormalised to
    # [-1, 1] (the ln(pi) of the pdf and of the normalisation cancel).
    rng = np.random.default_rng(2)
    y, d, gamma = rng.uniform(-1, 1, 50), rng.uniform(-1, 1, 50), 0.2
    dist = stats.cauchy(loc=y, scale=gamma)
    nll = -dist.logpdf(d) + np.log(dist.cdf(1.0) - dist.cdf(-1.0))
    tol = 1e-10 if HAS_FLOAT64 else 1e-5
    np.testing.assert_allclose(loss_precise(y, d, gamma), nll, rtol=tol, atol=tol)


def test_float32_inside_close_to_float64_reference():
    rng = np.random.default_rng(3)
    y, d = rng.uniform(-1, 1, 100).astype("float32"), rng.uniform(-1, 1, 100).astype("float32")
    got = keras.ops.convert_to_numpy(cauchy_selection_loss(d, y, 0.2))
    assert got.dtype == np.float32
    ref = reference_inside(y.astype(np.float64), d.astype(np.float64), 0.2)
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)


@needs_float64
@pytest.mark.parametrize("boundary", [-1.0, 1.0])
@pytest.mark.parametrize("d", [-1.0, -0.3, 0.0, 0.7, 1.0])
@pytest.mark.parametrize("gamma", [0.05, 0.2, 1.5])
def test_c1_continuity_at_boundaries(boundary, d, gamma):
    h = 1e-5
    y = boundary + h * np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    values = loss_precise(y, np.full(5, d), gamma)
    # Second-order one-sided differences: the O(h^2) errors are far below any
    # slope mismatch, which would be O(1).
    left = (3 * values[2] - 4 * values[1] + values[0]) / (2 * h)
    right = (-3 * values[2] + 4 * values[3] - values[4]) / (2 * h)
    assert abs(values[3] - values[1]) < 10 * h * max(1.0, abs(left))
    assert abs(left - right) < 1e-5 * max(1.0, abs(left)), (left, right)


@pytest.mark.parametrize("gamma", [0.05, 0.2, 1.5])
def test_c1_continuity_by_autodiff_float32(gamma):
    # Exact one-sided derivatives a hair inside and outside each boundary
    # agree (the outside curvature, up to ~2|s|/gamma + 2k, bounds the gap).
    d = np.array([-1.0, -0.3, 0.0, 0.7, 1.0], np.float32)
    for b in (-1.0, 1.0):
        eps = np.float32(2e-6)
        inside = np.full(5, np.float32(b) - np.float32(b) * eps, np.float32)
        outside = np.full(5, np.float32(b) + np.float32(b) * eps, np.float32)
        v_in, g_in = value_and_grad(lambda v: cauchy_selection_loss(d, v, gamma), inside)
        v_out, g_out = value_and_grad(lambda v: cauchy_selection_loss(d, v, gamma), outside)
        curvature = 2 * (np.abs(g_in) + 1) / gamma + 200.0
        np.testing.assert_allclose(g_out, g_in, atol=1e-4 * np.abs(g_in).max() + 4 * eps * curvature.max())
        np.testing.assert_allclose(v_out, v_in, atol=1e-5 * (1 + np.abs(v_in).max()))


@pytest.mark.parametrize("gamma", [1e-3, 0.05, 0.2, 2.0])
@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_penalty_outside_is_steep_and_bounded_below(gamma, sign):
    k = 100.0
    d = np.array([[-1.0, -0.99, -0.5, 0.0, 0.5, 0.99, 1.0]])
    far = sign * np.array([[2.0], [3.0], [10.0], [1e3], [1e4]])
    values = loss_precise(far, d, gamma, k)
    # Rising away from the box for every truth, with far-out slope 2k.
    assert np.all(np.diff(values, axis=0) > 0)
    slope = loss_precise(far[-1:], d, gamma, k) - loss_precise(far[-1:] - sign, d, gamma, k)
    np.testing.assert_allclose(slope, 2 * k, rtol=1e-6 if HAS_FLOAT64 else 1e-2)
    # Just outside, C1 matching may let the loss dip below its inside values
    # (when the inside slope points outwards), but by less than 1.7 nats for
    # any gamma (a linear continuation dipped by ~200 at gamma = 1e-3).
    inside = loss_precise(np.linspace(-1, 1, 2001)[:, None], d, gamma, k)
    outside = loss_precise(sign * (1 + np.geomspace(1e-6, 1e4, 2000)[:, None]), d, gamma, k)
    assert np.all(outside.min(axis=0) > inside.min(axis=0) - 1.7)


@pytest.mark.parametrize("gamma", [0.01, 0.2, 2.0])
def test_loss_and_gradients_finite_far_outside_float32(gamma):
    mags = np.array([0.5, 1.0, 1.001, 2.0, 4.5, 5.0, 10.0, 88.0, 100.0, 1e3, 1e4], np.float32)
    y = np.concatenate([mags, -mags]).astype("float32")
    d = np.resize(np.array([-1.0, 0.0, 0.9], np.float32), y.shape)
    values, grad_y = value_and_grad(lambda v: cauchy_selection_loss(d, v, gamma), y)
    assert values.dtype == np.float32
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(grad_y))
    # Beyond |y| = 2 the loss pushes predictions back inside (just outside the
    # slope is the inside one, which can point outwards by C1 continuity).
    outside = np.abs(y) >= 2
    assert np.all(np.sign(grad_y[outside]) == np.sign(y[outside]))
    gamma_value, grad_gamma = value_and_grad(
        lambda g: cauchy_selection_loss(d, y, g), np.asarray(gamma, np.float32)
    )
    assert np.all(np.isfinite(gamma_value)) and np.isfinite(grad_gamma)


def test_loss_object_reduces_to_batch_mean_and_aligns_ranks():
    rng = np.random.default_rng(4)
    y = rng.uniform(-1.5, 1.5, (16, 1)).astype("float32")
    d = rng.uniform(-1, 1, (16,)).astype("float32")
    per_element = keras.ops.convert_to_numpy(cauchy_selection_loss(d[:, None], y, 0.3))
    loss = CauchySelectionLoss(scale=0.3)
    np.testing.assert_allclose(float(loss(d, y)), per_element.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(loss(d[:, None], y)), per_element.mean(), rtol=1e-6)


def test_cauchy_scale_starts_at_initial_value_and_is_identity():
    layer = CauchyScale(0.2)
    assert keras.ops.convert_to_numpy(layer.gamma) == np.float32(0.2)
    assert len(layer.trainable_weights) == 1 and layer.count_params() == 1
    x = np.random.default_rng(5).standard_normal((3, 1)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), x)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(clone, CauchyScale) and clone.initial_scale == 0.2
    assert CauchyScale.from_config(layer.get_config()).get_config() == layer.get_config()


@pytest.mark.parametrize("bad", [0, -0.2, float("nan"), float("inf"), "a"])
def test_non_positive_scale_rejected(bad):
    with pytest.raises(ValueError, match=r"initial_scale.*Received: initial_scale="):
        CauchyScale(bad)
    with pytest.raises(ValueError, match=r"Received: scale="):
        CauchySelectionLoss(scale=bad)
    with pytest.raises(ValueError, match=r"Received: penalty_strength="):
        CauchySelectionLoss(penalty_strength=bad)


def test_unbound_loss_raises_clear_error_and_config_round_trips():
    loss = CauchySelectionLoss(penalty_strength=50.0)
    with pytest.raises(ValueError, match="bind"):
        loss(np.zeros(2, "float32"), np.zeros((2, 1), "float32"))
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(clone, CauchySelectionLoss)
    assert clone.get_config() == loss.get_config()
    with pytest.raises(ValueError, match="scale_layer"):
        loss.bind("not a layer")


def _frozen_prediction_model(initial_scale):
    inputs = keras.Input((1,))
    prediction = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones", trainable=False)(inputs)
    return HaloModel(inputs, CauchyScale(initial_scale)(prediction))


def test_fit_trains_gamma_to_the_numpy_maximum_likelihood_scale():
    # Predictions are frozen (y = x), so only gamma learns: it must reach the
    # scale that minimises the mean float64 reference loss. Under JAX this also
    # shows that the traced gamma (not a constant) reaches the loss.
    rng = np.random.default_rng(6)
    x = rng.uniform(-0.9, 0.9, (256, 1)).astype("float32")
    d = np.clip(x[:, 0] + 0.08 * rng.standard_cauchy(256), -1, 1).astype("float32")
    best = optimize.minimize_scalar(
        lambda g: reference_inside(x[:, 0].astype(np.float64), d.astype(np.float64), g).mean(),
        bounds=(1e-3, 2.0),
        method="bounded",
    ).x
    model = _frozen_prediction_model(0.2)
    assert len(model.trainable_weights) == 1
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=CauchySelectionLoss())
    history = model.fit(x, d, batch_size=256, epochs=150, verbose=0)
    assert len(history.history["gamma"]) == 150
    assert history.history["gamma"][-1] == pytest.approx(model.gamma)
    assert model.gamma == pytest.approx(best, rel=0.03), (model.gamma, best)
    assert abs(0.2 - best) > 0.05  # the test would fail if gamma never moved


def traced(fn, *args):
    """``fn(*args)`` run inside the backend's graph compiler (tf.function / jax.jit), as in ``model.fit``."""
    if BACKEND == "jax":
        import jax

        return np.asarray(jax.jit(fn)(*args))
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)(*args).numpy()
    pytest.skip(f"no graph helper for backend {BACKEND}")


@pytest.mark.parametrize("bad, shown", [(1.5, "1.5"), (-1.01, "-1.01"), (float("nan"), "nan")])
def test_labels_outside_unit_interval_or_nan_are_refused(bad, shown):
    d = np.array([-1.0, 0.3, bad, 1.0], np.float32)  # the boundaries themselves are valid labels
    y = np.zeros((4, 1), np.float32)
    message = rf"y_true must be labels scaled to \[-1, 1\]. Received: 1 of 4 labels outside it, first y_true\[2\]={shown}"
    with pytest.raises(ValueError, match=message):
        CauchySelectionLoss(scale=0.3)(d, y)
    with pytest.raises(ValueError, match=message):
        cauchy_selection_loss(d, y[:, 0], 0.3)
    # Traced (no values to look at): the bad label's loss is NaN, the others are untouched.
    got = traced(lambda a, b: cauchy_selection_loss(a, b, 0.3), d, y[:, 0])
    valid = np.array([True, True, False, True])
    assert np.isnan(got[2]) and np.all(np.isfinite(got[valid]))
    np.testing.assert_allclose(got[valid], loss_precise(y[valid, 0], d[valid], 0.3), rtol=1e-5)


def test_bad_labels_stop_fit_with_an_error_naming_them():
    from tfhalo.models import NonFiniteLossError

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            x = np.full((4, 1), 0.1 * i, np.float32)
            d = np.array([0.1, -0.2, 2.0 if i == 1 else 0.5, 0.0], np.float32)
            return x, d

    model = _frozen_prediction_model(0.2)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=CauchySelectionLoss())
    with pytest.raises(NonFiniteLossError, match=r"epoch 1/2, batch 2/3.*labels outside \[-1, 1\]"):
        model.fit(Batches(), epochs=2, verbose=0, shuffle=False)
