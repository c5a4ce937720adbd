"""Tiny synthetic :class:`~tfhalo.sim.Simulation` objects for fast tests.

Not physics: a smoothed Gaussian lattice field whose highest peaks become
"halos" (lattice particles within a peak-height-dependent radius), so that
labels correlate with the local initial density, and z=0 positions that
cluster halo members around their centre (so the z=0 density tracks mass).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, maximum_filter

from tfhalo.sim.cosmology import Cosmology
from tfhalo.sim.grid import minimum_image, wrap_periodic
from tfhalo.sim.simulation import HaloCatalogue, Simulation


def make_tiny_simulation(n_side: int = 16, box_size: float = 20.0, seed: int = 0,
                         n_halos: int = 8, particle_mass: float = 1e10,
                         name: str | None = None) -> Simulation:
    """A small random simulation; ``n_halos=0`` gives one without halos.

    Example:
        >>> sim = make_tiny_simulation(n_side=12, seed=3)
        >>> sim.initial_density.shape
        (12, 12, 12)
    """
    rng = np.random.default_rng(seed)
    n = int(n_side)
    npart = n**3
    delta = gaussian_filter(rng.standard_normal((n, n, n)), sigma=1.5, mode="wrap")
    delta = (delta / delta.std()).astype(np.float32)
    ids = np.arange(npart, dtype=np.int64)
    sites = np.stack(np.unravel_index(ids, (n, n, n)), axis=-1)
    spacing = box_size / n
    q = (sites * spacing).astype(np.float32)

    halo_id = np.full(npart, -1, dtype=np.int64)
    peaks = np.flatnonzero((maximum_filter(delta, size=3, mode="wrap") == delta).ravel())
    peaks = peaks[np.argsort(delta.ravel()[peaks])[::-1]][: int(n_halos)]
    for h, p in enumerate(peaks):
        # Higher peaks collapse into bigger halos: radius grows with height.
        radius = 1.0 + 0.9 * max(float(delta.ravel()[p]), 0.0)
        d = (sites - sites[p]).astype(np.float64)
        d -= n * np.round(d / n)
        member = (np.sqrt((d**2).sum(axis=1)) <= radius) & (halo_id < 0)
        halo_id[member] = h
    counts = np.bincount(halo_id[halo_id >= 0], minlength=len(peaks))
    keep = np.flatnonzero(counts > 0)
    remap = np.full(len(peaks) + 1, -1)
    remap[keep] = np.arange(keep.size)
    halo_id = remap[halo_id]  # -1 indexes the trailing -1
    counts = counts[keep]
    centres = (sites[peaks[keep]] * spacing).astype(np.float64).reshape(-1, 3)

    mass = counts * particle_mass
    rho_mean = particle_mass * npart / box_size**3
    r200 = (3 * mass / (4 * np.pi * 200 * rho_mean)) ** (1.0 / 3.0)

    final = q + rng.normal(scale=0.3 * spacing, size=q.shape)
    in_halo = halo_id >= 0
    hid = halo_id[in_halo]
    offsets = rng.normal(size=(hid.size, 3))
    offsets *= (r200[hid] * rng.uniform(0.05, 1.2, size=hid.size)
                / np.linalg.norm(offsets, axis=1))[:, None]
    final[in_halo] = centres[hid] + offsets
    final = wrap_periodic(final, box_size, dtype=np.float32)

    halo_mass = np.zeros(npart)
    halo_mass[in_halo] = mass[hid]
    r_over = np.full(npart, np.nan, dtype=np.float32)
    d = minimum_image(final[in_halo] - centres[hid], box_size)
    r_over[in_halo] = np.linalg.norm(d, axis=1) / r200[hid]
    halos = HaloCatalogue(mass, centres, r200, counts) if keep.size else HaloCatalogue.empty()
    return Simulation(
        box_size=box_size, n_side=n, cosmology=Cosmology(), z_initial=99.0,
        particle_mass=particle_mass, initial_density=delta, ids=ids, initial_positions=q,
        final_positions=final, halo_id=halo_id, halo_mass=halo_mass, r_over_r200=r_over,
        halos=halos, seed=seed, name=name or f"tiny_{seed:03d}",
    )


def make_tiny_suite(n_sims: int = 4, seed: int = 0, **kwargs) -> list:
    """``n_sims`` independent tiny simulations with seeds ``seed, seed+1, ...``."""
    return [make_tiny_simulation(seed=seed + i, **kwargs) for i in range(n_sims)]
