"""Periodic meshes: cloud-in-cell painting/readout, FFT wave numbers, P(k).

Mesh cell ``(i, j, k)`` of an ``n_mesh**3`` mesh in a box of side ``L`` sits
at position ``(i, j, k) * L / n_mesh`` (the lattice convention of
``docs/architecture.md``): a particle exactly at a cell's position puts all its
mass in that cell.

Example:
    >>> import numpy as np
    >>> pos = np.random.default_rng(0).uniform(0, 10.0, (1000, 3))
    >>> rho = cic_paint(pos, 16, 10.0)        # (16, 16, 16), sums to 1000
    >>> vals = cic_readout(rho, pos, 10.0)    # (1000,)
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.fft

from tfhalo.sim.grid import rfft_wavenumbers
from tfhalo.validation import check_float, check_int


def _check_positions(positions, name: str = "positions") -> np.ndarray:
    positions = np.asarray(positions)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3). Received: {name}.shape={positions.shape}")
    return positions


class CICStencil:
    """The 8 cloud-in-cell cells and weights of a set of particles.

    Computed once per particle configuration and reused for painting and
    for reading meshes (the PM force paints and reads once per step).

    Attributes:
        index: ``(8, N)`` int64 flat cell index of each corner.
        weight: ``(8, N)`` weights (sum to 1 over the corners).

    Args:
        positions: ``(N, 3)`` positions, any real values (wrapped periodically).
        n_mesh: cells per side.
        box_size: box side.
        dtype: float dtype of the weights.
    """

    def __init__(self, positions, n_mesh: int, box_size: float, dtype=np.float64):
        positions = _check_positions(positions)
        n = int(n_mesh)
        self.n_mesh = n
        n_part = positions.shape[0]
        self.index = np.empty((8, n_part), dtype=np.int64)
        self.weight = np.empty((8, n_part), dtype=dtype)
        strides = (n * n, n, 1)
        axes = []
        for d in range(3):
            scaled = positions[:, d] * (n / box_size)
            floor = np.floor(scaled)
            scaled -= floor
            f = scaled.astype(dtype, copy=False)
            i0 = floor.astype(np.int64)
            del floor, scaled
            if n_part and (i0.min() < 0 or i0.max() >= n):  # integer modulo is slow: only when needed
                i0 %= n
            i1 = i0 + 1
            i1[i1 == n] = 0
            axes.append((i0 * strides[d], i1 * strides[d], 1 - f, f))
        ax, ay, az = axes
        c = 0
        for dx in (0, 1):
            for dy in (0, 1):
                ixy = ax[dx] + ay[dy]
                wxy = ax[2 + dx] * ay[2 + dy]
                for dz in (0, 1):
                    np.add(ixy, az[dz], out=self.index[c])
                    np.multiply(wxy, az[2 + dz], out=self.weight[c])
                    c += 1

    def paint(self, weights=None, dtype=np.float64) -> np.ndarray:
        """Deposit ``weights`` (default 1 per particle); returns ``(n,n,n)``."""
        w = self.weight if weights is None else self.weight * np.asarray(weights)[None, :]
        out = np.bincount(self.index.reshape(-1), weights=w.reshape(-1), minlength=self.n_mesh**3)
        return out.reshape((self.n_mesh,) * 3).astype(dtype, copy=False)

    def readout(self, mesh) -> np.ndarray:
        """Interpolate ``mesh`` ``(n,n,n)`` or ``(n,n,n,C)`` to the particles.

        Returns:
            ``(N,)`` or ``(N, C)`` values.
        """
        mesh = np.asarray(mesh)
        n3 = self.n_mesh**3
        if mesh.size % n3 or mesh.shape[:3] != (self.n_mesh,) * 3:
            raise ValueError(f"mesh must have shape ({self.n_mesh},)*3 (+ channels). Received: mesh.shape={mesh.shape}")
        flat = mesh.reshape((n3,) + mesh.shape[3:])
        extra = (slice(None),) + (None,) * (mesh.ndim - 3)
        # np.take is several times faster than fancy indexing here
        out = np.take(flat, self.index[0], axis=0)
        out *= self.weight[0][extra]
        for c in range(1, 8):
            val = np.take(flat, self.index[c], axis=0)
            val *= self.weight[c][extra]
            out += val
        return out


def cic_paint(positions, n_mesh: int, box_size: float, weights=None) -> np.ndarray:
    """Cloud-in-cell mass assignment on a periodic mesh.

    Args:
        positions: ``(N, 3)`` positions in box units (wrapped periodically).
        n_mesh: cells per side.
        box_size: box side.
        weights: optional ``(N,)`` masses (default 1 each).

    Returns:
        ``(n_mesh, n_mesh, n_mesh)`` float64 mass per cell; sums to the total.
    """
    positions = _check_positions(positions)
    box_size = check_float("box_size", box_size, positive=True)
    n_mesh = check_int("n_mesh", n_mesh, minimum=1)
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        if weights.shape[0] != positions.shape[0]:
            raise ValueError(
                f"weights must have one value per particle ({positions.shape[0]}). "
                f"Received: weights.shape={weights.shape}"
            )
    return CICStencil(positions, n_mesh, box_size).paint(weights)


def cic_readout(mesh, positions, box_size: float) -> np.ndarray:
    """Cloud-in-cell interpolation of a periodic mesh at ``positions``.

    Args:
        mesh: ``(n, n, n)`` values.
        positions: ``(N, 3)`` positions.
        box_size: box side.

    Returns:
        ``(N,)`` interpolated values (dtype of ``mesh`` promoted with float).
    """
    mesh = np.asarray(mesh)
    if mesh.ndim != 3 or len(set(mesh.shape)) != 1:
        raise ValueError(f"mesh must be a cubic (n, n, n) array. Received: mesh.shape={mesh.shape}")
    positions = _check_positions(positions)
    box_size = check_float("box_size", box_size, positive=True)
    return CICStencil(positions, mesh.shape[0], box_size).readout(mesh)


def rfft_mode_multiplicity(n: int) -> np.ndarray:
    """``(1,1,n//2+1)`` count of each rfft mode in the full FFT (1 or 2)."""
    mult = np.full(n // 2 + 1, 2.0)
    mult[0] = 1.0
    if n % 2 == 0:
        mult[-1] = 1.0
    return mult.reshape(1, 1, -1)


def cic_window(n: int, dtype=np.float64) -> np.ndarray:
    """``(n, n, n//2+1)`` Fourier window of CIC assignment on an ``n**3`` mesh."""
    kx, ky, kz = rfft_wavenumbers(n, 2.0 * np.pi * n, dtype=np.float64)  # k in units of 1/cell
    w = (np.sinc(kx / (2 * np.pi)) * np.sinc(ky / (2 * np.pi)) * np.sinc(kz / (2 * np.pi))) ** 2
    return w.astype(dtype)


def power_spectrum(
    delta, box_size: float, n_bins: Optional[int] = None, k_max: Optional[float] = None, workers: int = -1
):
    """Spherically averaged power spectrum of a periodic field.

    Args:
        delta: ``(n, n, n)`` density contrast.
        box_size: box side in Mpc/h.
        n_bins: number of linear bins (default: bins of width
            ``k_f = 2 pi / L`` centred on multiples of ``k_f``).
        k_max: largest ``|k|`` kept (default the Nyquist frequency).
        workers: ``scipy.fft`` workers.

    Returns:
        ``(k, pk, n_modes)``: mean ``|k|`` per bin (h/Mpc), ``P(k)`` in
        (Mpc/h)^3 and the number of Fourier modes per bin (full FFT count);
        empty bins are dropped.
    """
    delta = np.asarray(delta)
    if delta.ndim != 3 or len(set(delta.shape)) != 1:
        raise ValueError(f"delta must be a cubic (n, n, n) array. Received: delta.shape={delta.shape}")
    box_size = check_float("box_size", box_size, positive=True)
    n = delta.shape[0]
    kf = 2.0 * np.pi / box_size
    k_nyq = kf * n / 2
    k_max = k_nyq if k_max is None else float(k_max)
    if n_bins is None:
        # bins of width k_f centred on multiples of k_f
        n_bins = max(int(round(k_max / kf)), 1)
        edges = kf * (0.5 + np.arange(n_bins + 1))
    else:
        edges = np.linspace(0.5 * kf, k_max, int(n_bins) + 1)
        n_bins = int(n_bins)
    dk = scipy.fft.rfftn(delta, workers=workers)
    power = (np.abs(dk) ** 2) * (box_size**3 / float(n) ** 6)
    kx, ky, kz = rfft_wavenumbers(n, box_size)
    kmag = np.sqrt(kx**2 + ky**2 + kz**2)
    mult = np.broadcast_to(rfft_mode_multiplicity(n), kmag.shape)
    which = np.digitize(kmag.ravel(), edges) - 1
    ok = (which >= 0) & (which < n_bins)
    which, m = which[ok], mult.ravel()[ok]
    counts = np.bincount(which, weights=m, minlength=n_bins)
    ksum = np.bincount(which, weights=m * kmag.ravel()[ok], minlength=n_bins)
    psum = np.bincount(which, weights=m * power.ravel()[ok], minlength=n_bins)
    keep = counts > 0
    return ksum[keep] / counts[keep], psum[keep] / counts[keep], counts[keep]
