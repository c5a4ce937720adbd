"""rfft3 / irfft3 / hartley3 against NumPy float64, on the TensorFlow and JAX backends."""

import keras
import numpy as np
import pytest

from tests.helpers.backend import to_numpy
from tfhalo.field.fft import hartley3, irfft3, rfft3

# non-cubic, odd and even axes, with two batch axes
SHAPES = [(8, 8, 8), (2, 3, 4, 6, 5), (1, 6, 4, 7)]



def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


def _t(x):
    return keras.ops.convert_to_tensor(x, dtype="float64")


@pytest.mark.parametrize("shape", SHAPES)
def test_rfft3_matches_numpy(shape):
    x = _x(shape)
    re, im = rfft3(_t(x))
    want = np.fft.rfftn(x, axes=(-3, -2, -1))
    assert re.shape == want.shape and im.shape == want.shape
    assert "float64" in str(re.dtype)
    scale = np.abs(want).max()
    np.testing.assert_allclose(to_numpy(re), want.real, rtol=0, atol=1e-13 * scale)
    np.testing.assert_allclose(to_numpy(im), want.imag, rtol=0, atol=1e-13 * scale)


@pytest.mark.parametrize("shape", SHAPES)
def test_irfft3_matches_numpy_and_inverts_rfft3(shape):
    x = _x(shape, 1)
    n = shape[-1]
    # a filtered (still Hermitian) spectrum, so irfft3 is tested on more than a round trip
    k = [np.fft.fftfreq(m) for m in shape[-3:-1]] + [np.fft.rfftfreq(n)]
    filt = np.exp(-(k[0][:, None, None] ** 2 + k[1][None, :, None] ** 2 + k[2][None, None, :] ** 2))
    spec = np.fft.rfftn(x, axes=(-3, -2, -1)) * filt
    want = np.fft.irfftn(spec, s=shape[-3:], axes=(-3, -2, -1))
    got = to_numpy(irfft3(_t(spec.real), _t(spec.imag), n))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13 * np.abs(want).max())
    back = to_numpy(irfft3(*rfft3(_t(x)), n))
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-13 * np.abs(x).max())


@pytest.mark.parametrize("shape", SHAPES)
def test_hartley3_is_orthonormal_involution(shape):
    x = _x(shape, 2)
    size = np.prod(shape[-3:])
    f = np.fft.fftn(x, axes=(-3, -2, -1))
    want = (f.real - f.imag) / np.sqrt(size)
    h = to_numpy(hartley3(_t(x)))
    np.testing.assert_allclose(h, want, rtol=0, atol=1e-13 * np.abs(want).max())
    # orthogonal: norms per batch element kept; H(H(x)) = x
    np.testing.assert_allclose(
        (h**2).sum(axis=(-3, -2, -1)), (x**2).sum(axis=(-3, -2, -1)), rtol=1e-12
    )
    np.testing.assert_allclose(to_numpy(hartley3(_t(h))), x, rtol=0, atol=1e-13 * np.abs(x).max())


def test_float32_round_trip():
    x = _x((2, 6, 6, 6), 3).astype(np.float32)
    re, im = rfft3(keras.ops.convert_to_tensor(x))
    assert "float32" in str(re.dtype)
    np.testing.assert_allclose(to_numpy(irfft3(re, im, 6)), x, rtol=0, atol=1e-5)


def test_rank_below_three_is_refused():
    with pytest.raises(ValueError, match="x must have at least 3 axes"):
        rfft3(_t(np.zeros((4, 4))))


def _value_and_grad(f, x):
    """``f(x)`` and its gradient on the running backend (TensorFlow or JAX)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.value_and_grad(f)(x)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        value = f(x)
    return value, tape.gradient(value, x)


def _composition_loss(forward, inverse, w):
    def f(v):
        re, im = forward(v)
        back = inverse(re * w, im * w, 8)
        return keras.ops.sum(back * v) + keras.ops.sum(re * w - im)
    return f


@pytest.mark.skipif(keras.backend.backend() not in ("jax", "tensorflow"),
                    reason="only JAX and TensorFlow have a backend transform besides Keras's")
def test_the_backend_transforms_equal_the_keras_composition_in_value_and_gradient():
    from tfhalo.field.fft import _keras_irfft3, _keras_rfft3

    x = _t(_x((2, 6, 4, 8), 4))
    w = _t(_x((2, 6, 4, 5), 5))  # a cotangent on the half spectrum
    value, grad = _value_and_grad(_composition_loss(rfft3, irfft3, w), x)
    want_value, want_grad = _value_and_grad(_composition_loss(_keras_rfft3, _keras_irfft3, w), x)
    assert abs(float(value) - float(want_value)) <= 1e-12 * abs(float(want_value))
    np.testing.assert_allclose(to_numpy(grad), to_numpy(want_grad), rtol=0,
                               atol=1e-12 * np.abs(to_numpy(want_grad)).max())
    # the Hartley transform's gradient is its own transform (H symmetric): d sum(c H(x)) / dx = H(c)
    c = _t(_x((2, 6, 4, 8), 6))
    _, g = _value_and_grad(lambda v: keras.ops.sum(c * hartley3(v)), x)
    np.testing.assert_allclose(to_numpy(g), to_numpy(hartley3(c)), rtol=0, atol=1e-13 * 8)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's transforms carry custom gradients")
def test_tensorflows_wrapped_transforms_have_exact_second_derivatives():
    """The Hessian-vector product of a quartic through both transforms against NumPy float64."""
    import tensorflow as tf

    shape, n = (2, 4, 6, 5), 5
    x0, v, m = _x(shape, 7), _x(shape, 8), np.abs(_x((2, 4, 6, 3), 9))

    def f(x):  # sum over the half spectrum of m |F(x)|^2 ... then back, squared: quartic in x
        re, im = rfft3(x)
        y = irfft3(re * m, im * m, n)
        return tf.reduce_sum(y**2 * x**2)

    x = tf.constant(x0)
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            value = f(x)
        g = inner.gradient(value, x)
        gv = tf.reduce_sum(g * v)
    hv = outer.gradient(gv, x)

    def f_np(a):
        y = np.fft.irfftn(np.fft.rfftn(a, axes=(-3, -2, -1)) * m, s=shape[-3:], axes=(-3, -2, -1))
        return np.sum(y**2 * a**2)

    # f(x0 + t v) is a quartic in t, so the five-point second difference at unit step is its exact
    # second derivative v^T H v (up to rounding); so is u^T H v from f(x0 + t v + s u)'s mixed one.
    def second(d):
        vals = [f_np(x0 + t * d) for t in (-2, -1, 0, 1, 2)]
        return (-vals[0] + 16 * vals[1] - 30 * vals[2] + 16 * vals[3] - vals[4]) / 12

    u = _x(shape, 10)
    vhv, uhu, wsum = second(v), second(u), second(u + v)
    uhv = (wsum - vhv - uhu) / 2
    hv = to_numpy(hv)
    assert abs(np.sum(hv * v) - vhv) <= 1e-10 * abs(vhv)
    assert abs(np.sum(hv * u) - uhv) <= 1e-10 * (abs(vhv) + abs(uhu))
