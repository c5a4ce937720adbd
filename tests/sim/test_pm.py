"""Particle mesh: momentum conservation, pair forces, normalisation, linear growth."""

import numpy as np
import pytest
import scipy.fft

from tfhalo.sim.cosmology import WMAP5
from tfhalo.sim.grid import lattice_positions
from tfhalo.sim.ics import gaussian_field, lpt_displacements, lpt_state, peculiar_velocity
from tfhalo.sim.mesh import cic_paint
from tfhalo.sim.pm import ForceSolver, drift_factor, kick_factor, run_pm


def test_total_force_vanishes_to_float_precision():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 20.0, (3000, 3))
    pos[:1000] = 10.0 + 0.5 * rng.standard_normal((1000, 3))  # a clump: large forces
    for dtype, tol, deconvolve in ((np.float64, 1e-12, False), (np.float32, 1e-5, False), (np.float64, 1e-12, True)):
        solver = ForceSolver(32, 20.0, 0.3, pos.shape[0], deconvolve=deconvolve, dtype=dtype)
        force = solver.accelerations(pos).astype(np.float64)
        total = np.abs(force.sum(axis=0))
        scale = np.abs(force).sum(axis=0)
        assert np.all(total < tol * scale), (dtype, total / scale)


@pytest.mark.parametrize("mesh_factor", [1, 2])
def test_pair_force_is_attractive_and_newtonian(mesh_factor):
    # two particles 4 lattice cells apart in a 16^3-particle box of side 16:
    # Poisson lap phi = 3/2 Om delta with delta from N = 16^3 particles of unit
    # mean density => each particle has "mass" 3/2 Om / (4 pi) and the pair
    # force is 3/2 Om / (4 pi r^2) (plus small periodic-image corrections).
    n, box, om = 16, 16.0, 0.3
    sep = 4.0
    pos = np.array([[6.0, 8.0, 8.0], [6.0 + sep, 8.0, 8.0]])
    solver = ForceSolver(n * mesh_factor, box, om, n_particles=n**3, dtype=np.float64)
    force = solver.accelerations(pos)
    assert force[0, 0] > 0 and force[1, 0] < 0  # attraction along the separation
    np.testing.assert_allclose(force[0], -force[1], atol=1e-14)  # Newton's third law
    assert np.abs(force[:, 1:]).max() < 1e-3 * np.abs(force[:, 0]).max()
    newton = 1.5 * om / (4 * np.pi * sep**2)
    # periodic images pull back by ~2 * sum over images: direct lattice sum
    images = np.arange(-3, 4)
    img = np.stack(np.meshgrid(images, images, images, indexing="ij"), -1).reshape(-1, 3) * box
    d = img + np.array([sep, 0, 0])
    ewald_like = 1.5 * om / (4 * np.pi) * np.sum(d[:, 0] / np.linalg.norm(d, axis=1) ** 3)
    assert force[0, 0] == pytest.approx(ewald_like, rel=0.1)
    assert force[0, 0] == pytest.approx(newton, rel=0.1)


def test_force_normalisation_independent_of_mesh_factor():
    # the flowpm bug: the force must not scale with the force-mesh resolution
    n, box, om = 16, 100.0, 0.3
    q = lattice_positions(n, box)
    k = 2 * np.pi / box
    psi = 0.5 * np.sin(k * q[:, 0])
    x = q.copy()
    x[:, 0] += psi
    sel = np.abs(psi) > 0.3
    for mesh_factor, deconvolve in ((1, False), (2, False), (3, False), (2, True)):
        solver = ForceSolver(n * mesh_factor, box, om, n**3, deconvolve=deconvolve, dtype=np.float64)
        force = solver.accelerations(x)
        # linear theory: F = 3/2 Om psi for a Zel'dovich plane wave
        ratio = np.mean(force[sel, 0] / psi[sel]) / (1.5 * om)
        assert ratio == pytest.approx(1.0, abs=0.04), (mesh_factor, deconvolve)


