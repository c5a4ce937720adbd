"""Spherically averaged inputs: the ``averaged-density`` ablation.

Each voxel of a box is replaced by the mean of its spherical shell around the
centre voxel, which removes all anisotropic information (Fig. 3A of
Lucie-Smith, Peiris, Pontzen, Nord & Thiyagalingam (2020), "Deep learning
insights into cosmological structure formation", arXiv:2011.10577). As the
authors' code does it: 20 shells with radii ``linspace(2, 37.5, 20)`` voxels
for a 75^3 box, each voxel belongs to the smallest shell with
``r <= r_shell``, and voxels beyond the last shell get 0, the mean in
standardised units (so apply this to standardised boxes).
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse

from tfhalo.validation import check_float_array

PAPER_BOX_SIZE = 75
PAPER_SHELL_RADII = np.linspace(2.0, 37.5, 20)


def shell_radii(size: int, n_shells: int = 20) -> np.ndarray:
    """Shell radii in voxels for a ``size**3`` box.

    The paper's radii ``linspace(2, 37.5, 20)`` for 75^3, scaled by
    ``size / 75`` so that smaller boxes keep the same shells in units of the
    box (the last shell always reaches the box's half-width ``size / 2``).

    Example:
        >>> shell_radii(75)[[0, -1]]
        array([ 2. , 37.5])
    """
    from tfhalo.validation import check_int

    size = check_int("size", size, minimum=1)
    n_shells = check_int("n_shells", n_shells, minimum=1)
    scale = int(size) / PAPER_BOX_SIZE
    return np.linspace(2.0 * scale, 37.5 * scale, int(n_shells))


@functools.lru_cache(maxsize=8)
def _shell_index(size: int, radii: tuple):
    """Shell index per voxel (``len(radii)`` = outside) and its sparse one-hot."""
    c = size // 2
    grid = np.arange(size) - c
    r = np.sqrt(grid[:, None, None] ** 2 + grid[None, :, None] ** 2 + grid[None, None, :] ** 2)
    # searchsorted(side="left") gives the first radius >= r: the smallest shell with r <= r_shell.
    index = np.searchsorted(np.asarray(radii), r.ravel(), side="left")
    n_vox = index.size
    # (shells x voxels) membership; one sparse product gives every box's shell sums.
    onehot_t = scipy.sparse.csr_array(
        (np.ones(n_vox), (index, np.arange(n_vox))), shape=(len(radii) + 1, n_vox)
    )
    return index, onehot_t


def check_radii(radii, size: int) -> np.ndarray:
    """``radii`` (default ``shell_radii(size)``) as a non-empty increasing 1-D float64 array of finite numbers."""
    radii = shell_radii(size) if radii is None else check_float_array("radii", radii)
    if radii.ndim != 1 or radii.size == 0 or not np.all(np.isfinite(radii)) or np.any(np.diff(radii) <= 0):
        raise ValueError(f"radii must be a non-empty increasing 1-D array of finite numbers. "
                         f"Received: radii={radii}")
    return radii


def shell_average(boxes, radii=None) -> np.ndarray:
    """Replace each voxel by the mean of its shell around the box centre.

    Args:
        boxes: ``(P, s, s, s)`` or ``(P, s, s, s, 1)`` standardised boxes; the
            centre is voxel ``s // 2``.
        radii: increasing shell radii in voxels; default ``shell_radii(s)``.

    Returns:
        Array of the same shape and dtype; voxels beyond the last shell are 0.

    Example:
        >>> out = shell_average(np.ones((2, 9, 9, 9), dtype=np.float32))
        >>> float(out[0, 4, 4, 4]), float(out[0, 0, 0, 0])
        (1.0, 0.0)
    """
    boxes = np.asarray(boxes)
    shape = boxes.shape
    if boxes.ndim == 5 and shape[-1] == 1:
        cube = shape[1:4]
    elif boxes.ndim == 4:
        cube = shape[1:]
    else:
        raise ValueError(
            f"boxes must have shape (P, s, s, s) or (P, s, s, s, 1). Received: boxes.shape={shape}"
        )
    if len(set(cube)) != 1:
        raise ValueError(f"boxes must be cubes. Received: boxes.shape={shape}")
    size = cube[0]
    radii = check_radii(radii, size)
    n_shells = radii.size
    index, onehot_t = _shell_index(size, tuple(float(r) for r in radii))
    flat = boxes.reshape(shape[0], size**3).astype(np.float64, copy=False)
    counts = np.bincount(index, minlength=n_shells + 1).astype(np.float64)
    sums = np.asarray(onehot_t @ flat.T).T
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    means[:, n_shells] = 0.0
    return means[:, index].reshape(shape).astype(boxes.dtype, copy=False)
