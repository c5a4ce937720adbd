"""Sub-boxes and shell averages gathered on the accelerator, in ``keras.ops``.

At a GPU's throughput the NumPy pipeline (:mod:`tfhalo.data.subboxes`,
:mod:`tfhalo.data.averaging`) cannot keep up: every box is copied on the host
and then sent over the bus. Here the whole lattice field lives on the device
as one tensor, and a batch of boxes is one gather with periodic index
arithmetic, so only the ``(P, 3)`` site indices cross the bus. The boxes are
bit-for-bit those of :class:`~tfhalo.data.subboxes.SubboxExtractor` (same
centring, same dtype); the shell averages agree with
:func:`~tfhalo.data.averaging.shell_average` to float32 rounding.

Only ``keras.ops`` is used, so this runs under ``KERAS_BACKEND=tensorflow``
and ``jax`` alike.

Reference: Lucie-Smith, Peiris, Pontzen, Nord & Thiyagalingam (2020), "Deep
learning insights into cosmological structure formation", arXiv:2011.10577
(75^3 sub-boxes of the initial density around each particle; the 20-shell
spherically averaged inputs of its Fig. 3A).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tfhalo.data.averaging import _shell_index, check_radii
from tfhalo.data.scalers import InputStandardizer
from tfhalo.data.subboxes import _check_field, _check_sites, _check_size
from tfhalo.validation import check_bool, check_choice, check_finite_array

DEVICE_DTYPES = ("float16", "float32", "float64")

# Largest lattice whose flat voxel indices fit in int32 (n**3 < 2**31).
MAX_N_SIDE_INT32 = 1290


def _index_dtype() -> str:
    """Integer dtype of the flat voxel indices on the active backend.

    TensorFlow runs int32 arithmetic of GPU-placed ops on the host (its int32
    kernels keep their tensors in host memory), which would send every batch's
    indices over the bus; int64 stays on the GPU. JAX computes int64 only with
    ``jax_enable_x64``, and int32 halves the index traffic there.
    """
    return "int64" if keras.backend.backend() == "tensorflow" else "int32"


def _check_dtype(dtype) -> str:
    try:
        name = keras.backend.standardize_dtype(dtype)
    except (TypeError, ValueError):
        name = dtype
    check_choice("dtype", name, DEVICE_DTYPES)
    # JAX without jax_enable_x64 would silently compute float64 requests in float32.
    got = keras.backend.standardize_dtype(ops.convert_to_tensor(np.zeros(1, dtype=name)).dtype)
    if got != name:
        raise ValueError(
            f"dtype must be computable by the {keras.backend.backend()} backend as configured "
            f"(it returns {got}; enable jax_enable_x64 for float64). Received: dtype={name!r}"
        )
    return name


class _ShellPlan:
    """Voxels of a ``size**3`` box ordered by shell, as the device reductions need them.

    Sorting the voxels by shell makes every shell a contiguous slice, so its
    sum is a plain reduction: deterministic, and free of the scatter-add
    contention of many voxels adding into one output per shell.
    """

    def __init__(self, size: int, radii: np.ndarray, index_dtype: str):
        index, _ = _shell_index(size, tuple(float(r) for r in radii))
        n_shells = radii.size
        # Voxels beyond the last shell come out as 0 and are never read.
        order = np.argsort(index, kind="stable")
        occupied, counts = np.unique(index[index < n_shells], return_counts=True)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        self.n_inside = int(bounds[-1])
        self.slices = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        # Voxel -> position among the occupied shells; the outside points at a trailing 0.
        compact = np.full(n_shells + 1, occupied.size)
        compact[occupied] = np.arange(occupied.size)
        self.order_inside = ops.convert_to_tensor(order[: self.n_inside].astype(index_dtype))
        self.voxel_shell = ops.convert_to_tensor(compact[index].astype(index_dtype))
        self.counts = counts.astype(np.float64)

    def average(self, values, dtype):
        """``(B, n_inside)`` shell-ordered values -> ``(B, size**3)`` shell means."""
        zero = ops.zeros((ops.shape(values)[0], 1), dtype=dtype)
        if self.slices:
            sums = ops.stack([ops.sum(values[:, a:b], axis=1) for a, b in self.slices], axis=1)
            means = ops.concatenate([sums / ops.convert_to_tensor(self.counts, dtype=dtype), zero], axis=1)
        else:  # radii below every voxel's distance: every voxel is outside
            means = zero
        return ops.take(means, self.voxel_shell, axis=1)


def device_shell_average(boxes, radii=None):
    """:func:`~tfhalo.data.averaging.shell_average` on the device.

    Each voxel is replaced by the mean of its spherical shell around the centre
    voxel ``s // 2`` (the smallest shell with ``r <= r_shell``); voxels beyond
    the last shell get 0. Sums are taken in the boxes' dtype, so float32 boxes
    agree with the float64-accumulated NumPy version to float32 rounding.

    Args:
        boxes: ``(P, s, s, s)`` or ``(P, s, s, s, 1)`` floating tensor or array
            (standardised boxes: 0 is the mean).
        radii: increasing shell radii in voxels; default ``shell_radii(s)``
            (the 20 shells of Lucie-Smith et al. 2020, arXiv:2011.10577).

    Returns:
        Tensor of the shape and dtype of ``boxes``.

    Example:
        >>> out = device_shell_average(np.ones((2, 9, 9, 9), dtype="float32"))
        >>> float(out[0, 4, 4, 4]), float(out[0, 0, 0, 0])
        (1.0, 0.0)
    """
    if not hasattr(boxes, "shape") or not hasattr(boxes, "dtype"):
        boxes = np.asarray(boxes)
    shape = tuple(boxes.shape)
    if len(shape) == 5 and shape[-1] == 1:
        cube = shape[1:4]
    elif len(shape) == 4:
        cube = shape[1:]
    else:
        raise ValueError(
            f"boxes must have shape (P, s, s, s) or (P, s, s, s, 1). Received: boxes.shape={shape}"
        )
    if len(set(cube)) != 1 or None in cube:
        raise ValueError(f"boxes must be cubes. Received: boxes.shape={shape}")
    dtype = keras.backend.standardize_dtype(boxes.dtype)
    try:
        _check_dtype(dtype)
    except ValueError:
        raise ValueError(f"boxes must be floating ({', '.join(DEVICE_DTYPES)}) and computable by the "
                         f"{keras.backend.backend()} backend. Received: boxes.dtype={dtype}") from None
    size = int(cube[0])
    radii = check_radii(radii, size)
    plan = _ShellPlan(size, radii, _index_dtype())
    flat = ops.reshape(ops.convert_to_tensor(boxes), (-1, size**3))
    values = ops.take(flat, plan.order_inside, axis=1)
    return ops.reshape(plan.average(values, dtype), shape)


class DeviceSubboxes:
    """Periodic ``size**3`` boxes of one field, gathered on the device.

    The device counterpart of :class:`~tfhalo.data.subboxes.SubboxExtractor`:
    the box for site ``s`` holds ``field[(s + o) % n]`` for offsets
    ``o = -(size // 2) ... size - 1 - size // 2``, so the site sits at index
    ``size // 2`` along each axis (37 for the 75^3 boxes of Lucie-Smith,
    Peiris, Pontzen, Nord & Thiyagalingam (2020), arXiv:2011.10577). The field
    is cast to ``dtype`` on the host, as the NumPy extractor does, so the
    boxes are identical to its boxes.

    Args:
        field: ``(n, n, n)`` finite array (e.g. ``Simulation.initial_density``),
            copied to the device once; ``n <= 1290`` on JAX (int32 indices).
        size: box side in voxels, ``1 <= size <= n``.
        dtype: ``"float16"``, ``"float32"`` or ``"float64"`` (float64 needs
            ``jax_enable_x64`` on JAX).
        standardizer: optional fitted
            :class:`~tfhalo.data.scalers.InputStandardizer`, applied to the
            whole field once (on the host, with its own NumPy code), so boxes
            equal ``standardizer.transform(extractor(sites))`` exactly.
        radii: shell radii in voxels for ``average=True``; default
            ``shell_radii(size)`` (the paper's 20 shells).

    Raises:
        ValueError: a bad argument or a non-finite voxel, before anything is
            copied to the device.

    Example:
        >>> field = np.arange(4**3, dtype=np.float32).reshape(4, 4, 4)
        >>> boxes = DeviceSubboxes(field, size=3)(np.array([[0, 0, 0]]))
        >>> tuple(boxes.shape), float(boxes[0, 1, 1, 1])
        ((1, 3, 3, 3), 0.0)
    """

    def __init__(self, field, size: int, dtype="float32", standardizer: InputStandardizer | None = None,
                 radii=None):
        field = _check_field(field)
        self.n_side = int(field.shape[0])
        self.size = _check_size(size, self.n_side)
        self._index = _index_dtype()
        if self._index == "int32" and self.n_side > MAX_N_SIDE_INT32:
            raise ValueError(f"field must have n_side <= {MAX_N_SIDE_INT32} on the {keras.backend.backend()} "
                             f"backend (32-bit voxel indices). Received: field.shape={field.shape}")
        self.dtype = _check_dtype(dtype)
        if standardizer is not None and (not isinstance(standardizer, InputStandardizer)
                                         or standardizer.mean is None):
            raise ValueError(f"standardizer must be a fitted InputStandardizer or None. "
                             f"Received: standardizer={standardizer!r}")
        radii = check_radii(radii, self.size)
        # One non-finite voxel would spread into every box and shell mean containing it.
        check_finite_array("field", field)
        self.half = self.size // 2
        host = np.asarray(field, dtype=self.dtype)
        if standardizer is not None:
            host = standardizer.transform(host)
        self._field = ops.convert_to_tensor(host.reshape(-1))
        self._offsets = ops.convert_to_tensor(
            (np.arange(self.size) - self.half + self.n_side).astype(self._index))
        self._shells = _ShellPlan(self.size, radii, self._index)

    def _flat_indices(self, sites):
        """``(P, size**3)`` indices into the flattened field, periodic on every axis."""
        n, s = self.n_side, self.size
        sites = ops.convert_to_tensor(sites.astype(self._index))
        # Sites are in [0, n) and offsets in [n - half, 2n), so the sum is never
        # negative and the modulo needs no sign convention.
        axes = [ops.mod(sites[:, a:a + 1] + self._offsets[None, :], n) for a in range(3)]
        flat = ((axes[0][:, :, None, None] * n + axes[1][:, None, :, None]) * n
                + axes[2][:, None, None, :])
        return ops.reshape(flat, (-1, s**3))

    def __call__(self, sites, average: bool = False):
        """Boxes (or their shell averages) around ``sites``.

        Args:
            sites: ``(P, 3)`` integer lattice indices (taken modulo n).
            average: replace each voxel by the mean of its shell around the
                centre, as :func:`~tfhalo.data.averaging.shell_average` does
                (voxels beyond the last shell are 0).

        Returns:
            ``(P, size, size, size)`` tensor of ``dtype`` on the device.
        """
        sites = _check_sites(sites, self.n_side)
        average = check_bool("average", average)
        s = self.size
        flat = self._flat_indices(sites)
        if average:
            # Only voxels inside the last shell are read; the rest are 0 anyway.
            values = ops.take(self._field, ops.take(flat, self._shells.order_inside, axis=1))
            out = self._shells.average(values, self.dtype)
        else:
            out = ops.take(self._field, flat)
        return ops.reshape(out, (-1, s, s, s))
