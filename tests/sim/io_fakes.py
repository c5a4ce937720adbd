"""Small fake simulations for the I/O tests (no physics involved)."""

import numpy as np

from tfhalo.sim.cosmology import Cosmology
from tfhalo.sim.grid import wrap_periodic
from tfhalo.sim.simulation import HaloCatalogue, Simulation


def fake_simulation(n_side=8, box_size=20.0, n_halos=3, seed=0, name="fake", cosmology=None, z_initial=99.0):
    """A lattice with small random displacements and ``n_halos`` compact fake halos.

    Halo k's members are a contiguous block of lattice ids moved into a small
    ball at z = 0; all the tables are filled with consistent random values.
    """
    rng = np.random.default_rng(seed)
    n = n_side**3
    spacing = box_size / n_side
    site = np.stack(np.unravel_index(np.arange(n), (n_side,) * 3), axis=-1)
    q = site * spacing
    init = wrap_periodic(q + rng.normal(0.0, 0.05 * spacing, (n, 3)), box_size)
    final = rng.uniform(0.0, box_size, (n, 3))
    halo_id = np.full(n, -1, dtype=np.int64)
    big = max(4, n // (2 * (n_halos + 1)))
    sizes = rng.integers(big // 2, big + 1, n_halos)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) + 1
    centres = rng.uniform(0.0, box_size, (n_halos, 3))
    for k in range(n_halos):
        members = np.arange(starts[k], starts[k] + sizes[k])
        halo_id[members] = k
        # Straddle the boundary sometimes: wrapping must not break membership.
        final[members] = wrap_periodic(centres[k] + rng.normal(0.0, 0.3, (sizes[k], 3)), box_size)
    particle_mass = 1.2345e10
    halos = HaloCatalogue(
        mass=sizes * particle_mass,
        centre=centres,
        r200=rng.uniform(0.2, 0.5, n_halos),
        n_members=sizes,
    )
    r_rel = np.where(halo_id >= 0, rng.uniform(0.0, 2.0, n), np.nan)
    return Simulation(
        box_size=box_size,
        n_side=n_side,
        cosmology=cosmology or Cosmology(h=0.7, Om0=0.3, Ob0=0.04, sigma8=0.8, ns=0.97),
        z_initial=z_initial,
        particle_mass=particle_mass,
        initial_density=rng.normal(0.0, 0.02, (n_side,) * 3),
        ids=np.arange(n),
        initial_positions=init,
        final_positions=final,
        halo_id=halo_id,
        halo_mass=np.where(halo_id >= 0, halos.mass[np.maximum(halo_id, 0)] if n_halos else 0.0, 0.0),
        r_over_r200=r_rel,
        halos=halos,
        seed=1234,
        name=name,
    )
