"""Three-dimensional FFTs for the forward model, on every Keras backend.

Keras ships 1-D real and 2-D complex transforms; the 3-D real transform over the
last three axes is the 1-D real transform along the last axis followed by the
2-D complex transform over the first two of the three.  Complex values travel
as ``(real, imag)`` pairs, the form ``keras.ops.fft2`` takes and returns, so no
complex dtype crosses a backend boundary.  Conventions are NumPy's
(``numpy.fft.rfftn`` unnormalised forward, ``irfftn`` divides by ``n^3``).

On JAX the transforms call ``jax.numpy.fft`` directly (:func:`_jax_fft`): one
XLA FFT over three axes instead of a 1-D and a 2-D transform with the axis
transposes between them.  On a 2-core CPU a float64 ``rfftn`` of
``(2, 32, 32, 32)`` takes 0.54 ms against 1.27 ms composed, an ``irfftn`` of
``(2, 6, 32, 32, 32)`` 2.1 ms against 3.4 ms; the forward model's gradient as
a whole gains about 1.1 times from it (``benchmarks/bench_forward.py``).  TensorFlow's own ``rfft3d`` has no registered
gradient, so there (and on any other backend) the Keras composition is used;
it is kept as :func:`_keras_rfft3` / :func:`_keras_irfft3`, the reference the
tests compare the JAX path with.

Example:
    >>> x = keras.random.normal((2, 8, 8, 8), dtype="float64")
    >>> re, im = rfft3(x)                        # (2, 8, 8, 5) each
    >>> y = irfft3(re, im, 8)                    # == x to rounding
    >>> h = hartley3(hartley3(x))                # == x: the Hartley transform is its own inverse
"""

from __future__ import annotations

import math

import keras
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


def _jax_fft():
    """``jax.numpy.fft`` when Keras runs on JAX, else ``None`` (JAX is imported only then)."""
    if keras.backend.backend() != "jax":
        return None
    import jax.numpy as jnp

    return jnp.fft


def _keras_rfft3(x):
    """:func:`rfft3` composed of ``keras.ops.rfft`` and ``keras.ops.fft2`` (every backend)."""
    re, im = ops.rfft(x)
    re, im = ops.fft2((_to_front(re), _to_front(im)))
    return _to_back(re), _to_back(im)


def _keras_irfft3(real, imag, n: int):
    """:func:`irfft3` composed of ``keras.ops.ifft2`` and ``keras.ops.irfft`` (every backend)."""
    re, im = ops.ifft2((_to_front(real), _to_front(imag)))
    return ops.irfft((_to_back(re), _to_back(im)), fft_length=int(n))


def rfft3(x):
    """Real-to-complex 3-D FFT over the last three axes (``numpy.fft.rfftn`` convention).

    Args:
        x: real tensor ``(..., n0, n1, n2)``.

    Returns:
        ``(real, imag)``, each ``(..., n0, n1, n2 // 2 + 1)``.
    """
    x = ops.convert_to_tensor(x)
    _check_rank(x, "x")
    fft = _jax_fft()
    if fft is None:
        return _keras_rfft3(x)
    spectrum = fft.rfftn(x, axes=(-3, -2, -1))
    return spectrum.real, spectrum.imag


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
    fft = _jax_fft()
    if fft is None:
        return _keras_irfft3(real, imag, n)
    import jax.lax

    shape = (int(real.shape[-3]), int(real.shape[-2]), int(n))
    return fft.irfftn(jax.lax.complex(real, imag), s=shape, axes=(-3, -2, -1))


def _fft3_of_real(x):
    """Full complex 3-D FFT of a real tensor, as ``(real, imag)`` of shape ``x.shape``."""
    fft = _jax_fft()
    if fft is not None:
        spectrum = fft.fftn(x, axes=(-3, -2, -1))
        return spectrum.real, spectrum.imag
    zeros = ops.zeros_like(x)
    re, im = ops.fft((x, zeros))
    re, im = ops.fft2((_to_front(re), _to_front(im)))
    return _to_back(re), _to_back(im)


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