def test_kdk_factors_integrate_linear_motion_exactly():
    # one kick and one drift over a long step reproduce the Zel'dovich solution
    c = WMAP5
    a0, a1 = 0.1, 0.9

    def gp(a):
        return a**2 * c.hubble(a) * c.growth_rate(a) * c.growth_factor(a)

    psi = 1.0
    x0 = c.growth_factor(a0) * psi
    p0 = gp(a0) * psi
    ah = 0.5 * (a0 + a1)
    p_half = p0 + kick_factor(c, a0, ah, a0) * 1.5 * c.Om0 * c.growth_factor(a0) * psi
    x1 = x0 + drift_factor(c, a0, a1, ah) * p_half
    p1 = p_half + kick_factor(c, ah, a1, a1) * 1.5 * c.Om0 * c.growth_factor(a1) * psi
    assert x1 == pytest.approx(c.growth_factor(a1) * psi, rel=1e-12)
    assert p1 == pytest.approx(gp(a1) * psi, rel=1e-12)


def _fundamental_modes(pos, n, box):
    rho = cic_paint(pos, n, box)
    dk = scipy.fft.rfftn(rho / rho.mean() - 1)
    # |k| = k_f and sqrt(2) k_f modes (the other half are complex conjugates)
    idx = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1),
           (n - 1, 1, 0), (n - 1, 0, 1), (0, n - 1, 1)]
    return np.array([dk[i] for i in idx])


def test_large_scale_growth_matches_linear_theory():
    n, box, a_start = 24, 600.0, 0.1
    num = den = 0.0
    for seed in (11, 12):
        delta0 = gaussian_field(n, box, WMAP5, seed=seed)
        x, p = lpt_state(*lpt_displacements(delta0, box), box, WMAP5, a_start)
        xf, vf = run_pm(x, p, box, WMAP5, a_start=a_start, n_steps=10, mesh_factor=2)
        m0, m1 = _fundamental_modes(x, n, box), _fundamental_modes(xf, n, box)
        num += np.sum(np.real(m1 * np.conj(m0)))
        den += np.sum(np.abs(m0) ** 2)
        assert xf.dtype == np.float32 and np.all((xf >= 0) & (xf < box))
        # velocities (km/s) follow the 2LPT prediction at a = 1 in this nearly linear box
        psi1, psi2 = lpt_displacements(delta0, box)
        v_lpt = peculiar_velocity(lpt_state(psi1, psi2, box, WMAP5, 1.0)[1], 1.0)
        assert np.sum(vf * v_lpt) / np.sum(v_lpt**2) == pytest.approx(1.0, abs=0.03)
        assert np.corrcoef(vf.ravel(), v_lpt.ravel())[0, 1] > 0.95
    growth = num / den
    expected = WMAP5.growth_factor(1.0) / WMAP5.growth_factor(a_start)
    assert growth / expected == pytest.approx(1.0, abs=0.03)


def test_run_pm_is_deterministic_and_keeps_particle_order():
    n, box = 12, 100.0
    x, p = lpt_state(*lpt_displacements(gaussian_field(n, box, WMAP5, seed=5), box), box, WMAP5, 0.1)
    a = run_pm(x, p, box, WMAP5, 0.1, n_steps=3)
    b = run_pm(x, p, box, WMAP5, 0.1, n_steps=3)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    # particles stay near their own Lagrangian position in this nearly linear box
    d = a[0] - x
    d -= box * np.round(d / box)
    assert np.abs(d).max() < 0.5 * box / n * 8


def test_run_pm_bad_input():
    x = np.zeros((8, 3))
    with pytest.raises(ValueError, match="box_size must be positive"):
        run_pm(x, x, -1.0, WMAP5, 0.1)
    with pytest.raises(ValueError, match="a_start"):
        run_pm(x, x, 10.0, WMAP5, 1.2)
    with pytest.raises(ValueError, match="momenta"):
        run_pm(x, x[:4], 10.0, WMAP5, 0.1)
    with pytest.raises(ValueError, match="n_side\\*\\*3"):
        run_pm(np.zeros((7, 3)), np.zeros((7, 3)), 10.0, WMAP5, 0.1)
