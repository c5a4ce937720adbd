"""Reusable check that a 3D layer transforms like real spherical harmonics.

A symmetry ``R`` of the cube (a signed 3x3 permutation matrix: 24 proper
rotations, 48 with reflections) acts on a channels-last field
``(batch, n, n, n, C)`` about the centre of the box:
``(R f)(u) = f(R^-1 u)``, with ``u`` the voxel position relative to the centre.
A layer whose output block of degree l has channels ``(m, filter)`` is
equivariant when ``layer(R x) = D_l(R) . (R layer(x))``, where ``D_l(R)`` is the
matrix with ``Y_l(R n) = D_l(R) Y_l(n)`` for the real harmonics of
``tfhalo.layers.real_spherical_harmonic`` (l = 0: 1; l = 1: R in (y, z, x)
order, with reflections included since (y, z, x) is a polar vector).
Centred symmetries commute with "same", "valid" and "periodic" padding at
stride 1 and with strided convolutions whose windows are symmetric in the box.
"""

import itertools

import numpy as np

from tfhalo.layers import real_spherical_harmonic

# Relative tolerances (to the largest output) for each dtype.
TOLERANCE = {"float16": 1e-2, "bfloat16": 3e-2, "float32": 2e-5, "float64": 1e-11}


def cube_symmetries(proper_only=False):
    """The 48 (or 24 proper, det = +1) symmetries of the cube as int 3x3 matrices."""
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            mat = np.zeros((3, 3), dtype=int)
            mat[np.arange(3), perm] = signs
            if not proper_only or round(np.linalg.det(mat)) == 1:
                mats.append(mat)
    return mats


def transform_field(field, rotation):
    """Apply ``(R f)(u) = f(R^-1 u)`` to the spatial axes 1..3 of ``field``."""
    field = np.asarray(field)
    n = field.shape[1]
    if field.ndim != 5 or field.shape[1:4] != (n, n, n):
        raise ValueError(f"field must be (batch, n, n, n, C). Received: shape={field.shape}")
    centre = (n - 1) / 2.0
    grid = np.stack(np.meshgrid(*(np.arange(n),) * 3, indexing="ij"), axis=-1) - centre
    # Row vector u -> R^T u is u @ R.
    source = np.rint(grid @ rotation + centre).astype(int)
    return field[:, source[..., 0], source[..., 1], source[..., 2], :]


def harmonic_representation(l, rotation):
    """Matrix D_l(R) of shape (2l+1, 2l+1) with ``Y_l(R n) = D_l(R) Y_l(n)``."""
    rng = np.random.default_rng(0)
    points = rng.normal(size=(4 * (2 * l + 1) + 8, 3))
    rotated = points @ np.asarray(rotation, dtype=float).T

    def harmonics(p):
        return np.stack(
            [real_spherical_harmonic(l, m, p[:, 0], p[:, 1], p[:, 2]) for m in range(-l, l + 1)]
        )

    # Solve D @ Y(points) = Y(rotated) in the least-squares sense (it is exact).
    sol, *_ = np.linalg.lstsq(harmonics(points).T, harmonics(rotated).T, rcond=None)
    return sol.T


def transform_output(output, rotation, blocks):
    """Expected transform of a layer output: spatial action then D_l per block.

    Args:
        output: ``(batch, n, n, n, C)`` array.
        rotation: 3x3 signed permutation matrix.
        blocks: sequence of ``(l, n_filters)``; channels are l, then m, then filter.
    """
    moved = transform_field(output, rotation).astype(np.float64)
    pieces, start = [], 0
    for l, n_filters in blocks:
        width = (2 * l + 1) * n_filters
        block = moved[..., start : start + width]
        block = block.reshape(block.shape[:-1] + (2 * l + 1, n_filters))
        block = np.einsum("mk,...kf->...mf", harmonic_representation(l, rotation), block)
        pieces.append(block.reshape(block.shape[:-2] + (width,)))
        start += width
    if start != output.shape[-1]:
        raise ValueError(f"blocks {blocks} describe {start} channels, output has {output.shape[-1]}")
    return np.concatenate(pieces, axis=-1)


def assert_equivariant(fn, x, blocks, symmetries=None, rtol=None):
    """Assert ``fn(R x) == D(R) (R fn(x))`` for every symmetry R.

    Args:
        fn: callable mapping a ``(batch, n, n, n, C)`` NumPy array to an
            array-like output of the same kind, each batch entry independently (e.g. a Keras layer followed by
            ``keras.ops.convert_to_numpy``).
        x: input array; its dtype sets the tolerance (see ``TOLERANCE``).
        blocks: ``[(l, n_filters), ...]`` describing the output channels.
        symmetries: list of 3x3 matrices; default all 48 (use
            ``cube_symmetries(proper_only=True)`` for the 24 rotations).
        rtol: tolerance relative to ``max |fn(x)|``; default by dtype.

    Returns:
        The largest relative deviation found.
    """
    x = np.asarray(x)
    if rtol is None:
        rtol = TOLERANCE[str(x.dtype)]
    if symmetries is None:
        symmetries = cube_symmetries()
    reference = np.asarray(fn(x))
    scale = float(np.max(np.abs(reference)))
    if not scale > 0:
        raise AssertionError("fn(x) is identically zero: the check would be vacuous")
    # One call on all transformed copies stacked along the batch axis (fast on
    # eager backends); fn must treat batch entries independently.
    batch = x.shape[0]
    stacked = np.concatenate([transform_field(x, rotation) for rotation in symmetries], axis=0)
    outputs = np.asarray(fn(stacked), dtype=np.float64)
    worst = 0.0
    for i, rotation in enumerate(symmetries):
        got = outputs[i * batch : (i + 1) * batch]
        expected = transform_output(reference, rotation, blocks)
        err = float(np.max(np.abs(got - expected))) / scale
        worst = max(worst, err)
        if err > rtol:
            raise AssertionError(
                f"not equivariant under R={rotation.tolist()}: max relative deviation "
                f"{err:.3g} > {rtol:.3g} (blocks={blocks})"
            )
    return worst
