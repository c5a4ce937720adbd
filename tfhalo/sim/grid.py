"""Periodic-box and lattice helpers: the bottom of :mod:`tfhalo.sim` (NumPy only).

One home for the small operations every part of the simulation code needs:

* :func:`wrap_periodic`: positions into ``[0, L)``;
* :func:`minimum_image`: separations into ``[-L/2, L/2]``;
* :func:`lattice_positions`: the unperturbed particle lattice ``q``;
* :func:`rfft_wavenumbers` and :func:`derivative_wavenumbers`: the wave vectors
  of ``scipy.fft.rfftn`` on an ``n**3`` mesh.

Lattice convention: site ``(i, j, k)`` of an ``n**3`` lattice in a box of side
``L`` sits at ``(i, j, k) * L / n`` and is row ``(i * n + j) * n + k`` of
per-particle arrays (C order).

Example:
    >>> import numpy as np
    >>> wrap_periodic(np.array([[-1e-17, 10.5, 3.0]]), 10.0)
    array([[0. , 0.5, 3. ]])
    >>> minimum_image(np.array([9.0, -6.0]), 10.0)
    array([-1.,  4.])
    >>> lattice_positions(2, 10.0)[:3]
    array([[0., 0., 0.],
           [0., 0., 5.],
           [0., 5., 0.]])
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

__all__ = [
    "wrap_periodic",
    "minimum_image",
    "lattice_positions",
    "rfft_wavenumbers",
    "derivative_wavenumbers",
]


def wrap_periodic(positions, box_size, out: Optional[np.ndarray] = None, dtype=np.float64) -> np.ndarray:
    """Positions wrapped into ``[0, box_size)``, in the precision they are kept in.

    ``np.mod(x, L)`` returns exactly ``L`` for a tiny negative ``x`` (the exact
    result ``L - |x|`` rounds up), and so does casting a float64 value just
    below ``L`` to float32; either would put a particle one cell past the last
    one. Such values are mapped to 0, their periodic image, after the cast.

    Args:
        positions: array of positions (any shape), same length unit as ``box_size``.
        box_size: box side ``L > 0``.
        out: optional float array of the shape of ``positions`` to write into
            (may be ``positions`` itself, to wrap in place); its dtype wins.
        dtype: float dtype of the new array when ``out`` is None; the modulo
            is taken in float64 and the guard applied after the cast.

    Returns:
        ``out`` if given, else a new ``dtype`` array of the shape of
        ``positions``; every value in ``[0, box_size)``.

    Example:
        >>> wrap_periodic([-1e-17, 12.0], 10.0)
        array([0., 2.])
    """
    if out is None:
        out = np.mod(np.asarray(positions, dtype=np.float64), box_size).astype(dtype, copy=False)
    else:
        np.mod(positions, box_size, out=out)
    out[out >= box_size] = 0.0
    return out


def minimum_image(separation, box_size) -> np.ndarray:
    """Periodic separations mapped to their nearest image, ``d - L round(d / L)``.

    Args:
        separation: array of coordinate differences (any shape).
        box_size: box side ``L > 0``.

    Returns:
        Float64 array of the same shape with values in ``[-L/2, L/2]``.

    Example:
        >>> minimum_image([0.75, -0.25], 1.0)
        array([-0.25, -0.25])
    """
    d = np.asarray(separation, dtype=np.float64)
    return d - box_size * np.round(d / box_size)


def lattice_positions(n: int, box_size: float, dtype=np.float64) -> np.ndarray:
    """``(n**3, 3)`` unperturbed positions ``q = site * box_size / n`` in C (row) order.

    Args:
        n: lattice sites per side.
        box_size: box side.
        dtype: float dtype of the result.

    Returns:
        ``(n**3, 3)`` array; row ``(i * n + j) * n + k`` is ``(i, j, k) * box_size / n``.

    Example:
        >>> lattice_positions(2, 1.0)[-1]
        array([0.5, 0.5, 0.5])
    """
    n = int(n)
    g = np.arange(n, dtype=dtype) * np.asarray(box_size / n, dtype=dtype)
    q = np.empty((n, n, n, 3), dtype=dtype)
    q[..., 0] = g[:, None, None]
    q[..., 1] = g[None, :, None]
    q[..., 2] = g[None, None, :]
    return q.reshape(-1, 3)


def rfft_wavenumbers(n: int, box_size: float, dtype=np.float64) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable wave vectors (inverse length units) of ``scipy.fft.rfftn`` on ``n**3``.

    Args:
        n: mesh cells per side.
        box_size: box side (``k`` is in units of ``2 pi / box_size``).
        dtype: float dtype.

    Returns:
        ``(kx, ky, kz)`` with shapes ``(n,1,1)``, ``(1,n,1)``, ``(1,1,n//2+1)``;
        ``kx[i] = 2 pi fftfreq(n)[i] n / box_size``.

    Example:
        >>> kx, ky, kz = rfft_wavenumbers(4, 2 * np.pi)
        >>> kx.ravel(), kz.ravel()
        (array([ 0.,  1., -2., -1.]), array([0., 1., 2.]))
    """
    kf = 2.0 * np.pi / box_size
    k = (np.fft.fftfreq(n, d=1.0 / n) * kf).astype(dtype)
    kz = (np.arange(n // 2 + 1) * kf).astype(dtype)
    return k.reshape(n, 1, 1), k.reshape(1, n, 1), kz.reshape(1, 1, -1)


def fft_wavenumber_magnitude(n: int, box_size: float, dtype=np.float64) -> np.ndarray:
    """``|k|`` at every index of the full (complex) ``n**3`` FFT grid; ``[0, 0, 0]`` is 0.

    The last axis carries the same signed frequencies as the first two (unlike
    :func:`rfft_wavenumbers`' half axis), so index ``(i, j, k)`` and its Hermitian
    partner ``(-i, -j, -k)`` have the same ``|k|``.

    Example:
        >>> fft_wavenumber_magnitude(4, 2 * np.pi)[0, 0, :]
        array([0., 1., 2., 1.])
    """
    kx, ky, _ = rfft_wavenumbers(n, box_size, dtype)
    return np.sqrt(kx**2 + ky**2 + kx.reshape(1, 1, n) ** 2)


def derivative_wavenumbers(n: int, box_size: float, dtype=np.float64) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`rfft_wavenumbers` with the Nyquist component set to 0 (even ``n``).

    For first (odd) derivatives ``i k f_k``: the Nyquist mode of a real field
    has no sign, so its derivative is not real; zeroing it keeps the
    derivative real and exactly antisymmetric.

    Example:
        >>> derivative_wavenumbers(4, 2 * np.pi)[0].ravel()
        array([ 0.,  1.,  0., -1.])
    """
    kx, ky, kz = (k.copy() for k in rfft_wavenumbers(n, box_size, dtype))
    if n % 2 == 0:
        kx[n // 2] = 0.0
        ky[:, n // 2] = 0.0
        kz[..., n // 2] = 0.0
    return kx, ky, kz
