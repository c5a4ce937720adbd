"""Simulation: row (lattice index) vs particle-id semantics, optional velocity fields."""

import dataclasses

import numpy as np
import pytest

from tests.sim.io_fakes import fake_simulation


def test_lattice_sites_take_rows_not_ids():
    sim = fake_simulation(n_side=5, seed=1)
    sim.ids = sim.ids + 1  # Gadget-style 1-based ids; rows stay in lattice order
    rows = np.array([0, 7, 124])
    sites = sim.lattice_sites(rows=rows)
    np.testing.assert_array_equal(sites, np.stack(np.unravel_index(rows, (5, 5, 5)), axis=-1))
    # The site of a row is where that row's particle started (displacements are 5% of a spacing).
    all_sites = sim.lattice_sites(np.arange(sim.n_particles))
    d = sim.initial_positions - all_sites * sim.lattice_spacing
    d -= sim.box_size * np.round(d / sim.box_size)
    assert np.abs(d).max() < 0.5 * sim.lattice_spacing
    # Positional calls keep working; the last row has id N, which is not a lattice index.
    np.testing.assert_array_equal(sim.lattice_sites([124]), [[4, 4, 4]])
    with pytest.raises(ValueError, match=r"rows must be integer lattice indices in \[0, 125\)"):
        sim.lattice_sites(sim.ids[[124]])
    with pytest.raises(ValueError, match="rows must be integer"):
        sim.lattice_sites(np.array([1.5]))


def test_rows_of_ids_inverts_ids():
    sim = fake_simulation(n_side=4, seed=2)
    perm = np.random.default_rng(0).permutation(64)
    sim.ids = 1000 + perm  # arbitrary unique ids in lattice order
    rows = np.array([3, 0, 63, 17])
    np.testing.assert_array_equal(sim.rows_of_ids(sim.ids[rows]), rows)
    with pytest.raises(ValueError, match="not in this simulation's ids: \\[5\\]"):
        sim.rows_of_ids([5])


def test_velocity_fields_are_optional_and_checked():
    sim = fake_simulation(n_side=4, seed=3)
    assert sim.initial_velocities is None and sim.final_velocities is None
    v = np.ones((64, 3))
    with_v = dataclasses.replace(sim, final_velocities=v, initial_velocities=2 * v)
    assert with_v.final_velocities.dtype == np.float32 and with_v.final_velocities.shape == (64, 3)
    with pytest.raises(ValueError, match=r"final_velocities must be None or have shape \(64, 3\).*\(64,\)"):
        dataclasses.replace(sim, final_velocities=np.ones(64))
    with pytest.raises(ValueError, match="initial_velocities must be None"):
        dataclasses.replace(sim, initial_velocities=np.ones((63, 3)))
