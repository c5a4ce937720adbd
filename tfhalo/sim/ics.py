"""Initial conditions: seeded Gaussian random fields and 2LPT.

The linear density contrast is white noise drawn in real space on the
``n**3`` lattice (``numpy.random.Generator(PCG64(seed))``, one standard normal
per site in C order) convolved with ``sqrt(P(k))`` in Fourier space, so that
``<|delta_k|^2> = P(k) / V`` per mode (``V = box_size**3``); the ``k = 0``
mode is zero.

Second-order Lagrangian perturbation theory (Scoccimarro 1998, MNRAS 299,
1097, arXiv:astro-ph/9711187; Crocce, Pueblas & Scoccimarro 2006, MNRAS 373,
369, arXiv:astro-ph/0606505): with ``delta0`` the linear field at ``a = 1``,

    x(a) = q + D1(a) psi1(q) + D2(a) psi2(q),
    psi1 = -grad phi1,   lap phi1 = delta0,
    psi2 = +grad phi2,   lap phi2 = sum_{i<j} (phi1_ii phi1_jj - phi1_ij^2),

with ``D2 ≈ -3/7 D1^2 Om(a)^(-1/143)`` (negative). The canonical momentum
used by :mod:`tfhalo.sim.pm` is ``p = a^3 E(a) dx/da
= a^2 E (f1 D1 psi1 + f2 D2 psi2)`` (units H0 = 1, lengths Mpc/h) and the
peculiar velocity is ``v = 100 p / a`` km/s.

Example:
    >>> from tfhalo.sim.cosmology import WMAP5
    >>> delta0 = gaussian_field(32, 50.0, WMAP5, seed=1)          # z = 0 linear field
    >>> psi1, psi2 = lpt_displacements(delta0, 50.0)
    >>> x = lpt_positions(delta0, 50.0, WMAP5, a=0.01)              # (32**3, 3)
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import scipy.fft

from tfhalo.sim.cosmology import Cosmology
from tfhalo.sim.grid import derivative_wavenumbers, lattice_positions, rfft_wavenumbers, wrap_periodic
from tfhalo.validation import check_float, check_int


def _check_cubic(delta, name="delta_lin") -> np.ndarray:
    delta = np.asarray(delta)
    if delta.ndim != 3 or len(set(delta.shape)) != 1 or delta.shape[0] < 2:
        raise ValueError(f"{name} must be a cubic (n, n, n) array. Received: {name}.shape={delta.shape}")
    return delta


def white_noise(n: int, seed) -> np.ndarray:
    """``(n, n, n)`` float64 standard normals from ``Generator(PCG64(seed))``."""
    n = check_int("n", n, minimum=2)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.Generator(np.random.PCG64(seed))
    return rng.standard_normal((n, n, n))


def gaussian_field(n: int, box_size: float, cosmology: Cosmology, seed, z: float = 0.0) -> np.ndarray:
    """Seeded Gaussian linear density contrast on the particle lattice.

    Args:
        n: lattice sites per side.
        box_size: box side, Mpc/h.
        cosmology: a :class:`~tfhalo.sim.cosmology.Cosmology`.
        seed: int seed (or a ``numpy.random.Generator``).
        z: redshift; the field is scaled by the linear growth factor.

    Returns:
        ``(n, n, n)`` float64 density contrast; index ``(i, j, k)`` is the value
        at ``(i, j, k) * box_size / n``.
    """
    n = check_int("n", n, minimum=2)
    box_size = check_float("box_size", box_size, positive=True)
    if not isinstance(cosmology, Cosmology):
        raise ValueError(f"cosmology must be a tfhalo Cosmology. Received: cosmology={cosmology!r}")
    if not z > -1:
        raise ValueError(f"z must be > -1. Received: z={z}")
    noise = white_noise(n, seed)
    noise_k = scipy.fft.rfftn(noise, workers=-1)
    del noise
    kx, ky, kz = rfft_wavenumbers(n, box_size)
    kmag = np.sqrt(kx**2 + ky**2 + kz**2)
    kmag[0, 0, 0] = 1.0  # placeholder, mode zeroed below
    # numpy FFT: delta_k = noise_k * sqrt(P N^3 / V) gives <|c_k|^2> = P / V
    amp = np.sqrt(_tabulated_power(cosmology, kmag, z) * n**3 / box_size**3)
    amp[0, 0, 0] = 0.0
    noise_k *= amp
    return scipy.fft.irfftn(noise_k, s=(n, n, n), workers=-1)


def _tabulated_power(cosmology: Cosmology, k: np.ndarray, z: float) -> np.ndarray:
    """``linear_power`` interpolated in log-log from 4096 points (relative error < 1e-5)."""
    lo, hi = float(k.min()), float(k.max())
    grid = np.geomspace(lo * 0.999, hi * 1.001, 4096)
    table = np.log(cosmology.linear_power(grid, z=z))
    return np.exp(np.interp(np.log(k), np.log(grid), table))


def lpt_displacements(delta_lin, box_size: float, dtype=np.float64) -> Tuple[np.ndarray, np.ndarray]:
    """First- and second-order Lagrangian displacement fields.

    Args:
        delta_lin: ``(n, n, n)`` linear density contrast (normally at ``a = 1``;
            ``psi1`` scales linearly, ``psi2`` quadratically with it).
        box_size: box side, Mpc/h.
        dtype: output float dtype.

    Returns:
        ``(psi1, psi2)``, each ``(n, n, n, 3)`` in Mpc/h, such that
        ``x = q + D1 psi1 + D2 psi2`` (``D2 < 0``).
    """
    delta = _check_cubic(delta_lin)
    box_size = check_float("box_size", box_size, positive=True)
    n = delta.shape[0]
    kvec = rfft_wavenumbers(n, box_size)
    k2 = kvec[0] ** 2 + kvec[1] ** 2 + kvec[2] ** 2
    k2[0, 0, 0] = 1.0
    # phi1_k = -delta_k / k^2; Nyquist planes of odd derivatives are zeroed so
    # the fields stay real and exactly antisymmetric.
    phi1_k = -scipy.fft.rfftn(delta, workers=-1) / k2
    kodd = derivative_wavenumbers(n, box_size)
    shape = (n, n, n)

    def grad(field_k, sign):
        out = np.empty(shape + (3,), dtype=dtype)
        for d in range(3):
            out[..., d] = scipy.fft.irfftn(sign * 1j * kodd[d] * field_k, s=shape, workers=-1)
        return out

    psi1 = grad(phi1_k, -1.0)

    # second-order source sum_{i<j} phi_ii phi_jj - phi_ij^2
    diag = [scipy.fft.irfftn(-kvec[d] ** 2 * phi1_k, s=shape, workers=-1) for d in range(3)]
    source = diag[0] * diag[1] + diag[0] * diag[2] + diag[1] * diag[2]
    del diag
    for i, j in ((0, 1), (0, 2), (1, 2)):
        phi_ij = scipy.fft.irfftn(-kodd[i] * kodd[j] * phi1_k, s=shape, workers=-1)
        source -= phi_ij**2
    del phi1_k
    phi2_k = -scipy.fft.rfftn(source, workers=-1) / k2
    phi2_k[0, 0, 0] = 0.0
    del source
    psi2 = grad(phi2_k, 1.0)
    return psi1, psi2


def lpt_state(psi1, psi2, box_size: float, cosmology: Cosmology, a: float, dtype=np.float64):
    """2LPT positions and canonical momenta at scale factor ``a``.

    Args:
        psi1, psi2: ``(n, n, n, 3)`` from :func:`lpt_displacements` (at a = 1).
        box_size: box side, Mpc/h.
        cosmology: the cosmology.
        a: scale factor.
        dtype: output dtype.

    Returns:
        ``(positions, momenta)``, each ``(n**3, 3)``; positions wrapped into
        ``[0, box_size)``; momenta ``p = a^3 E dx/da`` (H0 = 1, Mpc/h).
    """
    if not 0 < a <= 1.5:
        raise ValueError(f"a must be in (0, 1.5]. Received: a={a}")
    n = psi1.shape[0]
    d1 = float(cosmology.growth_factor(a))
    d2 = float(cosmology.growth_factor_2(a))
    f1 = float(cosmology.growth_rate(a))
    f2 = float(cosmology.growth_rate_2(a))
    e = float(cosmology.hubble(a))
    s1, s2 = psi1.reshape(-1, 3), psi2.reshape(-1, 3)
    pos = wrap_periodic(lattice_positions(n, box_size, np.float64) + d1 * s1 + d2 * s2, box_size, dtype=dtype)
    mom = (a**2 * e) * (f1 * d1 * s1 + f2 * d2 * s2)
    return pos, mom.astype(dtype, copy=False)


def peculiar_velocity(momenta, a: float) -> np.ndarray:
    """Peculiar velocity in km/s, ``v = 100 p / a``, of canonical momenta ``p``.

    Args:
        momenta: ``(..., 3)`` momenta ``p = a^3 E dx/da`` (H0 = 1, Mpc/h), as
            from :func:`lpt_state`.
        a: scale factor.

    Returns:
        Array of the same shape, km/s.
    """
    if not a > 0:
        raise ValueError(f"a must be positive. Received: a={a}")
    return np.asarray(momenta) * (100.0 / a)


def lpt_positions(delta_initial, box_size: float, cosmology: Cosmology, a_from: float, a_to: float) -> np.ndarray:
    """2LPT positions at ``a_to`` from a linear field given at ``a_from``.

    Args:
        delta_initial: ``(n, n, n)`` linear density contrast at ``a_from``.
        box_size: box side, Mpc/h.
        cosmology: the cosmology.
        a_from: scale factor of ``delta_initial``.
        a_to: scale factor of the returned positions.

    Returns:
        ``(n**3, 3)`` float64 positions in ``[0, box_size)``, lattice order.
    """
    for name, val in (("a_from", a_from), ("a_to", a_to)):
        if not 0 < val <= 1.5:
            raise ValueError(f"{name} must be in (0, 1.5]. Received: {name}={val}")
    delta0 = _check_cubic(delta_initial, "delta_initial") / cosmology.growth_factor(a_from)
    psi1, psi2 = lpt_displacements(delta0, box_size)
    return lpt_state(psi1, psi2, box_size, cosmology, a_to)[0]
