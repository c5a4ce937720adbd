"""run_simulation: every Simulation field, seeding, argument validation."""

import numpy as np
import pytest

from tfhalo.sim.cosmology import WMAP5, Cosmology
from tfhalo.sim.fof import friends_of_friends
from tfhalo.sim.grid import lattice_positions, minimum_image
from tfhalo.sim.ics import gaussian_field, lpt_displacements, lpt_state, peculiar_velocity
from tfhalo.sim.pm import run_pm
from tfhalo.sim.pipeline import run_simulation
from tfhalo.sim.simulation import Simulation


@pytest.fixture(scope="module")
def sim():
    return run_simulation(n_side=24, box_size=40.0, seed=3, n_steps=6, min_members=10)


def test_fields_are_consistent(sim):
    n, box = 24, 40.0
    assert isinstance(sim, Simulation)
    assert sim.n_side == n and sim.box_size == box and sim.z_initial == 99.0 and sim.seed == 3
    assert sim.cosmology == WMAP5
    assert sim.particle_mass == pytest.approx(WMAP5.rho_mean * box**3 / n**3)
    np.testing.assert_array_equal(sim.ids, np.arange(n**3))
    # initial density = linear field scaled to z = 99
    expected = gaussian_field(n, box, WMAP5, seed=3) * WMAP5.growth_factor(0.01)
    np.testing.assert_allclose(sim.initial_density, expected, rtol=1e-6, atol=1e-9)
    assert sim.initial_density.dtype == np.float32
    # initial positions are close to the lattice (z = 99), in lattice order
    d = minimum_image(sim.initial_positions - lattice_positions(n, box), box)
    assert np.abs(d).max() < 0.5 * box / n
    for arr in (sim.initial_positions, sim.final_positions):
        assert np.all((arr >= 0) & (arr < box))
    # halos: labels from FoF on the final positions with b = 0.2
    labels = friends_of_friends(sim.final_positions, box, 0.2 * box / n, min_members=10)
    np.testing.assert_array_equal(sim.halo_id, labels)
    assert len(sim.halos) > 0
    inside = sim.halo_id >= 0
    np.testing.assert_allclose(sim.halo_mass[inside], sim.halos.mass[sim.halo_id[inside]])
    assert np.all(sim.halo_mass[~inside] == 0) and np.all(np.isnan(sim.r_over_r200[~inside]))
    assert np.all(np.isfinite(sim.r_over_r200[inside])) and np.all(sim.r_over_r200[inside] >= 0)
    np.testing.assert_array_equal(sim.halos.n_members, np.bincount(sim.halo_id[inside]))
    assert np.all(np.diff(sim.halos.n_members) <= 0)
    # mass is conserved on the mesh; structure has grown
    final = sim.final_density(n)
    assert abs(final.mean()) < 1e-12 and final.std() > 5 * sim.initial_density.std()


def test_same_seed_bitwise_identical_different_seed_differs(sim):
    again = run_simulation(n_side=24, box_size=40.0, seed=3, n_steps=6, min_members=10)
    assert again.initial_density.tobytes() == sim.initial_density.tobytes()
    assert again.final_positions.tobytes() == sim.final_positions.tobytes()
    other = run_simulation(n_side=8, box_size=40.0, seed=4, n_steps=1)
    same_size = run_simulation(n_side=8, box_size=40.0, seed=3, n_steps=1)
    assert not np.allclose(other.initial_density, same_size.initial_density)
    assert other.name == "sim_seed4"


