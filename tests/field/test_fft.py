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


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="only JAX has a backend transform besides Keras's")
def test_the_jax_transforms_equal_the_keras_composition_in_value_and_gradient():
    import jax

    from tfhalo.field.fft import _keras_irfft3, _keras_rfft3

    x = _x((2, 6, 4, 8), 4)
    w = _x((2, 6, 4, 5), 5)  # a cotangent on the half spectrum

    def loss(forward, inverse):
        def f(v):
            re, im = forward(v)
            back = inverse(re * w, im * w, 8)
            return keras.ops.sum(back * v) + keras.ops.sum(re * w - im)
        return jax.value_and_grad(f)

    value, grad = loss(rfft3, irfft3)(_t(x))
    want_value, want_grad = loss(_keras_rfft3, _keras_irfft3)(_t(x))
    assert abs(float(value) - float(want_value)) <= 1e-12 * abs(float(want_value))
    np.testing.assert_allclose(to_numpy(grad), to_numpy(want_grad), rtol=0,
                               atol=1e-12 * np.abs(to_numpy(want_grad)).max())
