"""Three-dimensional FFTs for the forward model, on every Keras backend.

Keras ships 1-D real and 2-D complex transforms; the 3-D real transform over the
last three axes is the 1-D real transform along the last axis followed by the
2-D complex transform over the first two of the three.  Complex values travel
as ``(real, imag)`` pairs, the form ``keras.ops.fft2`` takes and returns, so no
complex dtype crosses a backend boundary.  Conventions are NumPy's
(``numpy.fft.rfftn`` unnormalised forward, ``irfftn`` divides by ``n^3``).

Where the backend has a 3-D transform of its own, the transforms call it
(:func:`_backend_transforms`): one FFT over three axes instead of a 1-D and a
2-D transform with the axis transposes between them.  On JAX that is
``jax.numpy.fft``; on a 2-core CPU a float64 ``rfftn`` of ``(2, 32, 32, 32)``
takes 0.54 ms against 1.27 ms composed, an ``irfftn`` of ``(2, 6, 32, 32, 32)``
2.1 ms against 3.4 ms; the forward model's gradient as a whole gains about 1.1
times from it (``benchmarks/bench_forward.py``).  TensorFlow's ``rfft3d`` and
``irfft3d`` have no registered gradient, so on TensorFlow they are wrapped in
custom gradients (:func:`_tf_transforms`): each transform's vector-Jacobian
product is the other transform with a weight along the last axis, so the
wrapped pair is differentiable to any order.  On any other backend the Keras
composition is used; it is kept as :func:`_keras_rfft3` /
:func:`_keras_irfft3`, the reference the tests compare the backends' paths with.

Example:
    >>> x = keras.random.normal((2, 8, 8, 8), dtype="float64")
    >>> re, im = rfft3(x)                        # (2, 8, 8, 5) each
    >>> y = irfft3(re, im, 8)                    # == x to rounding
    >>> h = hartley3(hartley3(x))                # == x: the Hartley transform is its own inverse
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Optional

import keras
import numpy as np
from keras import ops

__all__ = ["rfft3", "irfft3", "hartley3"]


def _to_front(x):
    """``(..., a, b, c) -> (..., c, a, b)``: move the last axis before the other two."""
    nd = len(x.shape)
    perm = list(range(nd - 3)) + [nd - 1, nd - 3, nd - 2]
    return ops.transpose(x, perm)


def _to_back(x):
    """Inverse of :func:`_to_front`."""
    nd = len(x.shape)
    perm = list(range(nd - 3)) + [nd - 2, nd - 1, nd - 3]
    return ops.transpose(x, perm)


def _check_rank(x, name):
    if len(x.shape) < 3:
        raise ValueError(f"{name} must have at least 3 axes (..., n, n, n). Received: {name}.shape={tuple(x.shape)}")


class _Transforms(NamedTuple):
    """A backend's own 3-D transforms, on ``(real, imag)`` pairs like the public functions."""

    rfft3: Callable  # x -> (real, imag)
    irfft3: Callable  # (real, imag, n) -> x
    fft3_of_real: Callable  # x -> (real, imag), the full spectrum


def _backend_transforms() -> Optional[_Transforms]:
    """The running backend's own 3-D transforms, or ``None`` (the Keras composition is used).

    The backend's module is imported only when Keras runs on it.
    """
    name = keras.backend.backend()
    if name == "jax":
        return _jax_transforms()
    if name == "tensorflow":
        return _tf_transforms()
    return None


@functools.lru_cache(maxsize=None)  # built once per process: closures, imports
def _jax_transforms() -> _Transforms:
    """``jax.numpy.fft`` over the last three axes."""
    import jax.lax
    import jax.numpy as jnp

    axes = (-3, -2, -1)

    def rfft3_(x):
        spectrum = jnp.fft.rfftn(x, axes=axes)
        return spectrum.real, spectrum.imag

    def irfft3_(real, imag, n):
        shape = (int(real.shape[-3]), int(real.shape[-2]), int(n))
        return jnp.fft.irfftn(jax.lax.complex(real, imag), s=shape, axes=axes)

    def fft3_of_real_(x):
        spectrum = jnp.fft.fftn(x, axes=axes)
        return spectrum.real, spectrum.imag

    return _Transforms(rfft3_, irfft3_, fft3_of_real_)


def _half_axis_weights(n: int, n_half: int) -> np.ndarray:
    """``w_k`` of the last (half-spectrum) axis: 1 at ``k = 0`` and, for even ``n``, at ``n / 2``; 2 else.

    ``irfftn(Y)_x = Re(sum_k w_k Y_k exp(2 pi i k.x / n)) / N`` over the half spectrum, for any
    ``Y`` (the imaginary parts of the self-conjugate planes are ignored), which fixes both adjoints.
    """
    w = np.full(n_half, 2.0)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    return w


