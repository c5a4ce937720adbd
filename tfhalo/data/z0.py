"""The z=0 input: the non-linear density in a small box around each particle.

The sanity test of the paper (Fig. 4, r = 0.96) trains the same CNN on the
z=0 density in a 1.5 Mpc/h box centred on the particle's *final* position.
The box is painted with cloud-in-cell from the z=0 particles near it, found
with a periodic KD-tree, so no global high-resolution mesh is needed.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from tfhalo.sim.grid import minimum_image, wrap_periodic

Z0_TRANSFORMS = ("delta", "log1p")


class Z0BoxBuilder:
    """CIC density boxes around the z=0 positions of particles of one simulation.

    Voxel ``i`` of a box of side ``width`` (``size`` voxels of side
    ``h = width / size``) is centred at ``x_p - width/2 + (i + 1/2) h``; for odd
    ``size`` the particle sits in the centre of voxel ``size // 2``. Particles
    are CIC-assigned; mass falling outside the box is dropped (the box is a
    window, not periodic), while the simulation's periodicity is respected.

    Args:
        sim: a :class:`~tfhalo.sim.Simulation`.
        size: voxels per side (paper: 75).
        width: box side in Mpc/h (paper: 1.5).
        transform: ``"delta"`` gives the density contrast ``rho / rho_mean - 1``
            (the paper); ``"log1p"`` gives ``ln(1 + rho / rho_mean)``, which
            tames the heavy tail of halo centres for small, quickly trained nets.

    Example:
        >>> boxes = Z0BoxBuilder(sim, size=15, width=1.5)(np.array([0, 7]))  # doctest: +SKIP
        >>> boxes.shape
        (2, 15, 15, 15)
    """

    def __init__(self, sim, size: int = 75, width: float = 1.5, transform: str = "delta"):
        from tfhalo.validation import check_float, check_int

        size = check_int("size", size, minimum=1)
        width = check_float("width", width, positive=True)  # Mpc/h
        if float(width) >= sim.box_size / 2:
            raise ValueError(
                f"width must be smaller than half the simulation box ({sim.box_size / 2} Mpc/h). "
                f"Received: width={width}"
            )
        if transform not in Z0_TRANSFORMS:
            raise ValueError(f"transform must be one of {Z0_TRANSFORMS}. Received: transform={transform!r}")
        self.size, self.width, self.transform = int(size), float(width), transform
        self.voxel = self.width / self.size
        self.box_size = float(sim.box_size)
        self.positions = wrap_periodic(sim.final_positions, self.box_size)
        self.tree = cKDTree(self.positions, boxsize=self.box_size)
        # Mean number of particles per voxel: the density normalisation.
        self.mean_count = sim.n_particles * (self.voxel / self.box_size) ** 3

    def counts(self, particle_ids) -> np.ndarray:
        """``(P, size, size, size)`` float64 CIC particle counts per voxel."""
        ids = np.asarray(particle_ids, dtype=np.int64).reshape(-1)
        s, h = self.size, self.voxel
        centres = self.positions[ids]
        # Particles whose CIC cloud (one voxel wide) can touch the box: a cube
        # query (Chebyshev distance, p=inf) avoids the sphere's extra corners.
        neighbours = self.tree.query_ball_point(centres, r=self.width / 2 + h, p=np.inf,
                                                return_sorted=False)
        lengths = np.fromiter((len(n) for n in neighbours), dtype=np.int64, count=ids.size)
        owner = np.repeat(np.arange(ids.size), lengths)
        members = np.concatenate([np.asarray(n, dtype=np.int64) for n in neighbours]) \
            if ids.size else np.zeros(0, dtype=np.int64)
        rel = minimum_image(self.positions[members] - centres[owner], self.box_size)
        u = (rel + self.width / 2) / h - 0.5
        i0 = np.floor(u).astype(np.int64)
        frac = u - i0
        weights = (1.0 - frac, frac)  # per axis: weight of the lower and upper cell
        base = owner * s**3
        flats, ws = [], []
        for corner in range(8):
            d = ((corner >> 2) & 1, (corner >> 1) & 1, corner & 1)
            ix, iy, iz = i0[:, 0] + d[0], i0[:, 1] + d[1], i0[:, 2] + d[2]
            inside = (ix >= 0) & (ix < s) & (iy >= 0) & (iy < s) & (iz >= 0) & (iz < s)
            w = weights[d[0]][:, 0] * weights[d[1]][:, 1] * weights[d[2]][:, 2]
            flats.append((base + (ix * s + iy) * s + iz)[inside])
            ws.append(w[inside])
        out = np.bincount(np.concatenate(flats), weights=np.concatenate(ws), minlength=ids.size * s**3)
        return out.reshape(ids.size, s, s, s)

    def __call__(self, particle_ids) -> np.ndarray:
        """``(P, size, size, size)`` float32 boxes in the chosen ``transform``."""
        ratio = self.counts(particle_ids) / self.mean_count
        if self.transform == "delta":
            return (ratio - 1.0).astype(np.float32)
        return np.log1p(ratio).astype(np.float32)