def test_cosmology_is_used():
    a = run_simulation(n_side=8, box_size=40.0, seed=1, n_steps=1)
    b = run_simulation(n_side=8, box_size=40.0, seed=1, n_steps=1, cosmology=Cosmology(sigma8=0.9))
    np.testing.assert_allclose(b.initial_density, a.initial_density * 0.9 / 0.817, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"box_size": -1.0}, "box_size must be positive. Received: box_size=-1.0"),
        ({"box_size": 0}, "box_size"),
        ({"n_side": 0}, "n_side must be at least 2. Received: n_side=0"),
        ({"n_side": 8.5}, "n_side must be an integer. Received: n_side=8.5"),
        ({"z_initial": -0.5}, "z_initial"),
        ({"z_initial": 5.0, "a_start": 0.1}, "a_start must lie in"),
        ({"a_start": 1.2}, "a_start"),
        ({"n_steps": 0}, "n_steps"),
        ({"mesh_factor": 0}, "mesh_factor"),
        ({"linking_length": 2.0}, "linking_length"),
        ({"min_members": 0}, "min_members"),
        ({"seed": -3}, "seed must be at least 0. Received: seed=-3"),
        # A seed the simulation file cannot store (int64) fails now, not after the run in write_simulation.
        ({"seed": 2**64}, "seed must be at most 9223372036854775807. Received: seed=18446744073709551616"),
        ({"seed": 2**63}, "seed must be at most"),
        ({"seed": 1.5}, "seed must be an integer. Received: seed=1.5"),
        ({"seed": "1"}, "seed must be an integer"),
        ({"n_steps": 2.5}, "n_steps must be an integer"),
        ({"box_size": float("nan")}, "box_size must be a finite number"),
        ({"box_size": "x"}, "box_size must be a number. Received: box_size='x'"),
        ({"linking_length": float("inf")}, "linking_length must be a finite number"),
        ({"progress": "yes"}, "progress must be True or False. Received: progress='yes'"),
        ({"pm_progress": 1}, "pm_progress must be True or False. Received: pm_progress=1"),
        ({"name": ""}, "name must be a non-empty string or None"),
        ({"name": 3}, "name must be a non-empty string or None. Received: name=3"),
        ({"cosmology": "WMAP5"}, "cosmology"),
        ({"box_size": 1e-30}, "box_size and n_side give wave numbers k in .*Received: box_size=1e-30, n_side=8"),
    ],
)
def test_bad_arguments_raise_before_work(kwargs, pattern, monkeypatch):
    import tfhalo.sim.pipeline as pipeline

    def no_work(*args, **kw):
        raise AssertionError("the initial conditions were drawn before the arguments were checked")

    monkeypatch.setattr(pipeline, "gaussian_field", no_work)
    args = dict(n_side=8, box_size=40.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        run_simulation(**args)


def test_largest_seed_runs_and_survives_the_file_round_trip(tmp_path):
    from tfhalo.sim.hdf5 import read_simulation, write_simulation

    sim = run_simulation(n_side=8, box_size=40.0, seed=2**63 - 1, n_steps=1)
    write_simulation(sim, tmp_path / "s.h5")
    assert read_simulation(tmp_path / "s.h5").seed == 2**63 - 1


def test_velocities_are_the_exact_2lpt_and_pm_ones(sim):
    n, box, a_init = 24, 40.0, 0.01
    psi1, psi2 = lpt_displacements(gaussian_field(n, box, WMAP5, seed=3), box)
    _, p_init = lpt_state(psi1, psi2, box, WMAP5, a_init)
    expected = peculiar_velocity(p_init, a_init)
    assert sim.initial_velocities.dtype == np.float32
    np.testing.assert_allclose(sim.initial_velocities, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
    # Not the Zel'dovich velocity f1 a H applied to the whole 2LPT displacement.
    e = float(WMAP5.hubble(a_init))
    zeldovich = (100.0 * a_init * e * float(WMAP5.growth_rate(a_init))) * (
        float(WMAP5.growth_factor(a_init)) * psi1 + float(WMAP5.growth_factor_2(a_init)) * psi2).reshape(-1, 3)
    assert np.abs(zeldovich - expected).max() > 100 * 1e-6 * np.abs(expected).max()
    # z = 0 velocities: run_pm's, from the same 2LPT start.
    x0, p0 = lpt_state(psi1, psi2, box, WMAP5, 0.1)
    x1, v1 = run_pm(x0, p0, box, WMAP5, a_start=0.1, n_steps=6)
    np.testing.assert_array_equal(sim.final_positions, x1)
    np.testing.assert_array_equal(sim.final_velocities, v1)
    # Velocities grow at least as in linear theory, v ~ a E(a) f(a) D(a).
    def linear(a):
        return a * float(WMAP5.hubble(a)) * float(WMAP5.growth_rate(a)) * float(WMAP5.growth_factor(a))

    assert sim.final_velocities.std() / sim.initial_velocities.std() > 0.9 * linear(1.0) / linear(a_init)
