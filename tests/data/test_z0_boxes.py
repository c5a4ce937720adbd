import numpy as np
import pytest

from tests.helpers.tiny_sims import make_tiny_simulation
from tfhalo.data.z0 import Z0BoxBuilder


def slow_cic_counts(positions, centre, box_size, width, size):
    h = width / size
    out = np.zeros((size,) * 3)
    for x in positions:
        rel = x - centre
        rel -= box_size * np.round(rel / box_size)
        u = (rel + width / 2) / h - 0.5
        i0 = np.floor(u).astype(int)
        f = u - i0
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    idx = i0 + np.array([dx, dy, dz])
                    if np.all((idx >= 0) & (idx < size)):
                        w = (f[0] if dx else 1 - f[0]) * (f[1] if dy else 1 - f[1]) * (f[2] if dz else 1 - f[2])
                        out[tuple(idx)] += w
    return out


def test_counts_match_brute_force_cic_with_periodic_wrap():
    sim = make_tiny_simulation(n_side=10, box_size=10.0, seed=4)
    builder = Z0BoxBuilder(sim, size=5, width=3.0)
    # include a particle next to the box edge so the window wraps around
    pos = np.mod(sim.final_positions.astype(np.float64), sim.box_size)
    edge = int(np.argmin(pos[:, 0]))
    ids = np.array([edge, 0, 123, 999])
    got = builder.counts(ids)
    for box, pid in zip(got, ids):
        np.testing.assert_allclose(box, slow_cic_counts(pos, pos[pid], sim.box_size, 3.0, 5), atol=1e-10)


def test_mass_conserved_for_particles_well_inside():
    sim = make_tiny_simulation(n_side=10, box_size=10.0, seed=5)
    builder = Z0BoxBuilder(sim, size=9, width=4.0, transform="delta")
    pos = np.mod(sim.final_positions.astype(np.float64), sim.box_size)
    counts = builder.counts([7])[0]
    rel = pos - pos[7]
    rel -= sim.box_size * np.round(rel / sim.box_size)
    inner = np.all(np.abs(rel) < 2.0 - 4.0 / 9, axis=1).sum()  # clouds entirely inside
    outer = np.all(np.abs(rel) < 2.0 + 4.0 / 9, axis=1).sum()  # clouds touching the box
    assert inner - 1e-9 <= counts.sum() <= outer + 1e-9
    delta = builder([7])[0]
    np.testing.assert_allclose(delta, counts / builder.mean_count - 1.0, rtol=1e-6)


def test_bad_width():
    sim = make_tiny_simulation(n_side=8, box_size=8.0, seed=1)
    with pytest.raises(ValueError, match="width must be smaller than half"):
        Z0BoxBuilder(sim, size=5, width=5.0)
    with pytest.raises(ValueError, match="transform must be one of"):
        Z0BoxBuilder(sim, size=5, width=1.5, transform="log")
