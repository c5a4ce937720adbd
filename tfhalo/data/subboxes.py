"""Periodic sub-boxes of a lattice field, extracted on the fly.

The deep-halo CNN sees, for each particle, a cube of the initial density
centred on the particle's lattice site and wrapped periodically. Boxes are
never stored: a field is padded once with its own periodic images, after
which every box is a contiguous slice (a plain memory copy), far cheaper than
fancy indexing with ``size**3`` indices per box.
"""

from __future__ import annotations

import numpy as np

from tfhalo.validation import check_int


def _check_size(size, n_side) -> int:
    size = check_int("size", size, minimum=1)
    if size > n_side:
        raise ValueError(
            f"size must not exceed the lattice side n_side={n_side} (a sub-box larger than "
            f"the periodic lattice would contain the same voxel twice). Received: size={size}"
        )
    return size


def _check_field(field) -> np.ndarray:
    field = np.asarray(field)
    if field.ndim != 3 or len(set(field.shape)) != 1:
        raise ValueError(
            f"field must be a cubic (n, n, n) array. Received: field.shape={field.shape}"
        )
    return field


def _check_sites(sites, n_side) -> np.ndarray:
    sites = np.asarray(sites)
    if sites.ndim != 2 or sites.shape[1] != 3:
        raise ValueError(f"sites must have shape (P, 3). Received: sites.shape={sites.shape}")
    if not np.issubdtype(sites.dtype, np.integer):
        raise ValueError(f"sites must be integer lattice indices. Received: dtype={sites.dtype}")
    return np.mod(sites, n_side)


class SubboxExtractor:
    """Extracts periodic ``size**3`` boxes centred on lattice sites of one field.

    The box for site ``s`` holds ``field[(s + o) % n]`` for offsets
    ``o = -(size // 2) ... size - 1 - size // 2``, so the site itself sits at
    index ``size // 2`` along each axis (index 37 for the paper's 75^3 boxes).

    Args:
        field: ``(n, n, n)`` array (e.g. ``Simulation.initial_density``).
        size: box side in voxels, ``1 <= size <= n``.
        dtype: dtype of the returned boxes.

    Example:
        >>> field = np.arange(4**3, dtype=np.float32).reshape(4, 4, 4)
        >>> ex = SubboxExtractor(field, size=3)
        >>> ex(np.array([[0, 0, 0]])).shape
        (1, 3, 3, 3)
    """

    def __init__(self, field, size: int, dtype=np.float32):
        field = _check_field(field)
        self.n_side = field.shape[0]
        self.size = _check_size(size, self.n_side)
        self.half = self.size // 2
        # Pad with periodic images so that [s, s + size) of the padded array is
        # the box whose first voxel is site s - half of the original field.
        lo, hi = self.half, self.size - 1 - self.half
        self._padded = np.pad(np.asarray(field, dtype=dtype), ((lo, hi),) * 3, mode="wrap")

    def __call__(self, sites, out=None) -> np.ndarray:
        """Boxes around ``sites``.

        Args:
            sites: ``(P, 3)`` integer lattice indices (taken modulo n).
            out: optional ``(P, size, size, size)`` array to fill.

        Returns:
            ``(P, size, size, size)`` array.
        """
        sites = _check_sites(sites, self.n_side)
        s = self.size
        if out is None:
            out = np.empty((sites.shape[0], s, s, s), dtype=self._padded.dtype)
        for p, (i, j, k) in enumerate(sites):
            out[p] = self._padded[i : i + s, j : j + s, k : k + s]
        return out


def extract_subboxes(field, sites, size: int) -> np.ndarray:
    """Periodic ``size**3`` boxes of ``field`` centred on ``sites``.

    Convenience wrapper around :class:`SubboxExtractor` for one-off use; reuse
    an extractor when boxes of the same field are drawn repeatedly.

    Args:
        field: ``(n, n, n)`` array.
        sites: ``(P, 3)`` integer lattice indices.
        size: box side in voxels, at most ``n``.

    Returns:
        ``(P, size, size, size)`` float32 array; the site is at ``size // 2``.

    Example:
        >>> boxes = extract_subboxes(np.zeros((8, 8, 8)), [[7, 0, 3]], size=5)
        >>> boxes.shape
        (1, 5, 5, 5)
    """
    field = _check_field(field)
    _check_size(size, field.shape[0])
    sites = _check_sites(sites, field.shape[0])
    return SubboxExtractor(field, size)(sites)