@functools.lru_cache(maxsize=None)  # built once per process: closures, imports
def _tf_transforms() -> _Transforms:
    """TensorFlow's ``rfft3d`` / ``irfft3d`` wrapped in custom gradients, and its ``fft3d``.

    TensorFlow registers no gradient for ``RFFT3D`` or ``IRFFT3D``.  With ``N = n0 n1 n2``,
    ``w`` from :func:`_half_axis_weights`, and TensorFlow's convention that the gradient of
    a complex tensor is ``dL/dRe + i dL/dIm``:

    * ``y = rfftn(x)``: ``x_bar = Re(sum_k g_k exp(+i k.x)) = N irfftn(g / w)``;
    * ``x = irfftn(Y)``: ``Y_bar = (w / N) rfftn(x_bar)``.

    Each gradient calls the other wrapped transform, so second derivatives exist too.
    ``fft3d`` has TensorFlow's own gradient.
    """
    import tensorflow as tf

    def weights(n, n_half, dtype):
        return tf.constant(_half_axis_weights(n, n_half), dtype=dtype)

    @tf.custom_gradient
    def forward(x):
        n0, n1, n = (int(d) for d in x.shape[-3:])

        def grad(g):
            return inverse(g / weights(n, n // 2 + 1, g.dtype), n0, n1, n) * float(n0 * n1 * n)

        return tf.signal.rfft3d(x), grad

    def inverse(y, n0, n1, n):
        @tf.custom_gradient
        def inv(y):
            def grad(g):
                return forward(g) * weights(n, int(y.shape[-1]), y.dtype) / float(n0 * n1 * n)

            return tf.signal.irfft3d(y, fft_length=[n0, n1, n]), grad

        return inv(y)

    def rfft3_(x):
        spectrum = forward(x)
        return tf.math.real(spectrum), tf.math.imag(spectrum)

    def irfft3_(real, imag, n):
        return inverse(tf.complex(real, imag), int(real.shape[-3]), int(real.shape[-2]), int(n))

    def fft3_of_real_(x):
        spectrum = tf.signal.fft3d(tf.complex(x, tf.zeros_like(x)))
        return tf.math.real(spectrum), tf.math.imag(spectrum)

    return _Transforms(rfft3_, irfft3_, fft3_of_real_)


def _keras_rfft3(x):
    """:func:`rfft3` composed of ``keras.ops.rfft`` and ``keras.ops.fft2`` (every backend)."""
    re, im = ops.rfft(x)
    re, im = ops.fft2((_to_front(re), _to_front(im)))
    return _to_back(re), _to_back(im)


def _keras_irfft3(real, imag, n: int):
    """:func:`irfft3` composed of ``keras.ops.ifft2`` and ``keras.ops.irfft`` (every backend)."""
    re, im = ops.ifft2((_to_front(real), _to_front(imag)))
    return ops.irfft((_to_back(re), _to_back(im)), fft_length=int(n))


def _keras_fft3_of_real(x):
    """:func:`_fft3_of_real` composed of ``keras.ops.fft`` and ``keras.ops.fft2`` (every backend)."""
    re, im = ops.fft((x, ops.zeros_like(x)))
    re, im = ops.fft2((_to_front(re), _to_front(im)))
    return _to_back(re), _to_back(im)


def rfft3(x):
    """Real-to-complex 3-D FFT over the last three axes (``numpy.fft.rfftn`` convention).

    Args:
        x: real tensor ``(..., n0, n1, n2)``.

    Returns:
        ``(real, imag)``, each ``(..., n0, n1, n2 // 2 + 1)``.
    """
    x = ops.convert_to_tensor(x)
    _check_rank(x, "x")
    own = _backend_transforms()
    return _keras_rfft3(x) if own is None else own.rfft3(x)


def irfft3(real, imag, n: int):
    """Inverse of :func:`rfft3` (``numpy.fft.irfftn`` with ``s=(n0, n1, n)``).

    Args:
        real, imag: ``(..., n0, n1, n // 2 + 1)``; a Hermitian half-spectrum.
        n: length of the last real axis.

    Returns:
        Real tensor ``(..., n0, n1, n)``.
    """
    real = ops.convert_to_tensor(real)
    imag = ops.convert_to_tensor(imag)
    _check_rank(real, "real")
    own = _backend_transforms()
    return _keras_irfft3(real, imag, n) if own is None else own.irfft3(real, imag, n)


def _fft3_of_real(x):
    """Full complex 3-D FFT of a real tensor, as ``(real, imag)`` of shape ``x.shape``."""
    own = _backend_transforms()
    return _keras_fft3_of_real(x) if own is None else own.fft3_of_real(x)


def hartley3(x):
    """Orthonormal discrete Hartley transform over the last three axes.

    ``H(x)_k = sum_q x_q cas(2 pi k.q / n) / sqrt(N)`` with ``cas = cos + sin`` and
    ``N = n0 n1 n2``, i.e. ``(Re F(x) - Im F(x)) / sqrt(N)`` for NumPy's ``F``.  It
    is real, symmetric and orthogonal, so ``H(H(x)) = x`` and ``|det H| = 1``: a
    white-noise field stays white noise in Hartley coordinates, one real
    coordinate per Fourier mode (mode ``k`` and ``-k`` carry the cos + sin and
    cos - sin combinations).  That makes it the natural basis for a per-mode
    (Fourier-space) preconditioner of a white-noise field.

    Args:
        x: real tensor ``(..., n0, n1, n2)``.

    Returns:
        Real tensor of the same shape.
    """
    x = ops.convert_to_tensor(x)
    _check_rank(x, "x")
    re, im = _fft3_of_real(x)
    size = int(x.shape[-1]) * int(x.shape[-2]) * int(x.shape[-3])
    return (re - im) * (1.0 / math.sqrt(size))
